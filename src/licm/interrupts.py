"""What Ctrl-C (SIGINT) and SIGTERM do: a `licm` command stops cleanly, and so do the pipeline's jobs.

A `licm` command (`guard`, installed by licm.cli.main): either signal raises `Interrupted` (a
KeyboardInterrupt) in the main thread, so `finally`/`except BaseException` blocks run: the temporary
file of an atomic write is removed, and metrics.json, written last, never appears. The command says
so in one line and exits as killed by that signal (130, 143). A second signal while it stops is
ignored. If it has not exited `GRACE_S` seconds after the first signal, it exits at once
(`os._exit`): an exception swallowed by a finalizer ("Exception ignored in ... __del__") or a long
native call must not keep a training job alive. A run folder then holds its last checkpoint, from
which the next run resumes.

Snakemake (`stop_jobs_on_signals`, installed by workflow/rules/common.smk at `onstart`): Snakemake 9
starts a local job as `bash -c '...'` from a thread of its executor, in Snakemake's own process group
and session (bash execs a single command, so the job is `licm` itself), and never signals its jobs.
On Ctrl-C it relies on the terminal's SIGINT having reached the whole group, and waits until every
running job has ended by itself (the thread pool's `shutdown`); on SIGTERM it only stops starting jobs
and waits for the running ones to finish, however long they take. So a job that did not get the
signal, or did not act on it, kept Snakemake and itself running. Here both signals make Snakemake send
SIGTERM to every process below it, also to those that appear in the next seconds (a job whose start
was under way), and then take its own Ctrl-C path (cancel, mark the jobs failed and their outputs
incomplete, exit non-zero).

A signal that was ignored when the process started stays ignored, here and in `guard` (POSIX: a
shell without job control starts a background command, `(make test &)` or `nohup ... &`, with SIGINT
and SIGQUIT ignored, and every process below inherits that). This is what once kept a smoke training
job and Snakemake running > 2 min after a test's SIGINT to Snakemake's group: the test suite had been
started that way, so neither Snakemake nor the job (nor Python, which keeps an inherited SIG_IGN
instead of raising KeyboardInterrupt) reacted to SIGINT; started in the foreground, the test passed.
SIGTERM is never ignored that way.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

GRACE_S = 5.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A licm command got SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def guard(grace_s: float = GRACE_S):
    """Install the handlers of a licm command; return a function that puts the old ones back.
    Outside the main thread (where Python allows no handlers) it installs nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in SIGNALS}
    timers: list[threading.Timer] = []

    def handler(signum, frame):
        if timers:  # already stopping
            return
        timers.append(threading.Timer(grace_s, os._exit, (128 + signum,)))
        timers[0].daemon = True
        timers[0].start()
        raise Interrupted(signum)

    for s in SIGNALS:
        if old[s] is not signal.SIG_IGN:  # ignored by whoever started us (nohup, a background job): keep
            signal.signal(s, handler)

    def restore() -> None:  # an armed deadline stays: whoever called the command stops within it too
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def die_by(signum: int) -> None:
    """Exit as killed by `signum`, so that a calling shell stops too (its Ctrl-C convention)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


# ---------------------------------------------------------------- Snakemake

def _terminate_descendants(signalled: set[int]) -> None:
    import psutil

    for proc in psutil.Process().children(recursive=True):
        if proc.pid not in signalled:
            signalled.add(proc.pid)
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass


def stop_jobs_on_signals(local: bool = True, watch_s: float = 15.0) -> None:
    """In Snakemake's main process: SIGINT and SIGTERM stop the running jobs, then Snakemake stops.

    `local`: the jobs run on this machine (not a cluster executor, whose own cancel calls scancel
    and the like: those must not be signalled). For `watch_s` seconds after the signal, processes
    that appear below Snakemake (a job whose start was already under way) get SIGTERM too.
    """
    signalled: set[int] = set()
    stopping = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            _terminate_descendants(signalled)
            time.sleep(0.2)

    def handler(signum, frame):
        if stopping.is_set():
            return
        stopping.set()
        if local:
            threading.Thread(target=watch, name="licm-stop-jobs", daemon=True).start()
        print(f"licm: {signal.Signals(signum).name}: stopping the running jobs", file=sys.stderr, flush=True)
        raise KeyboardInterrupt  # Snakemake's Ctrl-C path: cancel, clean up, exit non-zero

    for s in SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:  # ignored by whoever started Snakemake: keep
            signal.signal(s, handler)


__all__ = ["GRACE_S", "Interrupted", "guard", "die_by", "stop_jobs_on_signals"]
