"""Competitive training: masked Adam, loop == vectorized, run folders, determinism, resume, NaN."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import licm
from licm import config, evaluate
from licm.config import LicmError
from licm.models import Discriminator, GroupedCommittee, LoopCommittee, loop_to_grouped, grouped_to_loop
from licm.train import (LoopAdam, MaskedAdam, StepConfig, approximate_identity, masked_adam_step, run,
                        train_step)

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


# ---------------------------------------------------------------- optimizer

def test_masked_adam_matches_torch_adam_and_skips_unmasked():
    torch.manual_seed(0)
    loop = LoopCommittee(3, 2, 1).double()
    grouped = loop_to_grouped(loop, GroupedCommittee(3, 2, 1).double())
    lopt, gopt = LoopAdam(loop, 1e-2, (0.9, 0.999)), MaskedAdam(grouped, 1e-2, (0.9, 0.999))
    before = copy.deepcopy(grouped.state_dict())
    for mask in ([True, False, True], [True, False, False], [False, False, True]):
        g_loop = [torch.randn_like(p) for p in loop.parameters()]
        g_grouped = list(loop_to_grouped(_as_model(loop, g_loop), GroupedCommittee(3, 2, 1).double()).parameters())
        m = torch.tensor(mask)
        lopt.step(g_loop, m)
        gopt.step(g_grouped, m)
    back = grouped_to_loop(grouped, LoopCommittee(3, 2, 1).double())
    for p, q in zip(loop.parameters(), back.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    # expert 1 never won: its weights and step count never moved
    assert gopt.state["step"].tolist() == [2, 0, 2]
    assert all(len(o.state) == 0 for o in lopt.optims[1:2])
    after = grouped.state_dict()
    for k, v in before.items():
        if v.dim():
            assert torch.equal(v.chunk(3)[1], after[k].chunk(3)[1]), k


def _as_model(loop, tensors):
    model = LoopCommittee(**loop.config).double()
    with torch.no_grad():
        for p, t in zip(model.parameters(), tensors):
            p.copy_(t)
    return model


# ---------------------------------------------------------------- loop == vectorized

def _twin_setup(n_experts=4, batch=3, seed=0):
    torch.manual_seed(seed)
    loop = LoopCommittee(n_experts, 4, 1).double()
    grouped = loop_to_grouped(loop, GroupedCommittee(n_experts, 4, 1).double())
    disc_a = Discriminator([4, 4, 4], [1, 1, 1], 16).double()
    disc_b = copy.deepcopy(disc_a)
    data_t = torch.rand(40, 1, 32, 32, dtype=torch.float64)
    data_r = torch.rand(40, 1, 32, 32, dtype=torch.float64)
    return loop, grouped, disc_a, disc_b, data_t, data_r


@pytest.mark.parametrize("variant", [
    {},
    {"bn_mode_scoring": "eval", "label_smoothing": 0.1},
    {"loss": "wasserstein"},
    {"expert_update": "per_example"},
])
def test_vectorized_matches_loop_float64(variant):
    loop, grouped, disc_a, disc_b, data_t, data_r = _twin_setup()
    cfg = StepConfig(**variant)
    # AII on both, same minibatches
    la, ga = LoopAdam(loop, 1e-3, (0.9, 0.999)), MaskedAdam(grouped, 1e-3, (0.9, 0.999))
    s1 = approximate_identity(loop, la, data_t, 4, 0.0, 3, torch.Generator().manual_seed(1))
    s2 = approximate_identity(grouped, ga, data_t, 4, 0.0, 3, torch.Generator().manual_seed(1))
    assert s1.tolist() == s2.tolist() == [4, 4, 4, 4]
    la, ga = LoopAdam(loop, 1e-2, (0.9, 0.999)), MaskedAdam(grouped, 1e-2, (0.9, 0.999))
    da = torch.optim.Adam(disc_a.parameters(), lr=1e-3)
    db = torch.optim.Adam(disc_b.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(2)
    losers = 0
    for _ in range(6):
        it = torch.randint(40, (3,), generator=gen)
        ir = torch.randint(40, (3,), generator=gen)
        ra = train_step(loop, disc_a, la, da, data_r[ir], data_t[it], cfg)
        rb = train_step(grouped, disc_b, ga, db, data_r[ir], data_t[it], cfg)
        assert torch.equal(ra["won"], rb["won"])
        losers += int((ra["won"].sum(0) == 0).sum())
        torch.testing.assert_close(ra["scores"], rb["scores"], rtol=1e-8, atol=1e-10)
    assert losers > 0                      # 4 experts, 3 digits: some expert wins nothing every time
    back = grouped_to_loop(grouped, LoopCommittee(4, 4, 1).double())
    for (k, p), q in zip(loop.state_dict().items(), back.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9, msg=k)
    for p, q in zip(disc_a.parameters(), disc_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)
    steps = [int(o.state[o.param_groups[0]["params"][0]]["step"]) if o.state else 0 for o in la.optims]
    assert steps == ga.state["step"].long().tolist()


def test_losing_expert_untouched_and_detached_scores_freeze_experts():
    loop, _, disc, _, data_t, data_r = _twin_setup(n_experts=2, batch=2)
    # rig expert 1: output zeros (last conv weights/bias very negative -> sigmoid ~ 0) and make D
    # prefer expert 0's outputs by giving it a win on every digit.
    with torch.no_grad():
        last = loop.experts[1].net[-2]
        last.weight.zero_()
        last.bias.fill_(-50.0)
    opt = LoopAdam(loop, 1e-2, (0.9, 0.999))
    dopt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    before = copy.deepcopy(loop.experts[1].state_dict())
    res = train_step(loop, disc, opt, dopt, data_r[:4], data_t[:4], StepConfig())
    if res["won"][:, 1].sum() == 0:
        for k, v in loop.experts[1].state_dict().items():
            if "running" not in k and "num_batches" not in k:
                assert torch.equal(v, before[k]), k
        assert len(opt.optims[1].state) == 0
    frozen = copy.deepcopy(loop.state_dict())
    train_step(loop, disc, opt, dopt, data_r[:4], data_t[:4], StepConfig(detach_expert_scores=True))
    for k, v in loop.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, frozen[k]), k


def test_wasserstein_clips_critic():
    loop, _, disc, _, data_t, data_r = _twin_setup(n_experts=2)
    dopt = torch.optim.Adam(disc.parameters(), lr=1e-1)
    train_step(loop, disc, LoopAdam(loop, 1e-3, (0.9, 0.999)), dopt, data_r[:4], data_t[:4],
               StepConfig(loss="wasserstein", wgan_clip=0.01))
    assert max(float(p.detach().abs().max()) for p in disc.parameters()) <= 0.01


# ---------------------------------------------------------------- evaluation helpers

def test_specialization_definitions():
    m = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.0, 0.4]])
    assert evaluate.specialization(m) == {"distinct_winners": 1, "fully_specialized": False}
    assert evaluate.specialization(np.eye(3)) == {"distinct_winners": 3, "fully_specialized": True}


def test_win_matrix_rows_are_proportions():
    torch.manual_seed(0)
    committee, disc = LoopCommittee(3, 4, 1), Discriminator([4, 4, 4], [1, 1, 1], 16)
    images, mech = np.random.rand(20, 32, 32).astype(np.float32), np.arange(20) % 2
    m = evaluate.win_matrix(committee, disc, images, mech, 3, batch_size=7)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m[:2].sum(1), 1.0)
    assert m[2].sum() == 0


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
    for f in ("params.json", "meta.json", "history.csv", "metrics.json", "checkpoint.pt"):
        assert (tmp_path / "a" / f).is_file()
    import pandas as pd
    h = pd.read_csv(tmp_path / "a" / "history.csv")
    assert list(h.columns) == ["iteration", "expert", "mechanism", "score_mean", "wins"]
    assert len(h) == 6 * 3 * 3 and h.groupby("iteration").wins.sum().eq(8).all()
    assert m1["iterations"] == 6 and len(m1["win_matrix"]) == 3 and len(m1["aii_iterations"]) == 3
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["implementation"] == "loop" and meta["seed"] == 3 and "finished" in meta
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


def test_vectorized_run_and_load_run(tmp_path):
    params = small_params(make_prepared(tmp_path / "prep"), implementation="vectorized",
                          carry_aii_optimizer=True, canonical_examples=5, eval_examples=10)
    metrics = run(params, 0, tmp_path / "v", "cpu", progress=False)
    assert metrics["test_examples"] == 10 and metrics["implementation"] == "vectorized"
    experts, _, _ = licm.load_run(tmp_path / "v")
    assert isinstance(experts, LoopCommittee) and experts(torch.rand(1, 1, 32, 32)).shape == (1, 3, 1, 32, 32)


def test_nan_stops_with_error_and_keeps_checkpoint(tmp_path):
    prep = make_prepared(tmp_path / "prep")
    path = prep / "paper" / "train_transformed.npz"
    z = dict(np.load(path))
    z["images"][:] = np.nan
    np.savez(path, **z)
    params = small_params(prep, checkpoint_every=100)
    params["aii"]["enabled"] = False
    with pytest.raises(LicmError, match=r"iteration 1;.*checkpoint.*iteration 0"):
        run(params, 0, tmp_path / "n", "cpu", progress=False)
    assert torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=True)["iteration"] == 0
    assert not (tmp_path / "n" / "metrics.json").exists()


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    params = small_params(make_prepared(tmp_path / "prep"), iterations=120, checkpoint_every=10, batch_size=16,
                          eval_every=7)
    params["model"]["expert_width"] = 8
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out):
        return [sys.executable, "-m", "licm.cli", "--params", str(pfile), "train", "--experiment", "main",
                "--seed", "0", "--out", str(out), "--no-progress"]

    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "run finished before it could be killed"
    at = torch.load(killed / "checkpoint.pt", weights_only=True)["iteration"]
    assert at < 120
    done = subprocess.run(cmd(killed), check=True, env=env, capture_output=True, text=True)
    assert "resuming" in done.stderr
    a, b = _tensors(tmp_path / "full"), _tensors(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "history.csv").read_bytes() == (killed / "history.csv").read_bytes()
    assert (tmp_path / "full" / "evaluation.npz").read_bytes() == (killed / "evaluation.npz").read_bytes()
    assert json.loads((tmp_path / "full" / "metrics.json").read_text()) == json.loads((killed / "metrics.json").read_text())


def test_evaluation_file_matches_metrics_and_leaves_training_alone(tmp_path):
    """evaluation.npz holds every evaluation (0 = after AII, each eval_every, the end); its last row is
    metrics.json's win matrix, recomputed here from the checkpoint; evaluating often changes nothing."""
    prep = make_prepared(tmp_path / "prep")
    params = small_params(prep, iterations=7, eval_every=3, eval_examples=40)
    metrics = run(params, 1, tmp_path / "often", "cpu", progress=False)
    with np.load(tmp_path / "often" / "evaluation.npz") as z:
        ev = {k: z[k] for k in z.files}
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
