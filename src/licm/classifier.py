"""The pretrained MNIST classifier of LICM §5 (Fig. 6; claims c2, c6, c8).

The paper uses "a pretrained standard MNIST classifier" reaching about 99% on the original
test digits and does not describe it further. Ours is a small CNN (two conv blocks, our
choice) trained with Adam on the 60,000 canonical training digits, zero-padded to 32x32
and scaled to [0,1] exactly like the digits the experts see (`licm.data.pad_and_scale`),
and evaluated on the 10,000 test digits.

`licm classifier` writes `<out>/classifier.pt` (a state dict; loads with weights_only=True)
and `<out>/metrics.json`.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from licm import config, data, paths


class Classifier(nn.Module):
    """3 x [Conv3x3 + BN + ReLU + 2x2 max-pool] with 32, 32, 64 filters, then FC 128 + dropout, FC 10.

    Input [B,1,S,S] in [0,1] (S divisible by 8; 32 here); output [B,10] logits. About 4M
    multiply-adds per digit, so an epoch of 60,000 digits takes about a minute on 2 CPU cores.
    """

    def __init__(self, image_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 8
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(inplace=True), nn.Dropout(0.25),
            nn.Linear(128, 10),
        )
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _as_batch(images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images,
                        dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"images: expected [N,H,W] or [N,1,H,W], given shape {tuple(x.shape)}")
    return x


@torch.no_grad()
def predict(model: nn.Module, images, batch_size: int = 1000) -> np.ndarray:
    """Predicted digit classes [N] (int64) for images [N,H,W] or [N,1,H,W] in [0,1]."""
    device = next(model.parameters()).device
    x = _as_batch(images)
    was_training = model.training
    model.eval()
    try:
        out = [model(x[i:i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, np.int64)


def accuracy(model: nn.Module, images, labels, batch_size: int = 1000) -> float:
    """Fraction of images classified as their label (images [N,H,W] or [N,1,H,W] in [0,1])."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if len(labels) == 0:
        raise ValueError("accuracy: no images given")
    return float((predict(model, images, batch_size) == labels).mean())


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, epochs: int, batch_size: int, lr: float,
                     seed: int, device: torch.device | str = "cpu", log=None) -> Classifier:
    """Train a fresh Classifier with Adam and cosine lr decay; deterministic on CPU for a fixed seed."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = Classifier(train_x.shape[-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = _as_batch(train_x)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    # Cosine decay of the learning rate to 0 over all steps (our choice; +0.2-0.3 points over a constant lr).
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total, t0 = 0.0, time.perf_counter()
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.perf_counter() - t0:.1f}s)")
    return model.eval()


def save_classifier(model: nn.Module, path: str | Path) -> Path:
    """Write the state dict atomically (readable with torch.load(..., weights_only=True))."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    data.atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """The classifier saved by `licm classifier`, in eval mode on `device` (CPU by default)."""
    path = Path(path)
    if not path.is_file():
        raise config.LicmError(f"{path}: missing. Fix: run `licm classifier`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    side = int(round((state["head.1.weight"].shape[1] / 64) ** 0.5))   # 64 * (S/8)^2 inputs
    model = Classifier(8 * side)
    model.load_state_dict(state)
    return model.to(device).eval()


def mnist_padded(params: dict, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Canonical MNIST digits [N,S,S] float32 in [0,1] (S = data.image_size) and labels."""
    d = params["data"]
    x, y = data.read_mnist(Path(d["raw_dir"]), train=train)
    return data.pad_and_scale(x, d["image_size"]), y


def build(params: dict, out: str | Path, log=lambda msg: print(msg, flush=True)) -> dict:
    """Train on the MNIST training set, evaluate on the test set, write classifier.pt + metrics.json."""
    c = params["classifier"]
    dev = config.device(params["device"])
    out = Path(out)
    t0 = time.perf_counter()
    train_x, train_y = mnist_padded(params, train=True)
    test_x, test_y = mnist_padded(params, train=False)
    if c["max_train_examples"] is not None:
        rows = np.random.default_rng(c["seed"]).permutation(len(train_x))[:c["max_train_examples"]]
        train_x, train_y = train_x[np.sort(rows)], train_y[np.sort(rows)]
    t_train = time.perf_counter()
    model = train_classifier(train_x, train_y, c["epochs"], c["batch_size"], c["lr"], c["seed"], dev, log=log)
    train_seconds = time.perf_counter() - t_train
    acc = accuracy(model, test_x, test_y)
    save_classifier(model, out / "classifier.pt")
    metrics = {
        "test_accuracy": acc,
        "test_examples": int(len(test_x)),
        "train_examples": int(len(train_x)),
        "epochs": c["epochs"],
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "profile": params["profile"],
        "params": c,
        "params_hash": config.params_hash({"classifier": c, "data": params["data"]}),
        "torch": torch.__version__,
    }
    data.atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return metrics


def _cmd_classifier(args) -> None:
    params = config.load(args.params, profile=args.profile)
    metrics = build(params, args.out)
    print(f"licm classifier: test accuracy {metrics['test_accuracy']:.4f} on {metrics['test_examples']} digits "
          f"({metrics['train_examples']} training digits, {metrics['epochs']} epochs, {metrics['train_seconds']:.0f}s "
          f"on {metrics['device']}) -> {Path(args.out) / 'classifier.pt'}")


def register(sub) -> None:
    p = sub.add_parser("classifier", help="train the pretrained MNIST classifier of LICM Fig. 6")
    p.add_argument("--out", default=paths.result("classifier"), help="output folder (default: %(default)s)")
    p.set_defaults(func=_cmd_classifier)
