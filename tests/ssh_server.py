"""A real OpenSSH server (Debian's sshd) on a free localhost port, for the DVC SSH remote tests.

Everything it needs is generated in a folder of its own: host key, client key, authorized_keys
and an sshd_config that listens on 127.0.0.1 only, accepts that one key (no passwords, no PAM:
a container has no login session machinery) and serves SFTP from inside sshd, which is all the
DVC SSH remote (dvc-ssh, through asyncssh) uses. It runs in the foreground (`sshd -D`) as the
test's own user, so `ssh_server()` can stop it however the test ends. As root (CI) sshd also
needs its privilege-separation folder /run/sshd, which only Debian's init scripts create.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {folder}/host_ed25519
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
# The keys live under /tmp, which StrictModes would reject (world-writable parent).
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


@dataclass
class SSHServer:
    """A running sshd: where it listens, who may log in, and with which key."""

    host: str
    port: int
    user: str
    key: Path  # private key whose public half is in authorized_keys
    log_path: Path  # sshd's log, shown in a failing test's repr of the server

    def url(self, path: Path | str, with_user: bool = False) -> str:
        return f"ssh://{self.user + '@' if with_user else ''}{self.host}:{self.port}{path}"


def sshd_binary() -> str:
    """Path of sshd; outside CI a missing sshd skips, with CI=true it fails (a green CI that
    skipped the remote tests would prove nothing)."""
    path = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        msg = "sshd not installed (Debian: apt-get install openssh-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true: a missing sshd fails instead of skipping)")
        pytest.skip(msg)
    return str(Path(path).resolve())  # sshd re-executes itself and insists on an absolute path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    """A fresh unencrypted ed25519 key pair at `path` and `path`.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


def _banner(port: int) -> bytes:
    """The server's identification line, or b'' while nothing answers on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64)
    except OSError:
        return b""


def _wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode} at start:\n{log.read_text()}")
        if _banner(port).startswith(b"SSH-2.0-"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"sshd did not answer on 127.0.0.1:{port} within {timeout}s:\n{log.read_text()}")


@contextmanager
def ssh_server(folder: Path) -> Iterator[SSHServer]:
    """Start sshd with keys and config in `folder`; stop it on exit, also after a failure."""
    sshd = sshd_binary()
    folder.mkdir(parents=True, exist_ok=True)
    keygen(folder / "host_ed25519")
    key = keygen(folder / "client_ed25519")
    shutil.copy(folder / "client_ed25519.pub", folder / "authorized_keys")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(CONFIG.format(port=port, folder=folder))
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"sshd rejects {config}: {check.stderr.strip()}")
    log = folder / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port, log)
        yield SSHServer("127.0.0.1", port, getpass.getuser(), key, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
