"""The HTML leaderboard in a real headless Chromium: loads cleanly, one row per model, sorting works, plots render,
certified numbers and curves shown where lower bounds exist and only there; the explorer: dataset/threat selectors
(and the URL hash), the per-model view, interval text as in the JSON rows, definitions on the headers, the compact
view without horizontal scroll at 1280 px, and every block and column without JavaScript."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_align.reports.export import COLUMN_DEFINITIONS, render, to_json_rows, write_reports
from robustbench_align.reports.html import render_html
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
        page.on("dialog", lambda d: errors.append(f"dialog: {d.message}"))
        page.goto(url)
        page.wait_for_load_state("load")
        page.click("#btn-cols")  # every column (fit_time, gap, exact are not in the compact set)
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
        def value(text):  # the number without its interval, where the board has one
            return text.split(" [", 1)[0]

        assert value(cells["xgb"][cols.index("exact")]) == "100.0 ✓" and value(cells["xgb"][cols.index("gap")]) == "1.00"
        assert "(exact)" in cells["xgb"][cols.index("median_radius")]
        assert value(cells["rfam"][cols.index("gap")]) == "2.00" and value(cells["rfam"][cols.index("exact")]) == "0.0"
        assert cells["mlp"][cols.index("certified_radius")] == "–" and cells["mlp"][cols.index("certified_acc@0.1")] == "–"
        if "clean_accuracy_lo" in board:  # the shown interval is the JSON rows' interval
            want, _ = _expected_interval(board, to_json_rows(board), "mlp", "wine", "linf")
            assert {c: cells["mlp"][cols.index(c)] for c in want} == want
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
        # the hostile name in the model selector and the per-model view: text, never markup
        hostile = MODELS[-1][0]
        page.select_option("#sel-model", label=hostile)
        assert page.locator("#model-view h2").inner_text() == f"Model {hostile} (user)"
        assert page.locator("#model-table tbody tr").count() == 2
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)
        browser.close()
    assert errors == []


def _launch(sync_api):
    return sync_api.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])


def _visible_blocks(page):
    return page.eval_on_selector_all("section.board", "els => els.filter(e => !e.hidden && e.offsetParent !== null)"
                                                      ".map(e => [e.getAttribute('data-dataset'), e.getAttribute('data-threat')])")


def _cell_texts(page, section_sel, model):
    """{column: text as shown} of one model's row in one block."""
    return page.eval_on_selector(section_sel, """(sec, model) => {
        const cols = Array.from(sec.querySelectorAll('thead th')).map(th => th.getAttribute('data-col'));
        const tr = Array.from(sec.querySelectorAll('tbody tr')).find(r => r.getAttribute('data-model') === model);
        return Object.fromEntries(Array.from(tr.cells).map((td, i) => [cols[i], td.innerText]));
    }""", model)


def _expected_interval(board, rows, model, dataset, threat):
    """The interval text of clean_accuracy and robust_acc@0.5: from the JSON rows where they carry intervals, else from
    the board's c_lo/c_hi columns (the contract)."""
    r = next(x for x in rows if (x["model"], x["dataset"], x["threat_model"]) == (model, dataset, threat))
    if "clean_acc_lo" in r:
        trio = {"clean_accuracy": (r["clean_acc"], r["clean_acc_lo"], r["clean_acc_hi"]),
                "robust_acc@0.5": (r["robust_acc"]["0.5"], r["robust_acc_lo"]["0.5"], r["robust_acc_hi"]["0.5"])}
    else:
        b = board[(board["model"] == model) & (board["dataset"] == dataset) & (board["threat"] == threat)].iloc[0]
        trio = {c: (b[c], b[f"{c}_lo"], b[f"{c}_hi"]) for c in ("clean_accuracy", "robust_acc@0.5")}
    return {c: f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" for c, (v, lo, hi) in trio.items()}, "clean_acc_lo" in r


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_explorer_in_headless_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python client (browser extra)")
    from test_report_page import _points, contract_board

    board, overall = contract_board()  # 7 models, 2 datasets x 2 threat models, 2 eps, with intervals
    path = tmp_path / "leaderboard.html"
    path.write_text(render_html(board, overall, points=_points(board)), encoding="utf-8")
    url = path.resolve().as_uri()
    rows = to_json_rows(board)
    defs = dict(COLUMN_DEFINITIONS)
    errors = []
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_load_state("load")
        assert len(_visible_blocks(page)) == 4
        # the compact view: no horizontal scroll at 1280 px, rows one line high
        assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth + 1")
        over = page.eval_on_selector_all("section.board .wrap", "ws => ws.filter(w => w.scrollWidth > w.clientWidth + 1).length")
        assert over == 0
        heights = page.eval_on_selector_all("section.board tbody tr", """trs => trs.map(r => [r.getBoundingClientRect().height,
            parseFloat(getComputedStyle(r.cells[0]).fontSize)])""")
        assert heights and all(h < 2.6 * fs for h, fs in heights)  # one line of text plus padding
        assert max(h for h, _ in heights) - min(h for h, _ in heights) <= 1
        assert not page.locator('section.board th[data-col="fit_time"]').first.is_visible()
        # every header carries its definition, also for assistive technology
        heads = page.eval_on_selector_all("section.board th, #table-overall th", """ths => ths.map(th => [th.getAttribute('data-col'),
            th.title, (document.getElementById(th.getAttribute('aria-describedby') || '') || {}).textContent])""")
        assert heads and all(t and t == d for _, t, d in heads)
        by = {c: t for c, t, _ in heads}
        assert by["robust_acc@0.1"] == defs["robust_acc@ε"] and by["clean_accuracy"] == defs["clean_accuracy"]
        # the shown interval text is the JSON rows' interval
        sel = 'section.board[data-dataset="iris"][data-threat="linf"]'
        for model in ("mlp", "xgb"):
            want, from_json = _expected_interval(board, rows, model, "iris", "linf")
            got = _cell_texts(page, sel, model)
            assert {c: got[c] for c in want} == want, (model, from_json)
        # a dataset: only its blocks; then a threat model too; the URL hash links the view
        page.select_option("#sel-dataset", label="iris")
        assert sorted(_visible_blocks(page)) == [["iris", "l2"], ["iris", "linf"]]
        assert "dataset=iris" in page.evaluate("location.hash")
        page.select_option("#sel-threat", label="linf")
        assert _visible_blocks(page) == [["iris", "linf"]]
        assert page.eval_on_selector_all(".figrow", "ds => ds.filter(d => !d.hidden).map(d => d.getAttribute('data-threat'))") == ["linf"]
        linked = page.evaluate("location.href")
        page2 = browser.new_page(viewport={"width": 1280, "height": 900})
        page2.goto(linked)
        page2.wait_for_load_state("load")
        assert _visible_blocks(page2) == [["iris", "linf"]]
        assert page2.eval_on_selector("#sel-dataset", "s => s.options[s.selectedIndex].text") == "iris"
        page2.close()
        page.select_option("#sel-dataset", label="all datasets")
        page.select_option("#sel-threat", label="all threat models")
        assert len(_visible_blocks(page)) == 4
        # the per-model view: every dataset and threat model of the model, in one table
        page.locator(f'{sel} tr[data-model="rfam"] td.model').click()
        assert _visible_blocks(page) == [] and page.locator("#model-view").is_visible()
        assert "model=rfam" in page.evaluate("location.hash")
        mt = page.locator("#model-table")
        mine = board[board["model"] == "rfam"]
        assert mt.locator("tbody tr").count() == len(mine) == 4
        cols = [h.get_attribute("data-col") for h in mt.locator("th").all()]
        visible = [h.get_attribute("data-col") for h in mt.locator("th").all() if h.is_visible()]
        assert {"dataset", "threat", "path", "flags", "certifier", "certified_acc@0.1", "certified_radius", "clean_accuracy"} <= set(visible)
        got = {(r[cols.index("dataset")], r[cols.index("threat")]): r for r in
               (tr.locator("td").all_inner_texts() for tr in mt.locator("tbody tr").all())}
        assert set(got) == set(zip(mine["dataset"], mine["threat"], strict=True))
        for (ds, th), cells in got.items():
            want, _ = _expected_interval(board, rows, "rfam", ds, th)
            assert cells[cols.index("clean_accuracy")] == want["clean_accuracy"]
            assert cells[cols.index("path")] == "gradient" and cells[cols.index("flags")].startswith("black_box_beats_white_box")
            assert (cells[cols.index("certifier")] == "–") == (th == "l2")  # no certifier for rfam on l2
        assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth + 1")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "leaderboard-model.png"), full_page=False)
        # a dataset cell opens that block
        mt.locator("tbody tr").first.locator("td").first.click()
        assert len(_visible_blocks(page)) == 1 and not page.locator("#model-view").is_visible()
        # the model selector does the same as a click on a name (all datasets and threat models first, then narrowed)
        page.select_option("#sel-model", label="xgb")
        assert page.locator("#model-table tbody tr").count() == 4
        page.select_option("#sel-threat", label="l2")
        assert page.locator("#model-table tbody tr").count() == 2
        page.select_option("#sel-threat", label="all threat models")
        page.select_option("#sel-model", label="all models (per block)")
        # more columns: the rest appear, the page itself still does not scroll sideways
        page.click("#btn-cols")
        assert page.locator('section.board th[data-col="fit_time"]').first.is_visible()
        assert "cols=all" in page.evaluate("location.hash")
        assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth + 1")
        page.click("#btn-cols")
        page.screenshot(path=str(ARTIFACTS / "leaderboard-compact.png"), full_page=False)
        page.close()
        # without JavaScript: every block and every column, no controls
        ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
        nojs = ctx.new_page()
        nojs.goto(url)
        nojs.wait_for_load_state("load")
        assert len(nojs.locator("section.board").all()) == 4 and all(s.is_visible() for s in nojs.locator("section.board").all())
        assert nojs.locator('section.board th[data-col="fit_time"]').first.is_visible()
        assert not nojs.locator("#controls").is_visible()
        ctx.close()
        browser.close()
    assert errors == []
