"""One function per figure ID (the report lists them, src/licm/report.py): artifacts in, PNG out (no training here).

Each figure is saved as results/figures/<ID>.png so the report can link it by its ID.

Two groups, two subcommands:
* `licm figures data`: figures drawn from the prepared data alone (expand-fig1, expand-fig2).
* `licm figures runs`: figures drawn from run artifacts (`RUN_FIGURE_IDS`): each run's
  metrics.json, history.csv, evaluations and checkpoint.pt, `licm evaluate`'s JSON, and the
  model code itself (licm-table1, expand-fig3, expand-fig4). Trained models are only run forward,
  on a handful of digits. A figure whose experiment was not run at this profile is still written,
  as a labelled placeholder that names the missing experiment and the command that would make it:
  the pipeline declares every PNG as an output, so all of them must always exist.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import matplotlib.ticker
import numpy as np

from licm import config, data, fidelity, paths, plot, runs, stats
from licm.plot import digit, frame, plt, save
from licm.runs import MissingArtifact, RunSet, load_evaluation, load_runset, run_dir
from licm.specialization import assignment


def one_per_mechanism(split: dict[str, np.ndarray], n_mechanisms: int, seed: int) -> list[int]:
    """A seeded choice of one row per mechanism, all from the same source digit when possible."""
    rng = np.random.default_rng(seed)
    return [int(rng.choice(np.flatnonzero(split["mechanism"] == k))) for k in range(n_mechanisms)]


def mechanism_examples(prepared_dir: Path, domain: str, title: str, seed: int, dpi: int, out: Path) -> Path:
    """A row of test digits, one per mechanism of the domain, each titled with its label and name."""
    names = data.mechanism_names(prepared_dir, domain)
    test = data.load_split(prepared_dir, domain, "test")
    rows = one_per_mechanism(test, len(names), seed)
    fig, axes = plt.subplots(1, len(names), figsize=(1.25 * len(names), 2.1), layout="constrained")   # no overlaps
    for k, (ax, row) in enumerate(zip(axes, rows)):
        ax.imshow(test["images"][row], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{k}\n" + "\n".join(names[k].split("_", 1)).replace("_", " "), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return save(fig, out, dpi)


def expand_fig1(params: dict, out_dir: Path) -> Path:
    """EXPAND Fig. 1: the 10 original transformations (0-7 translations, 8 noise, 9 inversion)."""
    return mechanism_examples(Path(params["data"]["prepared_dir"]), "paper",
                              "Paper domain: 10 mechanisms (LICM App. C)", params["figures"]["examples_seed"],
                              params["figures"]["dpi"], out_dir / "expand-fig1.png")


def expand_fig2(params: dict, out_dir: Path) -> Path:
    """EXPAND Fig. 2: rotations by 45..315 degrees, stretches and compressions by 1.75."""
    return mechanism_examples(Path(params["data"]["prepared_dir"]), "expanded",
                              "Expanded domain: 11 mechanisms (EXPAND §4.1)", params["figures"]["examples_seed"],
                              params["figures"]["dpi"], out_dir / "expand-fig2.png")


DATA_FIGURES = {"expand-fig1": expand_fig1, "expand-fig2": expand_fig2}
assert tuple(DATA_FIGURES) == paths.DATA_FIGURES


# ================================================================ figures of runs

RUN_FIGURE_IDS = paths.RUN_FIGURES

# What each figure shows, repeated on its placeholder when it cannot be drawn.
DESCRIPTIONS = {
    "licm-fig1": "Problem set-up from real data: canonical digits (P), one example per mechanism (Q_i), "
                 "and the expert that inverts it.",
    "licm-fig2": "One transformed digit fed to every expert: each output with its discriminator score, "
                 "the winner marked.",
    "licm-fig3": "16 random transformed test inputs and the highest-scoring expert's outputs after 1000 iterations.",
    "licm-fig4": "Discriminator score of every expert over iterations, one panel per mechanism (moving average "
                 "over 50 iterations), for a typical successful seed.",
    "licm-fig5": "Proportion of test digits won by each expert for each mechanism: after approximate identity "
                 "initialization and after 1000 iterations.",
    "licm-fig6": "Accuracy of a pretrained MNIST classifier over iterations on transformed test digits, "
                 "the winning experts' outputs and the original digits; (b) how many experts hold a mechanism, per seed.",
    "licm-fig9": "Proportion of data won by each expert per mechanism with 16 experts (left) and 6 experts (right).",
    "licm-table1": "Architectures of expert and discriminator, generated from the model code, with parameter counts.",
    "expand-fig3": "Discriminator architecture diagram, generated from the model code.",
    "expand-fig4": "Expert architecture diagram, generated from the model code.",
    "expand-fig5": "Score of each expert over iterations for each original transformation (running average over 50).",
    "expand-fig6": "One input per original transformation and the highest-scoring expert's output after training.",
    "expand-fig7": "Expert scores over iterations when training with the Wasserstein loss.",
    "expand-fig8": "Score of each expert over iterations for each expanded-domain transformation.",
    "expand-fig9": "One input per expanded-domain transformation and the highest-scoring expert's output "
                   "after training.",
    "fidelity": "Fidelity study (ours): fully specialized seeds per arm with 95% intervals against the literal "
                "step, one unstated detail of the step changed per arm.",
}

# LICM Fig. 2 shows a noisy digit; the first mechanism of the domain stands in when there is none.
FIG2_MECHANISM = "noise"

# One colour per expert index in every figure: tab10, then further colours far from its hues.
EXPERT_COLORS = list(plt.get_cmap("tab10").colors) + [
    "#000000", "#000075", "#800000", "#f032e6", "#469990", "#d4a600", "#7fbf00", "#b19cd9", "#a0522d", "#4c4c4c"]


def setting(params: dict, key: str):
    """A figure setting from params.yaml's `figures:` block (the papers' values, commented there)."""
    return params["figures"][key]


def expert_color(index: int):
    """The colour of expert `index`, the same in every figure."""
    return EXPERT_COLORS[index % len(EXPERT_COLORS)]


def expert_linestyle(index: int) -> str:
    """Solid for experts 0-9, dashed beyond: a second cue when 16 curves share a panel."""
    return "-" if index < 10 else "--"


def pretty(name: str, wrap: bool = False) -> str:
    """Short readable mechanism name for panel titles (translate_up_left -> up-left, rotate_45 -> rotate 45°);
    `wrap` breaks a two-word name over two lines, for titles of narrow image panels."""
    if name.startswith("translate_"):
        return name[len("translate_"):].replace("_", "-")
    if name.startswith("rotate_"):
        return f"rotate {name[len('rotate_'):]}°"
    text = name.replace("_", " ")
    return text.replace(" ", "\n", 1) if wrap and len(text) > 10 else text


@lru_cache(maxsize=4)
def cached_test_split(prepared_dir: str, domain: str) -> dict[str, np.ndarray]:
    """The prepared test split, read once per command (several figures need it)."""
    return data.load_split(prepared_dir, domain, "test")


# ---------------------------------------------------------------- data behind the figures

def moving_average(values, window: int) -> np.ndarray:
    """Trailing moving average along the last axis over `window` points, NaNs ignored ("valid" mode:
    output length L - w + 1, entry i averages points i..i+w-1). The window is clipped to the series'
    length, so a short run still gives one point; a window holding only NaNs gives NaN."""
    x = np.asarray(values, dtype=np.float64)
    length = x.shape[-1]
    if length == 0:
        return x.copy()
    w = max(1, min(int(window), length))
    ok = ~np.isnan(x)
    zero = np.zeros((*x.shape[:-1], 1))
    total = np.concatenate([zero, np.cumsum(np.where(ok, x, 0.0), axis=-1)], axis=-1)
    count = np.concatenate([zero, np.cumsum(ok, axis=-1)], axis=-1)
    s, c = total[..., w:] - total[..., :-w], count[..., w:] - count[..., :-w]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def score_curves(history, mechanisms: list[str], n_experts: int,
                 window: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per mechanism: (iterations [L'], smoothed mean score of each expert [N', L']) from history.csv.

    `window` is in iterations; history.csv keeps every log_every-th iteration, so the window in rows is
    window / log_every. Each smoothed point is drawn at the last iteration of its window."""
    curves = {}
    for name in mechanisms:
        table = (history[history["mechanism"] == name]
                 .pivot(index="iteration", columns="expert", values="score_mean")
                 .reindex(columns=range(n_experts)).sort_index())
        its = table.index.to_numpy()
        smooth = moving_average(table.to_numpy().T, window_rows(its, window))
        curves[name] = (its[len(its) - smooth.shape[1]:], smooth)
    return curves


def window_rows(iterations, window: int) -> int:
    """The moving-average window in rows of history.csv: `window` iterations / log_every, clipped to half the
    logged rows (rounded up) so that a short run still shows a curve, not a single point."""
    its = np.asarray(iterations)
    step = int(np.median(np.diff(its))) if len(its) > 1 else 1
    rows = max(1, int(round(window / max(step, 1))))
    return max(1, min(rows, -(-len(its) // 2)))


def nearest_index(iterations, target: int) -> int:
    """Index of the evaluation closest to iteration `target` (the earlier one on ties)."""
    its = np.asarray(iterations, dtype=np.int64)
    if its.size == 0:
        raise ValueError("nearest_index: no evaluation")
    return int(np.argmin(np.abs(its - int(target))))


def win_matrices(evaluation: dict, n_mechanisms: int, n_experts: int, target: int) -> list[tuple[int, np.ndarray]]:
    """LICM Fig. 5: (iteration, win matrix) at the first evaluation (0 = after AII) and at the one nearest
    to `target`, each from the evaluation's winner row via specialization.matrix_from_winners."""
    from licm.specialization import matrix_from_winners

    its = evaluation["iterations"]
    picked = [0, nearest_index(its, target)]
    return [(int(its[k]), matrix_from_winners(evaluation["winner"][k], evaluation["mechanism"], n_mechanisms,
                                              n_experts)) for k in picked]


def accuracy_curves(evals: list[dict]) -> dict[str, np.ndarray]:
    """LICM Fig. 6 data from `licm evaluate` results of several seeds, on the iterations all of them have:
    iterations [K], experts [S,K] (accuracy on the winners' outputs), transformed [S], original [S]."""
    if not evals:
        raise ValueError("accuracy_curves: no evaluation")
    common = sorted(set.intersection(*({s["iteration"] for s in e["steps"]} for e in evals)))
    experts = np.array([[{s["iteration"]: s["accuracy_experts"] for s in e["steps"]}[i] for i in common]
                        for e in evals], dtype=np.float64).reshape(len(evals), len(common))
    return {"iterations": np.asarray(common, dtype=np.int64), "experts": experts,
            "transformed": np.array([e["accuracy_transformed"] for e in evals], dtype=np.float64),
            "original": np.array([e["accuracy_original"] for e in evals], dtype=np.float64)}


def grid_columns(n_rows: int, count: int, seed: int) -> np.ndarray:
    """LICM Fig. 3: `count` distinct random columns of the evaluation (seeded), fewer if it has fewer."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=min(count, n_rows), replace=False))


def forward_scores(experts, discriminator, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every expert on images [n,H,W] (licm.step.compete, eval mode): outputs [n,N',H,W] and the
    discriminator's score of each [n,N'] (probability, or critic value)."""
    import torch

    from licm.step import compete

    with torch.no_grad():
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]       # [n, 1 seed, H, W]
        out, logits, _ = compete(experts.committee, discriminator.discs, x, "running")
        scores = logits[:, 0] if discriminator.wasserstein else torch.sigmoid(logits[:, 0])
    return out[:, 0].numpy(), scores.numpy()


def score_text(value: float) -> str:
    """A score for a panel title: 3 decimals, or 2 significant digits when that would print 0.000."""
    return f"{value:.3f}" if abs(value) >= 0.001 or value == 0 else f"{value:.1e}"


def score_label(params: dict) -> str:
    """Axis label of a discriminator score, with its direction. For the Wasserstein critic, train.py
    trains the critic to raise real digits' values (loss = mean fake - mean real) and the experts to
    raise theirs (loss = -value), so HIGHER means more canonical here; EXPAND's Fig. 7 plots the
    opposite sign (lower = more canonical)."""
    if params["train"]["loss"] == "wasserstein":
        return "critic value (higher = more canonical)"
    return "discriminator score D(E(x'))"


# ---------------------------------------------------------------- architecture from the model code

# Block colours of EXPAND Fig. 3 and 4 (conv yellow, BN green, ELU orange, pool purple, FC gray, sigmoid pink).
BLOCK_COLORS = {"Conv2d": "#f5d547", "BatchNorm2d": "#7cc47f", "ELU": "#f39c4a", "AvgPool2d": "#a98bd6",
                "Linear": "#b8b8b8", "Sigmoid": "#f4a6c6", "Upsample": "#8ec5e8", "Flatten": "#ffffff"}
# Modules that start a row of the architecture table; the others (BN, ELU, sigmoid) join the row before.
ROW_STARTS = ("Conv2d", "Linear", "AvgPool2d", "Upsample", "Flatten")


def layer_walk(net, input_shape: tuple[int, ...]) -> list[dict]:
    """Each child module of `net` (an nn.Sequential) in order: kind, label, output shape (a forward hook
    on a zero input of `input_shape`, batch dimension dropped) and its own parameter count."""
    import torch

    rows: list[dict] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, r=rows: r.append({"shape": tuple(o.shape[1:])}))
             for m in net.children()]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    finally:
        net.train(was)
        for h in hooks:
            h.remove()
    for row, m in zip(rows, net.children()):
        row.update(kind=type(m).__name__, label=module_label(m), params=sum(p.numel() for p in m.parameters()))
    return rows


def module_label(m) -> str:
    """A short Table-1 style description of one module (3x3 conv, 32 / 2x2 avg pool / FC 1024 / BN / ELU)."""
    kind = type(m).__name__
    if kind == "Conv2d":
        k = m.kernel_size
        groups = f", groups {m.groups}" if m.groups > 1 else ""
        return f"{k[0]}×{k[1]} conv, {m.out_channels}{groups}"
    if kind == "AvgPool2d":
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        return f"{k}×{k} avg pool"
    if kind == "Upsample":
        return f"upsample ×{int(m.scale_factor)} ({m.mode})"
    if kind == "Linear":
        return f"FC {m.out_features}"
    return {"BatchNorm2d": "BN", "ELU": "ELU", "Sigmoid": "sigmoid", "Flatten": "flatten"}.get(kind, kind)


def architecture(params: dict) -> dict:
    """The networks of experiment `main` at this profile, walked module by module (see `layer_walk`).

    The discriminator's output nonlinearity is applied in its forward(), not by a module, so it is added
    as a last entry: sigmoid, or none for a Wasserstein critic."""
    from licm import models

    p = config.experiment(params, "main")
    experts, disc = models.seed_networks(p, 0)
    size = p["data"]["image_size"]
    expert = experts[0]
    disc_rows = layer_walk(disc.net, (1, size, size))
    disc_rows.append({"kind": "Identity" if disc.wasserstein else "Sigmoid", "shape": disc_rows[-1]["shape"],
                      "params": 0, "label": "no sigmoid (critic)" if disc.wasserstein else "sigmoid",
                      "in_forward": True})
    return {"params": p, "size": size, "experts": len(experts),
            "expert": layer_walk(expert.net, (1, size, size)), "discriminator": disc_rows,
            "expert_total": sum(q.numel() for q in expert.parameters()),
            "committee_total": sum(q.numel() for e in experts for q in e.parameters()),
            "discriminator_total": sum(q.numel() for q in disc.parameters())}


def table_rows(walk: list[dict]) -> list[dict]:
    """Group modules into Table-1 rows: a conv/FC/pool/upsample/flatten with the BN and activations after it."""
    rows: list[dict] = []
    for layer in walk:
        if layer["kind"] in ROW_STARTS or not rows:
            rows.append({"label": layer["label"], "shape": layer["shape"], "params": layer["params"]})
        else:
            rows[-1]["label"] += ", " + layer["label"]
            rows[-1]["shape"] = layer["shape"]
            rows[-1]["params"] += layer["params"]
    return rows


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape)


def widths_in_matrix(params: dict) -> list[int]:
    """Expert widths used by the experiment matrix (base value and every override), sorted."""
    found = {params["model"]["expert_width"]}
    for e in params["experiments"].values():
        w = e.get("overrides", {}).get("model", {}).get("expert_width")
        if w is not None:
            found.add(w)
    return sorted(found)


# ---------------------------------------------------------------- drawing helpers

def draw_win_matrix(ax, matrix: np.ndarray, mechanisms: list[str], title: str):
    """Mechanism x expert heatmap of proportions in [0, 1], shares of at least 1% written in the cells."""
    matrix = np.asarray(matrix)
    M, N = matrix.shape
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(N))
    ax.set_xticklabels([str(j) for j in range(N)], fontsize=7)
    for j, tick in enumerate(ax.get_xticklabels()):
        tick.set_color(expert_color(j))
    ax.set_yticks(range(M))
    ax.set_yticklabels([pretty(n) for n in mechanisms], fontsize=7)
    ax.set_xlabel("expert", fontsize=8)
    ax.set_ylabel("mechanism", fontsize=8)
    for i in range(M):
        for j in range(N):
            if matrix[i, j] >= 0.01:
                ax.text(j, i, f"{matrix[i, j]:.2f}".lstrip("0") if matrix[i, j] < 1 else "1",
                        ha="center", va="center", fontsize=5.5 if N > 10 else 6.5,
                        color="white" if matrix[i, j] > 0.6 else "black")
    ax.set_title(title, fontsize=8)
    return im


def placeholder_lines(fig_id: str, missing: list[MissingArtifact], profile: str) -> list[str]:
    """A placeholder's text: which figure, what it would show, which experiment is missing and why, at which
    profile, and the command that would produce it."""
    lines = [f"{fig_id}: not drawn at profile {profile} (placeholder)", "", DESCRIPTIONS[fig_id], ""]
    for m in missing:
        lines += [f"missing: experiment {m.experiment}: {m.reason}", f"to draw it: {m.fix}", ""]
    lines.append("then run `licm figures runs` again")
    return lines


def placeholder(fig_id: str, missing: list[MissingArtifact], profile: str, out: Path, dpi: int) -> Path:
    """A labelled stand-in PNG (see `placeholder_lines`): the pipeline declares every figure as an output."""
    reason = "; ".join(f"experiment {m.experiment}: {m.reason}" for m in missing)
    return plot.placeholder(out, placeholder_lines(fig_id, missing, profile), reason, dpi)


# ---------------------------------------------------------------- figure context

@dataclass
class Context:
    """What every figure function reads: params, the artifact roots, and cached run sets."""

    params: dict
    runs_dir: Path
    eval_dir: Path
    out_dir: Path
    _runsets: dict = field(default_factory=dict)

    @property
    def dpi(self) -> int:
        return self.params["figures"]["dpi"]

    @property
    def seed(self) -> int:
        return self.params["figures"]["examples_seed"]

    def runset(self, name: str) -> RunSet:
        """The experiment's finished runs (read once), or MissingArtifact."""
        if name not in self._runsets:
            try:
                self._runsets[name] = load_runset(self.runs_dir, name, self.params)
            except MissingArtifact as exc:
                self._runsets[name] = exc
        found = self._runsets[name]
        if isinstance(found, MissingArtifact):
            raise found
        return found

    def test(self, domain: str) -> dict[str, np.ndarray]:
        return cached_test_split(str(self.params["data"]["prepared_dir"]), domain)

    def out(self, fig_id: str) -> Path:
        return self.out_dir / f"{fig_id}.png"


def _run_params(folder: Path, experiment: str) -> dict:
    """The run's resolved params (its params.json)."""
    return run_dir(folder, experiment, "params").params()


def _load_models(folder: Path, experiment: str):
    """The run's experts and discriminator (CPU, eval mode); a run without checkpoint -> MissingArtifact."""
    from licm import load_run

    experts, disc, _ = load_run(run_dir(folder, experiment, "checkpoint").path)
    return experts, disc


# ---------------------------------------------------------------- the figures

def _grid(rows: int, cols: int, width: float, height: float):
    """Image grid with constrained layout, so suptitle, panel titles and row labels never overlap."""
    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False, layout="constrained")


def _row_label(ax, text: str) -> None:
    ax.set_ylabel(text, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)


def fig_setup(ctx: Context, fig_id: str = "licm-fig1", experiment: str = "main") -> Path:
    """LICM Fig. 1 from real data: canonical digits P, one transformed digit per mechanism (Q_i), and the
    output of the expert that won that mechanism in the run's final win matrix, framed in its colour."""
    rs = ctx.runset(experiment)
    seed, folder, caption = rs.shown()
    m, p = rs.metrics[seed], _run_params(folder, experiment)
    names, matrix = m["mechanisms"], np.asarray(m["win_matrix"])
    experts, disc = _load_models(folder, experiment)
    prepared, domain = ctx.params["data"]["prepared_dir"], p["train"]["domain"]
    canonical = data.load_split(prepared, domain, "train_canonical")
    test = ctx.test(domain)
    M = len(names)
    rng = np.random.default_rng(ctx.seed)
    p_rows = rng.choice(len(canonical["images"]), size=M, replace=False)
    q_rows = one_per_mechanism(test, M, ctx.seed)
    inputs = test["images"][q_rows]
    outputs, _ = forward_scores(experts, disc, inputs)
    top = assignment(matrix)
    fig, axes = _grid(3, M, 1.05 * M + 1.6, 4.6)
    for k in range(M):
        digit(axes[0, k], canonical["images"][p_rows[k]])
        digit(axes[1, k], inputs[k], f"Q{k}: {pretty(names[k], wrap=True)}")
        e = int(top[k])
        digit(axes[2, k], outputs[k, e], f"E{e} (wins {matrix[k, e]:.0%})")
        frame(axes[2, k], expert_color(e))
    for r, text in enumerate(["P: canonical\ndigits", "Q_i: one digit\nper mechanism",
                              "output of the\nexpert that won\nthe mechanism"]):
        _row_label(axes[r, 0], text)
    fig.suptitle("Set-up: canonical digits P, transformed digits Q_i = M_i(P), and each mechanism's winning "
                 f"expert applied to its digit\n{caption}", fontsize=9)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def fig_competition(ctx: Context, fig_id: str = "licm-fig2", experiment: str = "main") -> Path:
    """LICM Fig. 2: one transformed digit through every expert, each output titled with its score; the
    winner (highest score) is framed and named."""
    rs = ctx.runset(experiment)
    seed, folder, caption = rs.shown()
    names, p = rs.metrics[seed]["mechanisms"], _run_params(folder, experiment)
    experts, disc = _load_models(folder, experiment)
    test = ctx.test(p["train"]["domain"])
    k = names.index(FIG2_MECHANISM) if FIG2_MECHANISM in names else 0
    row = int(np.random.default_rng(ctx.seed).choice(np.flatnonzero(test["mechanism"] == k)))
    outputs, scores = forward_scores(experts, disc, test["images"][row:row + 1])
    win = int(scores[0].argmax())
    N = outputs.shape[1]
    fig, axes = _grid(1, N + 1, 1.05 * (N + 1), 2.5)
    digit(axes[0, 0], test["images"][row], f"input\n({pretty(names[k])})", 8)
    frame(axes[0, 0], "#444444", 1.5)
    name = "critic" if p["train"]["loss"] == "wasserstein" else "D"
    for j in range(N):
        ax = axes[0, j + 1]
        digit(ax, outputs[0, j], f"E{j}\n{name} = {score_text(scores[0, j])}" + ("\nWINNER" if j == win else "\n"),
               7.5)
        if j == win:
            frame(ax, expert_color(j), 4)
    fig.suptitle(f"One {pretty(names[k])} digit fed to every expert, each output titled with its discriminator "
                 f"score; the winner (expert {win}) is framed\n{caption}", fontsize=9)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def fig_grid(ctx: Context, fig_id: str = "licm-fig3", experiment: str = "main") -> Path:
    """LICM Fig. 3: random transformed test digits (top) and their winners' outputs (bottom), both read from
    evaluation.npz at the evaluation nearest to the paper's iteration 1000."""
    rs = ctx.runset(experiment)
    seed, folder, caption = rs.shown()
    names, p = rs.metrics[seed]["mechanisms"], _run_params(folder, experiment)
    ev = load_evaluation(folder, experiment)
    target = setting(ctx.params, "target_iteration")
    k = nearest_index(ev["iterations"], target)
    cols = grid_columns(len(ev["test_index"]), setting(ctx.params, "grid_examples"), ctx.seed)
    test = ctx.test(p["train"]["domain"])
    n = len(cols)
    fig, axes = _grid(2, n, 0.85 * n + 1.2, 3.0)
    for c, col in enumerate(cols):
        digit(axes[0, c], test["images"][ev["test_index"][col]], pretty(names[ev["mechanism"][col]], wrap=True), 6.5)
        w = int(ev["winner"][k, col])
        digit(axes[1, c], ev["outputs"][k, col] / 255.0, f"E{w}", 7)
        frame(axes[1, c], expert_color(w), 2)
    _row_label(axes[0, 0], "input")
    _row_label(axes[1, 0], "winner's\noutput")
    it = int(ev["iterations"][k])
    fig.suptitle(f"{n} random transformed test digits (top) and the highest-scoring expert's output at iteration {it} "
                 f"(bottom; the evaluation nearest to {target})\n{caption}", fontsize=9)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def fig_scores(ctx: Context, fig_id: str, experiment: str, what: str) -> Path:
    """LICM Fig. 4 / EXPAND Fig. 5, 7, 8: each expert's mean discriminator score on each mechanism's
    training digits over iterations, moving average, one panel per mechanism, one colour per expert."""
    rs = ctx.runset(experiment)
    seed, folder, caption = rs.shown()
    names, p = rs.metrics[seed]["mechanisms"], _run_params(folder, experiment)
    N = p["model"]["experts"]
    history = run_dir(folder, experiment, "history").history()
    window = setting(ctx.params, "moving_average")
    curves = score_curves(history, names, N, window)
    top = assignment(rs.metrics[seed]["win_matrix"])
    M = len(names)
    ncols = min(M, 5 if M <= 10 else 6)
    nrows = -(-M // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 2.3 * nrows + 1.3), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    wgan = p["train"]["loss"] == "wasserstein"
    for i, name in enumerate(names):
        ax = axes.flat[i]
        its, smooth = curves[name]
        few = len(its) <= 20
        for j in range(N):
            ax.plot(its, smooth[j], color=expert_color(j), ls=expert_linestyle(j), lw=1.1, label=f"expert {j}",
                    marker="o" if few else None, ms=3)
        ax.set_title(f"{pretty(name)} (final winner E{top[i]})", fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if not wgan:
            ax.set_ylim(-0.02, 1.02)
    for ax in axes.flat[M:]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("iteration", fontsize=8)
    for i in range(M, nrows * ncols):      # a panel above an empty slot carries the x axis labels
        axes.flat[i - ncols].xaxis.set_tick_params(labelbottom=True)
        axes.flat[i - ncols].set_xlabel("iteration", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(score_label(p), fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=N if N <= 12 else -(-N // 2), fontsize=7.5,
               frameon=False)
    logged = np.sort(history["iteration"].unique())
    used = window_rows(logged, window) * (int(np.median(np.diff(logged))) if len(logged) > 1 else 1)
    sign = ("\nWasserstein critic values: higher = more canonical here (train.py trains the critic to raise "
            "real digits' values); EXPAND Fig. 7 plots the opposite sign" if wgan else "")
    fig.suptitle(f"{what}: score of every expert on each mechanism's training digits over iterations "
                 f"(moving average over {used} iterations){sign}\n{caption}", fontsize=9.5)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def fig_assignments(ctx: Context, fig_id: str = "licm-fig5", experiment: str = "main") -> Path:
    """LICM Fig. 5: win matrices after approximate identity init (iteration 0) and at the evaluation
    nearest to iteration 1000, recomputed from the winners recorded in evaluation.npz."""
    rs = ctx.runset(experiment)
    seed, folder, caption = rs.shown()
    names, p = rs.metrics[seed]["mechanisms"], _run_params(folder, experiment)
    ev = load_evaluation(folder, experiment, ("iterations", "mechanism", "winner", "test_index"))
    target = setting(ctx.params, "target_iteration")
    (it0, m0), (it1, m1) = win_matrices(ev, len(names), p["model"]["experts"], target)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.0), layout="constrained")
    first = "after approximate identity init" if p["aii"]["enabled"] else "at random init (no AII)"
    draw_win_matrix(axes[0], m0, names, f"(a) iteration {it0}: {first}")
    im = draw_win_matrix(axes[1], m1, names, f"(b) iteration {it1} (evaluation nearest to {target})")
    fig.colorbar(im, ax=axes, shrink=0.8, label="proportion of the mechanism's test digits won")
    fig.suptitle(f"Proportion of each mechanism's test digits ({len(ev['test_index'])} in all) won by each expert"
                 f"\n{caption}", fontsize=9.5)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def fig_accuracy(ctx: Context, fig_id: str = "licm-fig6", experiment: str = "main") -> Path:
    """LICM Fig. 6: classifier accuracy on the winners' outputs over iterations (every seed thin, their
    mean bold), with the accuracy on the transformed digits and on the originals as dashed levels."""
    rs = ctx.runset(experiment)
    seeds = sorted(rs.metrics)
    files = {s: ctx.eval_dir / experiment / f"seed{s}.json" for s in seeds}
    evaluated = [s for s in seeds if files[s].is_file()]
    evals = [json.loads(files[s].read_text()) for s in evaluated]
    if not evals:
        raise MissingArtifact(experiment, f"no evaluation in {ctx.eval_dir / experiment} (seed<K>.json)",
                              f"`licm evaluate --run {ctx.runs_dir / experiment}/seed{seeds[0]} "
                              f"--out {ctx.eval_dir / experiment}/seed{seeds[0]}.json` for each seed")
    acc = accuracy_curves(evals)
    its = acc["iterations"]
    fig, (ax, ax_b) = plt.subplots(1, 2, figsize=(14, 4.8), layout="constrained", width_ratios=[1.25, 1])
    for row in acc["experts"]:
        ax.plot(its, row, color="tab:blue", lw=0.7, alpha=0.35)
    ax.plot(its, acc["experts"].mean(axis=0), color="tab:blue", lw=2.2, marker="o", ms=3,
            label=f"winning experts' outputs (mean; thin: each seed), final {acc['experts'][:, -1].mean():.1%}")
    ax.axhline(acc["original"].mean(), color="tab:green", ls="--", lw=1.5,
               label=f"original digits, upper bound ({acc['original'].mean():.1%})")
    ax.axhline(acc["transformed"].mean(), color="tab:red", ls="--", lw=1.5,
               label=f"transformed test digits ({acc['transformed'].mean():.1%})")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("classifier accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"(a) Accuracy of the pretrained MNIST classifier over iterations\n{experiment}: mean of "
                 f"{len(evals)} seed(s), profile {rs.profile}, {evals[0]['examples']} test digits each", fontsize=9.5)
    draw_holding(ax_b, evals, [bool(rs.metrics[s]["fully_specialized"]) for s in evaluated])
    return save(fig, ctx.out(fig_id), ctx.dpi)


def experts_holding(evaluation: dict) -> tuple[list[int], list[int]]:
    """Per evaluated iteration, how many experts hold a mechanism (are its most frequent winner)."""
    return ([int(s["iteration"]) for s in evaluation["steps"]],
            [len(set(assignment(s["win_matrix"]))) for s in evaluation["steps"]])


def draw_holding(ax, evals: list[dict], fully: list[bool]) -> None:
    """Beyond LICM Fig. 6: how many experts hold a mechanism (win the most of its test digits) at each
    evaluation, one line per seed. Algorithm 1 trains only winners, so whether an expert holding none
    is recruited later is what separates the seeds that specialize fully (licm-c1's note)."""
    n_experts = len(evals[0]["steps"][0]["win_matrix"][0])
    for i, (ev, ok) in enumerate(zip(evals, fully)):
        its, held = experts_holding(ev)
        offset = 0.12 * (i - (len(evals) - 1) / 2) / max(1, len(evals) - 1)   # keeps equal lines apart
        ax.step(its, np.asarray(held) + offset, where="post", lw=1.3, color="tab:green" if ok else "tab:red",
                alpha=0.8)
    for ok, label in ((True, "fully specialized at the end"), (False, "not fully specialized")):
        k = sum(f == ok for f in fully)
        ax.plot([], [], color="tab:green" if ok else "tab:red", label=f"{label} ({k} seed(s))")
    ax.set_ylim(0, n_experts + 0.6)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"experts holding a mechanism (of {n_experts})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("(b) Beyond the paper: experts holding at least one mechanism, one line per seed\n"
                 "(Algorithm 1 trains only winners, so an expert holding none is rarely trained)", fontsize=9.5)


def fig_experts_count(ctx: Context, fig_id: str = "licm-fig9") -> Path:
    """LICM Fig. 9: final win matrices with too many experts (experts_16, left) and too few (experts_6,
    right). A panel whose experiment is missing says so; both missing -> placeholder."""
    panels, missing = [], []
    for name in ("experts_16", "experts_6"):
        try:
            rs = ctx.runset(name)
        except MissingArtifact as exc:
            panels.append((name, exc))
            missing.append(exc)
            continue
        seed, folder, caption = rs.shown()
        panels.append((name, (rs.metrics[seed], caption)))
    if len(missing) == len(panels):
        raise MissingGroup(missing)
    widths = [16 if isinstance(x, MissingArtifact) else len(x[0]["win_matrix"][0]) for _, x in panels]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.4), layout="constrained",
                             gridspec_kw={"width_ratios": [max(w, 8) for w in widths]})
    im = None
    for ax, (name, found) in zip(axes, panels):
        if isinstance(found, MissingArtifact):
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{name} not drawn:\n{found.reason}\n\nto draw it: {found.fix}", ha="center",
                    va="center", fontsize=8, wrap=True, transform=ax.transAxes,
                    bbox={"boxstyle": "round", "facecolor": "#f3f3f3", "edgecolor": "#999999"})
            continue
        m, caption = found
        N = len(m["win_matrix"][0])
        im = draw_win_matrix(ax, np.asarray(m["win_matrix"]), m["mechanisms"],
                             f"{N} experts for {len(m['mechanisms'])} mechanisms\n" + caption.replace(" (", "\n(", 1))
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="proportion of the mechanism's test digits won")
    fig.suptitle("Proportion of each mechanism's test digits won by each expert at the end of training: "
                 "too many experts (left), too few (right)", fontsize=10)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def fig_best_outputs(ctx: Context, fig_id: str, experiment: str, what: str) -> Path:
    """EXPAND Fig. 6 / 9: one test digit per mechanism (top) and the output of the expert the discriminator
    scores highest on it (bottom), titled with that expert and its score."""
    rs = ctx.runset(experiment)
    seed, folder, caption = rs.shown()
    names, p = rs.metrics[seed]["mechanisms"], _run_params(folder, experiment)
    experts, disc = _load_models(folder, experiment)
    test = ctx.test(p["train"]["domain"])
    rows = one_per_mechanism(test, len(names), ctx.seed)
    outputs, scores = forward_scores(experts, disc, test["images"][rows])
    M = len(names)
    fig, axes = _grid(2, M, 1.15 * M + 1.2, 3.6)
    for k in range(M):
        w = int(scores[k].argmax())
        digit(axes[0, k], test["images"][rows[k]], f"{k}: {pretty(names[k], wrap=True)}", 7)
        digit(axes[1, k], outputs[k, w], f"E{w}, score {score_text(scores[k, w])}", 7)
        frame(axes[1, k], expert_color(w), 2.5)
    _row_label(axes[0, 0], "input")
    _row_label(axes[1, 0], "highest-\nscoring\nexpert")
    fig.suptitle(f"{what}: one input per mechanism (top) and the output of the expert the discriminator scores "
                 f"highest on it after training (bottom)\n{caption}", fontsize=9)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def draw_table(ax, header: list[str], rows: list[list[str]], widths: list[float], title: str,
               height: int | None = None) -> None:
    """A plain table in axis coordinates: header and last row (the total) shaded, numbers right-aligned.
    `height` (in rows, at least the table's) keeps row heights equal across tables side by side."""
    ax.set_axis_off()
    n = len(rows) + 1
    ax.set_xlim(0, 1)
    ax.set_ylim(max(n, height or n), 0)
    edges = np.concatenate([[0.0], np.cumsum(widths)]) / sum(widths)
    for r, cells in enumerate([header, *rows]):
        if r == 0 or r == n - 1:
            ax.add_patch(plt.Rectangle((0, r), 1, 1, facecolor="#ececec", edgecolor="none"))
        for c, text in enumerate(cells):
            right = c == len(cells) - 1
            ax.text(edges[c + 1] - 0.012 if right else edges[c] + 0.012, r + 0.5, text, ha="right" if right else "left",
                    va="center", fontsize=8, weight="bold" if r in (0, n - 1) else "normal")
        ax.plot([0, 1], [r, r], color="#999999", lw=0.6)
    ax.plot([0, 1], [n, n], color="#999999", lw=0.6)
    ax.set_title(title, fontsize=9.5)


def fig_table(ctx: Context, fig_id: str = "licm-table1") -> Path:
    """LICM Table 1, generated from the model code: each row one layer with its BN/activation, its output
    shape (forward hook) and parameter count; totals equal sum(p.numel()) of the built networks."""
    arch = architecture(ctx.params)
    p = arch["params"]
    counts = ", ".join(f"{w} filters: {_expert_count(p, w):,}" for w in widths_in_matrix(ctx.params))
    tables = [(table_rows(arch["expert"]), arch["expert_total"],
               f"Expert (one of {arch['experts']}; the committee has {arch['committee_total']:,} parameters)"),
              (table_rows(arch["discriminator"]), arch["discriminator_total"], "Discriminator")]
    longest = max(len(t[0]) for t in tables) + 2       # rows + header + total
    height = 0.27 * longest + 1.3
    fig, axes = plt.subplots(1, 2, figsize=(12.5, height), layout="constrained")
    for ax, (rows, total, title) in zip(axes, tables):
        cells = [[str(i + 1), r["label"], shape_text(r["shape"]), f"{r['params']:,}"] for i, r in enumerate(rows)]
        cells.append(["", "total", "", f"{total:,}"])
        draw_table(ax, ["#", "layer", "output C×H×W", "parameters"], cells, [0.06, 0.5, 0.24, 0.2], title,
                   longest)
    m = p["model"]
    fig.suptitle(f"Architectures generated from the model code (experiment main, profile {p['profile']}: "
                 f"{m['experts']} experts of width {m['expert_width']}, input 1×{arch['size']}×{arch['size']})",
                 fontsize=10.5)
    fig.text(0.5, -0.01, f"Parameters per expert at the widths of the experiment matrix: {counts} "
                         "(LICM footnote 5: ~27K at 32 filters).\nAll convolutions have 1-pixel zero padding; "
                         "BN = batch normalization, FC = fully connected; BN-followed convolutions have no bias.",
             ha="center", va="top", fontsize=8.5)
    return save(fig, ctx.out(fig_id), ctx.dpi)


def _expert_count(params: dict, width: int) -> int:
    from licm.models import expert_parameter_count

    m = params["model"]
    return expert_parameter_count(width, m["expert_hidden_layers"], m["receptive_field"])


def draw_blocks(walk: list[dict], input_shape: tuple[int, ...], title: str, out: Path, dpi: int) -> Path:
    """EXPAND Fig. 3/4 style block diagram: one coloured block per module (colour = module type), label
    inside, output shape underneath whenever it changes."""
    n = len(walk) + 1
    fig, ax = plt.subplots(figsize=(max(8.0, 0.62 * n + 1.5), 3.4), layout="constrained")
    ax.set_xlim(-0.1, n + 0.1)
    ax.set_ylim(-1.25, 2.6)
    ax.set_axis_off()
    blocks = [{"kind": "input", "label": "input", "shape": input_shape, "params": 0}] + walk
    previous = None
    for i, b in enumerate(blocks):
        color = BLOCK_COLORS.get(b["kind"], "#dddddd") if b["kind"] != "input" else "#ffffff"
        ax.add_patch(plt.Rectangle((i + 0.1, 0), 0.8, 2.2, facecolor=color, edgecolor="#333333", lw=0.8))
        ax.text(i + 0.5, 1.1, b["label"], rotation=90, ha="center", va="center", fontsize=7.5)
        if i:
            ax.annotate("", xy=(i + 0.1, 1.1), xytext=(i - 0.1, 1.1), arrowprops={"arrowstyle": "->", "lw": 0.8})
        if b["shape"] != previous:
            ax.text(i + 0.5, -0.12, shape_text(b["shape"]), rotation=90, ha="center", va="top", fontsize=6.5,
                    color="#333333")
        previous = b["shape"]
    kinds = list(dict.fromkeys(b["kind"] for b in walk))
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=BLOCK_COLORS.get(k, "#dddddd"), edgecolor="#333333")
               for k in kinds]
    names = {"Conv2d": "convolution 3×3", "BatchNorm2d": "batch norm", "ELU": "ELU", "AvgPool2d": "avg pooling 2×2",
             "Linear": "fully connected", "Sigmoid": "sigmoid", "Upsample": "upsampling", "Flatten": "flatten",
             "Identity": "raw critic value"}
    ax.legend(handles, [names.get(k, k) for k in kinds], loc="upper center", ncol=len(kinds), fontsize=7.5,
              frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title, fontsize=10)
    return save(fig, out, dpi)


def fig_diagram(ctx: Context, fig_id: str, which: str) -> Path:
    """EXPAND Fig. 3 (discriminator) / Fig. 4 (expert) drawn from the modules of the built networks."""
    arch = architecture(ctx.params)
    p, size = arch["params"], arch["size"]
    total = arch["discriminator_total"] if which == "discriminator" else arch["expert_total"]
    what = "Discriminator" if which == "discriminator" else f"Expert (one of {arch['experts']})"
    title = (f"{what} architecture from the model code: {total:,} parameters "
             f"(experiment main, profile {p['profile']}); shapes are C×H×W after each block")
    return draw_blocks(arch[which], (1, size, size), title, ctx.out(fig_id), ctx.dpi)


def draw_fidelity(block: dict, out: Path, dpi: int) -> Path:
    """Proportion of fully specialized seeds per arm with its 95% Clopper-Pearson interval; the baseline's rate
    as a dashed line in its interval's band, LICM's 7/10 dotted; arms not run at this profile say so."""
    rows = block["arms"]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(rows) + 1.5), 5.0), layout="constrained")
    base = rows[0] if rows and rows[0]["ran"] else None
    if base:
        ax.axhspan(*base["ci"], color="#1f77b4", alpha=0.10, lw=0, label="baseline's 95% interval")
        ax.axhline(base["rate"], color="#1f77b4", ls="--", lw=1.2, label=f"baseline {base['fully']}/{base['n']}")
    ax.axhline(fidelity.PAPER_RATE, color="#555555", ls=":", lw=1.2, label="LICM reports 7/10")
    for x, r in enumerate(rows):
        if not r["ran"]:
            ax.text(x, 0.5, f"not run at\nprofile {block['profile']}", ha="center", va="center", fontsize=8,
                    color="#777777", rotation=90)
            continue
        lo, hi = r["ci"]
        color = "#1f77b4" if x == 0 else ("#d62728" if r.get("significant") else "#333333")
        ax.errorbar([x], [r["rate"]], yerr=[[r["rate"] - lo], [hi - r["rate"]]], fmt="o", color=color, capsize=4,
                    ms=6)
        label = f"{r['fully']}/{r['n']}"
        if "p_holm" in r:
            label += f"\np(Holm) {fidelity.p_is(r['p_holm'])}" + (" *" if r["significant"] else "")
        ax.annotate(label, (x, hi), textcoords="offset points", xytext=(0, 4), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["arm"].removeprefix(fidelity.PREFIX) + "\n" + r["change"].replace(", ", "\n").replace("=", "=\n")
                        for r in rows], fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(-0.03, 1.22)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("fully specialized seeds (proportion, 95% CI)")
    ax.set_xlabel("arm: what differs from the literal step")
    ax.legend(loc="upper right", fontsize=7, ncol=3, frameon=False)
    scale = {"answered": "papers' scale", "not run": "no arm run"}.get(block["verdict"],
                                                                     "REDUCED SCALE: a pipeline check, proves nothing")
    ax.set_title(f"What decides specialization: each unstated detail against the literal step\n(profile "
                 f"{block['profile']}, {scale}; two-sided Fisher test, Holm-adjusted p, * = p < {stats.ALPHA})", fontsize=9)
    return save(fig, out, dpi)


def fig_fidelity(ctx: Context) -> Path:
    """Figure `fidelity` of `licm figures runs` : always drawn, arms not run say so."""
    exps = {n: runs.Experiment(n, ctx.runs_dir, ctx.eval_dir, ctx.params) for n in fidelity.arms(ctx.params)}
    return draw_fidelity(fidelity.analyze(ctx.params, exps), ctx.out("fidelity"), ctx.dpi)


class MissingGroup(Exception):
    """Several experiments a figure needs are all missing."""

    def __init__(self, missing: list[MissingArtifact]):
        super().__init__("; ".join(str(m) for m in missing))
        self.missing = missing


RUN_FIGURES: dict[str, Callable[[Context], Path]] = {
    "licm-fig1": fig_setup,
    "licm-fig2": fig_competition,
    "licm-fig3": fig_grid,
    "licm-fig4": lambda ctx: fig_scores(ctx, "licm-fig4", "main", "LICM baseline (main)"),
    "licm-fig5": fig_assignments,
    "licm-fig6": fig_accuracy,
    "licm-fig9": fig_experts_count,
    "licm-table1": fig_table,
    "expand-fig3": lambda ctx: fig_diagram(ctx, "expand-fig3", "discriminator"),
    "expand-fig4": lambda ctx: fig_diagram(ctx, "expand-fig4", "expert"),
    "expand-fig5": lambda ctx: fig_scores(ctx, "expand-fig5", "main", "Original domain (main)"),
    "expand-fig6": lambda ctx: fig_best_outputs(ctx, "expand-fig6", "main", "Original domain (main)"),
    "expand-fig7": lambda ctx: fig_scores(ctx, "expand-fig7", "expand_wasserstein",
                                          "Wasserstein loss (expand_wasserstein)"),
    "expand-fig8": lambda ctx: fig_scores(ctx, "expand-fig8", "expanded", "Expanded domain (expanded)"),
    "expand-fig9": lambda ctx: fig_best_outputs(ctx, "expand-fig9", "expanded", "Expanded domain (expanded)"),
    "fidelity": fig_fidelity,
}
assert tuple(RUN_FIGURES) == RUN_FIGURE_IDS


def draw_run_figures(params: dict, runs_dir: Path, eval_dir: Path, out_dir: Path,
                     only: list[str] | None = None) -> dict[str, str]:
    """Draw every figure of `RUN_FIGURE_IDS` (or `only` those) into out_dir/<ID>.png.

    Returns ID -> "drawn" or "placeholder: <why>". A missing artifact gives a placeholder; anything else
    (a malformed artifact, a bug) raises, so a broken figure is never passed off as a missing one."""
    ctx = Context(params, Path(runs_dir), Path(eval_dir), Path(out_dir))
    status = {}
    for fig_id in only or RUN_FIGURE_IDS:
        try:
            RUN_FIGURES[fig_id](ctx)
            status[fig_id] = "drawn"
        except (MissingArtifact, MissingGroup) as exc:
            missing = exc.missing if isinstance(exc, MissingGroup) else [exc]
            placeholder(fig_id, missing, params["profile"], ctx.out(fig_id), ctx.dpi)
            status[fig_id] = "placeholder: " + "; ".join(str(m) for m in missing)
    return status


def _cmd_data(args) -> None:
    params = config.load(args.params, profile=args.profile)
    out_dir = Path(args.out)
    for fig_id, fn in DATA_FIGURES.items():
        t0 = time.perf_counter()
        path = fn(params, out_dir)
        print(f"licm figures: {fig_id} -> {path} ({time.perf_counter() - t0:.1f}s)")


def _cmd_runs(args) -> None:
    params = config.load(args.params, profile=args.profile)
    t0 = time.perf_counter()
    status = draw_run_figures(params, Path(args.runs), Path(args.eval), Path(args.out), args.only)
    for fig_id, what in status.items():
        print(f"licm figures: {fig_id} -> {Path(args.out) / (fig_id + '.png')} ({what})")
    drawn = sum(v == "drawn" for v in status.values())
    print(f"licm figures runs: {drawn} drawn, {len(status) - drawn} placeholder(s), profile {params['profile']} "
          f"({time.perf_counter() - t0:.1f}s)")


def register(sub) -> None:
    p = sub.add_parser("figures", help="draw the figures from artifacts")
    s = p.add_subparsers(dest="figures_command", required=True, metavar="<group>")
    d = s.add_parser("data", help="figures drawn from the prepared data alone (expand-fig1, expand-fig2)")
    d.add_argument("--out", default=paths.result("figures"), help="output folder (default: %(default)s)")
    d.set_defaults(func=_cmd_data)
    r = s.add_parser("runs", help="figures drawn from run artifacts and the model code (RUN_FIGURE_IDS)",
                     description="Draw " + ", ".join(RUN_FIGURE_IDS) + " as <out>/<ID>.png; a figure whose "
                                 "experiment was not run at this profile is written as a labelled placeholder.")
    r.add_argument("--out", default=paths.result("figures"), help="output folder (default: %(default)s)")
    r.add_argument("--runs", default=paths.result("runs"), help="run folders <runs>/<E>/seed<K> (default: %(default)s)")
    r.add_argument("--eval", default=paths.result("evals"), help="`licm evaluate` results <eval>/<E>/seed<K>.json "
                                                          "(default: %(default)s)")
    r.add_argument("--only", nargs="+", choices=RUN_FIGURE_IDS, metavar="ID", help="draw only these IDs")
    r.set_defaults(func=_cmd_runs)
