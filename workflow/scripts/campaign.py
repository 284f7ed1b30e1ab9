#!/usr/bin/env python3
"""The CPU campaign: the main experiment's seeds at the papers' scale, in the background, through
every interruption (`make campaign`, `make campaign-status`, `make campaign-stop`).

Why a driver at all: ten paper-scale seeds are 5-8 hours of a 2-core machine, longer than any stretch
of work lasts here, and work stops without warning. So the campaign lives outside the work tree
(LICM_CAMPAIGN_HOME, default ~/.cache/licm/campaign), in its own clone of the repository, where
Snakemake runs the pipeline itself at the `paper_main` profile (the `paper` profile restricted to the
main experiment), one seed per training job with 2 threads:

- A seed trains from one commit from start to end: it starts at the campaign's target commit (the
  work tree's HEAD when `make campaign` was last called) and every later attempt checks that commit
  out again (`licm train` refuses a resume at another commit; the pipeline runs with
  restart_if_changed=false, so a checkpoint of other params is refused too, never discarded).
- A new seed starts at a commit only after the engine's float64 equivalence tests against
  licm.reference pass there (tests/test_train.py -k equals_plain_reference), so seeds from different
  commits differ in speed, not in the algorithm.
- A killed driver or job resumes from the seed's last checkpoint (train.checkpoint_every); finished
  seeds are never re-run: Snakemake is asked for one seed's metrics.json at a time and, after
  training, runs with the training rules excluded (--allowed-rules).
- After each seed: its evaluation (the paper classifier) and `licm publish-seed` into the work tree's
  published/paper-cpu-<date>/runs/main/seed<K>/, committed at once (only that folder). The classifier
  is published with the first seed and restored from there, never trained again: every seed is scored
  by the same weights, whichever machine the campaign moves to. After the last seed: the report and the
  whole snapshot (`licm publish --campaign`).
- campaign.json records per seed its commit, every attempt (start, end, how it ended) and the wall
  time; the published index copies it.

Only the standard library: the driver runs with the system Python, before any virtual environment
exists, and is copied into the campaign folder so that edits in the work tree never change a
running campaign (a newer copy takes over between seeds).
"""
from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HOME = Path(os.environ.get("LICM_CAMPAIGN_HOME", Path.home() / ".cache" / "licm" / "campaign"))
# The scale (tests run a tiny campaign at `smoke`).
PROFILE = os.environ.get("LICM_CAMPAIGN_PROFILE", "paper_main")
# An existing environment's bin folder (tests: the test session's venv) instead of the clone's own .venv
# (`make install`); the clone's src/ comes first on PYTHONPATH either way, so its code is what runs.
BIN = os.environ.get("LICM_CAMPAIGN_BIN")
EXPERIMENT = "main"
SNAKEMAKE = ["snakemake", "--workflow-profile", "workflow/profiles/default", "--cores", "2",
             "--config", f"profile={PROFILE}", "restart_if_changed=false"]
# Rules that train: never scheduled once a seed has finished (evaluation and reporting only).
TRAIN_RULES = ("train",)
# The classifier's rule: never scheduled once a classifier is published (restore_classifier).
CLASSIFIER_RULES = ("classifier",)
EQUIVALENCE = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "tests/test_train.py",
               "-k", "equals_plain_reference"]


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def log(text: str) -> None:
    print(f"[{now()}] campaign: {text}", flush=True)


class State:
    """campaign.json: target commit, publish folder, per-seed commit/attempts/finish; atomic writes."""

    def __init__(self, home: Path):
        self.path = home / "campaign.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data.setdefault("seeds", {})
        self.data.setdefault("equivalence", {})

    def target(self) -> str:
        """The target commit as `make campaign` last set it (on disk: it may move while a driver runs)."""
        self.save()
        return self.data["target"]

    def seed(self, k: int) -> dict:
        return self.data["seeds"].setdefault(str(k), {"attempts": []})

    def save(self, retarget: bool = False) -> None:
        """Write atomically. Unless `retarget` (`make campaign` moving it), the target commit on disk
        wins: a running driver picks up a new target for its next new seed."""
        if not retarget and self.path.is_file() and "target" in (disk := json.loads(self.path.read_text())):
            self.data["target"] = disk["target"]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


def sh(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=check, text=True, **kw)


def git(repo: Path, *args: str) -> str:
    return sh(["git", *args], repo, capture_output=True).stdout.strip()


# ---------------------------------------------------------------- the clone and its environment

def ensure_clone(work: Path, commit: str) -> Path:
    """HOME/repo at `commit` (cloned from the work tree if missing, e.g. on a new machine), its .venv
    installed (make install: reinstalls only when pyproject.toml or requirements.lock changed)."""
    repo = HOME / "repo"
    if not (repo / ".git").is_dir():
        log(f"cloning {work} into {repo}")
        shutil.rmtree(repo, ignore_errors=True)
        sh(["git", "clone", "--quiet", "--no-checkout", str(work), str(repo)], HOME)
    if sh(["git", "cat-file", "-e", f"{commit}^{{commit}}"], repo, check=False, capture_output=True).returncode:
        sh(["git", "fetch", "--quiet", str(work), "HEAD"], repo)
    if git(repo, "rev-parse", "HEAD") != commit or git(repo, "status", "--porcelain", "--untracked-files=no"):
        sh(["git", "checkout", "--quiet", "--force", "--detach", commit], repo)
    if not BIN:
        sh(["make", "-s", "install"], repo, stdout=subprocess.DEVNULL)
    return repo


def env(repo: Path) -> dict:
    e = {**os.environ, "PATH": f"{BIN or repo / '.venv' / 'bin'}:{os.environ['PATH']}",
         "PYTHONPATH": str(repo / "src")}
    e.pop("LICM_PROFILE", None)
    return e


def snakemake(repo: Path, *args: str, alive=None) -> int:
    """Snakemake in the clone (its lock cleared first: only one driver runs); `alive()` is called every
    minute while it runs (the attempt's last sign of life, for the wall time of a killed attempt)."""
    sh(["snakemake", "--unlock", "--config", f"profile={PROFILE}"], repo, check=False, env=env(repo),
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([*SNAKEMAKE, *args], cwd=repo, env=env(repo), text=True)
    while True:
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            if alive:
                alive()


def equivalence_passes(state: State, repo: Path, commit: str) -> bool:
    """The engine's float64 equivalence tests against licm.reference, once per commit (cached). One
    thread: the result does not depend on it (1e-10 in float64), and two threads stall when the cores
    are busy (beside the test suite: 34 s with one thread, 162 s with two; 16 s idle)."""
    if commit not in state.data["equivalence"]:
        log(f"equivalence tests at {commit[:10]} (a new seed starts there only if they pass)")
        t0 = time.time()
        rc = sh(EQUIVALENCE, repo, check=False, env={**env(repo), "OMP_NUM_THREADS": "1"}).returncode
        state.data["equivalence"][commit] = {"passed": rc == 0, "at": now(), "seconds": round(time.time() - t0)}
        state.save()
    return state.data["equivalence"][commit]["passed"]


# ---------------------------------------------------------------- one seed

def run_dir(repo: Path, k: int) -> Path:
    return repo / "results" / "runs" / EXPERIMENT / f"seed{k}"


def published(work: Path, state: State, k: int) -> Path:
    return work / state.data["publish_dir"] / "runs" / EXPERIMENT / f"seed{k}"


def train_seed(state: State, work: Path, k: int) -> bool:
    """Train (or resume) seed k at its commit; True when its metrics.json exists."""
    entry = state.seed(k)
    commit = entry.get("commit") or state.target()
    repo = ensure_clone(work, commit)
    if not entry.get("commit"):
        if not equivalence_passes(state, repo, commit):
            log(f"equivalence tests fail at {commit[:10]}: no new seed starts there (fix, commit, make campaign)")
            return False
        entry["commit"] = commit
    attempt = {"start": now(), "commit": commit}
    entry["attempts"].append(attempt)
    state.save()
    log(f"seed {k}: training at {commit[:10]} (attempt {len(entry['attempts'])})")
    def alive() -> None:
        attempt["last_seen"] = now()
        state.save()

    rc = snakemake(repo, "--", f"results/runs/{EXPERIMENT}/seed{k}/metrics.json", alive=alive)
    attempt.update(end=now(), rc=rc, how="finished" if rc == 0 else f"failed (exit {rc})")
    if rc == 0:
        meta = json.loads((run_dir(repo, k) / "meta.json").read_text())
        entry.update(finished=meta.get("finished"), started=meta.get("started"), resumed=meta.get("resumed", []))
    state.save()
    return rc == 0


def publish_seed(state: State, work: Path, k: int) -> bool:
    """Evaluate seed k (paper classifier) and publish its compact results into the work tree, committed
    (with the classifier, the first time)."""
    repo = ensure_clone(work, state.target())
    pinned = restore_classifier(work, state)
    rc = snakemake(repo, "--allowed-rules", *allowed_rules(repo, exclude=(*TRAIN_RULES, *pinned)), "--",
                   f"results/eval/{EXPERIMENT}/seed{k}.json")
    if rc:
        log(f"seed {k}: evaluation failed (exit {rc}); retried at the next start")
        return False
    dest = published(work, state, k)
    rc = sh(["licm", "--profile", PROFILE, "publish-seed", "--run", str(run_dir(repo, k)),
             "--eval", f"results/eval/{EXPERIMENT}/seed{k}.json", "--campaign", str(state.path),
             "--classifier", "results/classifier", "--out", str(dest)], repo, check=False, env=env(repo)).returncode
    if rc:
        log(f"seed {k}: publishing failed (exit {rc}); retried at the next start")
        return False
    commit_paths(work, [dest, dest.parents[2] / "eval" / EXPERIMENT / f"seed{k}.json", dest.parents[2] / "classifier"],
                 f"published: main seed {k} at the papers' scale on the CPU "
                                f"({state.seed(k).get('commit', '?')[:10]})")
    state.seed(k)["published"] = now()
    state.save()
    return True


def restore(state: State, work: Path, k: int) -> None:
    """A published seed missing from the clone (a new machine, a deleted checkout): its published
    folder and evaluation JSON go back into results/ for the report. It is never trained again."""
    run, ev = run_dir(HOME / "repo", k), HOME / "repo" / "results" / "eval" / EXPERIMENT / f"seed{k}.json"
    if run.joinpath("metrics.json").is_file():
        return
    if not (HOME / "repo" / ".git").is_dir():
        ensure_clone(work, state.target())
    src = published(work, state, k)
    log(f"seed {k}: restored from {src} (published; not trained again)")
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, run)
    ev.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.parents[2] / "eval" / EXPERIMENT / f"seed{k}.json", ev)


def restore_classifier(work: Path, state: State) -> tuple[str, ...]:
    """The classifier published with the first seed (licm publish-seed --classifier) into the clone, where it
    differs or is missing, so that every seed is scored by it on any machine; the rules then not to run
    (the classifier's, which would train it again after a code change or on a new clone's data)."""
    src = work / state.data["publish_dir"] / "classifier"
    if not (src / "classifier.pt").is_file():
        return ()
    dest = HOME / "repo" / "results" / "classifier"
    for name in ("classifier.pt", "metrics.json"):
        if not (dest / name).is_file() or (dest / name).read_bytes() != (src / name).read_bytes():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dest / name)
            log(f"classifier: {name} restored from {src} (the one every published seed was scored by)")
    return CLASSIFIER_RULES


def allowed_rules(repo: Path, exclude: tuple[str, ...]) -> list[str]:
    """Every rule of the workflow but `exclude` (and the batched training rules train_<exp>_seeds...)."""
    out = sh(["snakemake", "--list-rules", "--config", f"profile={PROFILE}"], repo, capture_output=True,
             env=env(repo)).stdout.splitlines()
    names = [line.split()[0] for line in out if line.strip() and not line[0].isspace()]
    return [r for r in names if r not in exclude and (r == "train_all" or not r.startswith("train_"))]


def commit_paths(work: Path, paths: list[Path], message: str) -> None:
    """Commit exactly these paths in the work tree (whatever else is staged or edited stays as it is)."""
    rel = [str(p.relative_to(work)) for p in paths]
    for attempt in range(30):
        add = sh(["git", "add", "--", *rel], work, check=False, capture_output=True)
        done = add.returncode == 0 and sh(["git", "commit", "--quiet", "-m", message, "--", *rel], work,
                                          check=False, capture_output=True).returncode == 0
        if done or not sh(["git", "status", "--porcelain", "--", *rel], work, capture_output=True).stdout:
            return
        time.sleep(2)       # the index is locked by someone else's git command
    log(f"could not commit {rel}: commit them by hand")


# ---------------------------------------------------------------- the campaign

def seeds(work: Path) -> list[int]:
    """The main experiment's seeds at the campaign's profile, as licm resolves them (from the clone, or
    the work tree before there is one)."""
    repo = HOME / "repo" if (HOME / "repo" / "params.yaml").is_file() else work
    code = (f"from licm import config; p = config.load('params.yaml', profile={PROFILE!r}); "
            f"print(*config.seeds(p, {EXPERIMENT!r}))")
    return [int(s) for s in sh(["python", "-c", code], repo, capture_output=True, env=env(repo)).stdout.split()]


def lower_priority() -> None:
    """nice 19 for the whole session. With the kernel's autogroup scheduling (the default on desktop and
    many server kernels) `nice` counts only inside a session: a process started with setsid competes
    with everything else as an equal, whatever its nice value (measured here: 45 % of the CPU at nice 19
    against a dozen processes). The session's own nice value (/proc/self/autogroup) fixes that."""
    try:
        Path("/proc/self/autogroup").write_text("19")
    except OSError:
        pass            # no autogroup scheduling: the process's nice value already counts
    os.nice(19 - os.nice(0))


def run(work: Path, no_report: bool = False) -> int:
    lock = open(HOME / "driver.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another driver is running; this one stops")
        return 0
    (HOME / "driver.pid").write_text(str(os.getpid()))
    installed = HOME / "driver.py"
    born = installed.stat().st_mtime if installed.is_file() else None
    state = State(HOME)
    init_state(state, work, retarget=False)
    for entry in state.data["seeds"].values():          # attempts a killed driver left open
        for a in entry["attempts"]:
            if "end" not in a:
                a.update(end=None, how="interrupted (the driver was killed: work stopped)")
    state.data.setdefault("restarts", []).append(now())
    state.save()
    todo = seeds(work)
    for k in todo:
        entry = state.seed(k)
        if published(work, state, k).joinpath("metrics.json").is_file():
            restore(state, work, k)
            continue
        if not (entry.get("finished") or run_dir(HOME / "repo", k).joinpath("metrics.json").is_file()):
            if not train_seed(state, work, k):
                return 1
        if not publish_seed(state, work, k):
            state.data["unpublished"] = sorted(set(state.data.get("unpublished", [])) | {k})
        if born is not None and installed.stat().st_mtime != born:
            log("a newer driver was installed: it takes over")
            os.execv(sys.executable, [sys.executable, str(HOME / "driver.py"), "run", "--repo", str(work)])
    if any(not published(work, state, k).joinpath("metrics.json").is_file() for k in todo):
        log("every seed is trained, some are not published yet (see above): the report waits for them")
        return 1
    if no_report:
        return 0
    log("every seed is trained and published: the report")
    return report(state, work, todo)


def report(state: State, work: Path, todo: list[int]) -> int:
    repo = ensure_clone(work, state.target())
    for k in todo:
        restore(state, work, k)
    pinned = restore_classifier(work, state)
    rc = snakemake(repo, "--allowed-rules", *allowed_rules(repo, exclude=(*TRAIN_RULES, "evaluate", *pinned)), "--",
                   "report")
    if rc:
        log(f"the report failed (exit {rc})")
        return rc
    dest = work / state.data["publish_dir"]
    state.data["completed"] = now()          # the report is built: index.json records when
    state.save()
    rc = sh(["licm", "--profile", PROFILE, "publish", str(repo), "--campaign", str(state.path),
             "--out", str(dest)], repo, check=False, env=env(repo)).returncode
    if rc:
        log(f"publishing the snapshot failed (exit {rc})")
        state.data.pop("completed")
        state.save()
        return rc
    commit_paths(work, [dest], "published: the CPU campaign's report, summary, figures and index")
    return 0


# ---------------------------------------------------------------- commands

def running() -> int | None:
    pid_file = HOME / "driver.pid"
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text() or 0)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return pid if "driver.py" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace") else None


def init_state(state: State, work: Path, retarget: bool) -> str:
    """The campaign's date-named publish folder and creation time (once), and its target commit: the
    work tree's HEAD at every `start` (new seeds start there), at the first `run` otherwise."""
    head = git(work, "rev-parse", "HEAD")
    state.data.setdefault("publish_dir", f"published/paper-cpu-{dt.date.today().isoformat()}")
    state.data.setdefault("created", now())
    if retarget or "target" not in state.data:
        state.data["target"] = head
    state.save(retarget=retarget or "target" not in json.loads(state.path.read_text() if state.path.is_file()
                                                                  else "{}"))
    return state.data["target"]


def start(work: Path) -> int:
    """Install this driver into HOME, set the target commit (the work tree's HEAD) and start the
    driver in the background, or let the running one pick up the new target between seeds."""
    HOME.mkdir(parents=True, exist_ok=True)
    state = State(HOME)
    head = init_state(state, work, retarget=True)
    if Path(__file__).resolve() != (HOME / "driver.py").resolve():
        shutil.copyfile(__file__, HOME / "driver.py.new")
        os.replace(HOME / "driver.py.new", HOME / "driver.py")
    pid = running()
    if pid:
        print(f"campaign: running (pid {pid}); new seeds start at {head[:10]} (after the seed in progress)")
        return 0
    with open(HOME / "campaign.log", "a") as out:
        proc = subprocess.Popen([sys.executable, str(HOME / "driver.py"), "run", "--repo", str(work)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lower_priority, cwd=HOME)
    print(f"campaign: started (pid {proc.pid}, nice 19); target commit {head[:10]}; "
          f"log {HOME / 'campaign.log'}; progress: make campaign-status")
    return 0


def status(work: Path) -> int:
    state = State(HOME)
    pid = running()
    print(f"campaign: {'running (pid %d)' % pid if pid else 'not running'}; folder {HOME}; "
          f"target {state.data.get('target', '?')[:10]}; publishes to {state.data.get('publish_dir', '?')}")
    done, walls, fully, pubs, todo = 0, [], 0, 0, seeds(work)
    for k in todo:
        e = state.data["seeds"].get(str(k), {})
        pub = published(work, state, k).joinpath("metrics.json").is_file() if "publish_dir" in state.data else False
        if e.get("finished") or pub:
            done += 1
            active = [(dt.datetime.fromisoformat(a.get("end") or a["last_seen"]) -
                       dt.datetime.fromisoformat(a["start"])).total_seconds()
                      for a in e.get("attempts", []) if a.get("end") or a.get("last_seen")]
            if active:      # the attempts' time (as index.json's wall time), not the days between them
                walls.append(sum(active))
        what = ("published" if pub else "finished" if e.get("finished") else
                "in progress" if e.get("commit") else "not started")
        line = f"  seed {k}: {what}"
        if e.get("commit"):
            line += f" at {e['commit'][:10]}, {len(e.get('attempts', []))} attempt(s)"
        if pub:                 # the published metrics.json: what the seed learned
            m = json.loads(published(work, state, k).joinpath("metrics.json").read_text())
            pubs, fully = pubs + 1, fully + bool(m.get("fully_specialized"))
            line += (f"; {'fully specialized' if m.get('fully_specialized') else 'not fully specialized'}, "
                     f"{m.get('distinct_winners')}/{len(m.get('mechanisms', []))} mechanisms held by distinct experts")
        logf = HOME / "repo" / "logs" / "train" / EXPERIMENT / f"seed{k}.log"
        if what == "in progress" and logf.is_file():
            last = [x for x in logf.read_text(errors="replace").splitlines() if "it/s" in x][-1:]
            line += f"; {last[0].split(': ', 1)[-1] if last else 'starting'}"
        print(line)
    left = len(todo) - done
    so_far = f"; fully specialized so far: {fully} of {pubs} published" if pubs else ""
    if walls and left:          # a seed's attempts count the time they shared the CPU or were paused: a range
        fast, mean = min(walls), sum(walls) / len(walls)
        now_ = dt.datetime.now(dt.timezone.utc)
        first, last = (now_ + dt.timedelta(seconds=w * left) for w in (fast, mean))
        print(f"  {done} done, {left} left{so_far}; {fast / 60:.0f}-{mean / 60:.0f} min per seed (fastest-mean, "
              f"time shared with other work included): expected finish {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC "
              "(running without pause)")
    else:
        print(f"  {done} done, {left} left{so_far}")
    return 0


def stop() -> int:
    pid = running()
    if not pid:
        print("campaign: not running")
        return 0
    os.killpg(os.getpgid(pid), signal.SIGTERM)
    print(f"campaign: stopped (pid {pid}); the seed in progress resumes from its checkpoint at the next start")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["start", "run", "status", "stop"])
    p.add_argument("--repo", default=".", help="the work tree (default: the current folder)")
    p.add_argument("--no-report", action="store_true", help="run: train and publish the seeds, stop before the report")
    a = p.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)      # `make campaign-status | head` ends quietly
    work = Path(a.repo).resolve()
    HOME.mkdir(parents=True, exist_ok=True)
    return {"start": lambda: start(work), "run": lambda: run(work, a.no_report), "status": lambda: status(work),
            "stop": stop}[a.command]()


if __name__ == "__main__":
    sys.exit(main())
