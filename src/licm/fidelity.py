"""Fidelity study: which detail of the step that LICM leaves unstated decides specialization.

Why: LICM reports 7 of 10 seeds fully specialized; a literal Algorithm 1 gets about 3 of 10, and
ten seeds cannot tell the two apart. The experiments `fidelity_*` of params.yaml (the literal step
`fidelity_baseline`, one arm per detail changed alone, a DCGAN-style combination, and
`fidelity_repeat`, the baseline again, for a GPU's run-to-run noise) answer it with statistics:

* per arm: fully specialized seeds k/n with a 95% Clopper-Pearson interval
  (`stats.binomial_interval`), mechanisms won by distinct experts (mean, sd) and the classifier's
  final accuracy on the winners' outputs (results/eval/<arm>/seed<K>.json);
* each arm against the baseline: two-sided Fisher exact test (licm.stats), Holm's correction over the
  arms compared (the repeat included: it measures the noise);
* the smallest difference the configured seeds per arm detect with 80% power (two-sided Fisher at
  alpha 0.05, power computed exactly by enumerating both binomials), from planning rates and from
  the baseline's observed rate.

`licm summarize` writes the result as the `fidelity` block of results/summary.json (`analyze`),
`licm figures runs` draws figure `fidelity` (figures.fig_fidelity), and `licm report` shows the section
"What decides specialization" (`report_rows` and the block's sentences). Runs are read through
`runs.Experiment` (that is, `runs.load_runset`), like every other consumer of runs.
"""
from __future__ import annotations

import json

import numpy as np

from licm import config
from licm.runs import Experiment
from licm.stats import (ALPHA, GRID_STEP, POWER, REDUCED, binomial_interval, detectable_difference, fisher_p,
                        holm, pct, sd)

PREFIX = "fidelity_"
BASELINE = "fidelity_baseline"
REPEAT = "fidelity_repeat"
# Rates the detectable differences are computed from (besides the baseline's observed rate), and why.
PLANNING_RATES = {0.3: "the literal step's rate measured on an H100, 3 of 10 seeds",
                  0.7: "LICM's reported rate, 7 of 10 seeds"}
PAPER_RATE = 0.7
# Resolved params that say nothing about the step (left out of "what differs from the baseline").
NOT_THE_STEP = ("experiments", "profiles", "profile")


# ---------------------------------------------------------------- the arms

def arms(params: dict) -> list[str]:
    """The study's experiments (names starting with `fidelity_`), the baseline first, then params order."""
    names = [n for n in params["experiments"] if n.startswith(PREFIX)]
    return sorted(names, key=lambda n: n != BASELINE)


def configured_seeds(params: dict, name: str) -> int:
    """Seeds of experiment `name` at the papers' scale (its `seeds`, under the paper profile's cap)."""
    return len(config.seeds({**params, "profile": "paper"}, name))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differs(params: dict, name: str) -> dict:
    """{dotted key: value} where experiment `name`'s resolved params differ from the baseline's: what the
    arm changes, read from params (so a changed default shows up here, not only in a description)."""
    base = _flatten(config.experiment(params, BASELINE))
    mine = _flatten(config.experiment(params, name))
    return {k: v for k, v in mine.items() if not k.startswith(NOT_THE_STEP) and base.get(k, object()) != v}


def change_text(change: dict, name: str) -> str:
    """Short words for an arm's change: `expert_update=per_example`; the baseline and a repeat say so."""
    if name == BASELINE:
        return "the literal step"
    if not change:
        return "the baseline again"
    return ", ".join(f"{k.removeprefix('train.')}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in change.items())


# ---------------------------------------------------------------- the analysis

def arm_numbers(exp: Experiment, params: dict) -> dict:
    """One arm's numbers: counts, interval, distinct experts, accuracy, scale; `ran: false` when it did not."""
    row = {"arm": exp.name, "description": params["experiments"][exp.name].get("description", ""),
           "differs": differs(params, exp.name), "configured_seeds": configured_seeds(params, exp.name),
           "ran": exp.ran}
    row["change"] = change_text(row["differs"], exp.name)
    if not exp.ran:
        return {**row, "why_not": exp.missing or "not run"}
    n, k = len(exp.runs), exp.fully()
    lo, hi = binomial_interval(k, n)
    distinct = exp.distinct()
    acc = [e["final"]["accuracy_experts"] for e in exp.evals]
    return {**row, "profile": exp.profile, "paper_scale": exp.paper_scale, "scale": exp.scale,
            "iterations": sorted({r["iterations"] for r in exp.runs}),
            "n": n, "fully": k, "rate": k / n, "ci": [lo, hi], "mechanisms": exp.mechanisms(),
            "distinct_mean": float(np.mean(distinct)), "distinct_sd": sd(distinct),
            "accuracy_n": len(acc), "accuracy_mean": float(np.mean(acc)) if acc else None, "accuracy_sd": sd(acc)}


def compare(rows: list[dict]) -> None:
    """Fisher p and Holm-adjusted p of every arm that ran against the baseline (in place)."""
    base = rows[0]
    if not base["ran"]:
        return
    tested = {r["arm"]: fisher_p(r["fully"], r["n"], base["fully"], base["n"]) for r in rows[1:] if r["ran"]}
    adjusted = holm(tested)
    for r in rows[1:]:
        if r["arm"] in tested:
            r.update(difference=r["rate"] - base["rate"], p_value=tested[r["arm"]], p_holm=adjusted[r["arm"]],
                     significant=adjusted[r["arm"]] < ALPHA)


def repeat_agreement(base: Experiment, repeat: Experiment) -> dict | None:
    """Seeds both the baseline and the repeat finished: how many landed the same way (fully specialized or not)
    and how many have identical final win matrices (a CPU: all; a GPU: its run-to-run noise)."""
    a = {r["seed"]: r for r in base.runs}
    b = {r["seed"]: r for r in repeat.runs}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    same = sum(a[s]["fully_specialized"] == b[s]["fully_specialized"] for s in seeds)
    identical = sum(np.array_equal(a[s]["win_matrix"], b[s]["win_matrix"]) for s in seeds)
    return {"seeds": len(seeds), "same_outcome": same, "identical_win_matrix": identical}


def power_table(rows: list[dict], comparisons: int) -> dict:
    """Smallest detectable differences for the configured seeds per arm, at the planning rates and at the
    baseline's observed rate (paper scale only), at alpha and at Holm's first step (alpha / comparisons)."""
    n0 = rows[0]["configured_seeds"]
    others = [r["configured_seeds"] for r in rows[1:]] or [n0]
    n1 = max(set(others), key=others.count)
    rates = list(PLANNING_RATES.items())
    base = rows[0]
    if base["ran"] and base["paper_scale"]:
        rates.append((base["rate"], f"the baseline's observed rate, {base['fully']} of {base['n']} seeds"))
    holm_alpha = ALPHA / max(comparisons, 1)
    table = []
    for p0, why in rates:
        entry = {"baseline_rate": p0, "why": why}
        for tag, alpha in (("", ALPHA), ("_holm_first", holm_alpha)):
            for word, d in (("up", 1), ("down", -1)):
                entry[f"detectable_{word}{tag}"] = detectable_difference(n0, n1, p0, d, alpha)
        table.append(entry)
    return {"seeds_baseline": n0, "seeds_arm": n1, "alpha": ALPHA, "power": POWER, "comparisons": comparisons,
            "alpha_holm_first": holm_alpha, "grid_step": GRID_STEP,
            "test": "two-sided Fisher exact test; power exact, enumerating both binomials", "rates": table}


def analyze(params: dict, exps: dict[str, Experiment]) -> dict:
    """The `fidelity` block of results/summary.json (`exps`: name -> Experiment, at least every arm)."""
    names = arms(params)
    if BASELINE not in names:
        return {"verdict": "not run", "profile": params["profile"], "arms": [], "selected": [], "repeat": None,
                "power": None,
                "sentences": [f"params.yaml has no experiment {BASELINE}: the fidelity study is not configured."]}
    rows = [arm_numbers(exps[n], params) for n in names]
    compare(rows)
    ran = [r for r in rows if r["ran"]]
    comparisons = len(rows) - 1
    block = {"baseline": BASELINE, "alpha": ALPHA, "correction": f"Holm over the arms compared with {BASELINE}",
             "profile": params["profile"], "arms": rows,
             "selected": [n for n in names if n in config.selected_experiments(params)],
             "repeat": repeat_agreement(exps[BASELINE], exps[REPEAT]) if REPEAT in exps else None,
             "power": power_table(rows, comparisons)}
    block["verdict"] = ("not run" if not ran else "answered" if all(r["paper_scale"] for r in ran) else REDUCED)
    block["sentences"] = sentences(block)
    return block


# ---------------------------------------------------------------- words


def _p(x: float) -> str:
    return f"{x:.2g}" if x >= 0.001 else "< 0.001"


def p_is(x: float) -> str:
    """'= 0.018' or '< 0.001', to follow 'p '."""
    return ("= " + _p(x)) if x >= 0.001 else _p(x)


def _points(d: float | None) -> str:
    return "no difference up to 0 or 1" if d is None else f"{100 * d:.0f} points"


def sentences(block: dict) -> list[str]:
    """Plain sentences generated from the numbers: scale, baseline, what differs (or that nothing does), what
    the seeds could have detected, and the run-to-run noise."""
    rows, power = block["arms"], block["power"]
    ran = [r for r in rows if r["ran"]]
    if not ran:
        why = ("has run yet" if block["selected"] else
               f"has run: profile {block['profile']} does not select them (its only_experiments)")
        return [f"No arm of the fidelity study {why}, so nothing is known yet about which detail decides "
                f"specialization. The study needs a GPU at the papers' scale ({power['seeds_arm']} seeds per arm)."]
    out = []
    if block["verdict"] == REDUCED:
        its = sorted({i for r in ran for i in r["iterations"]})
        out.append(f"Reduced scale (profile {ran[0]['profile']}: {max(r['n'] for r in ran)} seed(s) per arm, "
                   f"{', '.join(map(str, its))} iterations): these numbers check the pipeline and prove nothing "
                   "about which detail decides specialization.")
    base = rows[0]
    if not base["ran"]:
        out.append(f"The literal step ({BASELINE}) has not run, so no arm was compared with it.")
    else:
        lo, hi = base["ci"]
        out.append(f"The literal step ({BASELINE}) specialized fully in {base['fully']} of {base['n']} seeds "
                   f"(95% CI {pct(lo, 0)}-{pct(hi, 0)}); LICM reports 7 of 10.")
        tested = [r for r in rows[1:] if "p_holm" in r]
        significant = [r for r in tested if r["significant"]]
        for r in significant:
            out.append(f"{r['arm']} ({r['change']}) differs from the literal step: {r['fully']}/{r['n']} against "
                       f"{base['fully']}/{base['n']} ({100 * r['difference']:+.0f} points; two-sided Fisher "
                       f"p {p_is(r['p_value'])}, Holm-adjusted p {p_is(r['p_holm'])}).")
        if not tested:
            out.append("No other arm has run, so nothing was compared.")
        elif not significant:
            best = min(tested, key=lambda r: r["p_holm"])
            out.append(f"No arm differs significantly from the literal step after Holm's correction over "
                       f"{len(tested)} comparison(s) (smallest adjusted p {p_is(best['p_holm'])}, {best['arm']}).")
        if any(r["arm"] == REPEAT and r["significant"] for r in significant):
            out.append(f"{REPEAT} repeats the baseline and still differs from it: the run-to-run noise is larger than "
                       "the test assumes, so distrust the other comparisons.")
    rate = next((e for e in power["rates"] if "observed" in e["why"]), power["rates"][0])
    ran_n = max(r["n"] for r in ran)
    configured = "" if ran_n == power["seeds_arm"] else f" (the papers' scale; this profile ran {ran_n})"
    out.append(f"With {power['seeds_arm']} seeds per arm{configured}, a two-sided Fisher test at alpha {power['alpha']} detects "
               f"with {pct(power['power'], 0)} power a change from a rate of {rate['baseline_rate']:.2f} "
               f"({rate['why']}) only of at least {_points(rate['detectable_up'])} upwards or {_points(rate['detectable_down'])} "
               "downwards; a smaller effect can go unseen, so an arm that is not significant does not show that "
               "its detail is irrelevant.")
    rep = block.get("repeat")
    if rep:
        text = (f"{REPEAT} re-ran {rep['seeds']} of the baseline's seeds: {rep['same_outcome']} landed the same way "
                f"(fully specialized or not), {rep['identical_win_matrix']} with identical final win matrices")
        out.append(text + (" (this device repeats runs exactly)." if rep["identical_win_matrix"] == rep["seeds"] else
                           "; the rest is this device's run-to-run noise, and differences of that size mean nothing."))
    return out


def _pm(mean: float | None, sd: float | None, fmt: str) -> str:
    if mean is None:
        return "n/a"
    return fmt.format(mean) + ("" if sd is None else " ± " + fmt.format(sd))


def report_rows(block: dict) -> list[dict]:
    """The report's table: one row of display strings per arm."""
    rows = []
    for r in block.get("arms", []):
        row = {"arm": r["arm"], "change": r["change"], "description": r["description"]}
        if not r["ran"]:
            rows.append({**row, "fully": f"not run ({r['why_not']})", "distinct": "", "accuracy": "",
                         "difference": "", "p": "", "p_holm": "", "significant": False})
            continue
        lo, hi = r["ci"]
        rows.append({**row, "fully": f"{r['fully']}/{r['n']} ({pct(lo, 0)}-{pct(hi, 0)})",
                     "distinct": _pm(r["distinct_mean"], r["distinct_sd"], "{:.2f}") + f" / {r['mechanisms']}",
                     "accuracy": _pm(None if r["accuracy_mean"] is None else 100 * r["accuracy_mean"],
                                     None if r["accuracy_sd"] is None else 100 * r["accuracy_sd"], "{:.1f}%"),
                     "difference": f"{100 * r['difference']:+.0f} points" if "difference" in r else "",
                     "p": _p(r["p_value"]) if "p_value" in r else "", "p_holm": _p(r["p_holm"]) if "p_holm" in r else "",
                     "significant": bool(r.get("significant"))})
    return rows


def power_rows(block: dict) -> list[dict]:
    """The report's power table: per baseline rate, the smallest detectable changes as display strings."""
    power = block.get("power")
    if not power:
        return []
    def pts(d, sign):
        return "none reachable" if d is None else f"{sign}{100 * d:.0f} points"
    return [{"rate": f"{e['baseline_rate']:.2f}", "why": e["why"],
             "at_alpha": f"{pts(e['detectable_up'], '+')} / {pts(e['detectable_down'], '-')}",
             "at_holm": f"{pts(e['detectable_up_holm_first'], '+')} / {pts(e['detectable_down_holm_first'], '-')}"}
            for e in power["rates"]]
