"""Certified numbers beside empirical ones: certified_acc@ε, certified_radius, gap and exact, from a hand-built store,
in every leaderboard format (Markdown, CSV, JSON, LaTeX, HTML) and in the robust-accuracy figure."""
import html.parser
import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from robustbench_align.reports.export import COLUMN_DEFINITIONS, display_frame, render, to_json_rows
from robustbench_align.reports.plots import certified_curve, robust_bracket_curves
from robustbench_align.reports.tables import leaderboard, leaderboard_from_frames, overall_ranking
from robustbench_align.runner.store import POINT_COLUMNS, RunRecord, Store

INF = math.inf
NAN = math.nan
EPS = ("0.25", "0.3", "0.5")
CORRECT = [0, 1, 1, 1]  # point 0 is misclassified: radius 0

# model -> (radius, lower_bound, exact, cert) per point; exact/cert are written where the schema has them
MODELS = {
    # the bracket is open on points 1 and 3, closed on point 2
    "bracketed": ([0.0, 0.2, 0.5, INF], [0.0, 0.1, 0.5, 0.3], [1, 0, 1, 0], [None, "crown", "milp", "crown"]),
    # every bracket closed: the radius is exact
    "closed": ([0.0, 0.2, 0.4, 0.6], [0.0, 0.2, 0.4, 0.6], [1, 1, 1, 1], [None, "milp", "milp", "milp"]),
    # a certifier ran and proved nothing
    "unproved": ([0.0, 0.2, 0.4, 0.6], [0.0, 0.0, 0.0, 0.0], [1, 0, 0, 0], [None, "crown", "crown", "crown"]),
    # no certifier ran at all (attacks only)
    "attack_only": ([0.0, 0.3, 0.6, 0.9], [NAN] * 4, [None] * 4, [None, "unsupported: no bound", "unsupported: no bound", None]),
}


def _record(model, radius, lower, exact, cert, dataset="toy", threat="l2", seed=0):
    pts = []
    for i in range(4):
        p = {"idx": i, "test_index": i, "y": 1, "pred": 1 if CORRECT[i] else 0, "correct": CORRECT[i], "radius": radius[i],
             "lower_bound": lower[i], "by_attack": "fab", "robust_at": {e: int(radius[i] > float(e)) for e in EPS}}
        if "exact" in POINT_COLUMNS:
            p["exact"] = exact[i]
        if "cert" in POINT_COLUMNS:
            p["cert"] = cert[i]
        pts.append(p)
    run = {"run_id": f"{dataset}-{threat}-{model}-{seed}", "model": model, "family": "f", "dataset": dataset, "threat": threat, "norm": "l2",
           "seed": seed, "status": "ok", "config": {}, "attacks": ["fab"], "flags": {}, "fit_time": 1.0, "eval_time": 2.0,
           "clean_accuracy": 0.75, "n_points": 4, "rejected": 0}
    return RunRecord(run=run, points=pts)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "results.sqlite"
    with Store(path) as st:
        st.write([_record(m, *cols) for m, cols in MODELS.items()])
        st.write([_record("attack_only", *MODELS["attack_only"], dataset="plain")])  # a (dataset, threat) without any bound
    return path


def _row(board, model, dataset="toy"):
    return board[(board["model"] == model) & (board["dataset"] == dataset)].iloc[0]


def test_certified_columns_from_the_store(store):
    board = leaderboard(store)
    b = _row(board, "bracketed")
    assert b["certified_radius"] == pytest.approx(0.3)  # median of lower bounds 0.1, 0.5, 0.3 over clean-correct points
    assert b["gap"] == pytest.approx(2.0)  # median of 0.2/0.1, 0.5/0.5, inf/0.3
    assert b["exact"] == pytest.approx(1 / 3)  # only point 2's bracket is closed (inf radius never is)
    assert b["median_radius"] == pytest.approx(0.5)
    # empirical: radius > eps over all 4 points; certified: clean-correct and lower bound > eps
    assert b["robust_acc@0.25"] == pytest.approx(0.5) and b["certified_acc@0.25"] == pytest.approx(0.5)
    assert b["robust_acc@0.3"] == pytest.approx(0.5) and b["certified_acc@0.3"] == pytest.approx(0.25)  # lb = 0.3 does not certify 0.3
    assert b["robust_acc@0.5"] == pytest.approx(0.25) and b["certified_acc@0.5"] == 0.0  # lb = 0.5 does not certify 0.5
    c = _row(board, "closed")
    assert (c["exact"], c["gap"], c["certified_radius"], c["median_radius"]) == (1.0, 1.0, pytest.approx(0.4), pytest.approx(0.4))
    assert [c[f"certified_acc@{e}"] for e in EPS] == [c[f"robust_acc@{e}"] for e in EPS] == [0.5, 0.5, 0.25]
    u = _row(board, "unproved")
    assert u["certified_radius"] == 0.0 and math.isinf(u["gap"]) and u["exact"] == 0.0 and u["certified_acc@0.25"] == 0.0
    for ds in ("toy", "plain"):
        a = _row(board, "attack_only", ds)
        assert all(math.isnan(a[c]) for c in ("certified_radius", "gap", "exact", *(f"certified_acc@{e}" for e in EPS))), ds
        assert a["robust_acc@0.25"] == 0.75
    # certified accuracy never exceeds the empirical one (sound bounds: lower_bound <= radius)
    for e in EPS:
        ok = board[f"certified_acc@{e}"].notna()
        assert (board.loc[ok, f"certified_acc@{e}"] <= board.loc[ok, f"robust_acc@{e}"]).all()


def test_columns_sit_side_by_side_and_ranking_is_unchanged(store):
    board = leaderboard(store)
    cols = list(board.columns)
    for e in EPS:
        assert cols.index(f"certified_acc@{e}") == cols.index(f"robust_acc@{e}") + 1
    assert "certified" not in cols and {"certified_radius", "gap", "exact"} <= set(cols)
    with Store(store, readonly=True) as st:
        runs, pts = st.runs(), st.points()
    blind = leaderboard_from_frames(runs, pts.assign(lower_bound=np.nan))  # the same results without any certificate
    keep = ["dataset", "threat", "model", "rank", "auc", *(f"robust_acc@{e}" for e in EPS)]
    pd.testing.assert_frame_equal(board[keep], blind[keep])
    assert blind["certified_radius"].isna().all() and blind["exact"].isna().all()


def _md_rows(text, dataset="toy", intervals=False):
    """{model: {column: shown}} of the Markdown table under `## dataset — l2` (the " [lo, hi]" of a number removed
    unless `intervals`)."""
    lines = text.split("\n")
    start = lines.index(f"## {dataset} — l2") + 2  # the heading, a blank line, then the table
    table = lines[start:start + next(i for i, ln in enumerate(lines[start:]) if not ln.startswith("|"))]

    def cells(ln):
        out = [c.strip() for c in ln.strip().strip("|").split(" | ")]
        return out if intervals else [re.sub(r" \\\[[^\]]*\\\]", "", c) for c in out]

    head = cells(table[0])
    return {r[head.index("model")]: dict(zip(head, r, strict=True)) for r in map(cells, table[2:])}


def test_markdown_shows_both_and_defines_the_columns(store):
    board = leaderboard(store)
    text = render(board, "md", overall_ranking(board))
    rows = _md_rows(text)
    b, c, u, a = rows["bracketed"], rows["closed"], rows["unproved"], rows["attack_only"]
    assert (b["robust_acc@0.25"], b["certified_acc@0.25"], b["robust_acc@0.3"], b["certified_acc@0.3"]) == ("50.0", "50.0", "50.0", "25.0")
    assert (b["median_radius"], b["certified_radius"], b["gap"], b["exact"]) == ("0.5", "0.3", "2.00", "33.3")  # both ends shown
    assert (c["median_radius"], c["gap"], c["exact"]) == ("0.4 (exact)", "1.00", "100.0 ✓")  # the bracket closed everywhere
    assert (u["certified_radius"], u["gap"], u["exact"], u["certified_acc@0.25"]) == ("0", "∞", "0.0", "0.0")
    assert all(a[k] == "–" for k in ("certified_radius", "gap", "exact", "certified_acc@0.25")), a  # not certified, never 0
    assert "(exact)" not in a["median_radius"] and "✓" not in b["exact"]
    # a (dataset, threat) without any lower bound has no certified columns at all
    assert not any(k.startswith("certified") or k in ("gap", "exact") for k in _md_rows(text, "plain")["attack_only"])
    legend = text.split("## Column definitions", 1)[1]
    for name in ("robust_acc@ε", "certified_acc@ε", "certified_radius", "gap", "exact"):
        assert f"- `{name}`: " in legend, name
    assert "upper bound on the true robust accuracy" in legend and "lower bound on the true robust accuracy" in legend
    assert "<" not in text and ">" not in text
    shown = _md_rows(text, intervals=True)["bracketed"]
    assert re.fullmatch(r"50\.0 \\\[\d+\.\d, \d+\.\d\\\]", shown["robust_acc@0.25"]), shown  # value [lo, hi], escaped brackets


def test_csv_and_json_carry_the_numbers(store):
    board = leaderboard(store)
    back = pd.read_csv(io.StringIO(render(board, "csv"))).set_index(["dataset", "model"])
    b = back.loc[("toy", "bracketed")]
    assert (b["certified_acc@0.25"], b["certified_acc@0.3"], b["robust_acc@0.25"]) == (0.5, 0.25, 0.5)
    assert (b["certified_radius"], b["gap"]) == (0.3, 2.0) and b["exact"] == pytest.approx(1 / 3)
    assert math.isinf(back.loc[("toy", "unproved"), "gap"])
    assert back.loc[("plain", "attack_only"), ["certified_radius", "gap", "exact", "certified_acc@0.25"]].isna().all()
    rows = {(r["dataset"], r["model"]): r for r in json.loads(render(board, "json"))}
    j = rows[("toy", "bracketed")]
    assert j["certified_acc"] == {"0.25": 0.5, "0.3": 0.25, "0.5": 0.0} and j["robust_acc"] == {"0.25": 0.5, "0.3": 0.5, "0.5": 0.25}
    assert (j["certified_radius"], j["gap"], j["median_radius"]) == (0.3, 2.0, 0.5)
    assert j["exact_fraction"] == j["certified_fraction"] == pytest.approx(1 / 3)
    assert rows[("toy", "unproved")]["gap"] == "inf" and rows[("toy", "closed")]["exact_fraction"] == 1.0
    n = rows[("plain", "attack_only")]
    assert n["certified_acc"] == dict.fromkeys(EPS) and n["certified_radius"] is None and n["gap"] is None and n["exact_fraction"] is None
    if "cert" in POINT_COLUMNS:  # the store keeps the certifier per point
        assert j["certifiers"] == ["crown", "milp"] and n["certifiers"] == []


def test_latex_has_the_columns_escaped(store):
    board = leaderboard(store)
    text = render(board, "latex")
    plain, toy = text.split("leaderboard: toy,", 1)
    assert "certified" not in next(ln for ln in plain.split("\n") if ln.startswith("rank & model"))  # no bounds: no columns
    head = next(ln for ln in toy.split("\n") if ln.startswith("rank & model"))
    assert r"robust\_acc@0.25 & certified\_acc@0.25" in head and r"certified\_radius & gap & exact" in head
    assert r"100.0 \ensuremath{\checkmark}" in text and r"\ensuremath{\infty}" in text and "–" not in text and "✓" not in text


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.imgs, self.legend, self._td, self._in_legend = [], [], None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if tag == "table" and a.get("id") == "column-definitions":
            self._in_legend = True
        if tag == "td" and self._in_legend:
            self._td = []

    def handle_endtag(self, tag):
        if tag == "td" and self._td is not None:
            self.legend.append("".join(self._td))
            self._td = None
        if tag == "table":
            self._in_legend = False

    def handle_data(self, data):
        if self._td is not None:
            self._td.append(data)


def test_html_page_has_certified_curves_only_where_bounds_exist(store):
    board = leaderboard(store)
    with Store(store, readonly=True) as st:
        runs, pts = st.runs(), st.points()
    text = render(board, "html", overall_ranking(board), points=pts, runs=runs)
    page = _Page()
    page.feed(text)
    curves = {img["alt"].rsplit(": ", 1)[1]: img for img in page.imgs if "curves" in img.get("class", "")}
    assert set(curves) == {"toy l2", "plain l2"}
    toy, plain = curves["toy l2"], curves["plain l2"]
    assert json.loads(toy["data-models"]) == ["attack_only", "bracketed", "closed", "unproved"]
    assert json.loads(toy["data-certified"]) == ["bracketed", "closed", "unproved"]
    assert json.loads(plain["data-certified"]) == [] and json.loads(plain["data-models"]) == ["attack_only"]
    assert "No certified curve (no lower bounds) for: attack_only." in text
    names = page.legend[0::2]
    assert [n for n in names if n in ("robust_acc@ε", "certified_acc@ε", "certified_radius", "gap", "exact")] == \
        ["robust_acc@ε", "certified_acc@ε", "certified_radius", "gap", "exact"]
    assert len(page.legend) == 2 * len(COLUMN_DEFINITIONS)
    assert "http://" not in text and "https://" not in text  # self-contained


def test_figure_draws_the_certified_curve_as_a_lower_bound(store):
    with Store(store, readonly=True) as st:
        pts = st.points()
    g = pts[(pts["model"] == "bracketed") & (pts["dataset"] == "toy")]
    eps = np.array([0.0, 0.1, 0.25, 0.3, 0.5])
    np.testing.assert_array_equal(certified_curve(g, eps), [0.75, 0.5, 0.5, 0.25, 0.0])  # strict: lower_bound > eps
    assert certified_curve(pts[pts["model"] == "attack_only"], eps) is None
    fig = robust_bracket_curves(pts, "toy", "l2")
    assert fig is not None and fig.png.startswith(b"\x89PNG") and fig.certified == ["bracketed", "closed", "unproved"]
    fig = robust_bracket_curves(pts, "plain", "l2")
    assert fig is not None and fig.certified == [] and fig.models == ["attack_only"]


def test_stored_exact_flag_wins_and_old_points_derive_it():
    runs, pts = [], []
    for model, exact in [("flagged", [1, 0, 0, 0]), ("null", [None] * 4), ("absent", None)]:
        rec = _record(model, [0.0, 0.2, 0.4, 0.6], [0.0, 0.2, 0.4, 0.6], exact or [None] * 4, [None, "crown", "crown", "crown"])
        runs.append(rec.run)
        for p in rec.points:
            q = {**p, "run_id": rec.run["run_id"], **{k: rec.run[k] for k in ("model", "family", "dataset", "threat", "norm", "seed")}}
            q["cert"] = p.get("cert") or ("crown" if p["idx"] else None)
            q.pop("exact", None)
            if exact is not None:
                q["exact"] = exact[p["idx"]]
            pts.append(q)
    frame = pd.DataFrame(pts)
    board = leaderboard_from_frames(pd.DataFrame(runs), frame)
    shares = dict(zip(board["model"], board["exact"], strict=True))
    # a complete method's flag (0 here: lower bounds from an incomplete bound that happen to meet) is trusted;
    # NULL flags and stores without the column fall back to lower_bound >= radius (both finite)
    assert shares == {"flagged": 0.0, "null": 1.0, "absent": 1.0}
    assert list(board.set_index("model").loc[["null"], "certifier"]) == ["crown"]
    no_col = leaderboard_from_frames(pd.DataFrame(runs), frame.drop(columns=["exact", "cert"]))
    assert dict(zip(no_col["model"], no_col["exact"], strict=True)) == {"flagged": 1.0, "null": 1.0, "absent": 1.0}
    assert no_col["certifier"].isna().all()


def test_old_boards_with_a_certified_column_still_render():
    old = pd.DataFrame([{"dataset": "d", "threat": "linf", "rank": 1, "model": "m", "clean_accuracy": 0.9, "robust_acc@0.1": 0.5,
                         "median_radius": 0.2, "auc": 0.4, "certified": 1.0}])
    row = to_json_rows(old)[0]
    assert row["exact_fraction"] == row["certified_fraction"] == 1.0 and row["certified_radius"] is None
    shown = display_frame(old).iloc[0]
    assert shown["certified"] == "100.0 ✓" and shown["median_radius"] == "0.2 (exact)"


def test_cli_leaderboard_writes_the_certified_columns(store, tmp_path):
    from typer.testing import CliRunner

    from robustbench_align.cli import app

    out = tmp_path / "board.json"
    res = CliRunner().invoke(app, ["leaderboard", "--format", "json", "--store", str(store), "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = {(r["dataset"], r["model"]): r for r in json.loads(out.read_text())}
    assert rows[("toy", "bracketed")]["certified_acc"]["0.25"] == 0.5 and rows[("toy", "bracketed")]["certified_radius"] == 0.3
