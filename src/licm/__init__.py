"""licm: a reproduction workflow for Learning Independent Causal Mechanisms (ICML 2018)."""
__version__ = "0.1.0"


def load_run(run_dir):
    """Load a finished (or checkpointed) `licm train` run folder on CPU, in eval mode.

    Returns (experts, discriminator, config): `experts(x)` maps [B,1,H,W] in [0,1] to
    [B,N',1,H,W]; `discriminator(x)` maps [B,1,32,32] to [B] scores (probabilities in (0,1);
    raw critic values when the run used train.loss: wasserstein); `config` is the run's params.
    """
    import json
    from pathlib import Path

    import torch

    from licm.config import LicmError
    from licm.models import build, grouped_to_loop, loop_to_grouped

    run_dir = Path(run_dir)
    params_path, ckpt_path = run_dir / "params.json", run_dir / "checkpoint.pt"
    if not params_path.is_file() or not ckpt_path.is_file():
        raise LicmError(f"{run_dir}: not a run folder (needs params.json and checkpoint.pt); run `licm train` first")
    params = json.loads(params_path.read_text())
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    experts, disc = build(params, "loop")
    if ckpt["implementation"] == "vectorized":
        grouped = loop_to_grouped(experts)
        grouped.load_state_dict(ckpt["committee"])
        grouped_to_loop(grouped, experts)
    else:
        experts.load_state_dict(ckpt["committee"])
    disc.load_state_dict(ckpt["discriminator"])
    return experts.eval(), disc.eval(), params
