"""The training engine: sampling, masked Adam, every step variant against the plain reference,
batched seeds against separate runs, compilation, run folders, determinism, resume, NaN."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import licm
from licm import config, models
from licm.config import LicmError
from licm.reference import Reference
from licm.rundir import RunDir
from licm.state import RunState
from licm.step import (STREAM_AII, GroupedAdam, Sampler, Step, StepConfig, Stepper, TrainData, approximate_identity,
                       make_loss, minibatch)
from licm.train import Progress, run, train

ROOT = Path(__file__).resolve().parents[1]
MECHS = ["mech_a", "mech_b", "mech_c"]


def make_prepared(root: Path, n: int = 64, seed: int = 0) -> Path:
    """A tiny prepared folder in the format of `licm data prepare` (random 'digits', 3 mechanisms)."""
    rng = np.random.default_rng(seed)
    folder = root / "paper"
    folder.mkdir(parents=True)

    def split(name, mechanism):
        np.savez(folder / f"{name}.npz", images=rng.random((n, 32, 32), dtype=np.float32),
                 mechanism=mechanism.astype(np.int64), source_index=np.arange(n, dtype=np.int64),
                 label=rng.integers(0, 10, n).astype(np.int64))

    split("train_transformed", np.arange(n) % len(MECHS))
    split("train_canonical", -np.ones(n))
    split("test", np.arange(n) % len(MECHS))
    (folder / "mechanisms.json").write_text(json.dumps(MECHS))
    return root


def small_params(prepared: Path, **train) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = config.deep_merge(raw, {
        "profile": "smoke", "device": "cpu",
        "data": {"prepared_dir": str(prepared)},
        "model": {"experts": 3, "expert_width": 4, "expert_hidden_layers": 1, "receptive_field": False,
                  "disc_widths": [4, 4, 4], "disc_convs": [1, 1, 1], "disc_fc": 16},
        "aii": {"enabled": True, "max_iterations": 3, "batch_size": 8},
        "train": {"iterations": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 1, "eval_every": 2,
                  "eval_examples": None, "domain": "paper", "implementation": "loop", **train},
    })
    raw["profiles"] = {}
    config.validate(raw, "test params")
    return raw


# ---------------------------------------------------------------- sampling and the optimizer

def test_sampler_is_uniform_and_a_seed_draws_the_same_alone_or_batched():
    batched, alone = Sampler([3, 5, 8], 32, "cpu"), Sampler([5], 32, "cpu")
    counts = np.zeros(10)
    for it in range(1, 301):
        i = batched(torch.tensor(it), 0, 10)
        assert torch.equal(i[:, 1], alone(torch.tensor(it), 0, 10)[:, 0])
        counts += np.bincount(i.reshape(-1).numpy(), minlength=10)
    # 28,800 draws over 10 values: each share within 4 sd of 1/10
    assert np.abs(counts / counts.sum() - 0.1).max() < 4 * np.sqrt(0.09 / counts.sum())
    a, b = batched(torch.tensor(7), 0, 1000), batched(torch.tensor(7), 1, 1000)
    assert not torch.equal(a[:, 0], a[:, 1]) and not torch.equal(a, b)      # seeds and streams differ


def test_grouped_adam_matches_torch_adam_and_skips_unmasked():
    torch.manual_seed(0)
    params = [torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)]  # 3 groups of 2 rows
    ref = [[p[2 * g:2 * g + 2].clone().requires_grad_() for p in params] for g in range(3)]
    opts = [torch.optim.Adam(r, lr=1e-2) for r in ref]
    ours = GroupedAdam(params, 3, 1e-2, (0.9, 0.999))
    for mask in ([True, False, True], [True, False, False], [False, False, True]):
        grads = [torch.randn_like(p) for p in params]
        ours.step(grads, torch.tensor(mask))
        for g, won in enumerate(mask):
            if won:
                for r, gr in zip(ref[g], grads):
                    r.grad = gr[2 * g:2 * g + 2].clone()
                opts[g].step()
    for g in range(3):
        for p, r in zip(params, ref[g]):
            torch.testing.assert_close(p[2 * g:2 * g + 2], r.detach(), rtol=1e-12, atol=1e-14)
    assert ours.step_count.tolist() == [2, 0, 2]                     # group 1 never won: nothing moved
    assert all(float(m[2:4].abs().max()) == 0 for m in ours.exp_avg)


# ---------------------------------------------------------------- the step against the plain reference

VARIANTS = {
    "literal": {},
    "bn_eval_smoothing": {"bn_mode_scoring": "eval", "label_smoothing": 0.1},
    "wasserstein": {"loss": "wasserstein"},
    "per_example": {"expert_update": "per_example"},
    "carry_aii": {"carry_aii_optimizer": True},
    "d_after_update": {"expert_scores_from": "d_after_update"},
    "fakes_then_real": {"d_update": "fakes_then_real"},
    "dcgan_style": {"expert_scores_from": "d_after_update", "d_update": "fakes_then_real",
                    "expert_update": "per_example"},
    "detach": {"detach_expert_scores": True},
}


def _tiny_world(tmp_path, experts=4, **train):
    """float64 params and data for 2 seeds, small enough to run the reference in a second."""
    params = small_params(make_prepared(tmp_path / "prep"), batch_size=3, **train)
    params["model"]["experts"] = experts
    params["aii"].update(max_iterations=4, mse_threshold=0.0)
    g = torch.Generator().manual_seed(0)        # the same digits whichever tests ran before
    data = TrainData(torch.rand(40, 32, 32, dtype=torch.float64, generator=g), torch.arange(40) % 3,
                     torch.rand(40, 32, 32, dtype=torch.float64, generator=g))
    return params, data


def _step(params, expert_gradient="masked") -> Step:
    cfg = replace(StepConfig.from_params(params), expert_gradient=expert_gradient)
    return Step(cfg, make_loss(params["train"]))


def _engine(params, data, seeds, layout, iterations, expert_gradient="masked", channels_last=False):
    st = RunState.fresh(params, seeds, 3, "cpu", layout, torch.float64)
    st.use_channels_last(channels_last)
    sampler = Sampler(seeds, params["train"]["batch_size"], "cpu")
    approximate_identity(st, data, sampler, params["aii"]["max_iterations"], params["aii"]["mse_threshold"])
    st.start_adversarial(params)
    step = _step(params, expert_gradient)
    for _ in range(iterations):
        step(st, data, sampler)
    return st, sampler


def _reference(params, data, seed, iterations):
    """The plain reference fed the digits the engine's sampler draws for `seed`."""
    experts, disc = models.seed_networks(params, seed)
    ref = Reference([e.double() for e in experts], disc.double(), params)
    sampler, n = Sampler([seed], params["train"]["batch_size"], "cpu"), len(data.transformed)
    done = [False] * len(experts)
    for k in range(1, params["aii"]["max_iterations"] + 1):
        done = ref.identity_step(data.transformed[sampler(torch.tensor(k), STREAM_AII, n)[:, 0]].unsqueeze(1), done)
    ref.start_adversarial()
    losers = 0
    for it in range(1, iterations + 1):
        x_t, _, x_r = minibatch(data, sampler, torch.tensor(it))
        winners = ref.step(x_r[:, 0].unsqueeze(1), x_t[:, 0].unsqueeze(1))
        losers += len(experts) - len(set(winners.tolist()))
    return ref, losers


def _assert_seed_equal(st, i, ref, tol=1e-10):
    ours = models.seed_state(st.committee.state_dict(), len(st.seeds), i)
    plain = models.empty(_assert_seed_equal.params, 1)[0].double().copy_from([list(ref.experts)]).state_dict()
    for k, v in plain.items():
        torch.testing.assert_close(ours[k], v, rtol=tol, atol=tol, msg=k)
    d_plain = models.empty(_assert_seed_equal.params, 1)[1].double().copy_from([ref.disc]).state_dict()
    d_ours = models.seed_state(st.discs.state_dict(), len(st.seeds), i)
    for k, v in d_plain.items():
        torch.testing.assert_close(d_ours[k], v, rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("expert_gradient", ["masked", "gathered"])
@pytest.mark.parametrize("variant", [*VARIANTS, "aii_stops_early"])
def test_engine_equals_plain_reference(tmp_path, variant, expert_gradient):
    """AII and 5 iterations of 2 seeds batched, in both layouts, equal the plain per-expert
    reference run of each seed on the same digits (float64), in iterations where experts win nothing,
    with either experts' gradient (masked: the captured step; gathered: the CPU's, with its weights
    in channels_last as the CPU keeps them). aii_stops_early: a threshold that some experts reach at
    once and others never (done for good)."""
    params, data = _tiny_world(tmp_path, **VARIANTS.get(variant, {}))
    if variant == "aii_stops_early":
        experts = models.seed_networks(params, 0)[0]
        x = data.transformed[Sampler([0], 3, "cpu")(torch.tensor(1), STREAM_AII, 40)[:, 0]].unsqueeze(1)
        with torch.no_grad():
            mse = sorted(float(((e.double()(x) - x) ** 2).mean()) for e in experts)
        params["aii"]["mse_threshold"] = (mse[1] + mse[2]) / 2
    _assert_seed_equal.params = params
    refs = [_reference(params, data, s, 5) for s in (0, 1)]
    assert sum(losers for _, losers in refs) > 0            # 4 experts, 3 digits: some win nothing
    for layout in ("vectorized", "loop"):
        st, _ = _engine(params, data, [0, 1], layout, 5, expert_gradient, expert_gradient == "gathered")
        for i, (ref, _) in enumerate(refs):
            _assert_seed_equal(st, i, ref)
        if variant == "aii_stops_early":
            assert 0 in st.aii_steps[0].tolist() and 4 in st.aii_steps[0].tolist(), st.aii_steps


def test_d_after_update_scores_with_the_updated_discriminator(tmp_path):
    """With d_after_update the experts' gradient is the gradient through D's updated weights, with
    the winners D's updated weights choose (computed here independently: D stepped by hand)."""
    params, data = _tiny_world(tmp_path, expert_scores_from="d_after_update")
    st, sampler = _engine(params, data, [0], "vectorized", 2)
    before = copy.deepcopy(st)
    recorded = {}
    st.expert_opt.step = lambda grads, mask: recorded.update(grads=grads, mask=mask)
    _step(params)(st, data, sampler)
    # independently: D's Adam step on eq. 3, then score the experts' outputs with the new D
    x_t, _, x_r = minibatch(data, sampler, torch.tensor(3))
    out = before.committee(x_t, "batch")
    d = before.discs
    fake = d.logits(out.detach().transpose(1, 2).reshape(-1, 1, 32, 32))
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    d_loss = loss(fake, torch.zeros_like(fake)) + loss(d.logits(x_r), torch.ones(3, 1, dtype=torch.float64))
    before.disc_opt.step(torch.autograd.grad(d_loss, list(d.parameters())))
    torch.testing.assert_close(list(d.parameters())[0], list(st.discs.parameters())[0], rtol=0, atol=1e-14)
    z = d.logits(out.transpose(1, 2).reshape(-1, 1, 32, 32)).view(3, -1)      # [B, N'] with the updated D
    won = torch.nn.functional.one_hot(z.argmax(1), 4).double()
    per_expert = (won * torch.nn.functional.softplus(-z)).sum(0) / won.sum(0).clamp(min=1)
    expected = torch.autograd.grad(per_expert.sum(), list(before.committee.parameters()))
    assert torch.equal(recorded["mask"], won.sum(0) > 0)
    for g, e in zip(recorded["grads"], expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def _leaves(tree, prefix="") -> dict:
    """A checkpoint's nested dicts and lists as {"committee.convs.0.weight": tensor, ...}."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else None
    if items is None:
        return {prefix: tree}
    return {k: v for key, sub in items for k, v in _leaves(sub, f"{prefix}.{key}" if prefix else str(key)).items()}


def test_masked_checkpoint_resumes_in_the_gathered_step(tmp_path):
    """A checkpoint written by the masked step resumes in the CPU's step (gathered gradient, weights
    and Adam moments in channels_last) and continues as the masked run goes on (float64); the CPU
    step's checkpoints hold the same keys, shapes and dtypes, contiguous."""
    params, data = _tiny_world(tmp_path)
    masked, sampler = _engine(params, data, [0], "loop", 3)
    resumed = RunState.resume(params, [masked.checkpoint(0)], 3, "cpu", "loop", torch.float64)
    resumed.use_channels_last(True)
    assert resumed.committee.convs[1].weight.is_contiguous(memory_format=torch.channels_last)
    masked_step, gathered_step = _step(params), _step(params, "gathered")
    for _ in range(4):
        masked_step(masked, data, sampler)
        gathered_step(resumed, data, sampler)
    a, b = _leaves(masked.checkpoint(0)), _leaves(resumed.checkpoint(0))
    assert a.keys() == b.keys() and a["iteration"] == b["iteration"] == 7
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert b[k].is_contiguous() and b[k].dtype == v.dtype, k
            torch.testing.assert_close(b[k], v, rtol=1e-10, atol=1e-10, msg=k)


def test_bf16_on_the_cpu_keeps_fp32_weights_and_adam_state(tmp_path):
    """train.precision: bf16 on the CPU: the step runs under bf16 autocast (the weights end up near
    an fp32 run's, not equal to them), the weights and Adam moments stay float32, meta.json says bf16."""
    params = small_params(make_prepared(tmp_path / "prep"), iterations=3, precision="bf16")
    params["aii"]["enabled"] = False
    run(params, 0, tmp_path / "r", "cpu", progress=False)
    run({**params, "train": {**params["train"], "precision": "fp32"}}, 0, tmp_path / "fp32", "cpu", progress=False)
    low, exact = _tensors(tmp_path / "r"), _tensors(tmp_path / "fp32")
    assert not all(torch.equal(low[k], exact[k]) for k in low)
    for k in low:       # 3 Adam steps of lr 1e-3 move a weight by <= ~3e-3 either way
        torch.testing.assert_close(low[k], exact[k], rtol=0, atol=1e-2, msg=k)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    tensors = _leaves({k: ck[k] for k in ("committee", "discriminator", "expert_optimizer")})
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if k.endswith("weight"))
    assert ck["expert_optimizer"]["exp_avg"][0].dtype == torch.float32
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["precision"] == "bf16"
    assert json.loads((tmp_path / "fp32" / "meta.json").read_text())["precision"] == "fp32"


@pytest.mark.parametrize("d_update,per_iteration", [("joint", 1), ("fakes_then_real", 2)])
def test_discriminator_steps_per_iteration(tmp_path, d_update, per_iteration):
    params, data = _tiny_world(tmp_path, d_update=d_update)
    st, _ = _engine(params, data, [0, 1], "vectorized", 3)
    assert st.disc_opt.step_count.tolist() == [3 * per_iteration] * 2


# ---------------------------------------------------------------- compilation

def test_whole_iteration_compiles_without_graph_breaks_and_equals_eager(tmp_path):
    """torch.compile(fullgraph=True) traces the whole iteration (sampling, forwards, both backwards,
    both Adam steps, history) as ONE graph; compiled (inductor) equals eager over iterations in which
    some experts win nothing."""
    import torch._dynamo

    params, data = _tiny_world(tmp_path)
    step = _step(params)
    eager, sampler = _engine(params, data, [0, 1], "vectorized", 0)
    compiled = copy.deepcopy(eager)
    torch._dynamo.config.trace_autograd_ops = True
    explained = torch._dynamo.explain(partial(step, copy.deepcopy(eager), data, sampler))()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    run_eager = Stepper(partial(step, eager, data, sampler), "eager", "cpu")
    run_compiled = Stepper(partial(step, compiled, data, sampler), "compiled", "cpu")
    for _ in range(4):
        run_eager()
        run_compiled()
    assert int(compiled.iteration) == 4
    assert (eager.expert_opt.step_count < 4).any()                  # some expert did not win every time
    torch.testing.assert_close(compiled.expert_opt.step_count, eager.expert_opt.step_count, rtol=0, atol=0)
    for a, b in zip([*eager.committee.parameters(), *eager.discs.parameters(), eager.history.wins],
                    [*compiled.committee.parameters(), *compiled.discs.parameters(), compiled.history.wins]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- batched seeds = separate runs

def test_batched_seeds_equal_separate_runs_float64(tmp_path):
    """`licm train` of 3 seeds in one network (AII, iterations, evaluations, checkpoints) equals 3
    separate runs, in float64, to ~1e-10; histories and evaluations identical."""
    params = small_params(make_prepared(tmp_path / "prep"), implementation="vectorized", iterations=5)
    seeds = [0, 1, 2]
    batched = [RunDir(tmp_path / f"b{s}") for s in seeds]
    quiet = Progress("t", quiet=True)
    m = train(params, seeds, batched, "cpu", quiet, dtype=torch.float64)
    for s, d in zip(seeds, batched):
        alone = RunDir(tmp_path / f"a{s}")
        assert train(params, [s], [alone], "cpu", quiet, dtype=torch.float64)[0]["win_matrix"] == m[s]["win_matrix"]
        a, b = d.load_checkpoint(), alone.load_checkpoint()
        for k in a["committee"]:
            torch.testing.assert_close(a["committee"][k], b["committee"][k], rtol=1e-10, atol=1e-10)
        for k in a["discriminator"]:
            torch.testing.assert_close(a["discriminator"][k], b["discriminator"][k], rtol=1e-10, atol=1e-10)
        assert torch.equal(a["aii_iterations"], b["aii_iterations"])
        assert torch.equal(a["expert_optimizer"]["step"], b["expert_optimizer"]["step"])
        assert np.array_equal(d.evaluation()["winner"], alone.evaluation()["winner"])
        assert (d.path / "history.csv").read_text() == (alone.path / "history.csv").read_text()
        assert json.loads((d.path / "meta.json").read_text())["batch"] == seeds


# ---------------------------------------------------------------- run folders

def _tensors(run_dir: Path) -> dict:
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return {**{f"c.{k}": v for k, v in ck["committee"].items()}, **{f"d.{k}": v for k, v in ck["discriminator"].items()}}


def test_run_folder_determinism_and_load_run(tmp_path):
    params = small_params(make_prepared(tmp_path / "prep"))
    m1 = run(params, 3, tmp_path / "a", "cpu", progress=False)
    run(params, 3, tmp_path / "b", "cpu", progress=False)
    a, b = _tensors(tmp_path / "a"), _tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "history.csv").read_bytes() == (tmp_path / "b" / "history.csv").read_bytes()
    for f in ("params.json", "meta.json", "history.csv", "metrics.json", "checkpoint.pt", "evaluation/digits.npz"):
        assert (tmp_path / "a" / f).is_file()
    import pandas as pd
    h = pd.read_csv(tmp_path / "a" / "history.csv")
    assert list(h.columns) == ["iteration", "expert", "mechanism", "score_mean", "wins"]
    assert len(h) == 6 * 3 * 3 and h.groupby("iteration").wins.sum().eq(8).all()
    assert m1["iterations"] == 6 and len(m1["win_matrix"]) == 3 and len(m1["aii_iterations"]) == 3
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["implementation"] == "loop" and meta["seed"] == 3 and meta["batch"] == [3] and "finished" in meta
    # a finished run returns at once without touching anything
    stamp = (tmp_path / "a" / "checkpoint.pt").stat().st_mtime_ns
    assert run(params, 3, tmp_path / "a", "cpu", progress=False) == m1
    assert (tmp_path / "a" / "checkpoint.pt").stat().st_mtime_ns == stamp
    experts, disc, cfg = licm.load_run(tmp_path / "a")
    x = torch.rand(2, 1, 32, 32)
    assert experts(x).shape == (2, 3, 1, 32, 32) and not experts.training
    s = disc(x)
    assert s.shape == (2,) and bool(((s > 0) & (s < 1)).all()) and cfg["model"]["experts"] == 3
    # a different seed gives different weights
    run(params, 4, tmp_path / "c", "cpu", progress=False)
    c = _tensors(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_corrupt_checkpoint_names_the_file_and_overwrites_nothing(tmp_path):
    params = small_params(make_prepared(tmp_path / "prep"), iterations=3)
    run(params, 0, tmp_path / "r", "cpu", progress=False)
    (tmp_path / "r" / "metrics.json").unlink()
    ck = tmp_path / "r" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])                               # truncated, as by a full disk
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    params["train"]["iterations"] = 6
    with pytest.raises(LicmError, match=r"checkpoint.pt: unreadable checkpoint, truncated or corrupt .*delete it"):
        run(params, 0, tmp_path / "r", "cpu", progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before
    with pytest.raises(LicmError, match="checkpoint.pt: unreadable"):
        licm.load_run(tmp_path / "r")


def test_other_params_refused_or_restarted(tmp_path):
    params = small_params(make_prepared(tmp_path / "prep"), iterations=3)
    run(params, 0, tmp_path / "r", "cpu", progress=False)
    changed = copy.deepcopy(params)
    changed["train"]["lr_expert"] = 0.01
    with pytest.raises(LicmError, match="holds a run with other params"):
        run(changed, 0, tmp_path / "r", "cpu", progress=False)
    quiet = Progress("t", quiet=True)
    m = train(changed, [0], [RunDir(tmp_path / "r")], "cpu", quiet, restart_if_changed=True)[0]
    assert m["iterations"] == 3 and RunDir(tmp_path / "r").params()["train"]["lr_expert"] == 0.01
    # more iterations (or another device, layout, precision): the same run continues
    more = copy.deepcopy(changed)
    more["train"].update(iterations=5, implementation="vectorized")
    assert train(more, [0], [RunDir(tmp_path / "r")], "cpu", quiet)[0]["eval_iterations"] == [0, 2, 3, 4, 5]


def test_nan_stops_with_error_and_keeps_checkpoint(tmp_path):
    prep = make_prepared(tmp_path / "prep")
    path = prep / "paper" / "train_transformed.npz"
    z = dict(np.load(path))
    z["images"][:] = np.nan
    np.savez(path, **z)
    params = small_params(prep, checkpoint_every=100)
    params["aii"]["enabled"] = False
    with pytest.raises(LicmError, match=r"seed 0: non-finite loss \(NaN/Inf\) at iteration 1;.*checkpoint.*iteration 0"):
        run(params, 0, tmp_path / "n", "cpu", progress=False)
    assert torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=True)["iteration"] == 0
    assert not (tmp_path / "n" / "metrics.json").exists()


def _cli(pfile: Path, runs: Path, *args, quiet: bool = True) -> list[str]:
    return [sys.executable, "-m", "licm.cli", "--params", str(pfile), "train", "--experiment", "main",
            "--runs", str(runs), *(["--no-progress"] if quiet else []), *args]


def test_kill_batched_job_and_resume_matches_uninterrupted(tmp_path):
    """SIGKILL of a 2-seed job mid-run, then the same command: both runs end bit-identical to an
    uninterrupted job (checkpoints, history, evaluations, metrics)."""
    params = small_params(make_prepared(tmp_path / "prep"), iterations=120, checkpoint_every=10, batch_size=16,
                          eval_every=7)
    params["model"]["expert_width"] = 8
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(pfile, tmp_path / "full", "--seeds", "0-1"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(pfile, killed, "--seeds", "0-1"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    first = killed / "main" / "seed1" / "checkpoint.pt"
    while not (first.exists() and torch.load(first, weights_only=True)["iteration"] > 0) \
            and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "main" / "seed0" / "metrics.json").exists(), "run finished before it could be killed"
    at = torch.load(first, weights_only=True)["iteration"]
    assert 0 < at < 120
    done = subprocess.run(_cli(pfile, killed, "--seeds", "0-1"), check=True, env=env, capture_output=True, text=True)
    assert "resuming" in done.stderr
    for seed in ("seed0", "seed1"):
        a, b = tmp_path / "full" / "main" / seed, killed / "main" / seed
        ta, tb = _tensors(a), _tensors(b)
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
        assert (a / "history.csv").read_bytes() == (b / "history.csv").read_bytes()
        for f in sorted((a / "evaluation").iterdir()):
            assert f.read_bytes() == (b / "evaluation" / f.name).read_bytes(), f.name
        assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def test_evaluations_match_metrics_and_leave_training_alone(tmp_path):
    """The run's evaluations (0 = after AII, each eval_every, the end); the last is metrics.json's win
    matrix, recomputed here from the checkpoint; evaluating often changes nothing."""
    prep = make_prepared(tmp_path / "prep")
    params = small_params(prep, iterations=7, eval_every=3, eval_examples=40)
    metrics = run(params, 1, tmp_path / "often", "cpu", progress=False)
    ev = RunDir(tmp_path / "often").evaluation()
    assert ev["iterations"].tolist() == [0, 3, 6, 7] == metrics["eval_iterations"]
    assert ev["winner"].shape == (4, 40) and ev["outputs"].shape == (4, 40, 32, 32) and ev["outputs"].dtype == np.uint8
    test = np.load(prep / "paper" / "test.npz")
    np.testing.assert_array_equal(ev["mechanism"], test["mechanism"][:40])
    np.testing.assert_array_equal(ev["label"], test["label"][:40])
    experts, disc, _ = licm.load_run(tmp_path / "often")
    x = torch.from_numpy(test["images"][:40]).unsqueeze(1)
    with torch.no_grad():
        out = experts(x)
        scores = disc.logits(out.flatten(0, 1)).view(40, -1)
    win = scores.argmax(1)
    np.testing.assert_array_equal(ev["winner"][-1], win.numpy())
    np.testing.assert_allclose(ev["outputs"][-1] / 255, out[torch.arange(40), win, 0].numpy(), atol=0.5 / 255 + 1e-6)
    expected = np.zeros((3, 3))
    for m, w in zip(test["mechanism"][:40], win.numpy()):
        expected[m, w] += 1
    np.testing.assert_allclose(metrics["win_matrix"], expected / expected.sum(1, keepdims=True))
    assert metrics["test_examples"] == 40
    rare = run(small_params(prep, iterations=7, eval_every=100, eval_examples=40), 1, tmp_path / "rare", "cpu",
               progress=False)
    a, b = _tensors(tmp_path / "often"), _tensors(tmp_path / "rare")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rare["eval_iterations"] == [0, 7] and rare["win_matrix"] == metrics["win_matrix"]


def test_progress_lines_reach_the_terminal_with_a_log_file(tmp_path):
    """With --log, every message goes to the file and the terminal still gets progress (rate, ETA)."""
    params = small_params(make_prepared(tmp_path / "prep"), iterations=4)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    log = tmp_path / "train.log"
    out = subprocess.run(_cli(pfile, tmp_path / "runs", "--seed", "0", "--log", str(log), quiet=False),
                         capture_output=True, text=True, check=True)
    assert "iteration 4/4 (100%)" in out.stderr and "it/s, ETA" in out.stderr
    assert "identity initialisation steps per expert" in log.read_text() and "fully specialized" in log.read_text()
