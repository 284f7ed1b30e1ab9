"""The package's shape: its import graph flows one way, loading runs needs no drawing library, each
path of results/ and the checkpoint's format have one owner, and a run folder is finished last."""
from __future__ import annotations

import graphlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from licm import checkpoint, paths, pipeline, stages
from licm.config import LicmError
from licm.rundir import RunDir

SRC = Path(__file__).resolve().parents[1] / "src" / "licm"
# Layers, lowest first: a module imports only modules of its own or a lower layer.
LAYERS = (
    {"mechanisms", "interrupts", "specialization", "paths", "stats", "commands", "models", "spectral"},
    {"config", "step", "reference", "bsv_toys"},
    {"data", "state", "stages"},
    {"checkpoint", "classifier", "plot"},
    {"rundir"},
    {"runs", "__init__", "train", "evaluate", "pipeline", "records", "beyond", "independence"},
    {"fidelity", "omniglot", "publish", "dvcyaml", "composition", "genericity"},
    {"summary", "figures", "report"},
    {"cli"},
    {"__main__"},
)


def test_import_graph_is_acyclic_and_flows_one_way():
    graph = pipeline.import_graph(SRC)
    order = list(graphlib.TopologicalSorter({m: set(d) for m, d in graph.items()}).static_order())  # CycleError
    assert set(order) == set(graph)
    layer = {m: i for i, group in enumerate(LAYERS) for m in group}
    assert set(layer) == set(graph), f"modules without a layer: {sorted(set(graph) ^ set(layer))}"
    upward = [(m, d) for m, deps in graph.items() for d in deps if layer[d] > layer[m]]
    assert not upward, f"imports that run upward: {upward}"
    # nothing imports the dispatcher or the dvc.yaml generator (the workflow reads the stage table)
    assert not [m for m, deps in graph.items() if {"cli", "dvcyaml"} & deps and m != "__main__"]


def test_loading_runs_and_summarizing_import_neither_matplotlib_nor_torch():
    code = ("import sys, licm.runs, licm.summary, licm.fidelity, licm.pipeline, licm.stages; "
            "print(sorted({'matplotlib', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_summary_code_is_only_the_summary_stage():
    """A claim's sentence lives in summary.py: only `licm summarize` runs it."""
    users = [s.name for s in stages.STAGES if "src/licm/summary.py" in
             pipeline.code_deps(*dict.fromkeys(c.split()[0] for c in s.commands.values()), src=Path("src/licm"))]
    assert users == ["summarize"]


def test_one_path_function():
    assert paths.result("eval", experiment="main", seed=3) == "results/eval/main/seed3.json"
    assert paths.result("eval", experiment="main") == "results/eval/main/seed{seed}.json"   # a wildcard pattern
    assert paths.result("run", "/tmp/r", experiment="a", seed=0) == "/tmp/r/runs/a/seed0"
    assert paths.result("run", folder="/tmp/runs", experiment="a", seed=0) == "/tmp/runs/a/seed0"
    assert paths.result("evals", folder="/tmp/e") == "/tmp/e"
    assert str(RunDir.of("results/runs", "main", 2).path) == "results/runs/main/seed2"


def test_checkpoint_format_has_one_owner(tmp_path):
    """The format number is written by licm.checkpoint alone (stamped on save) and checked on load."""
    import torch

    owners = [p.name for p in SRC.glob("*.py") if re.search(r'"format"\s*:', p.read_text())]
    assert owners == ["checkpoint.py"], owners
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"iteration": 3})
    assert torch.load(path, weights_only=True) == {"iteration": 3, "format": checkpoint.FORMAT}
    torch.save({"iteration": 3, "format": checkpoint.FORMAT - 1}, path)
    with pytest.raises(LicmError, match="checkpoint format 1, this licm reads format 2"):
        checkpoint.load(path, tmp_path)


def test_run_folder_is_finished_last(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    with pytest.raises(LicmError, match="metrics.json is written last; missing params.json"):
        run.write_json("metrics.json", {})
    run.start({"x": 1}, {"seed": 0}, {"test_index": np.arange(2)})
    run.save_checkpoint({"iteration": 1})
    (run.path / "history.csv").write_text("iteration\n")
    run.write_json("metrics.json", {"iterations": 1})
    for write in (lambda: run.write_json("meta.json", {}), lambda: run.save_checkpoint({}),
                  lambda: run.append_evaluation(1, np.zeros(2), np.zeros((2, 1, 1)))):
        with pytest.raises(LicmError, match="a finished run is not written to"):
            write()
    assert json.loads((run.path / "metrics.json").read_text()) == {"iterations": 1}


def test_no_stale_lock():
    """dvc.lock is committed only with a run that gives it meaning, and then matches the committed code:
    a fresh clone's `dvc status` never reports modified code."""
    import hashlib

    import yaml

    repo = SRC.parents[1]
    if not subprocess.run(["git", "ls-files", "dvc.lock"], cwd=repo, capture_output=True, text=True).stdout:
        return
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    stale = [(name, dep["path"]) for name, stage in lock["stages"].items() for dep in stage.get("deps", [])
             if dep["path"].startswith(("src/", "workflow/", "Snakefile")) and
             hashlib.md5((repo / dep["path"]).read_bytes()).hexdigest() != dep.get("md5")]
    assert not stale, f"dvc.lock records other code: {stale[:5]} (regenerate it with `dvc commit -f`)"
