"""The HTML leaderboard page without a browser: one self-contained file, the embedded data (every row, parseable,
nothing in it can end the script), column definitions on every header, interval cells (text from `display_frame`,
raw bounds in data-lo/data-hi), older boards without intervals, hostile names, the band of the robust-accuracy
curves, the forest plot beside the scatter, and the time a 300-row board takes."""
from __future__ import annotations

import html.parser
import json
import re
import sys
import time
import types

import numpy as np
import pandas as pd
import pytest

from robustbench_align.reports.export import COLUMN_DEFINITIONS, display_frame, to_json_rows
from robustbench_align.reports.html import definition_key, render_html, script_json

MODELS = [("gbdt", "gradient-boosting", "exact"), ("mlp", "mlp", "gradient"), ("mlp-grokalign", "mlp-grokalign", "gradient"),
          ("rf", "random-forest", "exact"), ("rfam", "rfam", "gradient"), ("rfm", "rfm", "gradient"), ("xgb", "xgboost", "exact")]
EPS = ("0.1", "0.5")
TREES = ("gradient-boosting", "random-forest", "xgboost")
CERTIFIER = {"gradient-boosting": "veritas", "random-forest": "milp", "xgboost": "veritas", "mlp": "crown", "mlp-grokalign": "crown",
             "rfam": "kernel", "rfm": "kernel"}
HOSTILE = ["</script><script>alert(1)</script>", '"onmouseover=alert(1) x="', "<script>alert('x')</script>", "a&amp;b</"]


def _interval(rng, v, lo_cap=0.0, hi_cap=None):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return np.nan, np.nan
    lo, hi = v - rng.uniform(0.02, 0.2) * max(abs(v), 0.3), v + rng.uniform(0.02, 0.2) * max(abs(v), 0.3)
    return max(lo, lo_cap), hi if hi_cap is None else min(hi, hi_cap)


def contract_board(models=MODELS, datasets=("wine", "iris"), threats=("linf", "l2"), eps=EPS, *, intervals=True, seed=0,
                   uncertified=(("rfam", "l2"),)):
    """A leaderboard frame as `tables.leaderboard_from_frames` builds it under the interval contract: per
    interval-carrying column c the float columns c_lo and c_hi, significance-aware `rank` and `tied_with`.

    `uncertified`: (model, threat) pairs without a certifier (certified columns NaN). Returns (board, overall).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for ds in datasets:
        for th in threats:
            block = []
            for m, fam, path in models:
                cert = (m, th) not in uncertified
                clean = rng.integers(21, 31) / 30
                rob = sorted((rng.integers(0, 31) / 30 * clean for _ in eps), reverse=True)
                row = {"dataset": ds, "threat": th, "model": m, "family": fam, "path": path, "clean_accuracy": clean}
                for e, r in zip(eps, rob, strict=True):
                    row[f"robust_acc@{e}"] = r
                    row[f"certified_acc@{e}"] = r * rng.uniform(0.4, 1.0) if cert else np.nan
                scale = 0.1 if th == "linf" else 2.0
                rad = float(rng.uniform(0.3, 1.5) * scale)
                row["median_radius"] = rad
                row["certified_radius"] = rad * rng.uniform(0.3, 1.0) if cert else np.nan
                row["gap"] = rad / row["certified_radius"] if cert else np.nan
                row["exact"] = (1.0 if fam in TREES else float(rng.uniform(0, 0.5))) if cert else np.nan
                row["auc"] = float(rng.uniform(0.1, 0.7))
                row["certifier"] = CERTIFIER.get(fam, "crown") if cert else None
                tree = fam in TREES
                row["normal_alignment"] = np.nan if tree else float(rng.uniform(0.2, 0.7))
                row["centroid_alignment"] = np.nan if tree else float(rng.uniform(-0.4, 0.4))
                row["effective_rank"] = np.nan if tree else float(rng.uniform(1, 2))
                row["attacks"] = "fab, fmn, hsj" if tree else "cw, deepfool, fab, fmn, hsj, pgd-refine"
                row["flags"] = "black_box_beats_white_box, rejected_candidates" if m.startswith("rf") else ""
                row.update(rejected=int(rng.integers(0, 10)), fit_time=float(rng.uniform(0.1, 5)), eval_time=float(rng.uniform(2, 20)),
                           seeds=3, n_points=30)
                for c in ["clean_accuracy", *(f"{k}@{e}" for e in eps for k in ("robust_acc", "certified_acc")), "exact"]:
                    row[f"{c}_lo"], row[f"{c}_hi"] = _interval(rng, row[c], 0.0, 1.0)
                for c in ("median_radius", "certified_radius", "gap", "auc", "normal_alignment", "centroid_alignment", "effective_rank"):
                    row[f"{c}_lo"], row[f"{c}_hi"] = _interval(rng, row[c], -np.inf)
                block.append(row)
            for r in block:  # rank = 1 + number of models significantly better (intervals of auc apart)
                better = [o for o in block if o["auc_lo"] > r["auc_hi"]]
                r["rank"] = 1 + len(better)
                r["tied_with"] = ", ".join(o["model"] for o in block if o is not r and not (o["auc_lo"] > r["auc_hi"] or r["auc_lo"] > o["auc_hi"]))
            rows += sorted(block, key=lambda r: (r["rank"], -r["auc"]))
    board = pd.DataFrame(rows)
    acc = [f"{k}@{e}" for e in eps for k in ("robust_acc", "certified_acc")]
    order = ["dataset", "threat", "rank", "model", "family", "path", "clean_accuracy", *acc, "median_radius", "certified_radius", "gap",
             "exact", "auc", "normal_alignment", "centroid_alignment", "effective_rank", "certifier", "tied_with", "attacks", "flags",
             "rejected", "fit_time", "eval_time", "seeds", "n_points"]
    bounds = [f"{c}{s}" for c in order if f"{c}_lo" in board for s in ("_lo", "_hi")]
    board = board[order + (bounds if intervals else [])]
    g = board.groupby(["threat", "model"], as_index=False).agg(family=("family", "first"), mean_rank=("rank", "mean"),
                                                              datasets=("dataset", "nunique"), clean_accuracy=("clean_accuracy", "mean"),
                                                              auc=("auc", "mean"), normal_alignment=("normal_alignment", "mean"))
    g["overall_rank"] = g.groupby("threat")["mean_rank"].rank(method="min").astype(int)
    if intervals:
        g["mean_rank_lo"], g["mean_rank_hi"] = g["mean_rank"] - 0.5, g["mean_rank"] + 0.5
    overall = g.sort_values(["threat", "overall_rank"]).reset_index(drop=True)
    overall = overall[["threat", "overall_rank", "model", "family", "mean_rank", "datasets", "clean_accuracy", "auc", "normal_alignment",
                       *(["mean_rank_lo", "mean_rank_hi"] if intervals else [])]]
    return board, overall


def page_data(text: str) -> dict:
    """The page's embedded data (the one `var RBA_DATA = ...;` line of its script)."""
    m = re.search(r"^var RBA_DATA = (.*);$", text, re.M)
    assert m, "no embedded data"
    return json.loads(m.group(1))


class Page(html.parser.HTMLParser):
    """Tags, attributes, and per table its header cells (attributes) and rows of cells (attributes, text as shown)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.tables: list[dict] = []
        self.section: dict | None = None
        self._cell: list[str] | None = None
        self._cell_attrs: dict = {}
        self._in_head = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "section":
            self.section = a
        elif tag == "table":
            self.tables.append({"id": a.get("id"), "section": self.section, "head": [], "rows": []})
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr" and not self._in_head and self.tables:
            self.tables[-1]["rows"].append({"attrs": a, "cells": []})
        elif tag in ("td", "th"):
            self._cell, self._cell_attrs = [], a

    def handle_endtag(self, tag):
        if tag == "section":
            self.section = None
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell)
            t = self.tables[-1]
            if self._in_head:
                t["head"].append({**self._cell_attrs, "text": text})
            elif t["rows"]:
                t["rows"][-1]["cells"].append({**self._cell_attrs, "text": text})
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def blocks(self) -> list[dict]:
        return [t for t in self.tables if t["section"] is not None]


def _cells(table: dict) -> list[dict[str, dict]]:
    names = [h["data-col"] for h in table["head"]]
    return [dict(zip(names, r["cells"], strict=True)) for r in table["rows"]]


def test_one_self_contained_file():
    board, overall = contract_board()
    text = render_html(board, overall)
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(//|[a-z]+:)(?!image/png;base64,)""", text, re.I)  # only data:image/png URIs
    assert "<link" not in text and "@import" not in text and "url(" not in text
    page = Page(text)
    assert page.tags.count("script") == 1  # the data and the page's script, in one element
    assert all(v.startswith("data:image/png;base64,") for a, v in page.attrs if a == "src")


def test_embedded_data_has_every_row_and_cannot_end_the_script():
    models = [*MODELS[:5], (HOSTILE[0], "user", "gradient"), (HOSTILE[1], "user", "black-box")]
    board, overall = contract_board(models, datasets=(HOSTILE[2], "wine"), threats=("linf", HOSTILE[3]))
    text = render_html(board, overall)
    raw = re.search(r"^var RBA_DATA = (.*);$", text, re.M).group(1)
    assert "<" not in raw and ">" not in raw and "&" not in raw and "\u2028" not in raw
    data = page_data(text)
    assert len(data["rows"]) == len(board)
    assert sorted((r["dataset"], r["threat"], r["model"]) for r in data["rows"]) == \
        sorted(zip(board["dataset"], board["threat"], board["model"], strict=True))
    assert data["models"] == sorted(board["model"].unique()) and set(data["datasets"]) == set(board["dataset"])
    shown = display_frame(board)
    for r in data["rows"]:
        i = board.index[(board["dataset"] == r["dataset"]) & (board["threat"] == r["threat"]) & (board["model"] == r["model"])][0]
        assert r["cells"]["clean_accuracy"][0] == shown.loc[i, "clean_accuracy"]
        assert r["cells"]["clean_accuracy"][2:] == pytest.approx([board.loc[i, "clean_accuracy_lo"], board.loc[i, "clean_accuracy_hi"]], rel=1e-5)
        assert r["cells"]["model"][0] == r["model"]
    assert script_json({"a": "</script><!--\u2028"}) == '{"a":"\\u003c/script\\u003e\\u003c!--\\u2028"}'


def test_hostile_names_are_escaped_everywhere():
    models = [*MODELS[:3], *((h, h, "gradient") for h in HOSTILE[:3])]
    board, overall = contract_board(models, datasets=(HOSTILE[3], '"><svg onload=alert(1)>'), threats=("<i>linf</i>",))
    text = render_html(board, overall)
    for h in HOSTILE + ['"><svg onload=alert(1)>', "<i>linf</i>"]:
        assert h not in text, h
    assert "<script>alert" not in text and text.count("</script>") == 1
    page = Page(text)
    assert page.tags.count("script") == 1
    assert not any(a.startswith("on") for a, _ in page.attrs)
    shown = {c["text"] for t in page.blocks() for row in t["rows"] for c in row["cells"]}
    assert set(HOSTILE[:3]) <= shown  # as text, exactly
    assert {t["section"]["data-dataset"] for t in page.blocks()} == {HOSTILE[3], '"><svg onload=alert(1)>'}
    assert set(page_data(text)["models"]) == set(board["model"])


def test_every_header_has_its_definition():
    board, overall = contract_board()
    page = Page(render_html(board, overall))
    defs = dict(COLUMN_DEFINITIONS)
    ids = {}
    for t in page.tables:
        if t["id"] in ("column-definitions", "other-definitions"):
            ids.update({r["cells"][1]["id"]: r["cells"][1]["text"] for r in t["rows"]})
    heads = [h for t in page.tables if t["id"] not in ("column-definitions", "other-definitions") for h in t["head"]]
    assert heads and all(h.get("title") for h in heads)
    for h in heads:
        assert h.get("aria-describedby") in ids, h  # the same text, for assistive technology
        assert ids[h["aria-describedby"]] == h["title"]
        assert h["title"] != h["data-col"], h  # a definition, not the name again
    by = {h["data-col"]: h["title"] for h in heads}
    assert by["robust_acc@0.1"] == defs["robust_acc@ε"] and by["certified_acc@0.5"] == defs["certified_acc@ε"]
    assert by["median_radius"] == defs["median_radius"] and by["rank"] == defs["rank"]
    assert definition_key("robust_acc@0.1_lo", defs) == "robust_acc@ε" and definition_key("no such", defs) is None


def test_interval_cells_show_display_text_and_keep_the_raw_bounds():
    board, overall = contract_board()
    page = Page(render_html(board, overall))
    shown = display_frame(board)
    blocks = page.blocks()
    assert len(blocks) == 4
    n = 0
    for t in blocks:
        ds, th = t["section"]["data-dataset"], t["section"]["data-threat"]
        cols = [h["data-col"] for h in t["head"]]
        assert not [c for c in cols if c.endswith(("_lo", "_hi"))] and "dataset" not in cols and "threat" not in cols
        for cells in _cells(t):
            m = cells["model"]["text"]
            i = board.index[(board["dataset"] == ds) & (board["threat"] == th) & (board["model"] == m)][0]
            for c in ("clean_accuracy", "robust_acc@0.1", "median_radius", "auc"):
                assert cells[c]["text"] == shown.loc[i, c]
                assert float(cells[c]["data-lo"]) == pytest.approx(board.loc[i, f"{c}_lo"], rel=1e-5)
                assert float(cells[c]["data-hi"]) == pytest.approx(board.loc[i, f"{c}_hi"], rel=1e-5)
            v, lo, hi = (board.loc[i, f"clean_accuracy{s}"] for s in ("", "_lo", "_hi"))
            assert cells["clean_accuracy"]["text"].startswith(f"{100 * v:.1f}")
            if pd.notna(lo) and pd.notna(hi):  # export.display_frame folds the interval in
                assert cells["clean_accuracy"]["text"] == f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
            else:
                assert "[" not in shown.loc[i, "clean_accuracy"]
            assert float(cells["rank"]["data-sort"]) == board.loc[i, "rank"]
            n += 1
    assert n == len(board)


def test_interval_text_matches_the_json_rows():
    board, overall = contract_board()
    rows = to_json_rows(board)
    assert "clean_acc_lo" in rows[0] and "robust_acc_lo" in rows[0]  # the JSON rows carry the intervals
    page = Page(render_html(board, overall))
    by = {(t["section"]["data-dataset"], t["section"]["data-threat"], c["model"]["text"]): c for t in page.blocks() for c in _cells(t)}
    for r in rows:
        cells = by[(r["dataset"], r["threat_model"], r["model"])]
        assert cells["clean_accuracy"]["text"] == f"{100 * r['clean_acc']:.1f} [{100 * r['clean_acc_lo']:.1f}, {100 * r['clean_acc_hi']:.1f}]"
        for e, v in r["robust_acc"].items():
            assert cells[f"robust_acc@{e}"]["text"] == f"{100 * v:.1f} [{100 * r['robust_acc_lo'][e]:.1f}, {100 * r['robust_acc_hi'][e]:.1f}]"
        assert cells["auc"]["text"] == f"{r['auc']:.3g} [{r['auc_lo']:.3g}, {r['auc_hi']:.3g}]"


def test_a_board_without_intervals_renders_as_before():
    board, overall = contract_board(intervals=False)
    assert not [c for c in board.columns if c.endswith(("_lo", "_hi"))]
    text = render_html(board, overall)
    page = Page(text)
    shown = display_frame(board)
    assert not [a for a, _ in page.attrs if a in ("data-lo", "data-hi")]
    for t in page.blocks():
        for cells in _cells(t):
            i = board.index[(board["dataset"] == t["section"]["data-dataset"]) & (board["threat"] == t["section"]["data-threat"])
                            & (board["model"] == cells["model"]["text"])][0]
            assert cells["clean_accuracy"]["text"] == shown.loc[i, "clean_accuracy"] and "[" not in cells["clean_accuracy"]["text"]
    assert all(len(r["cells"]["clean_accuracy"]) == 2 for r in page_data(text)["rows"])


def test_compact_and_extra_columns():
    board, overall = contract_board()
    page = Page(render_html(board, overall))
    t = page.blocks()[0]
    cls = {h["data-col"]: set((h.get("class") or "").split()) for h in t["head"]}
    compact = [c for c, k in cls.items() if "x" not in k]
    assert compact == ["rank", "model", "family", "path", "clean_accuracy", "robust_acc@0.1", "certified_acc@0.1", "robust_acc@0.5",
                       "certified_acc@0.5", "median_radius", "certified_radius", "auc", "normal_alignment", "centroid_alignment"]
    assert {"attacks", "flags", "certifier", "tied_with", "fit_time", "eval_time", "rejected", "seeds", "n_points", "gap", "exact"} <= \
        {c for c, k in cls.items() if "x" in k}
    row = _cells(t)[0]
    tip = row["model"]["title"]  # the lists and counts in the model cell's tooltip
    assert tip.startswith("attacks: ") and "certifier: " in tip and "tied_with: " in tip and "n_points: 30" in tip
    data = page_data(render_html(board, overall))
    mv = {c["name"] for c in data["columns"] if c["model_view"]}
    assert {"path", "flags", "certifier", "certified_acc@0.1", "certified_radius", "clean_accuracy"} <= mv


def test_robust_curves_band_is_a_stratified_bootstrap():
    from robustbench_align.metrics.intervals import bootstrap_means
    from robustbench_align.reports.plots import robust_band, robust_bracket_curves

    rng = np.random.default_rng(1)
    r = np.where(rng.uniform(size=60) < 0.1, 0.0, rng.uniform(0, 1, size=60))
    seeds = np.repeat([0, 1, 2], 20)
    grid = np.linspace(0, 1, 50)
    ind = (r[:, None] > grid[None, :]).astype(float)
    lo, hi = robust_band(ind, seeds.astype(str))
    lo2, hi2 = bootstrap_means(ind, strata=seeds.astype(str), n_boot=1000, confidence=0.95, seed=0)
    np.testing.assert_allclose(lo, lo2)
    np.testing.assert_allclose(hi, hi2)
    lo3, hi3 = robust_band(ind > 0.5, seeds.astype(str))  # bool indicators (bit-packed columns): the same band
    np.testing.assert_array_equal(lo3, lo)
    np.testing.assert_array_equal(hi3, hi)
    emp = ind.mean(axis=0)
    assert np.all(lo <= emp + 1e-12) and np.all(emp <= hi + 1e-12) and np.any(hi > lo)
    pts = pd.DataFrame({"dataset": "d", "threat": "linf", "norm": "linf", "model": np.repeat(["a", "b"], 30), "seed": seeds[:60],
                        "radius": r, "correct": (r > 0).astype(int), "lower_bound": np.where(np.arange(60) < 30, 0.5 * r, np.nan),
                        "robust_at": [{"0.1": int(x > 0.1)} for x in r]})
    fig = robust_bracket_curves(pts, "d", "linf")
    assert fig is not None and fig.png.startswith(b"\x89PNG")
    assert fig.models == ["a", "b"] and fig.banded == ["a", "b"] and fig.certified == ["a"]


def _points(board: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows = []
    for _, b in board.iterrows():
        for i in range(12):
            r = float(rng.uniform(0, 0.6))
            rows.append({"dataset": b["dataset"], "threat": b["threat"], "norm": "linf", "model": b["model"], "seed": i % 2, "idx": i,
                         "correct": int(i != 0), "radius": 0.0 if i == 0 else r, "lower_bound": np.nan,
                         "robust_at": {e: int(r > float(e)) for e in EPS}, "normal_alignment": rng.uniform(), "centroid_alignment": 0.1})
    return pd.DataFrame(rows)


def test_forest_plot_beside_the_scatter(monkeypatch):
    board, overall = contract_board(MODELS[:3], datasets=("wine",), threats=("linf",))
    pts = _points(board)
    calls = []
    png = b"\x89PNG\r\n\x1a\nforest"

    def forest_plot(result, path=None, *, which="spearman", title=None):
        calls.append((result, which, title))
        return png

    monkeypatch.setitem(sys.modules, "robustbench_align.reports.forest", types.SimpleNamespace(forest_plot=forest_plot))
    text = render_html(board, overall, points=pts)
    assert calls and getattr(calls[0][0], "spearman", None) is not None
    assert 'class="plot forest"' in text and 'class="plot scatter"' in text
    # without the module the page still has the scatter
    monkeypatch.setitem(sys.modules, "robustbench_align.reports.forest", None)
    text = render_html(board, overall, points=pts)
    assert 'class="plot scatter"' in text and 'class="plot forest"' not in text


def test_three_hundred_rows_render_quickly():
    models = [(f"model-{i:02d}", f"family-{i % 5}", ("exact", "gradient", "black-box")[i % 3]) for i in range(25)]
    board, overall = contract_board(models, datasets=tuple(f"ds{i}" for i in range(6)), threats=("linf", "l2"))
    assert len(board) == 300
    render_html(board, overall)  # warm (template compilation, imports)
    t = time.perf_counter()
    text = render_html(board, overall)
    elapsed = time.perf_counter() - t
    assert elapsed < 2.0, f"300 rows: {elapsed:.2f} s"
    assert len(page_data(text)["rows"]) == 300
