"""Omniglot generalization (LICM §5.3, Fig. 7, 8) against a stand-in committee of known operations.

The stand-in experts are exact operations (identity, inversion, a down-right shift, a
threshold denoiser) with the committee's call signature, so every restoration number has
an expectation computed independently of the code under test.
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_params
from licm import mechanisms


class Op(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Zero-filled shift written independently of licm.mechanisms.shift."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


class StandIn(nn.Module):
    """experts(x[B,1,H,W]) -> [B,N',1,H,W]: 0 identity, 1 inversion, 2 shift down-right by 4, 3 threshold at 0.5."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))   # gives the module a device
        self.ops = nn.ModuleList([Op(lambda x: x), Op(lambda x: 1 - x), Op(lambda x: _shift(x, 4, 4)),
                                  Op(lambda x: (x > 0.5).float())])
        self.n_experts = len(self.ops)

    def forward(self, x):
        return torch.stack([op(x) for op in self.ops], dim=1)


@pytest.fixture(scope="module")
def params(tmp_path_factory, mirror):
    from licm import config

    folder = tmp_path_factory.mktemp("omni")
    (folder / "raw" / "omniglot").mkdir(parents=True)
    shutil.copyfile(mirror / "omniglot" / "images_background_small1.zip",
                    folder / "raw" / "omniglot" / "images_background_small1.zip")
    p = config.load(write_params(folder, profile="smoke"))
    p["_folder"] = folder
    return p


@pytest.fixture(scope="module")
def letters(params):
    from licm import omniglot

    return omniglot.load_letters(params, 6, seed=1)


def test_letters_read_from_the_zip(params, letters):
    from licm import omniglot

    assert letters.shape == (6, 46, 46) and letters.dtype == np.float32
    assert letters.min() >= 0.0 and letters.max() <= 1.0
    # White ink on black: the border is background (0), the ink reaches near 1, most pixels are dark.
    assert np.all(letters[:, 0, :] < 0.05) and np.all(letters[:, :, -1] < 0.05)
    assert letters.max(axis=(1, 2)).min() > 0.8
    assert 0.02 < letters.mean() < 0.35
    assert np.array_equal(omniglot.load_letters(params, 6, seed=1), letters)      # seeded
    assert not np.array_equal(omniglot.load_letters(params, 6, seed=2), letters)
    # Independent decode of one member: 105x105 black on white.
    from PIL import Image
    with zipfile.ZipFile(omniglot.archive_path(params)) as z:
        name = next(n for n in z.namelist() if n.endswith(".png"))
        with z.open(name) as f:
            im = np.asarray(Image.open(f).convert("L"))
    assert im.shape == (105, 105) and np.median(im) == 255


def test_transform_all_uses_the_registry(params, letters):
    from licm import omniglot

    names = ["invert", "translate_down", "noise"]
    out = omniglot.transform_all(letters, names, params, np.random.default_rng(0))
    assert out.shape == (3, *letters.shape)
    assert np.allclose(out[0], 1 - letters)
    assert np.array_equal(out[1], mechanisms.shift(letters, 4, 0))
    assert np.all((out[2] >= 0) & (out[2] <= 1)) and not np.allclose(out[2], letters)


def _mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def test_restoration_table_against_known_experts(params, letters):
    from licm import omniglot

    names = ["invert", "translate_up_left", "translate_down", "noise"]
    assignment = [1, 2, 0, 3]
    rows = omniglot.restoration_table(StandIn(), letters, names, params, np.random.default_rng(5), assignment)
    by = {r["mechanism"]: r for r in rows}
    assert [r["expert"] for r in rows] == assignment
    # The inverting expert restores an inverted letter (up to float round-off).
    assert by["invert"]["mse_restored"] < 1e-12
    assert by["invert"]["mse_transformed"] == pytest.approx(_mse(1 - letters, letters))
    assert by["invert"]["restored"] and by["invert"]["best_expert"] == 1
    # Shifting back down-right loses only what left the frame.
    back = _shift(_shift(torch.from_numpy(letters), -4, -4), 4, 4).numpy()
    assert by["translate_up_left"]["mse_restored"] == pytest.approx(_mse(back, letters), rel=1e-9)
    assert by["translate_up_left"]["mse_restored"] < by["translate_up_left"]["mse_transformed"]
    # The identity leaves the input as it is: its MSE is the input's.
    assert by["translate_down"]["mse_restored"] == pytest.approx(by["translate_down"]["mse_transformed"], rel=1e-9)
    assert not by["translate_down"]["restored"]
    # Noise, undone by thresholding: the expectation recomputed from the same seeded draws.
    noisy = omniglot.transform_all(letters, names, params, np.random.default_rng(5))[3]
    assert by["noise"]["mse_transformed"] == pytest.approx(_mse(noisy, letters), rel=1e-9)
    assert by["noise"]["mse_restored"] == pytest.approx(_mse((noisy > 0.5).astype(np.float32), letters), rel=1e-9)
    with pytest.raises(ValueError):
        omniglot.restoration_table(StandIn(), letters, names, params, np.random.default_rng(5), [0])


def test_combined_restoration_fig8(params, letters, tmp_path):
    from licm import omniglot

    names = params["domains"]["paper"]
    # invert -> expert 1, translate_up_left -> expert 2 (down-right), noise -> expert 3 (threshold); others identity.
    assignment = [0] * len(names)
    assignment[names.index("invert")] = 1
    assignment[names.index("translate_up_left")] = 2
    assignment[names.index("noise")] = 3
    res = omniglot.combined_restoration(StandIn(), letters, names, params, np.random.default_rng(7), assignment)
    assert res["experts"] == [3, 1, 2]
    assert len(res["images"]) == 5 and np.array_equal(res["images"][-1], letters)
    # Independent recomputation of every step.
    rng = np.random.default_rng(7)
    x = np.clip(letters + rng.normal(0, np.sqrt(params["mechanisms"]["noise_variance"]), letters.shape).astype(np.float32), 0, 1)
    x = 1 - mechanisms.shift(x, -4, -4)
    steps = [x]
    steps.append((x > 0.5).astype(np.float32))
    steps.append(1 - steps[-1])
    steps.append(_shift(torch.from_numpy(steps[-1]), 4, 4).numpy())
    assert res["mse"] == pytest.approx([_mse(s, letters) for s in steps], rel=1e-6)
    assert res["mse"][-1] < res["mse"][0]
    path = omniglot.fig8_grid(res, params, "test", tmp_path / "licm-fig8.png")
    assert path.stat().st_size > 1000


def test_fig7_grid_draws(params, letters, tmp_path):
    from licm import omniglot

    names = ["invert", "translate_up_left", "noise"]
    path = omniglot.fig7_grid(StandIn(), letters, names, params, np.random.default_rng(0), [1, 2, 3], "test",
                              tmp_path / "licm-fig7.png")
    from PIL import Image
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 200


def test_figures_from_a_run_folder(params, tmp_path):
    """licm_fig7/licm_fig8 through licm.load_run on a freshly initialized (untrained) committee."""
    from licm import omniglot
    from licm.rundir import RunDir
    from licm.state import RunState

    p = {k: v for k, v in params.items() if k != "_folder"}
    p["model"] = {**p["model"], "expert_width": 4}     # small experts: the plumbing is under test, not the nets
    names = p["domains"][p["train"]["domain"]]
    run = tmp_path / "runs" / "main" / "seed0"
    run.mkdir(parents=True)
    (run / "params.json").write_text(json.dumps(p))
    RunDir(run).save_checkpoint({**RunState.fresh(p, [0], len(names), "cpu", "loop").checkpoint(0), "history": {}})
    win = np.eye(len(names), p["model"]["experts"])
    (run / "metrics.json").write_text(json.dumps({"mechanisms": names, "win_matrix": win.tolist()}))
    assert omniglot.run_assignment(run, names) == list(range(len(names)))
    p7 = omniglot.licm_fig7(run, p, tmp_path / "fig" / "licm-fig7.png")
    p8 = omniglot.licm_fig8(run, p, tmp_path / "fig" / "licm-fig8.png")
    assert p7.stat().st_size > 1000 and p8.stat().st_size > 1000
    result = omniglot.restoration(run, p)
    assert len(result["table"]) == len(names) and len(result["combined"]["mse"]) == 4


def test_pick_run_prefers_fully_specialized_then_most_distinct(tmp_path):
    from licm.config import LicmError
    from licm import config
    from licm.omniglot import pick_run

    params = config.load(Path(__file__).resolve().parents[1] / "params.yaml", profile="smoke")

    exp = tmp_path / "main"
    exp.mkdir()
    (exp / "experiment.json").write_text(json.dumps({"selected": True, "seeds": [0, 1, 2, 3], "profile": "paper"}))
    for seed, (d, full) in {0: (7, False), 1: (9, False), 2: (9, False), 3: (10, True)}.items():
        (exp / f"seed{seed}").mkdir()
        (exp / f"seed{seed}" / "metrics.json").write_text(
            json.dumps({"distinct_winners": d, "fully_specialized": full, "mechanisms": ["m"] * 10,
                        "iterations": 2000}))
    assert pick_run(tmp_path, "main", params)[0] == exp / "seed3"
    (exp / "seed3" / "metrics.json").unlink()          # unfinished: most distinct, first on ties
    run, why = pick_run(tmp_path, "main", params)
    assert run == exp / "seed1" and "9/10" in why
    (exp / "experiment.json").write_text(json.dumps({"selected": False, "seeds": [], "profile": "smoke"}))
    with pytest.raises(LicmError, match="no finished run"):
        pick_run(tmp_path, "main", params)


def test_experiment_not_run_gives_placeholders(tmp_path):
    from licm import cli

    exp = tmp_path / "runs" / "main"
    exp.mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"selected": False, "seeds": [], "profile": "smoke"}))
    rc = cli.main(["--profile", "smoke", "omniglot", "--experiment", "main", "--runs", str(tmp_path / "runs"),
                   "--figures", str(tmp_path / "fig"), "--out", str(tmp_path / "omni")])
    assert rc == 0
    for f in ("licm-fig7.png", "licm-fig8.png"):
        assert (tmp_path / "fig" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "omni" / "restoration.json").read_text())["not_run"] is True
