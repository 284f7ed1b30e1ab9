"""licm: a reproduction workflow for Learning Independent Causal Mechanisms (ICML 2018)."""
__version__ = "0.1.0"


def load_run(run_dir):
    """Load a finished (or checkpointed) `licm train` run folder on CPU, in eval mode.

    Returns (experts, discriminator, config): `experts(x)` maps [B,1,H,W] in [0,1] to
    [B,N',1,H,W]; `discriminator(x)` maps [B,1,32,32] to [B] scores (probabilities in (0,1);
    raw critic values when the run used train.loss: wasserstein); `config` is the run's params.
    """
    from licm import models
    from licm.rundir import RunDir

    run = RunDir(run_dir)
    params, ck = run.params(), run.load_checkpoint()
    committee, discs = models.empty(params, 1, "loop")
    committee.load_state_dict(ck["committee"])
    discs.load_state_dict(ck["discriminator"])
    return models.SeedExperts(committee).eval(), models.SeedDiscriminator(discs).eval(), params
