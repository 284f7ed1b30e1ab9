"""The HTML report: structure from Python, then rendering in headless Chromium.

The browser tests need /usr/bin/chromium (Debian package `chromium`). Without it they skip,
except under CI=true, where a missing browser fails the run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import REPO, write_params

FIGURES_MD = REPO.parent / "shared" / "FIGURES.md"
CHROMIUM = Path("/usr/bin/chromium")


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.imgs: list[str] = []
        self.external: list[str] = []
        self.check: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for key in ("src", "href"):
            if re.match(r"^(https?:)?//", a.get(key) or ""):
                self.external.append(a[key])
        if a.get("id") == "page-check":
            self.check = a


def parse(text: str) -> _Ids:
    p = _Ids()
    p.feed(text)
    return p


def figures_md_ids() -> list[str]:
    return re.findall(r"^\| ((?:licm|expand)-[a-z0-9]+) \|", FIGURES_MD.read_text(), flags=re.M)


def _png(path: Path, color: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from licm.figures import save

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 0], color=color)
    ax.set_title(path.stem)
    save(fig, path, 60)


@pytest.fixture()
def report(tmp_path):
    """A report built from a tmp folder: 2 figures, a summary, one finished run, a classifier."""
    from licm import config, report

    figs = tmp_path / "figures"
    _png(figs / "licm-fig7.png", "tab:red")
    _png(figs / "expand-fig1.png", "tab:blue")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({
        "licm-c1": {"numbers": {"seeds fully specialized": "1/2", "mean distinct winners": 8.5},
                    "verdict": "partly reproduced", "note": "1 of 2 seeds fully specialized (paper: 7 of 10)."},
        "licm-c9": {"numbers": {"mechanisms restored": "10/10"}, "verdict": "reproduced", "note": "all restored"},
        "follow-up-question": {"numbers": {"expanded: fully specialized": "0/2"}, "verdict": "no",
                               "note": "On the expanded domain <b>no</b> seed specialized."},
        "_meta": {"timings": {"pipeline": 12.5}},
    }))
    run = tmp_path / "runs" / "main" / "seed0"
    run.mkdir(parents=True)
    (run.parent / "experiment.json").write_text(json.dumps({"experiment": "main", "profile": "smoke", "selected": True,
                                                            "seeds": [0]}))
    (run / "meta.json").write_text(json.dumps({"device": "cpu", "started": "2026-01-01T00:00:00+00:00",
                                               "finished": "2026-01-01T00:01:40+00:00"}))
    (run / "metrics.json").write_text(json.dumps({"iterations": 20, "mechanisms": ["a", "b"], "distinct_winners": 2,
                                                  "fully_specialized": True, "top_expert": [0, 1]}))
    clf = tmp_path / "classifier" / "metrics.json"
    clf.parent.mkdir()
    clf.write_text(json.dumps({"test_accuracy": 0.9921, "test_examples": 10000, "train_examples": 60000,
                               "epochs": 3, "train_seconds": 100.0, "device": "cpu"}))
    params = config.load(write_params(tmp_path, profile="smoke"))
    out = tmp_path / "report"
    page = report.build(params, out, figures_dir=figs, summary=summary, runs_dir=tmp_path / "runs",
                        classifier_metrics=clf)
    return {"page": page, "out": out, "tmp": tmp_path, "params": params, "figs": figs}


@pytest.mark.skipif(not FIGURES_MD.is_file(), reason=f"{FIGURES_MD} not present")
def test_ids_match_figures_md():
    from licm import report

    assert report.IDS == figures_md_ids()


def test_report_structure(report):
    from licm import report as rep

    text = report["page"].read_text()
    p = parse(text)
    for item_id in rep.IDS + ["follow-up-question", "summary", "banner"]:
        assert p.ids.count(item_id) == 1, item_id
    assert sorted(p.imgs) == ["assets/expand-fig1.png", "assets/licm-fig7.png"]
    assert all((report["out"] / src).is_file() for src in p.imgs)
    assert not p.external, p.external
    assert "<link" not in text                              # CSS is inline
    assert "params hash" in text and report["params"]["profile"] in text
    assert "partly reproduced" in text and "99.21%" in text and "100.0 s" in text
    assert "Not yet produced" in text                       # figures without a PNG say so
    assert "&lt;b&gt;no&lt;/b&gt;" in text                  # summary text is escaped
    # A rebuild after a figure disappears drops its stale asset.
    from licm import report as r2

    (report["figs"] / "licm-fig7.png").unlink()
    r2.build(report["params"], report["out"], figures_dir=report["figs"], summary=report["tmp"] / "summary.json",
             runs_dir=report["tmp"] / "runs", classifier_metrics=report["tmp"] / "classifier" / "metrics.json")
    assert not (report["out"] / "assets" / "licm-fig7.png").exists()


def test_placeholder_figures_are_labelled_placeholders(tmp_path):
    """A figure drawn as a stand-in (its experiment not run, a run without history) is called a
    placeholder on the page, never "figure produced"; a drawn figure still is."""
    from licm import config, figures, plot, report
    from licm.runs import MissingArtifact

    figs = tmp_path / "figures"
    _png(figs / "licm-fig7.png", "tab:red")
    missing = MissingArtifact("main", "results/runs/main/seed1 holds no history", "re-run `licm train`")
    figures.placeholder("licm-fig4", [missing], "smoke", figs / "licm-fig4.png", 60)
    assert plot.placeholder_reason(figs / "licm-fig7.png") is None
    assert plot.placeholder_reason(figs / "licm-fig4.png") == "experiment main: results/runs/main/seed1 holds no history"
    summary = tmp_path / "summary.json"      # a claim not run is in the summary, without numbers
    summary.write_text(json.dumps({"licm-c3": {"numbers": {}, "verdict": "not run", "note": "needs no_aii"}}))
    params = config.load(write_params(tmp_path, profile="smoke"))
    page = report.build(params, tmp_path / "r", figures_dir=figs, summary=summary,
                        runs_dir=tmp_path / "noruns", classifier_metrics=tmp_path / "none2.json")
    text = page.read_text()
    assert "no entry for licm-c4 in the summary" in text and "no entry for licm-c3" not in text
    badge = {i: re.search(rf'<section class="item" id="{i}">.*?class="verdict v-([a-z-]+)"', text, re.S)[1]
             for i in ("licm-fig4", "licm-fig7", "licm-fig5")}
    assert badge == {"licm-fig4": "placeholder", "licm-fig7": "figure-produced", "licm-fig5": "not-yet-produced"}
    assert re.search(r'href="#licm-fig4">licm-fig4</a> &mdash; <em>placeholder</em>', text)
    assert re.search(r'href="#licm-fig7">licm-fig7</a> &mdash; produced', text)


def test_report_without_any_inputs(tmp_path):
    from licm import config, report

    params = config.load(write_params(tmp_path, profile="smoke"))
    page = report.build(params, tmp_path / "r", figures_dir=tmp_path / "nofigs", summary=tmp_path / "none.json",
                        runs_dir=tmp_path / "noruns", classifier_metrics=tmp_path / "none2.json")
    text = page.read_text()
    assert text.count("Not yet produced") == sum(1 for i in report.ITEMS if i["kind"] == "figure")
    assert text.count("Not yet measured") == sum(1 for i in report.ITEMS if i["kind"] == "claim")
    assert "not run: 12" in text


# ---------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        msg = f"{CHROMIUM} missing: install the Debian package `chromium` (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true: a missing browser fails instead of skipping)")
        pytest.skip(msg)
    return CHROMIUM


def _chromium(binary: Path, tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    args = [str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
            "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _console_lines(stderr: str) -> list[str]:
    """Console messages the page produced (Chromium logs them as CONSOLE lines with --enable-logging)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_renders_in_chromium(report, chromium):
    from licm import report as rep

    url = report["page"].resolve().as_uri()
    result = _chromium(chromium, report["tmp"], url, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = parse(result.stdout)
    check = dom.check
    assert check.get("data-loaded") == "true", f"page never reached its load event: {check}"
    assert check.get("data-images") == "2"
    assert json.loads(check["data-broken-images"]) == [], "images that did not load (naturalWidth 0)"
    assert json.loads(check["data-errors"]) == [], "script errors, console.error calls or failed resources"
    assert _console_lines(result.stderr) == []
    missing = [i for i in rep.IDS + ["follow-up-question"] if i not in dom.ids]
    assert not missing, f"IDs without an element: {missing}"

    shot = report["tmp"] / "report.png"
    result = _chromium(chromium, report["tmp"], url, f"--screenshot={shot}", "--window-size=1280,2400",
                       "--hide-scrollbars")
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        assert len(im.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 16   # not a blank page
    if os.environ.get("LICM_SCREENSHOT_DIR"):
        dest = Path(os.environ["LICM_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest / "report.png")


def test_browser_check_catches_a_broken_image(report, chromium):
    """Negative control: the in-page check and the test notice an image that does not load."""
    (report["out"] / "assets" / "licm-fig7.png").unlink()
    result = _chromium(chromium, report["tmp"], report["page"].resolve().as_uri(), "--dump-dom")
    check = parse(result.stdout).check
    assert check.get("data-loaded") == "true"
    assert json.loads(check["data-broken-images"]) == ["assets/licm-fig7.png"]
    assert any("licm-fig7.png" in e for e in json.loads(check["data-errors"]))
