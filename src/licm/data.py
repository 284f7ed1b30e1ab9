"""Data acquisition (official download or a mirror folder), verification and preparation.

`data/raw` is built in a temporary folder and renamed into place only once every file has
been verified, so an interrupted or failed fetch never leaves a half-written raw folder.
Prepared arrays are written deterministically (fixed zip timestamps), so the same params
give the same bytes on every run and DVC sees no change.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from licm import config, mechanisms
from licm.config import LicmError

# Decompressed MNIST files and their sha256 (../shared/data/README.md; the official bytes).
MNIST_FILES = {
    "train-images-idx3-ubyte": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
# Official Omniglot archives (github.com/brendenlake/omniglot, python/); sha256 where known.
OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/{name}.zip"
OMNIGLOT_SHA256 = {
    "images_background_small1": "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
}
SPLITS = ("train_transformed", "train_canonical", "test")


class DataError(LicmError):
    """Missing, truncated or corrupt input data; the message names the file and the fix."""


# ---------------------------------------------------------------- acquisition

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_mnist(folder: Path, fix: str, origin: Path | None = None) -> None:
    """Check size and sha256 of the four decompressed MNIST files in `folder`.

    `origin` names the folder the files were decompressed from, so errors point at the
    file the user can fix rather than at a temporary copy.
    """
    for name, (size, digest) in MNIST_FILES.items():
        path = folder / name if origin is None else Path(f"{origin / name}.gz (decompressed)")
        if not (folder / name).is_file():
            raise DataError(f"{path}: missing. Fix: {fix}")
        actual = (folder / name).stat().st_size
        if actual != size:
            raise DataError(f"{path}: {actual} bytes, expected {size} (truncated or wrong file). Fix: {fix}")
        if sha256(folder / name) != digest:
            raise DataError(f"{path}: sha256 mismatch (corrupt file). Fix: {fix}")


def _gunzip(src: Path, dst: Path, fix: str) -> None:
    try:
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{src}: cannot be decompressed ({exc}). Fix: {fix}") from exc


def _mnist_from_mirror(mirror: Path, dest: Path) -> None:
    fix = f"replace it with an intact copy of the official file in {mirror / 'mnist'}"
    for name in MNIST_FILES:
        src = mirror / "mnist" / f"{name}.gz"
        if not src.is_file():
            raise DataError(f"{src}: missing from the mirror. Fix: {fix}, or unset the mirror to download")
        _gunzip(src, dest / name, fix)
    verify_mnist(dest, fix, origin=mirror / "mnist")


def _mnist_download(dest_root: Path) -> None:
    """torchvision's downloader, which tries the official mirrors and checks md5s."""
    from torchvision.datasets import MNIST

    fix = "check the network, or give a mirror folder (data.mirror or LICM_DATA_MIRROR)"
    try:
        for train in (True, False):
            MNIST(root=str(dest_root), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError/URLError variants
        raise DataError(f"MNIST download failed ({exc}). Fix: {fix}") from exc
    verify_mnist(dest_root / "MNIST" / "raw", fix)


def _check_zip(path: Path, fix: str, digest: str | None, shown: Path | None = None) -> None:
    shown = shown or path
    if digest is not None and sha256(path) != digest:
        raise DataError(f"{shown}: sha256 mismatch (corrupt or truncated archive). Fix: {fix}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as exc:
        raise DataError(f"{shown}: not a valid zip archive ({exc}). Fix: {fix}") from exc
    if bad is not None:
        raise DataError(f"{shown}: member {bad} is corrupt. Fix: {fix}")


def _omniglot(params: dict, mirror: Path | None, dest: Path) -> None:
    name = params["data"]["omniglot_archive"]
    target = dest / f"{name}.zip"
    if mirror is not None:
        src = mirror / "omniglot" / f"{name}.zip"
        fix = f"put an intact copy of the official {name}.zip in {mirror / 'omniglot'}"
        if not src.is_file():
            raise DataError(f"{src}: missing from the mirror. Fix: {fix}")
        shutil.copyfile(src, target)
        shown = src
    else:
        shown = None
        from torchvision.datasets.utils import download_url

        fix = "check the network, or give a mirror folder (data.mirror or LICM_DATA_MIRROR)"
        try:
            download_url(OMNIGLOT_URL.format(name=name), str(dest), filename=target.name)
        except Exception as exc:
            raise DataError(f"Omniglot download of {name}.zip failed ({exc}). Fix: {fix}") from exc
    _check_zip(target, fix, OMNIGLOT_SHA256.get(name), shown)


def fetch(params: dict) -> Path:
    """Build `data.raw_dir` (MNIST/raw/*-ubyte, omniglot/<archive>.zip) atomically.

    An existing, verified raw folder is kept as it is.
    """
    raw = Path(params["data"]["raw_dir"])
    if raw.exists():
        try:
            verify_mnist(raw / "MNIST" / "raw", "delete data/raw and run `licm data fetch` again")
            _check_zip(raw / "omniglot" / f"{params['data']['omniglot_archive']}.zip", "delete data/raw and fetch again",
                       OMNIGLOT_SHA256.get(params["data"]["omniglot_archive"]))
            return raw
        except DataError:
            shutil.rmtree(raw)
    raw.parent.mkdir(parents=True, exist_ok=True)
    mirror = config.data_mirror(params)
    if mirror is not None and not mirror.is_dir():
        raise DataError(f"{mirror}: mirror folder does not exist. Fix: point data.mirror or LICM_DATA_MIRROR "
                        "at a folder laid out like shared/data (mnist/*.gz, omniglot/*.zip), or unset it to download")
    with tempfile.TemporaryDirectory(prefix=".raw-", dir=raw.parent) as tmp:
        tmp = Path(tmp)
        (tmp / "MNIST" / "raw").mkdir(parents=True)
        (tmp / "omniglot").mkdir()
        if mirror is not None:
            _mnist_from_mirror(mirror, tmp / "MNIST" / "raw")
        else:
            _mnist_download(tmp)
            for leftover in (tmp / "MNIST" / "raw").glob("*.gz"):
                leftover.unlink()
        _omniglot(params, mirror, tmp / "omniglot")
        for folder in (tmp, tmp / "MNIST", tmp / "MNIST" / "raw", tmp / "omniglot"):
            os.chmod(folder, 0o755)
        os.replace(tmp, raw)
        tmp.mkdir()  # TemporaryDirectory's cleanup expects its folder to exist
    return raw


# ---------------------------------------------------------------- reading

def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format): 0, 0, type 0x08, the number of dimensions, each
    dimension as a big-endian uint32, then the data."""
    raw = path.read_bytes()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_mnist(raw: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N,28,28], labels int64 [N]) from the raw files (checked against their sha256)."""
    folder = raw / "MNIST" / "raw"
    verify_mnist(folder, "run `licm data fetch` (delete data/raw first if it is corrupt)")
    prefix = "train" if train else "t10k"
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
    return read_idx(folder / f"{prefix}-images-idx3-ubyte"), labels


def pad_and_scale(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad 28x28 uint8 digits to size x size and scale to [0,1] (LICM §4, before any mechanism)."""
    h, w = images.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((len(images), size, size), dtype=np.float32)
    out[:, top:top + h, left:left + w] = images.astype(np.float32) / 255.0
    return out


# ---------------------------------------------------------------- preparation

def split_indices(n: int, rule: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training set to transform and to keep canonical (disjoint halves)."""
    half = n // 2
    rows = np.arange(n)
    if rule == "random":
        rows = np.random.default_rng(seed).permutation(n)
        return np.sort(rows[:half]), np.sort(rows[half:])
    if rule == "first_half":
        return rows[:half], rows[half:]
    return rows[half:], rows[:half]


def cyclic_assignment(n: int, n_mechanisms: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """EXPAND §4.1: permute the rows, then assign mechanisms in turn (equal proportions).

    Returns (order, mechanism): row order[i] gets mechanism i mod K.
    """
    order = rng.permutation(n)
    return order, np.arange(n) % n_mechanisms


def transform_split(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, names: list[str],
                    params: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Transform images[rows] cyclically; arrays come out in the permuted order."""
    order, mech = cyclic_assignment(len(rows), len(names), rng)
    src = rows[order]
    out = mechanisms.apply(names, images[src], mech, params["mechanisms"], rng)
    return {"images": out, "mechanism": mech.astype(np.int64), "source_index": src.astype(np.int64),
            "label": labels[src]}


def prepare_domain(params: dict, domain: str) -> Path:
    """Write data/prepared/<domain>/{train_transformed,train_canonical,test}.npz and mechanisms.json."""
    d = params["data"]
    names = params["domains"][domain]
    raw = Path(d["raw_dir"])
    train_x, train_y = read_mnist(raw, train=True)
    test_x, test_y = read_mnist(raw, train=False)
    train_x, test_x = pad_and_scale(train_x, d["image_size"]), pad_and_scale(test_x, d["image_size"])
    t_rows, c_rows = split_indices(len(train_x), d["split"], d["split_seed"])
    # Separate, named streams: adding a domain or changing the test set never shifts the training draws.
    seq = np.random.SeedSequence([d["transform_seed"], _stable_id(domain)])
    train_rng, test_rng = (np.random.default_rng(s) for s in seq.spawn(2))
    arrays = {
        "train_transformed": transform_split(train_x, train_y, t_rows, names, params, train_rng),
        "train_canonical": {"images": train_x[c_rows], "mechanism": np.full(len(c_rows), -1, np.int64),
                            "source_index": c_rows.astype(np.int64), "label": train_y[c_rows]},
        "test": transform_split(test_x, test_y, np.arange(len(test_x)), names, params, test_rng),
    }
    out = Path(d["prepared_dir"]) / domain
    out.mkdir(parents=True, exist_ok=True)
    for split, a in arrays.items():
        write_npz(out / f"{split}.npz", a)
    atomic_write_text(out / "mechanisms.json", json.dumps(names, indent=1) + "\n")
    return out


def _stable_id(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# ---------------------------------------------------------------- files

def _publish(tmp: str | Path, path: Path, mode: int = 0o644) -> None:
    """Give a finished temporary file normal permissions (mkstemp makes it 0600), then rename it."""
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_json(path: Path):
    """The JSON at `path`, or None when it is missing or unreadable (the report's and the summary's
    inputs are optional). Here, not in licm.report: a stage that reads JSON must not depend on the page."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool = False) -> None:
    """np.savez (or savez_compressed) with fixed zip timestamps, so equal arrays give equal bytes; atomic."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as z:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method     # writestr(ZipInfo) ignores the ZipFile's compression
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
                z.writestr(info, buf.getvalue())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_split(prepared_dir: str | Path, domain: str, split: str) -> dict[str, np.ndarray]:
    """Arrays of one prepared split: images [N,H,W] float32, mechanism, source_index, label."""
    path = Path(prepared_dir) / domain / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"{path}: missing. Fix: run `licm data prepare --domain {domain}`")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({exc}). Fix: delete it and run `licm data prepare --domain {domain}`") from exc


def mechanism_names(prepared_dir: str | Path, domain: str) -> list[str]:
    path = Path(prepared_dir) / domain / "mechanisms.json"
    if not path.is_file():
        raise DataError(f"{path}: missing. Fix: run `licm data prepare --domain {domain}`")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- CLI

def _cmd_fetch(args) -> None:
    params = config.load(args.params, profile=args.profile)
    t0 = time.perf_counter()
    raw = fetch(params)
    print(f"licm data fetch: {raw} ready in {time.perf_counter() - t0:.1f}s")


def _cmd_prepare(args) -> None:
    params = config.load(args.params, profile=args.profile)
    domains = args.domain or params["data"]["prepare"]
    for domain in domains:
        if domain not in params["domains"]:
            raise config.ParamsError(f"--domain: expected one of {sorted(params['domains'])}, given {domain!r}")
        t0 = time.perf_counter()
        out = prepare_domain(params, domain)
        print(f"licm data prepare: {out} ({len(params['domains'][domain])} mechanisms) in {time.perf_counter() - t0:.1f}s")


def register(sub) -> None:
    p = sub.add_parser("data", help="fetch and prepare datasets")
    s = p.add_subparsers(dest="data_command", required=True, metavar="<step>")
    f = s.add_parser("fetch", help="download MNIST and Omniglot (or copy from a mirror) into data.raw_dir")
    f.set_defaults(func=_cmd_fetch)
    r = s.add_parser("prepare", help="pad, split and transform MNIST into data.prepared_dir/<domain>/")
    r.add_argument("--domain", action="append", help="domain to prepare (repeatable; default: data.prepare)")
    r.set_defaults(func=_cmd_prepare)
