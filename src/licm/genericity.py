"""Spectral genericity (Besserve et al., BSV) of LICM's mechanisms and of the learned experts.

Three measurements with BSV's spectral density ratio (licm.spectral; `<.>` = mean over the
non-zero frequencies of the image grid):

* mechanisms: for each mechanism of the run's domain, on the prepared test split (ground truth
  through `source_index`), rho of the best linear filter in the causal direction (digit ->
  transformed) and in the anticausal one (transformed -> digit, the Wiener inverse). Shifts and
  inversion have |H| = 1, so rho = 1 both ways: the SDR is blind to them. Only noise separates the
  directions (BEYOND.md A.1: ~0.93 forward, ~3.44 inverse).
* experts' input/output: from the evaluation files every run writes (the winners' outputs of each
  evaluated test digit), rho_io per mechanism and iteration, against the reference rho* of the same
  digits (ground truth fed as outputs). For the nine shift/inversion mechanisms the identity and a
  perfect inverse both give 1; only the denoiser can move (1 -> rho*).
* layers (BSV Fig. 5 rebuilt): rho of every (filter, input map) pair of every conv of every expert,
  input maps from the test digits of the mechanisms the expert won, against two nulls: the same
  experts at initialisation (licm.models.seed_networks) and each kernel paired with a random input
  map of its layer. At 3x3 a random kernel lands far from 1 (licm.bsv_toys.random_kernel_sdr), so
  only the comparison with the nulls says anything.

Plus BSV's toy figures (Fig. 2, eye generator; Fig. 3, SGD drift), from licm.bsv_toys.
`licm genericity` writes results/genericity/genericity.json and figures bsv-io, bsv-fig5, bsv-fig2,
bsv-fig3.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from licm import bsv_toys, config, data, spectral, stats
from licm.beyond import chosen_run, plain_experts, rounded, save_figure, write_not_run
from licm.specialization import assignment

FIGURES = ("bsv-io", "bsv-fig5", "bsv-fig2", "bsv-fig3")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_EDGES = np.round(np.arange(-1.5, 1.5001, 0.05), 2)


# ---------------------------------------------------------------- test digits and their truth

def test_digits(params: dict) -> dict[str, np.ndarray]:
    """The prepared test split of the run's domain with the canonical digit of each row ('truth')."""
    from licm.data import load_split, pad_and_scale, read_mnist

    d = params["data"]
    test = load_split(d["prepared_dir"], params["train"]["domain"], "test")
    raw, _ = read_mnist(Path(d["raw_dir"]), train=False)
    test["truth"] = pad_and_scale(raw, d["image_size"])[test["source_index"]]
    return test


def mechanism_table(test: dict, names: list[str], n: int) -> list[dict]:
    """rho of each mechanism's linear filter in both directions on its first n test digits."""
    rows = []
    for k, name in enumerate(names):
        idx = np.flatnonzero(test["mechanism"] == k)[:n]
        x, xt = test["truth"][idx], test["images"][idx]
        fwd, inv = spectral.io_sdr(x, xt), spectral.io_sdr(xt, x)
        rows.append({"mechanism": name, "n": int(len(idx)), "rho_forward": fwd["rho"], "rho_inverse": inv["rho"],
                     "coherence_forward": fwd["coherence"], "coherence_inverse": inv["coherence"]})
    return rows


def io_curves(run, test: dict, names: list[str], assigned: list[int]) -> dict:
    """rho_io of the winners' outputs per mechanism at each evaluation, with the reference rho* (truth
    fed as outputs, the same digits) and the share of digits won by the assigned expert. The harness
    checks (truth reproduces rho* exactly, inputs give exactly 1) are recorded with the numbers."""
    ev = run.evaluation()
    rows = ev["test_index"]
    inputs, truth = test["images"][rows], test["truth"][rows]
    out, harness = {}, {"truth_reproduces_reference": True, "inputs_give_one": True}
    for k, name in enumerate(names):
        sel = np.flatnonzero(ev["mechanism"] == k)
        ref = spectral.io_sdr(inputs[sel], truth[sel])
        harness["truth_reproduces_reference"] &= spectral.io_sdr(inputs[sel], truth[sel].copy())["rho"] == ref["rho"]
        harness["inputs_give_one"] &= spectral.io_sdr(inputs[sel], inputs[sel])["rho"] == 1.0
        steps = []
        for e, it in enumerate(ev["iterations"].tolist()):
            io = spectral.io_sdr(inputs[sel], ev["outputs"][e][sel].astype(np.float64) / 255.0)
            steps.append({"iteration": int(it), "rho": io["rho"], "coherence": io["coherence"],
                          "assigned_share": float(np.mean(ev["winner"][e][sel] == assigned[k]))})
        out[name] = {"n": int(len(sel)), "rho_reference": ref["rho"], "steps": steps}
    return {"mechanisms": out, "harness": {k: bool(v) for k, v in harness.items()}}


# ---------------------------------------------------------------- layers (BSV Fig. 5)

def layer_maps(expert, images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel [O,C,3,3], input-map spectra [C,H,W]) of every conv of an expert, inputs `images` [n,H,W]."""
    import torch

    from licm.models import _convs

    convs, maps = _convs(expert), []
    hooks = [c.register_forward_pre_hook(lambda _m, args: maps.append(args[0].detach().double().numpy()))
             for c in convs]
    try:
        with torch.no_grad():
            expert.eval()(torch.as_tensor(np.asarray(images, np.float32))[:, None])
    finally:
        for h in hooks:
            h.remove()
    return [(c.weight.detach().double().numpy(), spectral.power_spectrum(np.swapaxes(m, 0, 1)))
            for c, m in zip(convs, maps)]


def layer_ratios(kernel: np.ndarray, spectra: np.ndarray, shuffle: np.ndarray | None = None) -> np.ndarray:
    """rho of every (filter o, input map c) pair [O, C]; with `shuffle` [O, C], kernel (o, c) is paired
    with input map shuffle[o, c] instead (the pair-shuffle null). NaN where the kernel or the map
    has no power off DC (dead channel): such pairs are skipped."""
    power = spectral.kernel_power(kernel, spectra.shape[-2:])
    s = spectra[None] if shuffle is None else spectra[shuffle]
    num, kp, sp = spectral.nonzero_mean(power * s), spectral.nonzero_mean(power), spectral.nonzero_mean(s)
    ok = (kp > 0) & (sp > 1e-12 * max(float(spectra.max()), 1e-300))
    return np.where(ok, num / np.where(ok, kp * sp, 1.0), np.nan)


def _stats(rho: np.ndarray) -> dict:
    lg = np.log10(rho[np.isfinite(rho)])
    return {"pairs": int(rho.size), "skipped": int(rho.size - lg.size),
            "quantiles_log10": [float(q) for q in np.quantile(lg, QUANTILES)] if lg.size else None,
            "median_abs_log10": float(np.median(np.abs(lg))) if lg.size else None}


def expert_inputs(test: dict, assigned: list[int], expert: int, n: int) -> np.ndarray:
    """Test digits of the mechanisms the expert won (its causes in the anticausal direction), n in all
    spread evenly; an expert that won nothing gets the mixture of every mechanism."""
    won = [k for k, e in enumerate(assigned) if e == expert] or sorted(set(test["mechanism"].tolist()))
    per = max(1, n // len(won))
    idx = np.concatenate([np.flatnonzero(test["mechanism"] == k)[:per] for k in won])
    return test["images"][idx]


def layer_analysis(run, params: dict, test: dict, assigned: list[int], rng: np.random.Generator) -> dict:
    """Per expert and layer: stats of log10 rho for the trained, init and shuffle arms; per layer the
    pooled histograms and paired tests (Wilcoxon signed-rank over experts on the median |log10 rho|,
    Holm over the layers, per null)."""
    from licm import load_run
    from licm.models import seed_networks

    experts, _disc, run_params = load_run(run.path)
    trained = plain_experts(experts.committee)
    init = [e.eval() for e in seed_networks(run_params, int((run.meta() or {}).get("seed", 0)))[0]]
    n = params["genericity"]["layer_digits"]
    per_expert, pooled = [], {}
    for j, (e_tr, e_in) in enumerate(zip(trained, init)):
        x = expert_inputs(test, assigned, j, n)
        layers = []
        for li, ((k_tr, s_tr), (k_in, s_in)) in enumerate(zip(layer_maps(e_tr, x), layer_maps(e_in, x))):
            shuffle = rng.integers(0, s_tr.shape[0], size=k_tr.shape[:2])
            arms = {"trained": layer_ratios(k_tr, s_tr), "init": layer_ratios(k_in, s_in),
                    "shuffle": layer_ratios(k_tr, s_tr, shuffle) if s_tr.shape[0] > 1 else None}
            layers.append({"layer": li, **{a: (_stats(r) if r is not None else None) for a, r in arms.items()}})
            for a, r in arms.items():
                if r is not None:
                    pooled.setdefault(li, {}).setdefault(a, []).append(np.log10(r[np.isfinite(r)]))
        per_expert.append({"expert": j, "mechanisms_won": [k for k, e in enumerate(assigned) if e == j],
                           "digits": int(len(x)), "layers": layers})
    return {"digits_per_expert": n, "experts": per_expert, "layers": _layer_tests(per_expert, pooled),
            "histogram_edges_log10": HIST_EDGES.tolist()}


def _layer_tests(per_expert: list[dict], pooled: dict) -> list[dict]:
    def disp(li, arm):
        return np.array([e["layers"][li][arm]["median_abs_log10"] if e["layers"][li][arm] else np.nan
                         for e in per_expert], float)

    rows = []
    for li in sorted(pooled):
        tr = disp(li, "trained")
        row = {"layer": li, "median_abs_log10": {a: float(np.nanmedian(disp(li, a))) for a in pooled[li]},
               "histogram": {a: np.histogram(np.clip(np.concatenate(v), -1.5, 1.5), HIST_EDGES)[0].tolist()
                             for a, v in pooled[li].items()}}
        for null in ("init", "shuffle"):
            if null in pooled[li]:
                diff = tr - disp(li, null)
                diff = diff[np.isfinite(diff)]
                row[f"p_vs_{null}"] = stats.wilcoxon_p(diff)
        rows.append(row)
    for null in ("init", "shuffle"):
        key = f"p_vs_{null}"
        tested = {i: r[key] for i, r in enumerate(rows) if key in r}
        for i, p in stats.holm(tested).items():
            rows[i][key + "_holm"] = p
    return rows


# ---------------------------------------------------------------- toys (BSV Fig. 2, 3)

def toys(t: dict) -> dict:
    """BSV Example 1 and the SGD drift of §3.2, numbers only (licm.bsv_toys)."""
    eye = bsv_toys.eye_generator(t["d"], t["eye"], t["distance"], t["stretch"])
    starts = np.array(t["starts"], float)
    runs = [(s, sig, lr) for s in range(len(starts)) for sig in [0.0, *t["sigmas"]] for lr in t["lrs"]]
    path = bsv_toys.sgd_drift(starts[[r[0] for r in runs]], 1.0, np.array([r[1] for r in runs]),
                              np.array([r[2] for r in runs]), t["steps"], t["record"], np.random.default_rng(t["seed"]))
    m2 = bsv_toys.model2_drift(t["model2_d"], t["sigmas"][-1], t["lrs"][0], t["steps"], t["record"],
                               np.random.default_rng([t["seed"], 2]))
    return {"eye": {k: eye[k] for k in ("d", "eye", "distance", "g", "square_root_closed_form")} |
            {name: {"rho_dc": eye[name]["rho_dc"], "rho": eye[name]["rho"]} for name in ("true", "square_root")},
            "_eye_images": eye,
            "sgd": [{"start": starts[s].tolist(), "sigma": sig, "lr": lr, "end": path[-1, i].tolist(),
                     "path": path[:, i].tolist()} for i, (s, sig, lr) in enumerate(runs)],
            "model2": m2}


# ---------------------------------------------------------------- the stage

def analyze(run_dir: Path, params: dict) -> dict:
    from licm.rundir import RunDir

    g = params["genericity"]
    run = RunDir(run_dir)
    run_params, metrics = run.params(), run.metrics()
    names = metrics["mechanisms"]
    assigned = assignment(metrics["win_matrix"])
    test = test_digits(run_params)
    t0 = time.perf_counter()
    table = mechanism_table(test, names, g["mechanism_digits"])
    io = io_curves(run, test, names, assigned)
    t1 = time.perf_counter()
    layers = layer_analysis(run, params, test, assigned, np.random.default_rng(g["seed"]))
    t2 = time.perf_counter()
    toy = toys(g["toys"])
    t3 = time.perf_counter()
    result = {"run": str(run_dir), "profile": run_params.get("profile"), "iterations": metrics["iterations"],
              "assignment": dict(zip(names, assigned)), "mechanisms": table, "io": io, "layers": layers,
              "toys": {k: v for k, v in toy.items() if not k.startswith("_")}}
    result["report"] = report_numbers(result, g["alpha"])
    result["sentence"] = sentence(result, g["alpha"])
    return rounded(result), toy, {"mechanisms and io": t1 - t0, "layers": t2 - t1, "toys": t3 - t2}


def _noise(result: dict) -> tuple[dict | None, dict | None]:
    io = result["io"]["mechanisms"].get("noise")
    row = next((r for r in result["mechanisms"] if r["mechanism"] == "noise"), None)
    return io, row


def _differing_layers(result: dict, alpha: float) -> list[str]:
    out = []
    for row in result["layers"]["layers"]:
        for null in ("init", "shuffle"):
            p = row.get(f"p_vs_{null}_holm")
            if p is not None and p < alpha:
                out.append(f"layer {row['layer']} vs {null} (Holm p {p:.3g})")
    return out


def report_numbers(result: dict, alpha: float) -> dict:
    io, row = _noise(result)
    numbers = {"run": f"{result['run']} ({result['profile']}, {result['iterations']} iterations)"}
    if row:
        numbers[f"noise mechanism: rho forward / inverse (n = {row['n']})"] = f"{row['rho_forward']:.3f} / {row['rho_inverse']:.3f}"
    shifts = [r for r in result["mechanisms"] if r["mechanism"] != "noise"]
    if shifts:
        dev = max(max(abs(r["rho_forward"] - 1), abs(r["rho_inverse"] - 1)) for r in shifts)
        numbers["other mechanisms: largest |rho - 1|, both directions"] = f"{dev:.2e}"
    if io:
        last = io["steps"][-1]
        numbers[f"noise winners' rho_io at iteration {last['iteration']} / reference rho* (n = {io['n']})"] = \
            f"{last['rho']:.3f} / {io['rho_reference']:.3f} (coherence {last['coherence']:.2f})"
    for r in result["layers"]["layers"]:
        d = r["median_abs_log10"]
        numbers[f"layer {r['layer']}: median |log10 rho| trained / init / shuffle"] = (
            f"{d.get('trained', float('nan')):.3f} / {d.get('init', float('nan')):.3f} / "
            f"{d['shuffle']:.3f}" if "shuffle" in d else
            f"{d.get('trained', float('nan')):.3f} / {d.get('init', float('nan')):.3f} / n/a (one input map)") + \
            f"; Holm p vs init {r.get('p_vs_init_holm', float('nan')):.3g}" + \
            (f", vs shuffle {r['p_vs_shuffle_holm']:.3g}" if "p_vs_shuffle_holm" in r else "")
    numbers["harness: truth reproduces rho*, inputs give 1"] = (
        f"{result['io']['harness']['truth_reproduces_reference']}, {result['io']['harness']['inputs_give_one']}")
    return {"numbers": numbers, "differing_layers": _differing_layers(result, alpha)}


def sentence(result: dict, alpha: float) -> str:
    """What the numbers show, generated from them."""
    io, row = _noise(result)
    parts = []
    if row:
        parts.append(f"Of LICM's mechanisms only noise separates the two directions (rho {row['rho_forward']:.2f} "
                     f"causal, {row['rho_inverse']:.2f} anticausal); shifts and inversion give 1 both ways, so the SDR "
                     "cannot see them.")
    if io:
        last = io["steps"][-1]
        frac = (last["rho"] - 1) / (io["rho_reference"] - 1) if io["rho_reference"] != 1 else float("nan")
        more = (" (past the reference: the outputs carry less high-frequency power than the true digits, smoother "
                "than a restoration)" if frac > 1.1 else "")
        parts.append(f"The denoising winners reach rho_io {last['rho']:.2f} against the reference {io['rho_reference']:.2f} "
                     f"of the same digits, {100 * frac:.0f}% of the way from the identity's 1{more}.")
    differ = _differing_layers(result, alpha)
    if differ:
        parts.append(f"Trained layers differ from their nulls in: {', '.join(differ)}.")
    else:
        parts.append(f"No layer's dispersion of rho differs from the init or shuffle nulls (Holm p >= {alpha}): at 3x3 "
                     "the per-pair SDR cannot tell trained filters from the nulls here.")
    return " ".join(parts)


# ---------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_io(result: dict, out: Path, dpi: int) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for k, (name, m) in enumerate(result["io"]["mechanisms"].items()):
        its = [s["iteration"] for s in m["steps"]]
        ax.plot(its, [s["rho"] for s in m["steps"]], "o-", color=f"C{k % 10}", label=name.replace("translate_", ""))
        ax.axhline(m["rho_reference"], color=f"C{k % 10}", ls="--", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("rho_io of the winners' outputs")
    ax.set_title("Input/output SDR per mechanism (dashed: reference rho* of the same digits)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, out, dpi)


def figure_layers(result: dict, out: Path, dpi: int) -> Path:
    plt = _plt()
    rows = result["layers"]["layers"]
    edges = np.asarray(result["layers"]["histogram_edges_log10"])
    fig, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 2.8), squeeze=False)
    styles = {"trained": dict(color="C0", lw=1.5), "init": dict(color="0.4", lw=1.0),
              "shuffle": dict(color="0.7", lw=1.0, ls="--")}
    for ax, r in zip(axes[0], rows):
        for arm, counts in r["histogram"].items():
            c = np.asarray(counts, float)
            ax.stairs(c / max(c.sum(), 1), edges, label=arm, **styles[arm])
        ax.axvline(0, color="k", lw=0.5)
        ax.set_title(f"conv {r['layer']}", fontsize=9)
        ax.set_xlabel("log10 SDR of (filter, input map)")
    axes[0][0].set_ylabel("share of pairs")
    axes[0][-1].legend(fontsize=7)          # the last conv has every arm (the first has one input map: no shuffle)
    fig.suptitle("BSV Fig. 5 rebuilt on the inverse experts: trained vs init and pair-shuffle nulls", fontsize=9, y=1.04)
    return save_figure(fig, out, dpi)


def figure_eye(toy: dict, out: Path, dpi: int) -> Path:
    plt = _plt()
    eye = toy["_eye_images"]
    fig, axes = plt.subplots(2, 4, figsize=(9, 4.8))
    for r, name in enumerate(("true", "square_root")):
        e = eye[name]
        for c, (key, title) in enumerate((("k1", "k1 (positions)"), ("k2", "k2 (eye)"), ("image", "k1 * k2"),
                                          ("stretched", f"stretch k1 by g={eye['g']}"))):
            ax = axes[r, c]
            ax.imshow(np.fft.fftshift(e[key]) if key in ("k1", "k2") and name == "square_root" else e[key], cmap="gray")
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("column", fontsize=7)
            ax.set_ylabel(f"{name.replace('_', ' ')}: row", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[r, 0].text(0, -8, f"SDR {e['rho']:.3f} (with DC {e['rho_dc']:.3f})", fontsize=8)
    fig.suptitle("BSV Fig. 2: eye generator, true kernels (top) vs the square-root solution (bottom)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, dpi)


def figure_drift(toy: dict, out: Path, dpi: int) -> Path:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    xs = np.linspace(0.2, 4.5, 200)
    a.plot(xs, 1 / xs, color="0.6", lw=0.8, label="ab = 1")
    for run in toy["sgd"]:
        p = np.asarray(run["path"])
        color = "tab:red" if run["sigma"] == 0 else "tab:green"
        a.plot(p[:, 0], p[:, 1], "-", color=color, lw=1, alpha=0.8)
        a.plot(*p[0], "o", color="k", ms=4)
    a.plot([], [], color="tab:red", label="GD (sigma 0)")
    a.plot([], [], color="tab:green", label="SGD")
    a.set_xlim(0, 4.5)
    a.set_ylim(0, 4.5)
    a.set_xlabel("a")
    a.set_ylabel("b")
    a.set_title("(a) eq. (11), c0 = 1: GD stays, SGD drifts to a = b", fontsize=9)
    a.legend(fontsize=7)
    m = toy["model2"]
    b.plot(m["steps"], m["rho"], color="tab:green", label="SGD from the true (a*, b*)")
    b.axhline(m["rho_true"], color="k", ls=":", label=f"true pair {m['rho_true']:.3f}")
    b.axhline(m["rho_square_root"], color="tab:red", ls="--", label=f"square root {m['rho_square_root']:.3f}")
    b.set_xlabel("SGD step")
    b.set_ylabel("rho'(A, B)")
    b.set_title(f"(b) Model 2, d = {m['d']}: genericity lost by the drift", fontsize=9)
    b.legend(fontsize=7)
    return save_figure(fig, out, dpi)


# ---------------------------------------------------------------- CLI

def _cmd_genericity(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    params = config.load(args.params, profile=args.profile)
    out, figs, dpi = Path(args.out), Path(args.figures), params["figures"]["dpi"]
    try:
        run_dir, why = chosen_run(args)
    except config.LicmError as exc:
        write_not_run("genericity", FIGURES, params, str(exc), out, figs)
        return
    result, toy, seconds = analyze(run_dir, params)
    result["why_this_run"] = why
    data.atomic_write_text(out / "genericity.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    figure_io(result, figs / "bsv-io.png", dpi)
    figure_layers(result, figs / "bsv-fig5.png", dpi)
    figure_eye(toy, figs / "bsv-fig2.png", dpi)
    figure_drift(toy, figs / "bsv-fig3.png", dpi)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
    print(f"licm genericity: {run_dir} ({why}) -> {out / 'genericity.json'} in {time.perf_counter() - t0:.1f}s "
          f"({timing}). {result['sentence']}")


def register(sub) -> None:
    p = sub.add_parser("genericity", help="BSV spectral density ratios: mechanisms, experts' input/output, layers, toys",
                       description="Spectral genericity (Besserve et al.) of the mechanisms and of one run's experts.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run folder, e.g. results/runs/main/seed0")
    which.add_argument("--experiment", help="the experiment whose shown run is analysed (licm.beyond.shown_run)")
    p.add_argument("--runs", default="results/runs", help="runs folder for --experiment (default: %(default)s)")
    p.add_argument("--out", default="results/genericity", help="folder for genericity.json (default: %(default)s)")
    p.add_argument("--figures", default="results/figures", help="figure folder (default: %(default)s)")
    p.set_defaults(func=_cmd_genericity)


__all__ = ["test_digits", "mechanism_table", "io_curves", "layer_maps", "layer_ratios",
           "layer_analysis", "toys", "analyze", "sentence", "report_numbers"]
