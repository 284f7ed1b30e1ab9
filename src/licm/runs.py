"""Loading an experiment's runs for the stages that read them (figures, Omniglot, summary, fidelity,
publish): which runs are finished, the seed shown, and what is missing and how to make it.
No matplotlib and no torch here: `licm summarize` reads runs without either.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from licm import config, paths, rundir
from licm.data import read_json
from licm.rundir import RunDir, comparable


class MissingArtifact(Exception):
    """An artifact a figure needs does not exist (experiment not selected, not run, or not evaluated).

    The figure is then drawn as a placeholder that names `experiment`, says why (`reason`) and which
    command makes it (`fix`)."""

    def __init__(self, experiment: str, reason: str, fix: str):
        super().__init__(f"{experiment}: {reason}")
        self.experiment, self.reason, self.fix = experiment, reason, fix


def profiles_running(params: dict, name: str) -> list[str]:
    """Profiles whose pipeline trains experiment `name` (its `only_experiments` lists it or is unset)."""
    found = []
    for profile in config.PROFILES:
        only = params.get("profiles", {}).get(profile, {}).get("only_experiments")
        if only is None or name in only:
            found.append(profile)
    return found


def pipeline_fix(params: dict, name: str) -> str:
    """The command that would produce experiment `name`'s runs, for a placeholder's last lines."""
    profiles = profiles_running(params, name)
    if not profiles:
        return f"no profile of params.yaml trains {name}; add it to a profile's only_experiments"
    p = "paper" if "paper" in profiles else profiles[0]
    return (f"run a profile that trains {name} ({', '.join(profiles)}): `make report PROFILE={p}` "
            f"or `licm --profile {p} train --experiment {name} --seed 0`")


def typical_seed(metrics: dict[int, dict]) -> tuple[int, str]:
    """The seed shown for an experiment, and why: the first fully specialized seed, else the seed with the
    most mechanisms won by distinct experts (lowest seed on ties). LICM shows "a typical successful" run and
    EXPAND the best of its 10: we take the best and say so, instead of hiding the choice."""
    if not metrics:
        raise ValueError("typical_seed: no finished run")
    fully = sorted(s for s, m in metrics.items() if m["fully_specialized"])
    if fully:
        return fully[0], f"first fully specialized seed ({len(fully)}/{len(metrics)} are)"
    seed = max(sorted(metrics), key=lambda s: metrics[s]["distinct_winners"])
    m = metrics[seed]
    return seed, (f"no seed fully specialized; most mechanisms won by distinct experts: "
                  f"{m['distinct_winners']}/{len(m['mechanisms'])}")


@dataclass
class RunSet:
    """An experiment's finished runs at this profile: seed -> run folder and its metrics.json."""

    name: str
    profile: str
    folders: dict[int, Path]
    metrics: dict[int, dict]

    def shown(self) -> tuple[int, Path, str]:
        """The typical seed (see `typical_seed`), its folder, and a caption line saying which and why."""
        seed, why = typical_seed(self.metrics)
        m = self.metrics[seed]
        return seed, self.folders[seed], (f"{self.name} seed {seed} of {len(self.metrics)} ({why}); "
                                          f"profile {self.profile}, {m['iterations']} iterations")


def load_runset(runs_dir: Path, name: str, params: dict) -> RunSet:
    """The experiment's finished runs (licm.rundir: its record's seeds with metrics.json), or MissingArtifact."""
    fix = pipeline_fix(params, name)
    record = rundir.experiment_record(runs_dir, name)
    if record is None:
        raise MissingArtifact(name, f"{rundir.record_path(runs_dir, name)} does not exist (experiment not collected)",
                              fix)
    profile = record.get("profile", params["profile"])
    if not record.get("selected"):
        raise MissingArtifact(name, f"not run at profile {profile} (its record says selected: false)", fix)
    runs = rundir.experiment_runs(runs_dir, name)
    metrics = {s: run.metrics() for s, run in runs.items()}
    folders = {s: runs[s].path for s, m in metrics.items() if m is not None}
    if not folders:
        raise MissingArtifact(name, f"no finished run in {Path(runs_dir) / name} (no seed has metrics.json)", fix)
    return RunSet(name, profile, folders, {s: metrics[s] for s in folders})


def run_dir(folder: Path, experiment: str, needs: str):
    """The run folder (licm.rundir.RunDir) of a finished run, checked to hold `needs`
    (params, history, checkpoint or evaluation); a missing artifact -> MissingArtifact."""
    run = RunDir(folder)
    have = {"params": lambda: (run.path / "params.json").is_file(), "history": run.has_history,
            "checkpoint": run.has_checkpoint, "evaluation": lambda: bool(run.evaluation_iterations())}[needs]
    if not have():
        raise MissingArtifact(experiment, f"{run.path} holds no {needs}",
                              f"re-run `licm train --experiment {experiment} --seed {folder.name[4:]}` "
                              f"(delete {folder} first)")
    return run


def load_evaluation(folder: Path, experiment: str, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """A run's evaluations as arrays (iterations, mechanism, label, test_index, winner, outputs), or only
    `keys` of them: at the paper's scale `outputs` is tens of MB that the win matrices do not need."""
    return run_dir(folder, experiment, "evaluation").evaluation(keys)



class Experiment:
    """One experiment's finished runs (`load_runset`: the same reading as the figures) and evaluations."""

    def __init__(self, name: str, runs_dir: Path, eval_dir: Path, params: dict, paper: dict | None = None):
        self.name, self.profile, self.runs, self.evals, self.seconds = name, None, [], [], 0.0
        self.paper = paper if paper is not None else config.paper_params()
        self.run_params: list[dict] = []
        self.hardware: set[str] = set()
        self.missing: str | None = None     # why there are no runs (MissingArtifact's reason)
        try:
            runset = load_runset(runs_dir, name, params)
        except MissingArtifact as exc:
            self.missing = exc.reason
            return
        self.profile = runset.profile
        for seed, metrics in sorted(runset.metrics.items()):
            self.runs.append({**metrics, "seed": seed})
            ev = read_json(paths.result("eval", folder=eval_dir, experiment=name, seed=seed))
            if ev is not None:
                self.evals.append(ev)
            run = RunDir(runset.folders[seed])
            self.seconds += run.seconds() or 0.0
            self.run_params.append(run.params())
            self.hardware.add(run.hardware())

    @property
    def ran(self) -> bool:
        return bool(self.runs)

    @property
    def paper_scale(self) -> bool:
        """Decided from the runs, not from the profile's name or the device: every seed the papers'
        scale declares for this experiment ran, each with the params the `paper` profile resolves
        for it (rundir.comparable, iterations included). A paper-scale CPU run gets a verdict."""
        if self.name not in self.paper["experiments"] or not self.runs:
            return False
        want = config.experiment(self.paper, self.name)
        seeds = set(config.seeds(self.paper, self.name))
        return (seeds <= {r["seed"] for r in self.runs} and all(
            comparable(p) == comparable(want) and p["train"]["iterations"] == want["train"]["iterations"]
            for p in self.run_params))

    @property
    def scale(self) -> str:
        its = sorted({r["iterations"] for r in self.runs})
        return (f"profile {self.profile}: {len(self.runs)} seed(s) x {', '.join(map(str, its))} iterations"
                f"{' (the papers’ scale)' if self.paper_scale else ''}; {', '.join(sorted(self.hardware))}")

    def needs(self) -> str:
        """What the papers' scale asks of this experiment, and the command that runs it."""
        if self.name not in self.paper["experiments"]:
            return f"{self.name}: not in params.yaml"
        p = config.experiment(self.paper, self.name)
        return (f"{self.name}: {len(config.seeds(self.paper, self.name))} seed(s) x {p['train']['iterations']} "
                f"iterations (`snakemake --cores all --config profile=paper -- evaluations_{self.name}`)")

    def fully(self) -> int:
        return sum(bool(r["fully_specialized"]) for r in self.runs)

    def distinct(self) -> list[int]:
        return [int(r["distinct_winners"]) for r in self.runs]

    def mechanisms(self) -> int:
        return len(self.runs[0]["mechanisms"]) if self.runs else 0

    def mean_eval(self, key: str) -> float | None:
        vals = [e[key] for e in self.evals]
        return float(np.mean(vals)) if vals else None

    def mean_final_experts(self) -> float | None:
        vals = [e["final"]["accuracy_experts"] for e in self.evals]
        return float(np.mean(vals)) if vals else None


__all__ = ["MissingArtifact", "profiles_running", "pipeline_fix", "typical_seed", "RunSet", "load_runset", "run_dir",
           "load_evaluation", "Experiment"]
