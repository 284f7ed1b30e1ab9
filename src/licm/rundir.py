"""A run folder, results/runs/<experiment>/seed<K>/, and the one class that reads and writes it.

    params.json      the run's resolved params (what its result depends on)
    meta.json        seed, seeds trained together, device, engine settings, versions, commit, times
    checkpoint.pt    the run's state at its last checkpoint (weights, BN statistics, both Adams,
                     iteration, identity-init steps, history); written atomically
    history.csv      per logged iteration, expert and mechanism: mean D score and wins (training batches)
    evaluation/      one file per evaluation (after identity init, every eval_every, the end):
                     digits.npz (which test digits), it<iteration>.npz (each digit's winner and its
                     output). Appended to: a new evaluation is a new file, never a rewrite.
    metrics.json     written LAST and atomically: its presence means the run is finished

Everything that reads or writes a run folder goes through `RunDir` (training, evaluation, figures,
Omniglot, summary, report, pipeline, licm.load_run), so they agree on what a run is and which
runs exist (`experiment_runs`: an experiment's record). RunDir refuses to write metrics.json
before the other files, and to write anything into a finished run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from licm import checkpoint, config, data, paths
from licm.config import LicmError

# What a run's result depends on, less what may change between a run and its resume: how far it
# goes and how often it saves, and how it is computed (layout, compilation, precision, determinism
# change round-off only).
# Written last and atomically: its presence means the run is finished.
FINISHED = "metrics.json"
RESUMABLE = ("iterations", "checkpoint_every", "implementation", "compile", "precision", "deterministic")


def comparable(params: dict) -> dict:
    """The part of a run's params that its checkpoint depends on (see RESUMABLE)."""
    t = {k: v for k, v in params["train"].items() if k not in RESUMABLE}
    return json.loads(json.dumps({"model": params["model"], "aii": params["aii"], "train": t,
                                  "domain": params["domains"][params["train"]["domain"]],
                                  "mechanisms": params["mechanisms"]}))


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LicmError(f"{path}: unreadable ({exc}). Fix: delete it (or the run folder) and re-run `licm train`")


class RunDir:
    """One run folder (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of(cls, runs_dir: str | Path, experiment: str, seed: int) -> "RunDir":
        return cls(paths.result("run", folder=runs_dir, experiment=experiment, seed=seed))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoint_file(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def evaluation_dir(self) -> Path:
        return self.path / "evaluation"

    # ------------------------------------------------------------ reading

    def params(self) -> dict:
        got = _read_json(self.path / "params.json")
        if got is None:
            raise LicmError(f"{self.path}: not a run folder (no params.json). Fix: run `licm train` first")
        return got

    def meta(self) -> dict | None:
        return _read_json(self.path / "meta.json")

    def metrics(self) -> dict | None:
        """metrics.json of a finished run, None while unfinished."""
        return _read_json(self.path / FINISHED)

    def is_finished(self) -> bool:
        return (self.path / FINISHED).is_file()

    def seconds(self) -> float | None:
        """This run's share of the wall time of the job(s) that trained it (started to finished,
        divided by the seeds trained together), None while unfinished."""
        from datetime import datetime

        meta = self.meta() or {}
        try:
            wall = (datetime.fromisoformat(meta["finished"]) - datetime.fromisoformat(meta["started"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            return None
        return wall / max(len(meta.get("batch") or [0]), 1)

    def hardware(self) -> str:
        """What computed this run, in the words the report uses: "CPU, fp32, 2 threads (<model>)" or
        "<GPU>, <precision>" (float results differ between CPU models and thread counts)."""
        meta = self.meta() or {}
        device = str(meta.get("device", "unknown device"))
        if device.startswith("cuda"):
            return f"{meta.get('gpu', device)}, {meta.get('precision', '?')}"
        if device != "cpu":
            return device
        threads = meta.get("threads")
        model = (meta.get("cpu") or {}).get("model")
        return (f"CPU, {meta.get('precision', 'fp32')}, {threads if threads else 'unrecorded'} threads"
                + (f" ({model})" if model else ""))

    def has_checkpoint(self) -> bool:
        return self.checkpoint_file.is_file()

    def load_checkpoint(self, map_location="cpu") -> dict:
        """The checkpoint, validated (licm.checkpoint)."""
        return checkpoint.load(self.checkpoint_file, self.path, map_location)

    def evaluation(self, keys: tuple[str, ...] | None = None, upto: int | None = None) -> dict[str, np.ndarray]:
        """Every evaluation as arrays: iterations [E], test_index, mechanism, label [n], winner [E,n],
        outputs [E,n,H,W] uint8; only `keys` of them if given (outputs are tens of MB at paper scale)."""
        digits = self.evaluation_dir / "digits.npz"
        if not digits.is_file():
            raise LicmError(f"{self.evaluation_dir}: no evaluations. Fix: run `licm train` for {self.path}")
        with np.load(digits) as z:
            out = {k: z[k] for k in z.files}
        its = self.evaluation_iterations(upto)
        wanted = set(keys or ("iterations", "test_index", "mechanism", "label", "winner", "outputs"))
        if "outputs" in wanted:             # a published (thinned) folder keeps outputs at a few evaluations
            its = [it for it in its if self._has_outputs(it)]
        n, parts = len(out["test_index"]), {"winner": [], "outputs": []}
        for it in its:
            if wanted & {"winner", "outputs"}:
                with np.load(self._evaluation_file(it)) as z:
                    for k in parts:
                        if k in wanted:
                            parts[k].append(z[k])
        out["iterations"] = np.asarray(its, dtype=np.int64)
        if "winner" in wanted:
            out["winner"] = np.stack(parts["winner"]) if parts["winner"] else np.zeros((0, n), np.int16)
        if "outputs" in wanted:
            out["outputs"] = np.stack(parts["outputs"]) if parts["outputs"] else np.zeros((0, n, 0, 0), np.uint8)
        return {k: v for k, v in out.items() if k in wanted}

    def _has_outputs(self, iteration: int) -> bool:
        with np.load(self._evaluation_file(iteration)) as z:
            return "outputs" in z.files

    def evaluation_iterations(self, upto: int | None = None) -> list[int]:
        its = sorted(int(p.stem[2:]) for p in self.evaluation_dir.glob("it*.npz"))
        return [i for i in its if upto is None or i <= upto]

    @property
    def history_file(self) -> Path:
        """history.csv, or a published folder's history.csv.gz (thinned, compressed) where only that exists."""
        path = self.path / "history.csv"
        return self.path / "history.csv.gz" if not path.is_file() and (self.path / "history.csv.gz").is_file() else path

    def has_history(self) -> bool:
        return self.history_file.is_file()

    def history(self):
        import pandas as pd

        if not self.has_history():
            raise LicmError(f"{self.history_file}: missing. Fix: run `licm train` for {self.path}")
        return pd.read_csv(self.history_file)

    # ------------------------------------------------------------ the resume rule

    def status(self, params: dict, restart_if_changed: bool = False) -> str:
        """`finished` (metrics.json at params' iterations, same params), `resume` (a checkpoint of
        the same params made at this commit), or `fresh`. A checkpoint of other params or of another
        commit (a run trains from one commit from start to end) is an error, or, with
        `restart_if_changed` (the pipeline re-runs a job because its params or code changed), discarded."""
        if not self.has_checkpoint():
            return "fresh"
        old = self.params() if (self.path / "params.json").is_file() else None
        if old is None or comparable(old) != comparable(params):
            if not restart_if_changed:
                raise LicmError(f"{self.path}: holds a run with other params. Fix: use another --out, delete the "
                                "folder, or pass --restart-if-changed to discard it")
            return "fresh"
        metrics = self.metrics()
        if metrics and metrics.get("iterations") == params["train"]["iterations"]:
            return "finished"
        started, here = (self.meta() or {}).get("git_commit", "unknown"), config.git_commit()
        if "unknown" not in (started, here) and started != here:
            if not restart_if_changed:
                raise LicmError(f"{self.path}: started at commit {started}, this is commit {here}: a run is never "
                                f"resumed at another commit. Fix: check out {started.split()[0]} to finish it, or "
                                "delete the folder (or pass --restart-if-changed) to train it again here")
            return "fresh"
        return "resume"

    # ------------------------------------------------------------ writing (licm train only)

    def start(self, params: dict, meta: dict, digits: dict[str, np.ndarray]) -> None:
        """A fresh run: clear what an earlier attempt left, write params, meta and the evaluated digits."""
        for name in ("metrics.json", "history.csv", "checkpoint.pt", "meta.json", "params.json"):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.evaluation_dir, ignore_errors=True)
        self.evaluation_dir.mkdir(parents=True)
        self.write_json("params.json", params)
        self.write_json("meta.json", meta)
        data.write_npz(self.evaluation_dir / "digits.npz", digits, compress=True)

    def resume(self, iteration: int, meta_update: dict) -> dict:
        """Continue from the checkpoint at `iteration`: drop later evaluations and metrics (they are
        redone), record the resume in meta.json; returns the meta."""
        (self.path / "metrics.json").unlink(missing_ok=True)
        for it in self.evaluation_iterations():
            if it > iteration:
                self._evaluation_file(it).unlink()
        meta = self.meta() or {}
        meta.update({k: v for k, v in meta_update.items() if k not in ("started", "resumed")})
        meta.setdefault("resumed", []).append({"at": meta_update["started"], "iteration": iteration})
        meta.pop("finished", None)
        self.write_json("meta.json", meta)
        return meta

    def compact_copy(self, dest: str | Path, keep_outputs: set[int], decimals: int = 5,
                     history_every: int = 1) -> "RunDir":
        """A small copy of a finished run for publishing (no checkpoint: see licm.publish.export_weights):
        params, meta and metrics; the history as history.csv.gz thinned by `thin_history` (blocks of
        `history_every` iterations) with mean scores rounded to `decimals` (a plot's precision); every
        evaluation's winners, and its outputs only at the iterations `keep_outputs` (each is ~0.4 MB
        deflated at the papers' scale; `evaluation()` then returns, when asked for outputs, only the
        evaluations that hold them)."""
        out = RunDir(dest)
        out.evaluation_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.evaluation_dir / "digits.npz", out.evaluation_dir / "digits.npz")
        for it in self.evaluation_iterations():
            with np.load(self._evaluation_file(it)) as z:
                kept = {k: z[k] for k in z.files if k != "outputs" or it in keep_outputs}
            data.write_npz(out._evaluation_file(it), kept, compress=True)
        history = thin_history(self.history(), history_every).round({"score_mean": decimals})
        data.atomic_write_bytes(out.path / "history.csv.gz", _gzip(history.to_csv(index=False)))
        for name in ("params.json", "meta.json", FINISHED):        # metrics.json last, as in a run
            shutil.copyfile(self.path / name, out.path / name)
        return out

    def write_json(self, name: str, obj) -> None:
        """params.json, meta.json, or metrics.json, the last file of a run: it needs every other one."""
        self._writable()
        if name == FINISHED:
            missing = [f for f in ("params.json", "meta.json", "history.csv", "checkpoint.pt", "evaluation/digits.npz")
                       if not (self.path / f).is_file()]
            if missing:
                raise LicmError(f"{self.path}: {FINISHED} is written last; missing {', '.join(missing)}")
        data.atomic_write_text(self.path / name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        self._writable()
        checkpoint.save(self.checkpoint_file, state)

    def append_evaluation(self, iteration: int, winner: np.ndarray, outputs: np.ndarray) -> None:
        self._writable()
        data.write_npz(self._evaluation_file(iteration), {"winner": winner.astype(np.int16),
                                                          "outputs": outputs.astype(np.uint8)}, compress=True)

    def write_history(self, frame) -> None:
        self._writable()
        data.atomic_write_text(self.path / "history.csv", frame.to_csv(index=False))

    def _writable(self) -> None:
        if self.is_finished():
            raise LicmError(f"{self.path}: finished ({FINISHED} exists); a finished run is not written to "
                            "(`licm train` resumes it only after removing it)")

    def _evaluation_file(self, iteration: int) -> Path:
        return self.evaluation_dir / f"it{iteration:06d}.npz"


def thin_history(history, every: int):
    """history.csv in blocks of `every` iterations, for publishing: per block, expert and mechanism the
    mean of the rows' mean scores (NaN where the mechanism drew no digit is skipped), the sum of the
    wins, labelled with the block's last iteration. The figures' moving average of w iterations
    (licm.figures.window_rows reads the step from the iterations) then averages the same scores as over
    the full history when w is a multiple of `every`, up to the weight of a block where the mechanism
    drew no digit at some iteration (paper seed 0, one curve's first 50 iterations: 0.6791 against 0.6782)."""
    if every <= 1:
        return history
    block = (history["iteration"] + every - 1) // every
    thinned = (history.groupby([block.rename("_block"), "expert", "mechanism"], sort=False)
               .agg(iteration=("iteration", "max"), score_mean=("score_mean", "mean"), wins=("wins", "sum"))
               .reset_index())
    return thinned[list(history.columns)]


def _gzip(text: str) -> bytes:
    import gzip

    return gzip.compress(text.encode(), compresslevel=9, mtime=0)      # mtime 0: the same bytes every time


# ---------------------------------------------------------------- an experiment's runs

def record_path(runs_dir: str | Path, experiment: str) -> Path:
    return Path(paths.result("run_record", folder=runs_dir, experiment=experiment))


def experiment_record(runs_dir: str | Path, experiment: str) -> dict | None:
    """<runs>/<experiment>/experiment.json (written by `licm collect`): profile, selected, seeds; None if absent."""
    return _read_json(record_path(runs_dir, experiment))


def write_experiment_record(runs_dir: str | Path, experiment: str, record: dict) -> None:
    data.atomic_write_text(record_path(runs_dir, experiment), json.dumps(record, indent=2) + "\n")


def experiment_runs(runs_dir: str | Path, experiment: str) -> dict[int, RunDir]:
    """The runs an experiment's record lists (finished or not), by seed: which runs exist is the
    record's answer, for every stage that reads runs."""
    record = experiment_record(runs_dir, experiment) or {}
    return {int(s): RunDir.of(runs_dir, experiment, int(s)) for s in record.get("seeds", [])}


def all_runs(runs_dir: str | Path) -> list[tuple[str, int, RunDir]]:
    """(experiment, seed, run) of every experiment with a record under `runs_dir`, sorted."""
    out = []
    for path in sorted(Path(runs_dir).glob("*/experiment.json")):
        out += [(path.parent.name, s, d) for s, d in sorted(experiment_runs(runs_dir, path.parent.name).items())]
    return out


__all__ = ["RunDir", "RESUMABLE", "comparable", "record_path", "experiment_record", "write_experiment_record",
           "experiment_runs", "all_runs"]
