"""A one-node SLURM cluster on localhost, for tests: munged, slurmctld and slurmd of Debian's
packages (slurm-wlm, munge), configured in a temporary folder and started as child processes.

The node `licm-node` forms the default partition `cpu`. It declares at least the CPUs and memory
asked for (slurmd is told to trust the configuration, `SlurmdParameters=config_overrides`, so a
2-core machine can accept the 4-CPU jobs of a real profile) and one GPU backed by /dev/null, so
that a job asking for a GPU is accepted and can be inspected (a real GPU is never used).
No accounting database: `sacct` answers "Slurm accounting storage is disabled"; jobs are seen
with `squeue`, which shows finished jobs for `MinJobAge` seconds.

Two things leave the temporary folder: munged refuses a socket below a folder others cannot
enter (pytest's are private), so the folder is a fresh one under /tmp; and the symbolic link
/etc/slurm/slurm.conf to the configuration, for `srun` inside jobs: Snakemake's jobstep
executor (snakemake-executor-plugin-slurm-jobstep 0.6.1) removes every SLURM_* variable,
SLURM_CONF included, before it calls `srun`, which then looks at the default path. Commands
outside jobs find the cluster through SLURM_CONF (`Cluster.env`). The link is made only where
no slurm.conf exists (a stale link of an earlier test run is replaced) and removed on `stop`.
Runs as root (slurmd launches jobs; /etc/slurm is root's).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ssh_server import free_port

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "sinfo")
PACKAGES = "slurm-wlm munge"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PREFIX = "licm-slurm-"  # of the cluster's folder, under /tmp
NODE = "licm-node"
PARTITION = "cpu"


def program(name: str) -> str | None:
    """Path of a SLURM or MUNGE program (the daemons are in /usr/sbin, not always on PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


def missing() -> str | None:
    """Why no cluster can be started here (not installed, not root, SLURM configured), or None."""
    absent = [p for p in PROGRAMS if program(p) is None]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing): apt-get install {PACKAGES}"
    if os.geteuid() != 0:
        return "the test SLURM cluster runs as root (slurmd launches jobs, /etc/slurm/slurm.conf)"
    if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.readlink().parent.name.startswith(PREFIX):
        if not stale_link():
            folder = SYSTEM_CONF.readlink().parent
            return (f"another test cluster is running ({SYSTEM_CONF} -> {SYSTEM_CONF.readlink()}); "
                    f"if no test runs, stop it: kill $(cat {folder}/*.pid)")
    elif SYSTEM_CONF.exists():
        return f"{SYSTEM_CONF} exists: this machine has a SLURM configuration, which the test cluster would shadow"
    return None


def stale_link() -> bool:
    """Whether /etc/slurm/slurm.conf is a link left by a test cluster whose controller is gone."""
    if not (SYSTEM_CONF.is_symlink() and SYSTEM_CONF.readlink().parent.name.startswith(PREFIX)):
        return False
    try:
        os.kill(int((SYSTEM_CONF.readlink().parent / "slurmctld.pid").read_text()), 0)
    except (OSError, ValueError):
        return True
    return False


def machine_memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def slurm_conf(root: Path, host: str, cpus: int, mem_mb: int) -> str:
    """slurm.conf of the one-node cluster, everything under `root`."""
    return f"""\
ClusterName=licmtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# A container has no cgroups to spare: processes tracked by parent id, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node below is what jobs may ask for, not what the machine has.
SlurmdParameters=config_overrides
GresTypes=gpu
# Finished jobs stay visible to squeue (Snakemake's status query here) for an hour: the
# whole test module.
MinJobAge=3600
# A cancelled job's processes get SIGTERM, then SIGKILL 5 s later.
KillWait=5
# Commands give up on an unreachable controller after 5 s of retries (default 10).
MessageTimeout=5
ReturnToService=2
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} RealMemory={mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """The running daemons; `env` is the environment in which SLURM commands reach them."""

    def __init__(self, root: Path, cpus: int, mem_mb: int):
        self.root = root
        self.conf = root / "slurm.conf"
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(slurm_conf(root, host, cpus, mem_mb))
        # slurmd drops a GPU without a device file; /dev/null is one (no GPU behind it).
        (root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File=/dev/null\n")
        for d in ("state", "spool"):
            (root / d).mkdir()
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.linked = False

    # ---- daemons
    def _spawn(self, name: str, *args: str) -> None:
        out = open(self.root / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen([program(name), *args], env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def start(self) -> None:
        key = self.root / "munge.key"
        subprocess.run([program("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        self._spawn("munged", "--foreground", f"--key-file={key}", f"--socket={self.root}/munge.socket",
                    f"--pid-file={self.root}/munged.pid", f"--log-file={self.root}/munged.log",
                    f"--seed-file={self.root}/munged.seed")
        self._wait(lambda: (self.root / "munge.socket").exists(), 20, "munged did not create its socket")
        self._link_system_conf()
        self.start_controller(clear=True)
        self._spawn("slurmd", "-D", "-N", NODE)
        self._wait(lambda: self.node_state() == "idle", 60, "the node did not become idle")

    def start_controller(self, clear: bool = False) -> None:
        """slurmctld (again, after stop_controller: it recovers the jobs from its state folder)."""
        self._spawn("slurmctld", "-D", *(["-c"] if clear else []))
        self._wait(lambda: self.sh("scontrol", "ping", check=False).returncode == 0, 30,
                   "slurmctld does not answer")
        if "slurmd" in self.procs:
            self._wait(lambda: self.node_state() == "idle", 60, "the node did not become idle")

    def stop_controller(self) -> None:
        self._stop("slurmctld")

    def stop(self) -> None:
        """Cancel every job, stop the daemons, remove the /etc/slurm link (also after a failure)."""
        try:
            if "slurmctld" in self.procs:
                ids = self.sh("squeue", "-h", "-o", "%A", check=False).stdout.split()
                if ids:
                    self.sh("scancel", *ids, check=False)
                    self._wait(lambda: not self.sh("squeue", "-h", "-t", "R,CG", "-o", "%A",
                                                   check=False).stdout.split(), 30, "jobs did not end", fail=False)
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                self._stop(name)
            if self.linked and SYSTEM_CONF.is_symlink() and SYSTEM_CONF.readlink() == self.conf:
                SYSTEM_CONF.unlink()
            shutil.rmtree(self.root, ignore_errors=True)

    def _link_system_conf(self) -> None:
        if stale_link():  # left by a test run that was killed, with its folder
            shutil.rmtree(SYSTEM_CONF.readlink().parent, ignore_errors=True)
            SYSTEM_CONF.unlink()
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)
        self.linked = True

    def _wait(self, ready, seconds: float, what: str, fail: bool = True) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead and fail:
                raise RuntimeError(f"{what}: {', '.join(dead)} exited\n{self.logs()}")
            if ready():
                return True
            time.sleep(0.3)
        if fail:
            raise RuntimeError(f"{what} within {seconds} s\n{self.logs()}")
        return False

    def logs(self, lines: int = 15) -> str:
        out = []
        for f in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # ---- queries
    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc

    def node_state(self) -> str:
        return self.sh("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).stdout.strip()

    def jobs(self) -> list[dict]:
        """Every job slurmctld knows (finished ones for MinJobAge): id, state, name, comment."""
        out = self.sh("squeue", "-h", "--states=all", "-o", "%i|%T|%j|%k").stdout
        return [dict(zip(("id", "state", "name", "comment"), line.split("|", 3))) for line in out.splitlines()]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (TresPerJob holds a --gpus request, TRES the rest)."""
        out = self.sh("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def set_partition(self, state: str) -> None:
        """UP, or DOWN: jobs are accepted and wait (Reason=PartitionDown), none starts."""
        self.sh("scontrol", "update", f"PartitionName={PARTITION}", f"State={state}")


def start(cpus: int = 1, mem_mb: int = 1000) -> Cluster:
    """Start a cluster whose node has at least `cpus` CPUs and `mem_mb` MB (and the machine's)."""
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
    root.chmod(0o755)  # munged: every folder above its socket must be enterable by all
    cluster = Cluster(root, max(cpus, os.cpu_count() or 1), max(mem_mb, machine_memory_mb()))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
