"""Do the inverse experts compose? LICM Fig. 8 ("experts can be combined", §2) made quantitative.

For every ordered pair (a, b) of distinct mechanisms of the run's domain, canonical test digits x
are transformed by a, then b (input M_b(M_a(x))), and restored by the experts assigned to them
(win matrix) in the right order, E_pi(a)(E_pi(b)(.)), and in the reversed one. Numbers: MNIST
classifier accuracy of the restored digits and, on Omniglot letters, the MSE ratio
MSE(restored, x) / MSE(input, x). Composition efficiency eta = acc(pair) / (acc(a) acc(b) / acc(x)):
1 when the two restorations fail independently, below 1 when the second expert suffers from the
first one's out-of-distribution output. Pairs whose two shifts add up to an 8-pixel shift on one
axis lose content by geometry (zero fill); they are flagged from the geometry alone and reported
apart, never counted as failures.

Also: the Fig. 8 triple (omniglot.combined) restored in all 6 expert orders; the translation group
test (two axis experts against the expert of the composite shift); every expert on every
mechanism's digits and on canonical digits (does an expert apply its own transformation, or
re-centre whatever it gets?); and a blind multi-pass restoration that picks each step's expert by
the discriminator (licm.step.compete) and stops when no expert raises D's score, against the oracle.

Before any expert is scored, the harness is validated on the true operators (exact inverses of
shifts and inversion, float64): zero error inside the central window on every lossless pair, the
lossy flags equal to the pairs the true inverses cannot undo, M_left(M_up(x)) == M_up_left(x)
bitwise. `licm composition` writes results/composition/composition.json, figures cmp-pairs and
cmp-matrix.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from licm import config, data, mechanisms
from licm.beyond import chosen_run, plain_experts, rounded, save_figure, write_not_run
from licm.specialization import assignment

FIGURES = ("cmp-pairs", "cmp-matrix")
DIRECTIONS = {f"translate_{k}": v for k, v in mechanisms._DIRECTIONS.items()}


# ---------------------------------------------------------------- geometry and true operators

def offset(name: str, mech: dict) -> tuple[int, int] | None:
    """(dy, dx) in pixels of a translation mechanism, None for any other."""
    if name not in DIRECTIONS:
        return None
    dy, dx = DIRECTIONS[name]
    return dy * mech["translate_pixels"], dx * mech["translate_pixels"]


def pair_kind(a: str, b: str, mech: dict) -> str:
    """lossy (the shifts add to more than one shift on an axis: content leaves the image), opposite
    (they cancel), translation (they add to one of the single shifts), translation_inversion, noise
    (a noise pair: no exact inverse), other."""
    oa, ob = offset(a, mech), offset(b, mech)
    if oa and ob:
        total = (oa[0] + ob[0], oa[1] + ob[1])
        if max(abs(total[0]), abs(total[1])) > mech["translate_pixels"]:
            return "lossy"
        return "opposite" if total == (0, 0) else "translation"
    if "noise" in (a, b):
        return "noise"
    if {a, b} <= set(DIRECTIONS) | {"invert"}:
        return "translation_inversion"
    return "other"


def composite(a: str, b: str, mech: dict) -> str | None:
    """The single translation equal to a then b (a translation pair of kind 'translation'), else None."""
    oa, ob = offset(a, mech), offset(b, mech)
    if not (oa and ob):
        return None
    total = (oa[0] + ob[0], oa[1] + ob[1])
    return next((n for n in DIRECTIONS if offset(n, mech) == total), None)


def apply_mechanism(name: str, x: np.ndarray, mech: dict, rng: np.random.Generator) -> np.ndarray:
    return mechanisms.REGISTRY[name](x, mech, rng)


def true_inverse(name: str, x: np.ndarray, mech: dict) -> np.ndarray | None:
    """The exact inverse of a deterministic mechanism (shift back with zero fill, 1 - x); None for noise."""
    o = offset(name, mech)
    if o:
        return mechanisms.shift(x, -o[0], -o[1])
    if name == "invert":
        return (1.0 - x).astype(x.dtype)
    return None


def harness(names: list[str], x: np.ndarray, all_digits: np.ndarray, mech: dict) -> dict:
    """The acceptance checks on the true operators (float64, so 1 - (1 - x) == x exactly)."""
    x = x.astype(np.float64)
    m = mech["translate_pixels"]
    rng = np.random.default_rng(0)     # unused: no noise pair is checked
    errors, kinds = {}, {}
    for a, b in itertools.permutations(names, 2):
        kinds[(a, b)] = pair_kind(a, b, mech)
        if "noise" in (a, b):
            continue
        y = apply_mechanism(b, apply_mechanism(a, x, mech, rng), mech, rng)
        back = true_inverse(a, true_inverse(b, y, mech), mech)
        errors[(a, b)] = float(np.abs(back - x)[:, m:-m, m:-m].max())
    flagged = {p for p, k in kinds.items() if k == "lossy"}
    nonzero = {p for p, e in errors.items() if e > 0}
    lossless = [p for p in errors if p not in flagged]
    composite_ok = None
    if {"translate_up", "translate_left", "translate_up_left"} <= set(names):
        up_left = apply_mechanism("translate_left", apply_mechanism("translate_up", all_digits, mech, rng), mech, rng)
        composite_ok = bool(np.array_equal(up_left, apply_mechanism("translate_up_left", all_digits, mech, rng)))
    return {"window": [m, x.shape[-1] - m], "deterministic_lossless_pairs": len(lossless),
            "lossy_pairs_flagged": len(flagged), "lossless_zero_error": all(errors[p] == 0.0 for p in lossless),
            "flags_equal_nonzero_error": flagged == nonzero, "max_error_lossless": max((errors[p] for p in lossless), default=0.0),
            "up_then_left_equals_up_left_bitwise": composite_ok, "digits_checked": int(len(x)),
            "composite_digits_checked": int(len(all_digits)), "kinds": {f"{a}>{b}": k for (a, b), k in kinds.items()}}


# ---------------------------------------------------------------- experts

class Experts:
    """One run's experts as plain modules, each applied alone (a pair needs two experts, not ten)."""

    def __init__(self, run):
        from licm import load_run

        experts, disc, self.params = load_run(run.path)
        self.committee, self.disc = experts.committee, disc
        self.modules = plain_experts(self.committee)

    def __call__(self, j: int, x: np.ndarray, batch: int = 256) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = torch.as_tensor(np.asarray(x[i:i + batch], np.float32))[:, None]
                out.append(self.modules[j](xb)[:, 0].numpy())
        return np.concatenate(out) if out else np.zeros_like(x, np.float32)

    def chain(self, experts: list[int], x: np.ndarray) -> list[np.ndarray]:
        """x, then after each expert in turn."""
        steps = [x]
        for j in experts:
            steps.append(self(j, steps[-1]))
        return steps


def mse_each(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2, axis=(-2, -1))


# ---------------------------------------------------------------- the analyses

class Scorer:
    """Classifier accuracy (digits) and MSE ratios (letters) against the ground truth."""

    def __init__(self, classifier, labels: np.ndarray):
        self.classifier, self.labels = classifier, labels

    def correct(self, images: np.ndarray) -> np.ndarray:
        from licm.classifier import predict

        return predict(self.classifier, images) == self.labels[:len(images)]


def _ratio(num: float, den: float) -> float | None:
    """num / den, None when the input is (almost) the truth itself (opposite shifts: nothing to undo)."""
    return float(num / den) if den > 1e-6 else None


def pairs(names, experts: Experts, assigned, digits, letters, scorer: Scorer, mech, seed) -> dict:
    """Every ordered pair: accuracy (right and reversed order), MSE ratio on letters, kind, eta."""
    rows, correct = [], {}
    single, untouched = {}, {}
    for k, a in enumerate(names):
        rng = np.random.default_rng([seed, k])
        x_a = apply_mechanism(a, digits, mech, rng)
        single[a], untouched[a] = scorer.correct(experts(assigned[k], x_a)), float(scorer.correct(x_a).mean())
    orig = scorer.correct(digits)
    for (ia, a), (ib, b) in itertools.permutations(enumerate(names), 2):
        rng = np.random.default_rng([seed, 100 + ia, 100 + ib])
        x_in = apply_mechanism(b, apply_mechanism(a, digits, mech, rng), mech, rng).astype(np.float32)
        l_in = apply_mechanism(b, apply_mechanism(a, letters, mech, rng), mech, rng).astype(np.float32)
        right, rev = [assigned[ib], assigned[ia]], [assigned[ia], assigned[ib]]
        ok_r, ok_v = scorer.correct(experts.chain(right, x_in)[-1]), scorer.correct(experts.chain(rev, x_in)[-1])
        base = mse_each(l_in, letters).mean()      # ~0 for opposite shifts: no ratio then
        ratio_r = _ratio(mse_each(experts.chain(right, l_in)[-1], letters).mean(), base)
        ratio_v = _ratio(mse_each(experts.chain(rev, l_in)[-1], letters).mean(), base)
        predicted = single[a].mean() * single[b].mean() / max(orig.mean(), 1e-12)
        correct[(a, b)] = (ok_r, x_in)
        rows.append({"first": a, "second": b, "kind": pair_kind(a, b, mech), "experts_right_order": right,
                     "accuracy_input": float(scorer.correct(x_in).mean()), "accuracy_right_order": float(ok_r.mean()),
                     "accuracy_reversed_order": float(ok_v.mean()), "accuracy_predicted_independent": float(predicted),
                     "efficiency": float(ok_r.mean() / predicted) if predicted > 0 else None,
                     "mse_ratio_right_order": ratio_r, "mse_ratio_reversed_order": ratio_v})
    return {"rows": rows, "single": {a: float(v.mean()) for a, v in single.items()}, "single_input": untouched,
            "accuracy_original": float(orig.mean()), "_single": single, "_orig": orig, "_correct": correct}


def efficiency(rows: list[dict], res: dict, names: list[str], n_boot: int, rng: np.random.Generator) -> dict:
    """Pooled eta over the lossless pairs: mean accuracy of the pairs over the mean prediction from
    independent errors, with a bootstrap over the digits (seeded)."""
    keep = [(r["first"], r["second"]) for r in rows if r["kind"] != "lossy"]
    pair_ok = np.stack([res["_correct"][p][0] for p in keep]).astype(float)          # [P, n]
    single = {a: v.astype(float) for a, v in res["_single"].items()}
    orig = res["_orig"].astype(float)

    def eta(idx):
        acc = pair_ok[:, idx].mean(axis=1)
        o = max(orig[idx].mean(), 1e-12)
        pred = np.array([single[a][idx].mean() * single[b][idx].mean() / o for a, b in keep])
        return acc.mean() / pred.mean() if pred.mean() > 0 else np.nan

    n = pair_ok.shape[1]
    point = eta(np.arange(n))
    boots = np.array([eta(rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return {"pairs": len(keep), "digits": int(n), "efficiency": float(point), "ci95": [float(lo), float(hi)],
            "bootstrap": n_boot}


def triple(combined, restore, names, experts: Experts, assigned, digits, letters, scorer: Scorer, mech, seed) -> dict:
    """The Fig. 8 triple undone in all orders of its three experts (LICM's order marked): per step
    MSE and accuracy on digits, MSE on letters."""
    rng = np.random.default_rng([seed, 999])
    x_in, l_in = digits, letters
    for name in combined:
        x_in = apply_mechanism(name, x_in, mech, rng).astype(np.float32)
        l_in = apply_mechanism(name, l_in, mech, rng).astype(np.float32)
    rows = []
    for order in itertools.permutations(restore):
        ex = [assigned[names.index(n)] for n in order]
        sd, sl = experts.chain(ex, x_in), experts.chain(ex, l_in)
        rows.append({"order": list(order), "experts": ex, "licm_order": list(order) == list(restore),
                     "accuracy": [float(scorer.correct(s).mean()) for s in sd],
                     "mse_digits": [float(mse_each(s, digits).mean()) for s in sd],
                     "mse_letters": [float(mse_each(s, letters).mean()) for s in sl],
                     "mse_ratio_letters": float(mse_each(sl[-1], letters).mean() / mse_each(l_in, letters).mean())})
    return {"combined": list(combined), "restore": list(restore), "digits": int(len(digits)),
            "letters": int(len(letters)), "accuracy_original": float(scorer.correct(digits).mean()), "orders": rows}


def group_test(rows: list[dict], res: dict, names, experts: Experts, assigned, mech) -> list[dict]:
    """Lossless translation pairs: the two axis experts in turn against the expert of the composite shift."""
    out = []
    for r in rows:
        c = composite(r["first"], r["second"], mech) if r["kind"] == "translation" else None
        if c is None or c not in names:
            continue
        ok_r, x_in = res["_correct"][(r["first"], r["second"])]
        direct = experts(assigned[names.index(c)], x_in)
        out.append({"first": r["first"], "second": r["second"], "composite": c,
                    "accuracy_composition": float(ok_r.mean()),
                    "accuracy_direct": float(res["_scorer"].correct(direct).mean())})
    return out


def expert_matrix(names, experts: Experts, assigned, digits, scorer: Scorer, mech, seed) -> dict:
    """Every expert on every mechanism's digits (accuracy, MSE to x) and on canonical digits: MSE to x
    and, for an expert assigned to a deterministic mechanism, MSE to that mechanism's inverse of x
    (below the MSE to x: it applies its own transformation; above: it re-centres or leaves x)."""
    n_exp = len(experts.modules)
    acc = np.zeros((len(names), n_exp))
    mse = np.zeros((len(names), n_exp))
    for k, name in enumerate(names):
        x_in = apply_mechanism(name, digits, mech, np.random.default_rng([seed, 500 + k])).astype(np.float32)
        for j in range(n_exp):
            out = experts(j, x_in)
            acc[k, j], mse[k, j] = scorer.correct(out).mean(), mse_each(out, digits).mean()
    canonical = []
    for j in range(n_exp):
        out = experts(j, digits)
        own = [names[k] for k, e in enumerate(assigned) if e == j]
        row = {"expert": j, "mechanisms_won": own, "mse_to_input": float(mse_each(out, digits).mean()),
               "accuracy": float(scorer.correct(out).mean())}
        inv = [true_inverse(n, digits, mech) for n in own]
        if own and inv[0] is not None:
            row["mse_to_own_inverse"] = float(mse_each(out, inv[0]).mean())
            row["applies_own_transformation"] = row["mse_to_own_inverse"] < row["mse_to_input"]
        canonical.append(row)
    return {"mechanisms": names, "accuracy": acc.tolist(), "mse": mse.tolist(), "canonical": canonical,
            "digits": int(len(digits))}


def blind(rows: list[dict], res: dict, names, experts: Experts, assigned, n: int, max_steps: int) -> dict:
    """Blind multi-pass on the lossless pairs: at each step every expert on the current image, D scores
    them (licm.step.compete), the best is applied unless D already scores the current image at least
    as high as every expert's output; at most max_steps steps. Against the oracle (the right order)."""
    import torch

    from licm.step import compete

    committee, discs = experts.committee, experts.disc.discs
    recovered, blind_ok, oracle_ok, steps_used = [], [], [], []
    for r in rows:
        if r["kind"] == "lossy":
            continue
        ok_r, x_in = res["_correct"][(r["first"], r["second"])]
        x = torch.as_tensor(x_in[:n], dtype=torch.float32)
        chosen = [[] for _ in range(len(x))]
        active = torch.ones(len(x), dtype=torch.bool)
        with torch.no_grad():
            for _ in range(max_steps):
                out, logits, win = compete(committee, discs, x[:, None], "running")
                here = discs.logits(x[:, None])[:, 0]
                go = active & (logits[:, 0].max(-1).values > here)
                x = torch.where(go[:, None, None], out[torch.arange(len(x)), 0, win[:, 0]], x)
                for i in torch.nonzero(go).flatten().tolist():
                    chosen[i].append(int(win[i, 0]))
                active = go
        target = sorted(r["experts_right_order"])
        recovered += [sorted(c) == target for c in chosen]
        steps_used += [len(c) for c in chosen]
        blind_ok.append(res["_scorer"].correct(x.numpy()))
        oracle_ok.append(ok_r[:n])
    b, o = np.concatenate(blind_ok), np.concatenate(oracle_ok)
    return {"pairs": len(blind_ok), "digits_per_pair": n, "max_steps": max_steps,
            "accuracy_blind": float(b.mean()), "accuracy_oracle": float(o.mean()),
            "blind_over_oracle": float(b.mean() / o.mean()) if o.mean() > 0 else None,
            "experts_recovered": float(np.mean(recovered)), "mean_steps": float(np.mean(steps_used))}


# ---------------------------------------------------------------- the stage

def analyze(run_dir: Path, params: dict, classifier_path: Path) -> tuple[dict, dict]:
    from licm.classifier import load_classifier, mnist_padded
    from licm.rundir import RunDir

    c = params["composition"]
    run = RunDir(run_dir)
    run_params, metrics = run.params(), run.metrics()
    names, mech = metrics["mechanisms"], run_params["mechanisms"]
    assigned = assignment(metrics["win_matrix"])
    originals, labels = mnist_padded(run_params, train=False)
    rng = np.random.default_rng(c["seed"])
    n_max = max(c["pair_digits"], c["triple_digits"], c["matrix_digits"])
    rows_idx = rng.choice(len(originals), n_max, replace=False)
    digits, digit_labels = originals[rows_idx], labels[rows_idx]
    letters = many_letters(params, max(c["pair_letters"], c["triple_letters"]), c["seed"])
    experts = Experts(run)
    seconds = {}
    t = time.perf_counter()
    checks = harness(names, originals[rng.choice(len(originals), c["harness_digits"], replace=False)], originals, mech)
    seconds["harness"], t = time.perf_counter() - t, time.perf_counter()
    scorer = Scorer(load_classifier(classifier_path), digit_labels[:c["pair_digits"]])
    res = pairs(names, experts, assigned, digits[:c["pair_digits"]], letters[:c["pair_letters"]], scorer, mech, c["seed"])
    res["_scorer"] = scorer
    eff = efficiency(res["rows"], res, names, c["bootstrap"], np.random.default_rng([c["seed"], 7]))
    group = group_test(res["rows"], res, names, experts, assigned, mech)
    seconds["pairs"], t = time.perf_counter() - t, time.perf_counter()
    blind_res = blind(res["rows"], res, names, experts, assigned, c["blind_digits"], c["blind_max_steps"])
    seconds["blind"], t = time.perf_counter() - t, time.perf_counter()
    o = params["omniglot"]
    tri = triple(o["combined"], o["restore"], names, experts, assigned, digits[:c["triple_digits"]],
                 letters[:c["triple_letters"]], Scorer(scorer.classifier, digit_labels[:c["triple_digits"]]), mech,
                 c["seed"])
    seconds["triple"], t = time.perf_counter() - t, time.perf_counter()
    matrix = expert_matrix(names, experts, assigned, digits[:c["matrix_digits"]],
                           Scorer(scorer.classifier, digit_labels[:c["matrix_digits"]]), mech, c["seed"])
    seconds["matrix"] = time.perf_counter() - t
    result = {"run": str(run_dir), "profile": run_params.get("profile"), "iterations": metrics["iterations"],
              "assignment": dict(zip(names, assigned)), "harness": checks,
              "pairs": {"digits": int(c["pair_digits"]), "letters": int(c["pair_letters"]), "rows": res["rows"],
                        "single": res["single"], "single_input": res["single_input"],
                        "accuracy_original": res["accuracy_original"]},
              "efficiency": eff, "group": group, "triple": tri, "matrix": matrix, "blind": blind_res,
              "efficiency_threshold": c["efficiency_threshold"]}
    result["report"] = report_numbers(result)
    result["sentence"] = sentence(result)
    return rounded(result), seconds


def many_letters(params: dict, n: int, seed: int, chunk: int = 100) -> np.ndarray:
    """n Omniglot letters in chunks of distinct characters (licm.omniglot.load_letters draws each letter
    from another character, and the paper's background_small1 archive has 136), each chunk its own
    seed: beyond one chunk a character may come back, as another drawing (mostly)."""
    from licm.omniglot import load_letters

    parts = [load_letters(params, min(chunk, n - start), seed * 1000 + i)
             for i, start in enumerate(range(0, n, chunk))]
    return np.concatenate(parts) if parts else load_letters(params, 0, seed)


def _licm_order(result: dict) -> dict:
    return next(r for r in result["triple"]["orders"] if r["licm_order"])


def composes(result: dict) -> dict:
    """licm-c9's composition test (threshold ours, params.yaml composition.efficiency_threshold)."""
    lo = _licm_order(result)
    eff = result["efficiency"]["efficiency"]
    checks = {"efficiency": eff is not None and eff >= result["efficiency_threshold"],
              "triple_letters": lo["mse_ratio_letters"] < 1.0,
              "triple_digits": lo["accuracy"][-1] > lo["accuracy"][0]}
    return {"composes": all(checks.values()), "checks": checks}


def report_numbers(result: dict) -> dict:
    e, b, lo = result["efficiency"], result["blind"], _licm_order(result)
    rows = result["pairs"]["rows"]
    kinds = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r)
    best = max(result["triple"]["orders"], key=lambda r: r["accuracy"][-1])
    p = result["pairs"]
    numbers = {"run": f"{result['run']} ({result['profile']}, {result['iterations']} iterations)",
               f"single mechanisms: accuracy restored / untouched, mean ({p['digits']} digits)":
                   f"{np.mean(list(p['single'].values())):.3f} / {np.mean(list(p['single_input'].values())):.3f} "
                   f"(originals {p['accuracy_original']:.3f})",
               f"composition efficiency, {e['pairs']} lossless pairs x {e['digits']} digits (95% bootstrap CI)":
                   f"{e['efficiency']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]",
               "accuracy right / reversed order, by kind of pair": {
                   k: f"{np.mean([r['accuracy_right_order'] for r in v]):.3f} / "
                      f"{np.mean([r['accuracy_reversed_order'] for r in v]):.3f} ({len(v)} pairs)"
                   for k, v in sorted(kinds.items())},
               "Omniglot MSE ratio, right order, median over lossless non-opposite pairs":
                   f"{np.median([r['mse_ratio_right_order'] for r in rows if r['kind'] not in ('lossy', 'opposite') and r['mse_ratio_right_order'] is not None]):.3f}",
               f"Fig. 8 triple, LICM order {'-'.join(lo['order'])}: accuracy input -> end ({result['triple']['digits']} digits)":
                   f"{lo['accuracy'][0]:.3f} -> {lo['accuracy'][-1]:.3f} (originals {result['triple']['accuracy_original']:.3f})",
               f"Fig. 8 triple, LICM order: letters' MSE ratio ({result['triple']['letters']} letters)": f"{lo['mse_ratio_letters']:.3f}",
               "Fig. 8 triple, best order": f"{'-'.join(best['order'])}: accuracy {best['accuracy'][-1]:.3f}",
               f"blind multi-pass / oracle accuracy ({b['pairs']} pairs x {b['digits_per_pair']} digits)":
                   f"{b['accuracy_blind']:.3f} / {b['accuracy_oracle']:.3f} = {b['blind_over_oracle'] if b['blind_over_oracle'] is None else round(b['blind_over_oracle'], 3)}; "
                   f"expert pair recovered {100 * b['experts_recovered']:.0f}%",
               "harness on true operators: lossless zero error, flags = geometry, up+left == up_left": (
                   f"{result['harness']['lossless_zero_error']}, {result['harness']['flags_equal_nonzero_error']}, "
                   f"{result['harness']['up_then_left_equals_up_left_bitwise']}")}
    if result["group"]:
        g = result["group"]
        numbers[f"group test ({len(g)} pairs): two axis experts / direct composite expert"] = (
            f"{np.mean([r['accuracy_composition'] for r in g]):.3f} / {np.mean([r['accuracy_direct'] for r in g]):.3f}")
    own = [r for r in result["matrix"]["canonical"] if "applies_own_transformation" in r]
    if own:
        numbers["experts applying their own transformation to canonical digits"] = \
            f"{sum(r['applies_own_transformation'] for r in own)}/{len(own)}"
    return {"numbers": numbers, **composes(result)}


def sentence(result: dict) -> str:
    e, b, lo = result["efficiency"], result["blind"], _licm_order(result)
    lo_ci, hi_ci = e["ci95"]
    p = result["pairs"]
    gain = float(np.mean([p["single"][a] - p["single_input"][a] for a in p["single"]]))
    if gain < 0.05:
        return (f"The assigned experts barely restore single mechanisms (mean accuracy gain {100 * gain:.1f} points over "
                f"the untouched inputs), so these numbers cannot say whether experts compose (efficiency "
                f"{e['efficiency']:.2f} [{lo_ci:.2f}, {hi_ci:.2f}]; blind {b['accuracy_blind']:.2f} vs oracle "
                f"{b['accuracy_oracle']:.2f}).")
    if hi_ci < 1:
        how = "compose with a penalty: a pair's second expert fails more often than independent errors predict"
    elif lo_ci > 1:
        how = "compose better than independent errors predict"
    else:
        how = "compose as if their errors were independent (the interval contains 1)"
    ratio = b["blind_over_oracle"]
    blind_text = ("the blind multi-pass (experts picked by D) matches the oracle's order" if ratio and 0.9 <= ratio <= 1.1
                  else "the blind multi-pass (experts picked by D) beats the oracle, whose experts restore little here"
                  if ratio and ratio > 1.1 else "the blind multi-pass (experts picked by D) falls short of the oracle")
    return (f"The experts {how}: efficiency {e['efficiency']:.2f} [{lo_ci:.2f}, {hi_ci:.2f}] over {e['pairs']} lossless "
            f"pairs; the Fig. 8 triple in LICM's order takes accuracy from {lo['accuracy'][0]:.2f} to "
            f"{lo['accuracy'][-1]:.2f} and the letters' MSE ratio to {lo['mse_ratio_letters']:.2f}; {blind_text} "
            f"({b['accuracy_blind']:.2f} against {b['accuracy_oracle']:.2f}).")


# ---------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str) -> str:
    return name.replace("translate_", "").replace("_", "-")


def figure_pairs(result: dict, out: Path, dpi: int) -> Path:
    """Accuracy of every ordered pair restored in the right order (lossy pairs hatched)."""
    plt = _plt()
    names = list(result["assignment"])
    acc = np.full((len(names), len(names)), np.nan)
    lossy = np.zeros_like(acc, bool)
    for r in result["pairs"]["rows"]:
        i, j = names.index(r["first"]), names.index(r["second"])
        acc[i, j], lossy[i, j] = r["accuracy_right_order"], r["kind"] == "lossy"
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis")
    for i, j in zip(*np.nonzero(lossy)):
        ax.text(j, i, "x", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=60, fontsize=7)
    ax.set_yticks(range(len(names)), [_short(n) for n in names], fontsize=7)
    ax.set_xlabel("second mechanism b (input M_b(M_a(x)))")
    ax.set_ylabel("first mechanism a")
    e = result["efficiency"]
    ax.set_title(f"Classifier accuracy after E_pi(a)(E_pi(b)(.)); x = lossy by geometry\n"
                 f"efficiency {e['efficiency']:.2f} [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]", fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    return save_figure(fig, out, dpi)


def figure_matrix(result: dict, out: Path, dpi: int) -> Path:
    """Every expert on every mechanism's digits (accuracy) and the canonical row (MSE to x)."""
    plt = _plt()
    m = result["matrix"]
    acc = np.asarray(m["accuracy"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    im = a.imshow(acc, vmin=0, vmax=1, cmap="viridis")
    a.set_yticks(range(len(m["mechanisms"])), [_short(n) for n in m["mechanisms"]], fontsize=7)
    a.set_xticks(range(acc.shape[1]))
    a.set_xlabel("expert")
    a.set_ylabel("mechanism of the input digits")
    a.set_title("Accuracy of every expert on every mechanism", fontsize=9)
    fig.colorbar(im, ax=a, label="accuracy")
    rows = m["canonical"]
    xs = np.arange(len(rows))
    b.bar(xs - 0.2, [r["mse_to_input"] for r in rows], 0.4, label="MSE(E_j(x), x)")
    b.bar(xs + 0.2, [r.get("mse_to_own_inverse", np.nan) for r in rows], 0.4, label="MSE(E_j(x), M_j^-1(x))")
    b.set_xticks(xs)
    b.set_xlabel("expert (on canonical digits)")
    b.set_ylabel("MSE")
    b.set_title("Own transformation or re-centring?", fontsize=9)
    b.legend(fontsize=7)
    return save_figure(fig, out, dpi)


# ---------------------------------------------------------------- CLI

def _cmd_composition(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    params = config.load(args.params, profile=args.profile)
    out, figs, dpi = Path(args.out), Path(args.figures), params["figures"]["dpi"]
    try:
        run_dir, why = chosen_run(args)
    except config.LicmError as exc:
        write_not_run("composition", FIGURES, params, str(exc), out, figs)
        return
    result, seconds = analyze(run_dir, params, Path(args.classifier))
    result["why_this_run"] = why
    data.atomic_write_text(out / "composition.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    figure_pairs(result, figs / "cmp-pairs.png", dpi)
    figure_matrix(result, figs / "cmp-matrix.png", dpi)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
    print(f"licm composition: {run_dir} ({why}) -> {out / 'composition.json'} in {time.perf_counter() - t0:.1f}s "
          f"({timing}). {result['sentence']}")


def register(sub) -> None:
    p = sub.add_parser("composition", help="composition of the inverse experts (LICM Fig. 8 made quantitative)",
                       description="Every ordered pair of mechanisms restored by the assigned experts, the Fig. 8 "
                                   "triple in every order, the group test, the expert x mechanism matrix, blind "
                                   "multi-pass restoration; validated on the true operators first.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run folder, e.g. results/runs/main/seed0")
    which.add_argument("--experiment", help="the experiment whose shown run is analysed (licm.beyond.shown_run)")
    p.add_argument("--runs", default="results/runs", help="runs folder for --experiment (default: %(default)s)")
    p.add_argument("--classifier", default="results/classifier/classifier.pt", help="default: %(default)s")
    p.add_argument("--out", default="results/composition", help="folder for composition.json (default: %(default)s)")
    p.add_argument("--figures", default="results/figures", help="figure folder (default: %(default)s)")
    p.set_defaults(func=_cmd_composition)


__all__ = ["offset", "pair_kind", "composite", "true_inverse", "harness", "Experts", "pairs", "efficiency", "triple",
           "group_test", "expert_matrix", "blind", "analyze", "composes", "sentence"]
