"""checkpoint.pt, the one file of a run folder that holds tensors: its format and how it is read and
written (licm.state.RunState.checkpoint builds its content; RunDir reads and writes it through here).

    format                   FORMAT (1 = the per-seed engine before batching)
    seed, iteration          which run, how far
    committee, discriminator the networks' weights (all that `licm.load_run` and a published run need)
    expert_optimizer, discriminator_optimizer, aii_iterations, history   what a resume needs besides
"""
from __future__ import annotations

import io
from pathlib import Path

from licm import data
from licm.config import LicmError

FORMAT = 2
# What `licm.load_run` reads; a published run keeps only these (licm.publish).
WEIGHTS = ("format", "committee", "discriminator")


def load(path: Path, run: Path, map_location="cpu") -> dict:
    """The checkpoint at `path` (of run folder `run`), validated; a corrupt or foreign file stops with an
    error naming it and the fix, and nothing is overwritten."""
    import torch

    fix = (f"Fix: restore it (`dvc checkout {path}` if it was versioned) or delete it to retrain this run "
           f"from the start; nothing was overwritten")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise LicmError(f"{path}: missing. Fix: run `licm train` for {run}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        raise LicmError(f"{path}: unreadable checkpoint, truncated or corrupt ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}). {fix}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        got = ck.get("format", 1) if isinstance(ck, dict) else type(ck).__name__
        raise LicmError(f"{path}: checkpoint format {got}, this licm reads format {FORMAT} "
                        f"(made by another version of licm). Fix: delete {run} and retrain it")
    return ck


def save(path: Path, state: dict) -> None:
    """Write atomically: a killed job leaves the previous checkpoint or none, never half of one. The
    format number is stamped here, its one writer."""
    import torch

    buf = io.BytesIO()
    torch.save({**state, "format": FORMAT}, buf)
    data.atomic_write_bytes(path, buf.getvalue())


def weights(ck: dict) -> dict:
    """The part of a checkpoint that `licm.load_run` reads (no optimizers, no history)."""
    return {k: ck[k] for k in WEIGHTS}


__all__ = ["FORMAT", "WEIGHTS", "load", "save", "weights"]
