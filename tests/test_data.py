"""Acquisition, verification and preparation of the datasets, on the real MNIST bytes."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_params
from licm import config, data, mechanisms

SPLITS = ("train_transformed", "train_canonical", "test")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepared_files_have_the_documented_format(prepared):
    params = prepared["params"]
    for domain in ("paper", "expanded"):
        names = data.mechanism_names(params["data"]["prepared_dir"], domain)
        assert names == params["domains"][domain]
        for split in SPLITS:
            a = data.load_split(params["data"]["prepared_dir"], domain, split)
            assert set(a) == {"images", "mechanism", "source_index", "label"}
            n = len(a["images"])
            assert a["images"].shape == (n, 32, 32) and a["images"].dtype == np.float32
            assert a["images"].min() >= 0.0 and a["images"].max() <= 1.0
            for key in ("mechanism", "source_index", "label"):
                assert a[key].shape == (n,) and a[key].dtype == np.int64
        assert len(data.load_split(params["data"]["prepared_dir"], domain, "test")["images"]) == 10000


def test_split_is_disjoint_halves_first_half_transformed(prepared):
    pdir = prepared["params"]["data"]["prepared_dir"]
    t = data.load_split(pdir, "paper", "train_transformed")
    c = data.load_split(pdir, "paper", "train_canonical")
    assert sorted(t["source_index"]) == list(range(30000))
    assert sorted(c["source_index"]) == list(range(30000, 60000))
    assert (c["mechanism"] == -1).all()


@pytest.mark.parametrize("domain,k", [("paper", 10), ("expanded", 11)])
def test_cyclic_assignment_gives_equal_proportions(prepared, domain, k):
    pdir = prepared["params"]["data"]["prepared_dir"]
    for split in ("train_transformed", "test"):
        counts = np.bincount(data.load_split(pdir, domain, split)["mechanism"], minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1, counts


def test_images_are_padded_digits_transformed_by_their_mechanism(prepared):
    """Rebuild a few rows from the raw MNIST bytes, independently of the preparation code path."""
    params = prepared["params"]
    raw = Path(params["data"]["raw_dir"]) / "MNIST" / "raw"
    pixels = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], np.uint8)
    padded = np.zeros((len(pixels), 32, 32), np.float32)
    padded[:, 2:30, 2:30] = pixels / np.float32(255)
    pdir = params["data"]["prepared_dir"]
    c = data.load_split(pdir, "paper", "train_canonical")
    np.testing.assert_array_equal(c["images"][:50], padded[c["source_index"][:50]])
    np.testing.assert_array_equal(c["label"], labels[c["source_index"]])
    t = data.load_split(pdir, "paper", "train_transformed")
    names = params["domains"]["paper"]
    for k in (names.index("translate_up"), names.index("invert")):
        rows = np.flatnonzero(t["mechanism"] == k)[:20]
        src = padded[t["source_index"][rows]]
        expected = 1 - src if names[k] == "invert" else np.roll(src, -4, axis=1) * (np.arange(32) < 28)[:, None]
        np.testing.assert_allclose(t["images"][rows], expected, atol=1e-6)
    np.testing.assert_array_equal(t["label"], labels[t["source_index"]])


def test_preparation_is_deterministic_to_the_byte(prepared, tmp_path):
    params = config.load(write_params(tmp_path, data={"mirror": prepared["params"]["data"]["mirror"]}, profile="quick"))
    params["data"]["raw_dir"] = prepared["params"]["data"]["raw_dir"]
    for domain in ("paper", "expanded"):
        out = data.prepare_domain(params, domain)
        ref = Path(prepared["params"]["data"]["prepared_dir"]) / domain
        for name in [f"{s}.npz" for s in SPLITS] + ["mechanisms.json"]:
            assert digest(out / name) == digest(ref / name), (domain, name)


def test_transform_seed_changes_the_draws(prepared, tmp_path):
    params = config.load(write_params(tmp_path, data={"transform_seed": 1}, profile="quick"))
    params["data"]["raw_dir"] = prepared["params"]["data"]["raw_dir"]
    out = data.prepare_domain(params, "paper")
    ref = Path(prepared["params"]["data"]["prepared_dir"]) / "paper"
    assert digest(out / "test.npz") != digest(ref / "test.npz")


def test_split_rules():
    first_t, first_c = data.split_indices(10, "first_half", 0)
    second_t, second_c = data.split_indices(10, "second_half", 0)
    rand_t, rand_c = data.split_indices(10, "random", 3)
    assert list(first_t) == list(range(5)) and list(second_t) == list(range(5, 10))
    assert set(rand_t).isdisjoint(rand_c) and set(rand_t) | set(rand_c) == set(range(10))
    assert list(rand_t) == list(data.split_indices(10, "random", 3)[0])


def test_fetch_keeps_verified_raw_folder(prepared):
    params = prepared["params"]
    before = os.stat(Path(params["data"]["raw_dir"]) / "MNIST" / "raw" / "train-images-idx3-ubyte").st_mtime_ns
    data.fetch(params)
    after = os.stat(Path(params["data"]["raw_dir"]) / "MNIST" / "raw" / "train-images-idx3-ubyte").st_mtime_ns
    assert before == after


# ---------------------------------------------------------------- bad input

def broken_mirror(mirror: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "mirror"
    shutil.copytree(mirror, copy)
    for f in copy.rglob("*"):
        f.chmod(0o644)
    damage(copy)
    return copy


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte_inside_gzip(path: Path) -> None:
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[1000] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(content)))


@pytest.mark.parametrize("damage,message", [
    (lambda m: truncate(m / "mnist" / "train-images-idx3-ubyte.gz"), "train-images-idx3-ubyte.gz: cannot be decompressed"),
    (lambda m: (m / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink(), "t10k-labels-idx1-ubyte.gz: missing from the mirror"),
    (lambda m: flip_byte_inside_gzip(m / "mnist" / "train-labels-idx1-ubyte.gz"), "mirror/mnist/train-labels-idx1-ubyte.gz \\(decompressed\\): sha256 mismatch"),
    (lambda m: truncate(m / "omniglot" / "images_background_small1.zip"), "mirror/omniglot/images_background_small1.zip: sha256 mismatch"),
    (lambda m: shutil.rmtree(m / "omniglot"), "images_background_small1.zip: missing from the mirror"),
])
def test_damaged_mirror_names_the_file_and_leaves_no_raw_folder(mirror, tmp_path, damage, message):
    bad = broken_mirror(mirror, tmp_path, damage)
    params = config.load(write_params(tmp_path, data={"mirror": str(bad)}, profile="quick"))
    with pytest.raises(data.DataError, match=message) as err:
        data.fetch(params)
    assert "Fix:" in str(err.value)
    assert not Path(params["data"]["raw_dir"]).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw-")] == []


def test_missing_mirror_folder_is_a_clear_error(tmp_path):
    params = config.load(write_params(tmp_path, data={"mirror": str(tmp_path / "nowhere")}, profile="quick"))
    with pytest.raises(data.DataError, match="mirror folder does not exist"):
        data.fetch(params)


def test_corrupt_raw_file_is_replaced_on_fetch(prepared, tmp_path):
    params = config.load(write_params(tmp_path, data={"mirror": prepared["params"]["data"]["mirror"]}, profile="quick"))
    raw = Path(params["data"]["raw_dir"])
    shutil.copytree(prepared["params"]["data"]["raw_dir"], raw)
    (raw / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte: 7 bytes, expected 10008"):
        data.read_mnist(raw, train=False)
    data.fetch(params)
    data.read_mnist(raw, train=False)


def test_corrupt_prepared_file_names_the_fix(prepared, tmp_path):
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "test.npz").write_bytes(b"not a zip")
    with pytest.raises(data.DataError, match=r"test.npz: unreadable .*licm data prepare --domain paper"):
        data.load_split(tmp_path, "paper", "test")
    with pytest.raises(data.DataError, match="train_canonical.npz: missing"):
        data.load_split(tmp_path, "paper", "train_canonical")


def test_cli_reports_bad_data_without_traceback(mirror, tmp_path):
    bad = broken_mirror(mirror, tmp_path, lambda m: truncate(m / "mnist" / "t10k-images-idx3-ubyte.gz"))
    path = write_params(tmp_path, data={"mirror": str(bad)}, profile="quick")
    proc = subprocess.run([sys.executable, "-m", "licm.cli", "--params", str(path), "data", "fetch"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "t10k-images-idx3-ubyte.gz: cannot be decompressed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mirror_from_environment_variable(mirror, tmp_path, monkeypatch):
    params = config.load(write_params(tmp_path, profile="quick"))
    monkeypatch.setenv("LICM_DATA_MIRROR", str(mirror))
    assert config.data_mirror(params) == mirror
    params["data"]["mirror"] = "/elsewhere"
    assert config.data_mirror(params) == Path("/elsewhere")


def test_write_npz_compresses_only_when_asked(tmp_path):
    """compress=True deflates every member (a paper-scale evaluation's outputs are mostly zeros: 2 MB stored,
    ~0.4 MB deflated); the default stores them; both read back equal."""
    import zipfile

    arrays = {"outputs": np.zeros((200, 32, 32), np.uint8), "winner": np.arange(200, dtype=np.int16)}
    arrays["outputs"][:, 10:20, 10:20] = 200
    data.write_npz(tmp_path / "stored.npz", arrays)
    data.write_npz(tmp_path / "deflated.npz", arrays, compress=True)
    for name, method in (("stored.npz", zipfile.ZIP_STORED), ("deflated.npz", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(tmp_path / name) as z:
            assert {i.compress_type for i in z.infolist()} == {method}
        with np.load(tmp_path / name) as z:
            for k, v in arrays.items():
                np.testing.assert_array_equal(z[k], v)
    assert (tmp_path / "deflated.npz").stat().st_size < (tmp_path / "stored.npz").stat().st_size / 10


def test_write_npz_is_atomic_and_stable(tmp_path):
    arrays = {"a": np.arange(5), "b": np.ones((2, 2), np.float32)}
    data.write_npz(tmp_path / "x.npz", arrays)
    first = digest(tmp_path / "x.npz")
    data.write_npz(tmp_path / "x.npz", arrays)
    assert digest(tmp_path / "x.npz") == first
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]
    with np.load(tmp_path / "x.npz") as z:
        np.testing.assert_array_equal(z["a"], arrays["a"])
