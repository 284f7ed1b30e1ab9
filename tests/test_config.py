"""Every kind of params.yaml error stops with the key, the expectation and the given value."""
from __future__ import annotations

import pytest
import yaml

from conftest import REPO
from licm import config
from licm.config import ParamsError


def write(tmp_path, mutate) -> str:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_repository_params_are_valid():
    params = config.load(REPO / "params.yaml", profile="quick")
    assert params["profile"] == "quick"
    assert params["mechanisms"]["noise_variance"] == 0.25
    assert len(params["domains"]["paper"]) == 10 and len(params["domains"]["expanded"]) == 11


def _set(path, value):
    def mutate(p):
        *parents, last = path.split(".")
        for k in parents:
            p = p[k]
        p[last] = value
    return mutate


@pytest.mark.parametrize("mutate,words", [
    (_set("data.bogus", 1), ["unknown key data.bogus", "expected one of"]),
    (_set("typo_top", 1), ["unknown key typo_top"]),
    (_set("train.iterations", "many"), ["train.iterations", "expected a value of type integer", "given 'many'"]),
    (_set("train.iterations", -5), ["train.iterations", "expected a number >= 0", "given -5"]),
    (_set("mechanisms.noise_variance", 0), ["mechanisms.noise_variance", "expected a number > 0", "given 0"]),
    (_set("mechanisms.stretch_factor", 9), ["mechanisms.stretch_factor", "expected a number <= 4", "given 9"]),
    (_set("data.split", "middle"), ["data.split", "expected one of", "given 'middle'"]),
    (_set("device", "tpu"), ["device", "expected a string matching", "given 'tpu'"]),
    (_set("profile", "huge"), ["profile", "expected one of", "given 'huge'"]),
    (lambda p: p["data"].pop("split_seed"), ["missing key data.split_seed"]),
    (_set("domains.paper", ["translate_up", "spin"]), ["domains.paper.1", "registered mechanism", "given 'spin'"]),
    (_set("data.prepare", ["paper", "nowhere"]), ["data.prepare.1", "expected one of", "given 'nowhere'"]),
    (_set("model.disc_convs", [3, 2]), ["model.disc_convs", "expected 3 entries", "given [3, 2]"]),
    (_set("experiments.main.seeds", []), ["experiments.main.seeds", "at least 1 item", "given []"]),
])
def test_schema_errors_name_key_expected_and_given(tmp_path, mutate, words):
    path = write(tmp_path, mutate)
    with pytest.raises(ParamsError) as err:
        config.load(path)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_profile_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, _set("profiles.smoke", {"train": {"iterations": -1}}))
    config.load(path, profile="quick")
    with pytest.raises(ParamsError, match=r"profile smoke.*train.iterations.*given -1"):
        config.load(path, profile="smoke")


def test_profile_overrides_merge_deeply(tmp_path):
    path = write(tmp_path, _set("profiles.smoke", {"train": {"iterations": 7}}))
    params = config.load(path, profile="smoke")
    assert params["train"]["iterations"] == 7 and params["train"]["batch_size"] == 32


def test_experiment_overrides(tmp_path):
    path = write(tmp_path, _set("experiments.wide", {"seeds": [0], "overrides": {"model": {"expert_width": 64}}}))
    params = config.load(path, profile="quick")
    assert config.experiment(params, "wide")["model"]["expert_width"] == 64
    assert params["model"]["expert_width"] == 32
    with pytest.raises(ParamsError, match="experiments.nope"):
        config.experiment(params, "nope")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(ParamsError, match="no such parameter file"):
        config.load(tmp_path / "absent.yaml")


def test_auto_profile_and_device_follow_the_hardware():
    import torch

    assert config.resolve_profile("auto") == ("paper" if torch.cuda.is_available() else "quick")
    assert config.device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ParamsError, match="expected a machine with a CUDA GPU"):
            config.device("cuda")
