"""The pretrained MNIST classifier (LICM Fig. 6): trains on real digits, saves, reloads, is deterministic."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_params


@pytest.fixture(scope="module")
def raw(tmp_path_factory, mirror):
    """Raw MNIST (and Omniglot) fetched from the mirror into a temporary folder."""
    from licm import config, data

    folder = tmp_path_factory.mktemp("clf")
    small = {"epochs": 2, "max_train_examples": 3000, "batch_size": 64}
    # Set in the profile too: the profile block is merged over the file's.
    path = write_params(folder, data={"mirror": str(mirror)}, profile="quick", classifier=small,
                        profiles={"quick": {"classifier": small}})
    params = config.load(path)
    data.fetch(params)
    return {"params": params, "path": path, "folder": folder}


def test_cli_trains_saves_and_reloads(raw):
    from licm import classifier, cli

    out = raw["folder"] / "classifier"
    assert cli.main(["--params", str(raw["path"]), "classifier", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 3000 and metrics["test_examples"] == 10000
    assert metrics["device"] == "cpu" or metrics["device"].startswith("cuda")
    # 3000 digits, 2 epochs: far above chance, far from the full run's >= 99%.
    assert metrics["test_accuracy"] > 0.85

    state = torch.load(out / "classifier.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    model = classifier.load_classifier(out / "classifier.pt")
    assert not model.training
    test_x, test_y = classifier.mnist_padded(raw["params"], train=False)
    # Same number through the reloaded weights, with either input layout.
    assert classifier.accuracy(model, test_x, test_y) == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert classifier.accuracy(model, test_x[:500, None], test_y[:500]) == classifier.accuracy(model, test_x[:500], test_y[:500])
    # Against shifted labels the same predictions must score near zero (accuracy compares, not guesses).
    wrong = (test_y + 1) % 10
    assert classifier.accuracy(model, test_x, wrong) < 0.1


def test_deterministic_on_cpu(raw):
    from licm import classifier

    x, y = classifier.mnist_padded(raw["params"], train=True)
    x, y = x[:512], y[:512]
    a = classifier.train_classifier(x, y, epochs=1, batch_size=64, lr=1e-3, seed=3, device="cpu")
    b = classifier.train_classifier(x, y, epochs=1, batch_size=64, lr=1e-3, seed=3, device="cpu")
    c = classifier.train_classifier(x, y, epochs=1, batch_size=64, lr=1e-3, seed=4, device="cpu")
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_accuracy_rejects_bad_shapes():
    from licm import classifier

    model = classifier.Classifier()
    with pytest.raises(ValueError):
        classifier.accuracy(model, np.zeros((2, 2, 32, 32), np.float32), [0, 1])
    # Predictions come back in the input order, one per image.
    assert classifier.predict(model, np.zeros((3, 32, 32), np.float32)).shape == (3,)


def test_params_bounds(tmp_path):
    from licm import config

    path = write_params(tmp_path, classifier={"max_train_examples": 5})
    with pytest.raises(config.ParamsError, match="classifier.max_train_examples"):
        config.load(path)
