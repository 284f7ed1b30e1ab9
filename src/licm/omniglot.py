"""Do the experts generalize? Omniglot letters through MNIST-trained experts (LICM §5.3, Fig. 7, 8).

Letters are read straight from the Omniglot zip (`<alphabet>/<character>/<drawing>.png`,
105x105 black ink on white), rescaled to `omniglot.size` (46, LICM §5.3) with antialiasing,
and inverted to white ink on black in [0,1], like the MNIST digits. The experts are fully
convolutional, so they take 46x46 inputs as they are.

Numbers that make "generalizes" testable (claim licm-c9): for every mechanism, the MSE between
the ground-truth letter and the output of the expert assigned to that mechanism (argmax of the
run's win matrix on MNIST), beside the MSE of the untouched transformed letter. An expert that
learned the inverse mechanism brings the first well below the second.

`licm omniglot --run results/runs/<experiment>/seed<k>` draws licm-fig7 and licm-fig8 and writes
the restoration numbers to `<out>/restoration.json`.
"""
from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from licm import config, data, mechanisms, paths, plot, specialization
from licm.config import LicmError
from licm.plot import off, plt, save


# ---------------------------------------------------------------- letters

def archive_path(params: dict) -> Path:
    return Path(params["data"]["raw_dir"]) / "omniglot" / f"{params['data']['omniglot_archive']}.zip"


def _drawings(z: zipfile.ZipFile) -> dict[tuple[str, str], list[str]]:
    """{(alphabet, character): [member names of its PNG drawings]}, members sorted."""
    chars: dict[tuple[str, str], list[str]] = {}
    for name in sorted(z.namelist()):
        if not name.lower().endswith(".png"):
            continue
        parts = name.split("/")
        if len(parts) < 3:
            continue
        chars.setdefault((parts[-3], parts[-2]), []).append(name)
    return chars


def _decode(blob: bytes, size: int) -> np.ndarray:
    """A 105x105 PNG (black ink on white) -> [size,size] float32, white ink on black, in [0,1]."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    with Image.open(io.BytesIO(blob)) as im:
        x = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255.0)
    x = 1.0 - x                                                  # ink = 1, background = 0
    x = TF.resize(x[None], [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)[0]
    return x.clamp(0.0, 1.0).numpy().astype(np.float32)


def load_letters(params: dict, n: int, seed: int) -> np.ndarray:
    """`n` Omniglot letters [n,S,S] float32 in [0,1] (S = omniglot.size, 46 in the paper).

    Each letter is one drawing of a different character (characters and drawings chosen
    with a numpy Generator seeded by `seed`), so the same arguments give the same letters.
    """
    path = archive_path(params)
    if not path.is_file():
        raise data.DataError(f"{path}: missing. Fix: run `licm data fetch`")
    size = params.get("omniglot", {}).get("size", 46)
    rng = np.random.default_rng(seed)
    try:
        with zipfile.ZipFile(path) as z:
            chars = _drawings(z)
            if n > len(chars):
                raise LicmError(f"{path}: {len(chars)} characters, cannot draw {n} distinct letters")
            keys = sorted(chars)
            picks = rng.choice(len(keys), size=n, replace=False)
            members = [chars[keys[i]][int(rng.integers(len(chars[keys[i]])))] for i in picks]
            return np.stack([_decode(z.read(m), size) for m in members]) if n else np.zeros((0, size, size), np.float32)
    except zipfile.BadZipFile as exc:
        raise data.DataError(f"{path}: not a valid zip archive ({exc}). Fix: delete data/raw and run `licm data fetch`") from exc


def _check_names(names: list[str], what: str) -> None:
    for name in names:
        if name not in mechanisms.REGISTRY:
            raise config.ParamsError(f"{what}: expected registered mechanisms (one of {sorted(mechanisms.REGISTRY)}), "
                                     f"given {name!r}")


def transform_all(letters: np.ndarray, names: list[str], params: dict, rng: np.random.Generator) -> np.ndarray:
    """Every mechanism applied to every letter: [K, n, H, W] (K = len(names)), in the order of `names`."""
    _check_names(names, "mechanisms")
    return np.stack([mechanisms.REGISTRY[name](letters, params["mechanisms"], rng).astype(np.float32)
                     for name in names])


# ---------------------------------------------------------------- experts

@torch.no_grad()
def committee_outputs(experts, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """All experts on images [n,H,W] -> [n, N', H, W] float32 (experts in eval mode).

    Experts with a larger receptive field (pooling inside) need H, W divisible by 4: the input
    is then zero-padded symmetrically and the output cropped back.
    """
    param = next(experts.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    h, w = x.shape[-2:]
    pad_h, pad_w = (0, 0)
    if getattr(experts, "config", {}).get("receptive_field"):
        pad_h, pad_w = (-h) % 4, (-w) % 4
    was_training = experts.training
    experts.eval()
    outs = []
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            if pad_h or pad_w:
                xb = torch.nn.functional.pad(xb, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
            out = experts(xb)                                    # [b, N', 1, H', W']
            if pad_h or pad_w:
                out = out[..., pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w]
            outs.append(out[:, :, 0].float().cpu())
    finally:
        experts.train(was_training)
    if not outs:
        return np.zeros((0, 0, h, w), np.float32)
    return torch.cat(outs).numpy()


def apply_expert(experts, images: np.ndarray, index: int) -> np.ndarray:
    """Expert `index` of the committee on images [n,H,W] -> [n,H,W]."""
    return committee_outputs(experts, images)[:, index]


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def run_assignment(run_dir: str | Path, names: list[str]) -> list[int]:
    """The assignment of a run, from the win matrix in its metrics.json (rows follow its mechanisms)."""
    from licm.rundir import RunDir

    path = Path(run_dir) / "metrics.json"
    metrics = RunDir(run_dir).metrics()
    if metrics is None:
        raise LicmError(f"{path}: missing, so no win matrix to assign experts to mechanisms. "
                        "Fix: let `licm train` finish the run")
    run_names = metrics.get("mechanisms", names)
    top = specialization.assignment(metrics["win_matrix"])
    missing = [n for n in names if n not in run_names]
    if missing:
        raise LicmError(f"{path}: the run was not trained on mechanisms {missing}")
    return [top[run_names.index(n)] for n in names]


def restoration_table(experts, letters: np.ndarray, names: list[str], params: dict,
                      rng: np.random.Generator, assignment) -> list[dict]:
    """Per mechanism: MSE to the ground-truth letters of its assigned expert's output and of the input.

    Returns one dict per mechanism (order of `names`): mechanism, expert (assigned),
    mse_transformed (untouched transformed letters), mse_restored (assigned expert's output),
    best_expert / mse_best (the expert with the lowest MSE, for comparison), and restored
    (mse_restored < mse_transformed).
    """
    if len(assignment) != len(names):
        raise ValueError(f"assignment: expected {len(names)} entries (one per mechanism), given {len(assignment)}")
    transformed = transform_all(letters, names, params, rng)
    rows = []
    for k, name in enumerate(names):
        outs = committee_outputs(experts, transformed[k])       # [n, N', H, W]
        per_expert = [mse(outs[:, e], letters) for e in range(outs.shape[1])]
        e = int(assignment[k])
        rows.append({
            "mechanism": name, "expert": e,
            "mse_transformed": mse(transformed[k], letters),
            "mse_restored": per_expert[e],
            "best_expert": int(np.argmin(per_expert)), "mse_best": float(min(per_expert)),
            "restored": bool(per_expert[e] < mse(transformed[k], letters)),
        })
    return rows


def combined_restoration(experts, letters: np.ndarray, names: list[str], params: dict,
                         rng: np.random.Generator, assignment) -> dict:
    """LICM Fig. 8: apply `omniglot.combined` in turn, then the experts assigned to `omniglot.restore` in turn.

    Returns {"images": [input, after step 1, ..., ground truth] (each [n,H,W]), "labels": [...],
    "experts": [expert per restore step], "mse": [MSE to ground truth of input and of each step]}.
    """
    o = params["omniglot"]
    _check_names(o["combined"], "omniglot.combined")
    _check_names(o["restore"], "omniglot.restore")
    x = letters
    for name in o["combined"]:
        x = mechanisms.REGISTRY[name](x, params["mechanisms"], rng).astype(np.float32)
    images, labels, used = [x], ["input: " + " + ".join(o["combined"])], []
    for name in o["restore"]:
        if name not in names:
            raise config.ParamsError(f"omniglot.restore: expected mechanisms the run was trained on "
                                     f"(one of {names}), given {name!r}")
        e = int(assignment[names.index(name)])
        x = apply_expert(experts, x, e)
        images.append(x)
        labels.append(f"expert {e} (won {name})")
        used.append(e)
    errors = [mse(im, letters) for im in images]
    images.append(letters)
    labels.append("ground truth")
    return {"images": images, "labels": labels, "experts": used, "mse": errors}


# ---------------------------------------------------------------- figures

def _short(name: str) -> str:
    return name.replace("translate_", "").replace("_", "-")


def _names_of(cfg: dict) -> list[str]:
    return cfg["domains"][cfg["train"]["domain"]]


def _restore_dir(run_dir: Path) -> tuple:
    from licm import load_run

    experts, _disc, cfg = load_run(run_dir)
    names = _names_of(cfg)
    return experts, cfg, names, run_assignment(run_dir, names)


def fig7_grid(experts, letters: np.ndarray, names: list[str], params: dict, rng, assignment,
              title: str, out: Path) -> Path:
    """Columns: one letter per mechanism, transformed; rows: every expert's output, assigned expert on the diagonal."""
    transformed = transform_all(letters, names, params, rng)
    K = len(names)
    cols = [transformed[k, k % len(letters)] for k in range(K)]
    outs = committee_outputs(experts, np.stack(cols))            # [K, N', H, W]
    n_exp = outs.shape[1]
    order = list(dict.fromkeys(int(a) for a in assignment)) + [e for e in range(n_exp) if e not in set(map(int, assignment))]
    fig, axes = plt.subplots(n_exp + 1, K, figsize=(0.9 * K + 0.8, 0.9 * (n_exp + 1) + 0.8), squeeze=False)
    for k in range(K):
        ax = axes[0, k]
        ax.imshow(cols[k], cmap="gray", vmin=0, vmax=1)
        ax.set_title(_short(names[k]), fontsize=7)
        off(ax)
        for r, e in enumerate(order, start=1):
            ax = axes[r, k]
            ax.imshow(outs[k, e], cmap="gray", vmin=0, vmax=1)
            off(ax)
            if int(assignment[k]) == e:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:red")
                    side.set_linewidth(2.5)
            if k == 0:
                ax.set_ylabel(f"E{e}", fontsize=7, rotation=0, labelpad=12, va="center")
    axes[0, 0].set_ylabel("input", fontsize=7, rotation=0, labelpad=16, va="center")
    fig.suptitle(title, fontsize=9)
    return _save(fig, out, params)


def fig8_grid(result: dict, params: dict, title: str, out: Path) -> Path:
    images = result["images"]
    n = len(images[0])
    fig, axes = plt.subplots(len(images), n, figsize=(0.9 * n + 2.4, 0.95 * len(images) + 0.6), squeeze=False)
    for r, (row, label) in enumerate(zip(images, result["labels"])):
        for c in range(n):
            axes[r, c].imshow(row[c], cmap="gray", vmin=0, vmax=1)
            off(axes[r, c])
        text = label + (f"\nMSE {result['mse'][r]:.4f}" if r < len(result["mse"]) else "")
        axes[r, 0].set_ylabel(text, fontsize=6.5, rotation=0, ha="right", va="center", labelpad=6)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out, params)


def _save(fig, out: Path, params: dict) -> Path:
    return save(fig, Path(out), params["figures"]["dpi"])


def licm_fig7(run_dir, params: dict, out) -> Path:
    """LICM Fig. 7: Omniglot letters transformed by each mechanism (columns) through each expert (rows)."""
    experts, cfg, names, assignment = _restore_dir(Path(run_dir))
    o = params["omniglot"]
    letters = load_letters(params, len(names), o["seed"])
    rng = np.random.default_rng(o["seed"])
    return fig7_grid(experts, letters, names, {**cfg, "figures": params["figures"]}, rng, assignment,
                     f"Omniglot {o['size']}x{o['size']} letters through MNIST-trained experts ({Path(run_dir).parent.name}/"
                     f"{Path(run_dir).name}); red frame = expert assigned to the column's mechanism", Path(out))


def licm_fig8(run_dir, params: dict, out) -> Path:
    """LICM Fig. 8: combined mechanisms undone by applying the assigned experts in turn."""
    experts, cfg, names, assignment = _restore_dir(Path(run_dir))
    o = params["omniglot"]
    letters = load_letters(params, o["letters"], o["seed"])
    result = combined_restoration(experts, letters, names, {**cfg, "omniglot": o}, np.random.default_rng(o["seed"]),
                                  assignment)
    return fig8_grid(result, params, f"Combined mechanisms on Omniglot, undone expert by expert "
                                     f"({Path(run_dir).parent.name}/{Path(run_dir).name})", Path(out))


def restoration(run_dir, params: dict) -> dict:
    """Restoration numbers of one run: the per-mechanism table and the Fig. 8 sequence's MSEs."""
    experts, cfg, names, assignment = _restore_dir(Path(run_dir))
    o = params["omniglot"]
    letters = load_letters(params, o["letters"], o["seed"])
    table = restoration_table(experts, letters, names, cfg, np.random.default_rng(o["seed"]), assignment)
    combined = combined_restoration(experts, letters, names, {**cfg, "omniglot": o},
                                    np.random.default_rng(o["seed"]), assignment)
    return {"run": str(run_dir), "letters": int(len(letters)), "size": int(letters.shape[-1]),
            "assignment": dict(zip(names, assignment)), "table": table,
            "restored": int(sum(r["restored"] for r in table)), "mechanisms": len(names),
            "combined": {"labels": combined["labels"][:-1], "experts": combined["experts"], "mse": combined["mse"]}}


def pick_run(runs_dir: Path, experiment: str, params: dict) -> tuple[Path, str]:
    """The run of `experiment` shown for generalization, and why: the typical seed of `runs.load_runset`
    (first fully specialized, else most mechanisms won by distinct experts), the one its figures show."""
    from licm.runs import MissingArtifact, load_runset

    try:
        _, folder, why = load_runset(runs_dir, experiment, params).shown()
    except MissingArtifact as exc:
        raise LicmError(f"{experiment}: no finished run ({exc.reason}). Fix: {exc.fix}") from exc
    return folder, why


def _not_run(params: dict, experiment: str, reason: str, figs: Path, out: Path) -> None:
    """Labelled placeholder figures and a 'not run' restoration.json: the pipeline declares them as outputs."""
    for fig_id, what in (("licm-fig7", "Omniglot letters through every expert"),
                         ("licm-fig8", "combined mechanisms undone expert by expert")):
        plot.placeholder(figs / f"{fig_id}.png", [f"{fig_id}: not drawn at profile {params['profile']} (placeholder)",
                                                  "", what, "", f"missing: {reason}"], reason, params["figures"]["dpi"])
    data.atomic_write_text(out / "restoration.json", json.dumps({"not_run": True, "reason": reason}, indent=1) + "\n")
    print(f"licm omniglot: {experiment} not run ({reason}): placeholders written")


def _cmd_omniglot(args) -> None:
    params = config.load(args.params, profile=args.profile)
    t0 = time.perf_counter()
    figs = Path(args.figures)
    if args.run:
        run_dir, why = Path(args.run), "given with --run"
    else:
        try:
            run_dir, why = pick_run(Path(args.runs), args.experiment, params)
        except LicmError as exc:          # the profile does not run the experiment: say so, fail nothing
            _not_run(params, args.experiment, str(exc), figs, Path(args.out))
            return
    p7 = licm_fig7(run_dir, params, figs / "licm-fig7.png")
    p8 = licm_fig8(run_dir, params, figs / "licm-fig8.png")
    result = restoration(run_dir, params)
    result["why_this_run"] = why
    out = Path(args.out) / "restoration.json"
    data.atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"licm omniglot: {run_dir} ({why}): {p7}, {p8}, {out}: {result['restored']}/{result['mechanisms']} "
          f"mechanisms restored (assigned expert's MSE below the input's) in {time.perf_counter() - t0:.1f}s")


def register(sub) -> None:
    p = sub.add_parser("omniglot", help="Omniglot generalization of a trained run (licm-fig7, licm-fig8, restoration.json)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run folder, e.g. results/runs/main/seed0")
    which.add_argument("--experiment", help="pick one of this experiment's finished runs (see pick_run)")
    p.add_argument("--runs", default=paths.result("runs"), help="runs folder for --experiment (default: %(default)s)")
    p.add_argument("--figures", default=paths.result("figures"), help="figure folder (default: %(default)s)")
    p.add_argument("--out", default=paths.result("omniglot"), help="folder for restoration.json (default: %(default)s)")
    p.set_defaults(func=_cmd_omniglot)
