"""The CPU campaign (workflow/scripts/campaign.py) at smoke scale: a seed killed mid-training resumes
from its checkpoint, a deleted checkout is rebuilt, a published seed is never trained again, and the
published results equal an uninterrupted campaign's bit for bit (CPU runs are deterministic).

Each campaign gets its own copy of a smoke repository as its "work tree" (it publishes and commits
there) and its own campaign folder; the driver runs the real Snakemake in its own clone, with this
test session's environment (LICM_CAMPAIGN_BIN) and the clone's src/ first on PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from smoke_repo import BIN, REPO, build_smoke_repo, data_source, set_params, sh

# Three smoke campaigns, each with its own equivalence gate: minutes each on a loaded machine (the
# driver's own waits, 600 s for a checkpoint and 1500 s for a run, are the limits that should fire).
pytestmark = [pytest.mark.pipeline, pytest.mark.timeout(1800)]

DRIVER = REPO / "workflow" / "scripts" / "campaign.py"
ITERATIONS, EVERY = 60, 10


@pytest.fixture(scope="module")
def work(tmp_path_factory, request) -> Path:
    """A smoke repository whose main seed trains 60 iterations, checkpointing every 10 (room to kill it),
    restricted to the main experiment as the paper_main profile is (the campaign's report trains nothing)."""
    source = data_source(lambda: Path(request.getfixturevalue("prepared")["folder"]))
    repo = build_smoke_repo(tmp_path_factory.mktemp("campaign") / "repo", source)

    def longer_main_only(p: dict) -> None:
        p["profiles"]["smoke"]["train"].update(iterations=ITERATIONS, checkpoint_every=EVERY, eval_every=20)
        p["profiles"]["smoke"]["only_experiments"] = ["main"]

    set_params(repo, longer_main_only)
    sh("git commit -qam 'a longer smoke seed'", repo)
    return repo


class Campaign:
    """One campaign: its work tree (a copy of `work`) and its folder (LICM_CAMPAIGN_HOME)."""

    def __init__(self, work: Path, root: Path, mirror: Path):
        self.work, self.home = root / "work", root / "home"
        shutil.copytree(work, self.work, symlinks=True)
        self.env = {**os.environ, "LICM_CAMPAIGN_HOME": str(self.home), "LICM_CAMPAIGN_PROFILE": "smoke",
                    "LICM_CAMPAIGN_BIN": str(BIN), "LICM_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"}
        self.log = root / "driver.log"

    def start(self, report: bool = False) -> subprocess.Popen:
        """The driver in the background; without `report` it stops once the seed is published."""
        out = open(self.log, "a")
        return subprocess.Popen([sys.executable, str(DRIVER), "run", "--repo", str(self.work),
                                 *([] if report else ["--no-report"])],
                                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, timeout: int = 1500, report: bool = False) -> None:
        proc = self.start(report)
        assert proc.wait(timeout=timeout) == 0, self.log.read_text()[-4000:]

    @property
    def run_dir(self) -> Path:
        return self.home / "repo" / "results" / "runs" / "main" / "seed0"

    def checkpoint_iteration(self) -> int:
        try:
            return int(torch.load(self.run_dir / "checkpoint.pt", weights_only=True)["iteration"])
        except Exception:   # not there yet, or being written
            return -1

    def kill_mid_seed(self) -> int:
        """Start the driver, SIGKILL it and everything below it once the seed has checkpointed past
        iteration 0 and before it finishes (as when work stops); the checkpoint's iteration."""
        proc = self.start()
        deadline = time.time() + 600
        while time.time() < deadline:
            it = self.checkpoint_iteration()
            if 0 < it < ITERATIONS:
                tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
                for pid in tree:
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
                proc.wait()
                return it
            assert proc.poll() is None, f"the driver ended before a mid-seed checkpoint:\n{self.log.read_text()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no mid-seed checkpoint within 600 s:\n{self.log.read_text()[-4000:]}")

    @property
    def state(self) -> dict:
        return json.loads((self.home / "campaign.json").read_text())

    def published(self) -> Path:
        return self.work / self.state["publish_dir"]

    def results(self) -> dict:
        """What must not depend on interruptions: the published weights, metrics, winners and accuracies."""
        seed = self.published() / "runs" / "main" / "seed0"
        ck = torch.load(seed / "checkpoint.pt", weights_only=True)
        ev = json.loads((self.published() / "eval" / "main" / "seed0.json").read_text())
        for volatile in ("seconds", "run", "classifier"):
            ev.pop(volatile, None)
        winners = {p.name: p.read_bytes() for p in sorted((seed / "evaluation").glob("*.npz"))}
        return {"weights": {k: v for part in ("committee", "discriminator") for k, v in
                            {f"{part}.{n}": t for n, t in ck[part].items()}.items()},
                "metrics": json.loads((seed / "metrics.json").read_text()), "eval": ev, "evaluation": winners}


def assert_same(a: dict, b: dict) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k      # bit-identical
    assert a["metrics"] == b["metrics"]
    assert a["eval"] == b["eval"]
    assert a["evaluation"] == b["evaluation"]


@pytest.fixture(scope="module")
def uninterrupted(work, tmp_path_factory, mirror) -> Campaign:
    c = Campaign(work, tmp_path_factory.mktemp("uninterrupted"), mirror)
    c.run()
    return c


def test_uninterrupted_campaign_publishes_and_commits_the_seed(uninterrupted):
    c = uninterrupted
    seed = c.published() / "runs" / "main" / "seed0"
    assert (seed / "metrics.json").is_file() and (seed / "campaign.json").is_file()
    clf = c.published() / "classifier" / "classifier.pt"                 # published with the first seed
    assert clf.read_bytes() == (c.home / "repo" / "results" / "classifier" / "classifier.pt").read_bytes()
    log = sh("git log --format=%s -1", c.work).stdout
    assert "published: main seed 0" in log
    assert not sh(f"git status --porcelain -- {c.state['publish_dir']}", c.work).stdout.strip()   # committed
    entry = c.state["seeds"]["0"]
    head = sh("git rev-parse HEAD~1", c.work).stdout.strip()      # the commit before the publishing one
    assert entry["commit"] == head and [a["how"] for a in entry["attempts"]] == ["finished"]
    meta = json.loads((seed / "meta.json").read_text())
    assert meta["git_commit"] == head and meta["threads"] >= 1 and meta["cpu"]["model"]
    assert c.state["equivalence"][head]["passed"] is True
    import licm

    experts, disc, cfg = licm.load_run(seed)          # the weights-only checkpoint loads on a CPU
    assert experts(torch.zeros(2, 1, 32, 32)).shape == (2, cfg["model"]["experts"], 1, 32, 32)
    # `make campaign-status` says what the published seed learned, from its metrics.json
    metrics = json.loads((seed / "metrics.json").read_text())
    status = subprocess.run([sys.executable, str(DRIVER), "status", "--repo", str(c.work)], env=c.env,
                            capture_output=True, text=True, check=True).stdout
    word = "fully specialized" if metrics["fully_specialized"] else "not fully specialized"
    assert (f"seed 0: published at {head[:10]}, 1 attempt(s); {word}, {metrics['distinct_winners']}/"
            f"{len(metrics['mechanisms'])} mechanisms held by distinct experts") in status, status
    assert f"fully specialized so far: {int(metrics['fully_specialized'])} of 1 published" in status, status


def test_killed_mid_seed_resumes_and_equals_uninterrupted(work, uninterrupted, tmp_path_factory, mirror):
    c = Campaign(work, tmp_path_factory.mktemp("killed"), mirror)
    at = c.kill_mid_seed()
    assert "end" not in c.state["seeds"]["0"]["attempts"][-1]       # the killed attempt is still open
    c.run()
    attempts = c.state["seeds"]["0"]["attempts"]
    assert [a["how"].split()[0] for a in attempts] == ["interrupted", "finished"], attempts
    meta = json.loads((c.published() / "runs" / "main" / "seed0" / "meta.json").read_text())
    assert [r["iteration"] for r in meta["resumed"]] == [at]       # resumed from the checkpoint, not restarted
    assert_same(c.results(), uninterrupted.results())


def test_deleted_checkout_is_rebuilt_and_published_seeds_never_retrain(work, uninterrupted, tmp_path_factory,
                                                                      mirror):
    """...and the campaign's last step (the report and the whole snapshot) runs on a new machine from the
    published seeds alone."""
    c = Campaign(work, tmp_path_factory.mktemp("deleted"), mirror)
    c.kill_mid_seed()
    shutil.rmtree(c.home / "repo")                  # the checkout (and the unfinished seed in it) is gone
    c.run()
    assert_same(c.results(), uninterrupted.results())
    attempts = c.state["seeds"]["0"]["attempts"]
    published = (c.published() / "runs" / "main" / "seed0" / "checkpoint.pt").read_bytes()
    clf = (c.published() / "classifier" / "classifier.pt").read_bytes()
    shutil.rmtree(c.home / "repo")                  # again, now that the seed is published
    logged = len(c.log.read_text())
    c.run(report=True)
    log = c.log.read_text()[logged:]                # the classifier is restored, never trained again
    assert "classifier: classifier.pt restored from" in log and "localrule classifier:" not in log, log[-3000:]
    assert c.state["seeds"]["0"]["attempts"] == attempts             # not trained again...
    assert "seed 0: restored from" in c.log.read_text()             # ...but restored for the report
    assert (c.run_dir / "metrics.json").is_file()
    snap = c.published()
    assert (snap / "report" / "index.html").is_file() and (snap / "summary.json").is_file()
    drawn = (c.home / "repo" / "logs" / "figures_runs.log").read_text()
    assert "licm-fig4.png (drawn)" in drawn, drawn      # from the published history (history.csv.gz)
    assert (snap / "runs" / "main" / "seed0" / "checkpoint.pt").read_bytes() == published
    assert (snap / "classifier" / "classifier.pt").read_bytes() == clf
    index = json.loads((snap / "index.json").read_text())["campaign"]
    assert index["seeds"]["0"]["attempts"] == attempts and index["seeds"]["0"]["interruptions"] == 1
    assert index["completed"] == c.state["completed"]
    assert "published: the CPU campaign's report" in sh("git log --format=%s -1", c.work).stdout
    assert not sh(f"git status --porcelain -- {c.state['publish_dir']}", c.work).stdout.strip()   # committed


def test_a_run_is_never_resumed_at_another_commit(work, tmp_path):
    """`licm train` refuses to resume a run that started at another commit, naming both; the pipeline's
    restart_if_changed (the default) trains it again instead."""
    repo = tmp_path / "repo"
    shutil.copytree(work, repo, symlinks=True)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(repo / "src")}
    base = "licm --profile smoke train --experiment main --seed 0 --no-progress"
    train = f"{base} --iterations 4"
    subprocess.run(f"{base} --iterations 2", shell=True, cwd=repo, env=env, check=True, capture_output=True)
    first = sh("git rev-parse HEAD", repo).stdout.strip()
    (repo / "NOTE").write_text("another commit\n")
    sh("git add NOTE && git commit -qm another", repo)
    second = sh("git rev-parse HEAD", repo).stdout.strip()
    refused = subprocess.run(train, shell=True, cwd=repo, env=env, capture_output=True, text=True)
    assert refused.returncode == 2
    assert first in refused.stderr and second in refused.stderr and "never resumed at another commit" in refused.stderr
    again = subprocess.run(f"{train} --restart-if-changed", shell=True, cwd=repo, env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr
    meta = json.loads((repo / "results" / "runs" / "main" / "seed0" / "meta.json").read_text())
    assert meta["git_commit"] == second and meta["resumed"] == []
