"""The HTML leaderboard in a real headless Chromium: loads cleanly, one row per model, sorting works, plots render,
certified numbers and curves shown where lower bounds exist and only there."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_align.reports.export import render, to_json_rows, write_reports
from robustbench_align.reports.tables import leaderboard_from_frames, overall_ranking

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "reports" / "test-artifacts"
MODELS = [("mlp", "mlp"), ("rfam", "rfam"), ("xgb", "xgboost"), ('<script>alert("x")</script>', "user")]


def _lower(ds, fam, radius):
    """Certified lower bounds on wine only: exact for xgboost (bracket closed), half the radius for rfam; none elsewhere."""
    if ds != "wine" or fam not in ("xgboost", "rfam"):
        return np.nan
    return radius if fam == "xgboost" else 0.5 * radius


def _frames():
    """Runs and points of 4 models (one with a hostile name) on 2 datasets, with known radii (lower bounds on wine for 2 models)."""
    rng = np.random.default_rng(0)
    runs, pts = [], []
    models = MODELS
    for ds in ["wine", "iris"]:
        for k, (m, fam) in enumerate(models):
            rid = f"{ds}-{k}"
            runs.append({"run_id": rid, "model": m, "family": fam, "dataset": ds, "threat": "linf", "norm": "linf", "seed": 0,
                         "status": "ok", "attacks": ["fab"], "flags": {}, "rejected": 0, "fit_time": 1.0 + k, "eval_time": 2.0})
            for i in range(10):
                r = float(rng.uniform(0, 0.3 * (k + 1)))
                pts.append({"run_id": rid, "model": m, "family": fam, "dataset": ds, "threat": "linf", "norm": "linf", "seed": 0,
                            "idx": i, "correct": int(i != 0), "radius": 0.0 if i == 0 else r, "lower_bound": _lower(ds, fam, 0.0 if i == 0 else r),
                            "robust_at": {e: int((0.0 if i == 0 else r) > float(e)) for e in ("0.1", "0.5")},
                            "normal_alignment": np.nan if fam == "xgboost" else rng.uniform(), "centroid_alignment": 0.1, "effective_rank": 1.5})
    return pd.DataFrame(runs), pd.DataFrame(pts)


def test_leaderboard_numbers_and_json_rows():
    runs, pts = _frames()
    board = leaderboard_from_frames(runs, pts)
    assert len(board) == 8
    one = board[(board["dataset"] == "wine") & (board["model"] == "mlp")].iloc[0]
    p = pts[(pts["dataset"] == "wine") & (pts["model"] == "mlp")]
    assert one["clean_accuracy"] == pytest.approx(0.9)
    assert one["robust_acc@0.1"] == pytest.approx((p["radius"] > 0.1).mean())
    assert one["auc"] == pytest.approx(np.minimum(p["radius"], 0.5).mean() / 0.5)
    assert one["median_radius"] == pytest.approx(p[p["correct"] == 1]["radius"].median())
    # ranks by AUC within each dataset
    for _, sub in board.groupby("dataset"):
        assert list(sub.sort_values("rank")["auc"]) == sorted(sub["auc"], reverse=True)
    rows = to_json_rows(board)
    assert all(isinstance(r["clean_acc"], float) and isinstance(r["robust_acc"]["0.1"], float) for r in rows)
    assert overall_ranking(board)["overall_rank"].min() == 1


def test_hostile_names_escaped_in_every_format():
    runs, pts = _frames()
    board = leaderboard_from_frames(runs, pts)
    for fmt in ("md", "latex", "html"):
        text = render(board, fmt, overall_ranking(board), **({"points": pts, "runs": runs} if fmt == "html" else {}))
        assert "<script>alert" not in text, fmt


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_page_in_headless_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python client (browser extra)")
    runs, pts = _frames()
    board = leaderboard_from_frames(runs, pts)
    files = write_reports(board, tmp_path, overall_ranking(board), formats=("html",), points=pts, runs=runs)
    url = files["html"].resolve().as_uri()
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_load_state("load")
        section = page.locator('section.board[data-dataset="wine"]')
        rows = section.locator("tbody tr")
        assert rows.count() == 4  # one row per model
        names = section.locator("tbody tr td:nth-child(2)").all_inner_texts()
        assert '<script>alert("x")</script>' in names  # shown as text, not executed
        # sort by clean_accuracy? use fit_time: distinct values per model
        header = section.locator('th[data-col="fit_time"]')
        col = [h.get_attribute("data-col") for h in section.locator("th").all()].index("fit_time") + 1
        header.click()
        asc = [float(t) for t in section.locator(f"tbody tr td:nth-child({col})").all_inner_texts()]
        header.click()
        desc = [float(t) for t in section.locator(f"tbody tr td:nth-child({col})").all_inner_texts()]
        assert asc == sorted(asc) and desc == sorted(desc, reverse=True) and asc != desc
        # empirical and certified numbers side by side; the closed bracket is marked
        cols = [h.get_attribute("data-col") for h in section.locator("th").all()]
        assert cols.index("certified_acc@0.1") == cols.index("robust_acc@0.1") + 1 and {"certified_radius", "gap", "exact"} <= set(cols)
        cells = {r.locator("td").nth(1).inner_text(): r.locator("td").all_inner_texts() for r in rows.all()}
        assert cells["xgb"][cols.index("exact")] == "100.0 ✓" and cells["xgb"][cols.index("gap")] == "1.00"
        assert cells["xgb"][cols.index("median_radius")].endswith("(exact)")
        assert cells["rfam"][cols.index("gap")] == "2.00" and cells["rfam"][cols.index("exact")] == "0.0"
        assert cells["mlp"][cols.index("certified_radius")] == "–" and cells["mlp"][cols.index("certified_acc@0.1")] == "–"
        iris = page.locator('section.board[data-dataset="iris"]')
        assert not [c for c in (h.get_attribute("data-col") for h in iris.locator("th").all()) if c and c.startswith("certified")]
        # one figure per block: the certified curve for the models with lower bounds, none for the others
        wine_fig, iris_fig = section.locator("img.curves"), iris.locator("img.curves")
        assert wine_fig.count() == iris_fig.count() == 1
        assert json.loads(wine_fig.get_attribute("data-certified")) == ["rfam", "xgb"]
        assert json.loads(wine_fig.get_attribute("data-models")) == sorted(m for m, _ in MODELS)
        assert json.loads(iris_fig.get_attribute("data-certified")) == []
        assert "No certified curve (no lower bounds) for: " in section.locator("p.caption").inner_text()
        assert "No certified curve" in iris.locator("p.caption").inner_text()
        legend = page.locator("#column-definitions td.col").all_inner_texts()
        assert {"robust_acc@ε", "certified_acc@ε", "certified_radius", "gap", "exact"} <= set(legend)
        assert page.locator("#column-definitions").is_visible()
        imgs = page.locator("img.plot")
        assert imgs.count() >= 2
        widths = page.eval_on_selector_all("img.plot", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        assert all(w > 100 for w in widths)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)
        browser.close()
    assert errors == []
