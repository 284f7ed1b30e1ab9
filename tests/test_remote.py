"""The DVC remote as a lab has it: a server reached over SSH (Debian's sshd on a free localhost
port, tests/ssh_server.py; DVC's dvc-ssh plugin), run for real on a smoke-scale repository.

The remote is set up as the README tells a team to: the URL in the committed .dvc/config, each
member's user and key in .dvc/config.local (`dvc remote modify --local`), which git never sees.
Checked: push, clone, pull gives bit-identical artifacts and a clean `dvc status`, and Snakemake
agrees after the README's touch step; a push interrupted midway (SIGINT, then SIGKILL) completes
when repeated, sending only what is missing; a wrong key, a closed port or an unknown host give
an error that names the cause and change nothing in the workspace or the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from smoke_repo import SMK, as_foreground_job, build_smoke_repo, data_source, env, sh, tree_hashes
from ssh_server import SSHServer, free_port, keygen, ssh_server

# The first test also pays for the module's smoke build (minutes on a busy 2-core machine).
pytestmark = [pytest.mark.pipeline, pytest.mark.remote, pytest.mark.timeout(1200)]
ARTIFACTS = ("data", "results")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> SSHServer:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as running:
        yield running


@pytest.fixture(scope="module")
def repo(tmp_path_factory, request, server) -> Path:
    """A smoke repository with every artifact built and recorded in DVC; its default remote `lab`
    is the folder lab-remote on the sshd: URL committed, user and key in .dvc/config.local."""
    source = data_source(lambda: Path(request.getfixturevalue("prepared")["folder"]))
    root = tmp_path_factory.mktemp("remote")
    repo = build_smoke_repo(root / "repo", source)
    sh(f"{SMK} report", repo, timeout=600)
    sh("dvc commit -f", repo)
    sh(f"dvc remote add -d lab {server.url(root / 'lab-remote')}", repo)
    set_credentials(repo, server)
    sh("git add -A && git commit -qm built", repo)
    return repo


def set_credentials(repo: Path, server: SSHServer) -> None:
    """What each team member runs once per clone (README): their user and key, never committed."""
    sh(f"dvc remote modify --local lab user {server.user}", repo)
    sh(f"dvc remote modify --local lab keyfile {server.key}", repo)


def use_remote(repo: Path, url: str | None, key: Path | None = None) -> None:
    """Make remote `other` (URL, key; user from the URL) this clone's default in .dvc/config.local,
    or drop it (url None). Test plumbing through DVC's own config writer: the CLI costs seconds
    a call, and `set_credentials` already runs the commands the README gives."""
    from dvc.config import Config

    with Config(dvc_dir=str(repo / ".dvc")).edit("local") as conf:
        if url is None:
            conf["remote"].pop("other", None)
            conf["core"].pop("remote", None)
        else:
            conf["remote"]["other"] = {"url": url, **({"keyfile": str(key)} if key else {})}
            conf["core"]["remote"] = "other"


@pytest.fixture(scope="module")
def pushed(repo) -> set[str]:
    """Push to `lab` once, uninterrupted: the objects a complete remote holds."""
    out = sh("dvc push", repo).stdout
    objects = remote_objects(repo.parent / "lab-remote")
    assert f"{len(objects)} files pushed" in out, out
    return objects


def remote_objects(remote: Path) -> set[str]:
    """Hashes of the complete objects in a DVC remote folder, each checked against its content
    (a truncated upload under its final name would fail here). DVC uploads to a random *.tmp name
    and renames when done, so *.tmp files are transfers in progress or left by a killed push."""
    objects = set()
    for f in (remote / "files" / "md5").glob("*/*"):
        if f.suffix != ".tmp":
            name = f.parent.name + f.name
            assert hashlib.md5(f.read_bytes()).hexdigest() == name.removesuffix(".dir"), f
            objects.add(name)
    return objects


def json_empty(text: str) -> bool:
    return json.loads(text) == {}


def test_push_clone_pull(repo, pushed, server, tmp_path):
    """Push to the SSH remote, clone elsewhere, set the key, pull: bit-identical artifacts, clean
    `dvc status`, and after the README's touch step Snakemake has nothing to do. No credential
    is committed."""
    committed = (repo / ".dvc/config").read_text()
    assert server.url(repo.parent / "lab-remote") in committed
    assert not re.search(r"(?m)^\s*(user|keyfile|password)\s*=", committed), committed
    assert sh("git check-ignore .dvc/config.local", repo).returncode == 0

    clone = tmp_path / "clone"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    set_credentials(clone, server)
    sh("dvc pull", clone)
    assert tree_hashes(clone, *ARTIFACTS) == tree_hashes(repo, *ARTIFACTS)
    assert json_empty(sh("dvc status --json", clone).stdout)
    sh("snakemake --cores 1 --touch --forceall report", clone)
    assert "Nothing to be done" in sh(f"{SMK} -n report", clone).stdout


def complete_count(remote: Path) -> int:
    """Objects under their final name (cheap enough to poll: no hashing)."""
    return sum(1 for f in remote.glob("files/md5/*/*") if f.suffix != ".tmp")


def interrupt_midway(repo: Path, remote: Path, total: int, sig: int) -> set[str]:
    """Start `dvc push`, send `sig` to its process group (as Ctrl-C does) once it has added a
    tenth of the objects still missing (the smoke repository pushes about 140 objects, 75 MB,
    in seconds, so 10 ms polls land midway); return the complete objects once it has ended."""
    start = complete_count(remote)
    low = start + max(1, (total - start) // 10)
    name = signal.Signals(sig).name
    log = remote.parent / f"push-{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "push"], cwd=repo, env=env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=as_foreground_job)
    done = start
    try:
        while proc.poll() is None:
            done = complete_count(remote)
            if low <= done < total:
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.01)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    objects = remote_objects(remote)
    partial = len(list(remote.rglob("*.tmp")))
    print(f"{name} at {done}/{total} objects (push started at {start}); dvc push exited {proc.returncode}; "
          f"then {len(objects)} objects, {partial} partial uploads (*.tmp). Output:\n{log.read_text()[-600:]}")
    assert proc.returncode != 0, "dvc push ended before the signal: the transfer was too quick to interrupt"
    assert start < len(objects) < total
    return objects


def test_interrupted_push_completes(repo, pushed, server, tmp_path):
    """A push interrupted midway by Ctrl-C (SIGINT), then again by SIGKILL, leaves only whole
    objects on the remote; repeated, it sends exactly the missing ones; a pull from that remote
    is bit-identical."""
    remote = tmp_path / "remote"
    url = server.url(remote, with_user=True)
    use_remote(repo, url, server.key)
    try:
        interrupt_midway(repo, remote, len(pushed), signal.SIGINT)
        partial = interrupt_midway(repo, remote, len(pushed), signal.SIGKILL)
        out = sh("dvc push", repo).stdout
        assert f"{len(pushed) - len(partial)} files pushed" in out, out
        assert remote_objects(remote) == pushed
    finally:
        use_remote(repo, None)

    clone = tmp_path / "clone"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    use_remote(clone, url, server.key)
    sh("dvc pull", clone)
    assert tree_hashes(clone, *ARTIFACTS) == tree_hashes(repo, *ARTIFACTS)
    assert json_empty(sh("dvc status --json", clone).stdout)


def snapshot(repo: Path) -> dict[str, str]:
    """Every folder and file (md5) of a repository, workspace and .dvc/cache, but .git and
    .dvc/tmp (DVC's locks and indexes); and `git status`."""
    out = {"git status": sh("git status --porcelain", repo).stdout}
    for f in sorted(repo.rglob("*")):
        rel = f.relative_to(repo).as_posix()
        if not (rel + "/").startswith((".git/", ".dvc/tmp/")):
            out[rel] = hashlib.md5(f.read_bytes()).hexdigest() if f.is_file() else "folder"
    return out


@pytest.fixture(scope="module")
def bare_clone(repo, tmp_path_factory) -> Path:
    """A clone that has pulled nothing yet (no data/, empty cache): where a failed pull could
    leave half-written files."""
    clone = tmp_path_factory.mktemp("bare") / "clone"
    sh(f"git clone -q {repo} {clone}", clone.parent)
    return clone


# Remote URL and the causes DVC's message may give (push: "ERROR: unexpected error - <cause>",
# pull: "ERROR: failed to connect to ssh (<path>) - <cause>"), for each bad setting. An unknown
# name is "not known" where a DNS server answers, a "temporary failure" where none does.
BAD = {
    "wrong key": ("{good}", ["Permission denied for user {user} on host 127.0.0.1"]),
    "closed port": ("ssh://{user}@127.0.0.1:{port}/remote", ["Connect call failed ('127.0.0.1', {port})"]),
    "unknown host": ("ssh://{user}@no-such-host.invalid/remote",
                     ["Name or service not known", "Temporary failure in name resolution"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_remote_changes_nothing(repo, bare_clone, server, tmp_path, case):
    """Push (from the built repository) and pull (into a clone with nothing yet) with a wrong key,
    a closed port or an unknown host fail, say why, and change no file, folder or cache entry."""
    port = free_port()
    url, causes = BAD[case]
    good = server.url(repo.parent / "lab-remote", with_user=True)
    url = url.format(good=good, user=server.user, port=port)
    causes = [c.format(user=server.user, port=port) for c in causes]
    key = keygen(tmp_path / "not_authorized") if case == "wrong key" else server.key
    for folder, command in ((repo, "dvc push"), (bare_clone, "dvc pull")):
        use_remote(folder, url, key)
        try:
            before = snapshot(folder)
            proc = sh(command, folder, check=False, timeout=120)
            print(f"{case}, {command}: exit {proc.returncode}\n{proc.stderr}")
            assert proc.returncode != 0
            assert any(c in proc.stderr for c in causes), proc.stderr
            assert snapshot(folder) == before
        finally:
            use_remote(folder, None)


def test_wrong_remote_path(repo, bare_clone, server):
    """A remote URL with a wrong path (nothing there): the pull names the missing objects and
    writes no file (it leaves empty folders)."""
    use_remote(bare_clone, server.url(repo.parent / "no-such-remote", with_user=True), server.key)
    try:
        before = snapshot(bare_clone)
        proc = sh("dvc pull", bare_clone, check=False)
        print(f"wrong path, dvc pull: exit {proc.returncode}\n{proc.stderr}")
        assert proc.returncode != 0
        assert "Some of the cache files do not exist neither locally nor on remote" in proc.stderr
        after = snapshot(bare_clone)
        files = lambda snap: {k: v for k, v in snap.items() if v != "folder"}  # noqa: E731
        assert files(after) == files(before)
        print("folders created:", sorted(set(after) - set(before)))
    finally:
        use_remote(bare_clone, None)
