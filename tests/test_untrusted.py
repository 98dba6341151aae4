"""Untrusted files and names: planted pickles never execute, malformed tree JSON is a ModelError,
and hostile model/dataset names are escaped (or round-trip exactly) in every report format.

A planted payload is a pickle whose loading would run `touch <marker>` through `__reduce__`;
every test asserts the marker file was NOT created. Known failures in modules owned elsewhere
are strict xfails that name the module and the call.
"""
from __future__ import annotations

import html.parser
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustbench_align.errors import ModelError
from robustbench_align.models.persistence import fit_cached, load_model, save_model

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch, reading the planted files

# RBA_HOSTILE_SCALE=10 multiplies the example count (a longer bug hunt)
PROPS = settings(max_examples=max(1, int(30 * float(os.environ.get("RBA_HOSTILE_SCALE", "1")))), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


class _Payload:
    """Unpickling this runs a shell command that creates `marker` (the attack being defended against)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _pickle(marker: Path, protocol: int = 4) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=protocol)


def _torch_zip_with(payload: bytes, tmp: Path) -> bytes:
    """A genuine torch.save zip archive whose data.pkl is replaced by the payload."""
    torch.save({"w": torch.zeros(1)}, tmp)
    with zipfile.ZipFile(tmp) as z:
        items = {n: z.read(n) for n in z.namelist()}
    key = next(n for n in items if n.endswith("data.pkl"))
    items[key] = payload
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, b in items.items():
            z.writestr(n, b)
    return out.getvalue()


def _one_line_model_error(fn) -> ModelError:
    with pytest.raises(ModelError) as info:
        fn()
    msg = str(info.value)
    assert msg and len(msg.splitlines()) == 1, repr(msg)
    return info.value


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "the planted payload was executed"


# ================================================================================================
# (a) a planted pickle presented as a model file
# ================================================================================================
@pytest.mark.parametrize("fname, protocol", [
    ("model.pkl", 4), ("model.joblib", 4), ("model.bin", 4), ("model.pt", 2), ("model", 5), ("model.model", 0),
    ("model.json", 4), ("model.skops", 4),
])
def test_load_model_refuses_planted_pickles(tmp_path, marker, fname, protocol):
    p = tmp_path / fname
    p.write_bytes(_pickle(marker, protocol))
    err = _one_line_model_error(lambda: load_model(p))
    if protocol >= 2 or p.suffix in (".pkl", ".joblib"):
        assert "pickle" in str(err) or "skops" in str(err) or "JSON" in str(err)


def test_load_model_refuses_a_torch_zip_with_a_planted_pickle(tmp_path, marker):
    p = tmp_path / "model.pt"
    p.write_bytes(_torch_zip_with(_pickle(marker), tmp_path / "scratch.pt"))
    _one_line_model_error(lambda: load_model(p))


def test_load_model_refuses_fifos_and_devices(tmp_path):
    fifo = tmp_path / "model.json"
    os.mkfifo(fifo)
    _one_line_model_error(lambda: load_model(fifo))  # must not block reading it


def _rba(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustbench_align.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_evaluate_refuses_a_planted_pickle(tmp_path, marker):
    p = tmp_path / "model.pkl"
    p.write_bytes(_pickle(marker))
    r = _rba("evaluate", str(p), "--dataset", "iris", "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("rba: error: refusing to load"), r.stderr
    assert not (tmp_path / "s.sqlite").exists() and not (tmp_path / "out").exists()


# ================================================================================================
# skops files that name callables (skops calls what a file names: "constructor from reduce")
# ================================================================================================
def _skops_schema(node: dict) -> dict:
    import skops

    return {**node, "__id__": 1, "protocol": 2, "_skops_version": skops.__version__}


def _str_node(value, i: int) -> dict:
    kind = "NoneType" if value is None else type(value).__name__
    return {"__class__": kind, "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value), "is_json": True, "__id__": i}


def _call_node(module: str, name: str, args: list) -> dict:
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                        "content": [_str_node(a, 10 + i) for i, a in enumerate(args)], "__id__": 9}}


def _evil_skops(path: Path, marker: Path, how: str) -> None:
    """A .skops archive whose schema makes skops call builtins.exec or numpy.load(allow_pickle=True)."""
    if how == "exec":
        node = _call_node("builtins", "exec", [f"open({str(marker)!r}, 'w').close()"])
    else:
        arr = np.empty(1, dtype=object)
        arr[0] = _Payload(marker)
        npy = path.parent / "payload.npy"
        np.save(npy, arr, allow_pickle=True)
        node = _call_node("numpy", "load", [str(npy), None, True])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("schema.json", json.dumps(_skops_schema(node)))


@pytest.mark.parametrize("how", ["exec", "numpy_load"])
def test_skops_file_naming_callables_is_refused(tmp_path, marker, how):
    p = tmp_path / "model.skops"
    _evil_skops(p, marker, how)
    err = _one_line_model_error(lambda: load_model(p))
    assert "refusing" in str(err)


def test_genuine_skops_model_still_loads(tmp_path):
    import skops.io as sio
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    for est in (RandomForestClassifier(3, max_depth=2, random_state=0), GradientBoostingClassifier(n_estimators=3)):
        est.fit(X, y)
        sio.dump(est, tmp_path / "m.skops")
        m = load_model(tmp_path / "m.skops")
        assert np.array_equal(m.predict(X), est.predict(X))
        assert "tree_ensemble" in m.capabilities


# ================================================================================================
# (b) a planted pickle inside a cached fit / saved model directory; (c) MLP weights through torch.load
# ================================================================================================
@pytest.fixture(scope="module")
def iris():
    from robustbench_align import load_dataset

    return load_dataset("iris", seed=0)


SMALL = {"mlp": {"epochs": 2, "hidden": [4]}, "rfm": {"iters": 1}, "xgb": {"n_estimators": 3}, "rf": {"n_estimators": 3}}
STATE = [("mlp", "weights.pt", "raw"), ("mlp", "weights.pt", "torchzip"), ("mlp", "mlp.json", "raw"),
         ("rfm", "rfm.npz", "raw"), ("rfm", "rfm.npz", "object_npz"), ("xgb", "xgboost.json", "raw"), ("xgb", "trees.json", "raw"),
         ("rf", "estimator.skops", "raw")]


def _cache_entry(cache: Path, spec: str) -> Path:
    (entry,) = [p.parent for p in (cache / spec).rglob("model.json")]
    return entry


def _plant(path: Path, kind: str, marker: Path) -> None:
    if kind == "raw":
        path.write_bytes(_pickle(marker))
    elif kind == "torchzip":
        path.write_bytes(_torch_zip_with(_pickle(marker), path.parent / "scratch.pt"))
        (path.parent / "scratch.pt").unlink()
    else:  # an npz whose arrays hold a pickled object (np.load(allow_pickle=False) must refuse to read them)
        arr = np.empty(1, dtype=object)
        arr[0] = _Payload(marker)
        with zipfile.ZipFile(path, "w") as z:
            for key in ("M", "coef", "X_fit", "center", "M_init", "bandwidth", "reg", "best_iter", "n_classes"):
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=True)
                z.writestr(f"{key}.npy", buf.getvalue())


@pytest.mark.parametrize("spec, fname, kind", STATE, ids=[f"{s}-{f}-{k}" for s, f, k in STATE])
def test_planted_state_in_cache_is_refitted_never_executed(tmp_path, marker, iris, spec, fname, kind):
    cache = tmp_path / "cache"
    model, cached, _ = fit_cached(spec, iris, 0, cache, **SMALL[spec])
    assert not cached
    entry = _cache_entry(cache, spec)
    assert (entry / fname).exists(), sorted(os.listdir(entry))
    _plant(entry / fname, kind, marker)
    _one_line_model_error(lambda: load_model(entry))  # the directory itself is refused ...
    again, cached, _ = fit_cached(spec, iris, 0, cache, **SMALL[spec])  # ... and the cache refits it
    assert not cached
    np.testing.assert_array_equal(again.predict(iris.X_test), model.predict(iris.X_test))
    _, cached, _ = fit_cached(spec, iris, 0, cache, **SMALL[spec])  # the refit was saved again, cleanly
    assert cached


def test_mlp_load_state_refuses_a_pickle_payload(tmp_path, marker, iris):
    from robustbench_align.models.mlp import MLP
    from robustbench_align.models.registry import build

    est = build("mlp", random_state=0, **SMALL["mlp"]).fit(iris.X_train, iris.y_train)
    d = save_model(est, tmp_path / "m")
    for kind in ("raw", "torchzip"):
        _plant(d / "weights.pt", kind, marker)
        params = json.loads((d / "model.json").read_text())["params"]
        with pytest.raises((pickle.UnpicklingError, ModelError)):
            MLP._load_state(d, params)  # torch.load(..., weights_only=True) refuses
        _one_line_model_error(lambda: load_model(d))


@pytest.mark.parametrize("patch", [
    {"class": "os:system"}, {"class": "builtins:eval"}, {"class": ["x"]}, {"format_version": 99}, {"params": {"__init__": 1}},
    {"params": [1]}, {"extra": [1]}, {"params": {"hidden": "x" * 10}},
])
def test_tampered_manifest_is_refused(tmp_path, iris, patch):
    from robustbench_align.models.registry import build

    est = build("mlp", random_state=0, **SMALL["mlp"]).fit(iris.X_train, iris.y_train)
    d = save_model(est, tmp_path / "m")
    manifest = json.loads((d / "model.json").read_text())
    manifest.update(patch)
    (d / "model.json").write_text(json.dumps(manifest))
    _one_line_model_error(lambda: load_model(d))


def test_tampered_manifest_name_is_text(tmp_path, iris):
    from robustbench_align.models.registry import build

    est = build("mlp", random_state=0, **SMALL["mlp"]).fit(iris.X_train, iris.y_train)
    d = save_model(est, tmp_path / "m")
    manifest = json.loads((d / "model.json").read_text())
    manifest.update({"name": 123, "family": ["x"], "extra": {"fit_time": "soon"}})
    (d / "model.json").write_text(json.dumps(manifest))
    m = load_model(d)
    assert m.name == "123" and isinstance(m.family, str)


@pytest.mark.parametrize("via", ["load_model", "fit_cached"])
def test_planted_skops_in_tree_model_dir_never_executes(tmp_path, iris, via):
    marker = tmp_path / "PWNED"
    cache = tmp_path / "cache"
    fit_cached("rf", iris, 0, cache, **SMALL["rf"])
    entry = _cache_entry(cache, "rf")
    _evil_skops(entry / "estimator.skops", marker, "numpy_load")
    try:
        if via == "load_model":
            load_model(entry)
        else:
            fit_cached("rf", iris, 0, cache, **SMALL["rf"])
    except ModelError:
        pass
    assert not marker.exists(), "the planted payload was executed"


# ================================================================================================
# XGBoost JSON with a malformed tree
# ================================================================================================
@pytest.fixture(scope="module")
def xgb_doc():
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int)
    clf = xgb.XGBClassifier(n_estimators=3, max_depth=3, n_jobs=1).fit(X, y)
    doc = json.loads(clf.get_booster().save_raw("json").decode())
    return doc, X


def _deep_tree(doc: dict) -> dict:
    trees = doc["learner"]["gradient_booster"]["model"]["trees"]
    return max(trees, key=lambda t: len(t["left_children"]))


def _cycle(t):  # a grandchild points back to its ancestor: 0 -> c -> ... -> c
    left, right = t["left_children"], t["right_children"]
    c = left[0]
    gc = left[c] if left[c] > 0 else right[0]
    assert gc > 0, "the fixture tree is too shallow"
    left[gc if left[gc] > 0 else c] = c


MALFORMED = {
    "cycle": _cycle,
    "self_loop": lambda t: t["left_children"].__setitem__(0, 0),
    "child_out_of_range": lambda t: t["right_children"].__setitem__(0, len(t["right_children"]) + 5),
    "negative_child": lambda t: t["right_children"].__setitem__(0, -7),
    "nan_threshold": lambda t: t["split_conditions"].__setitem__(0, float("nan")),
    "inf_threshold": lambda t: t["split_conditions"].__setitem__(0, float("inf")),
    "feature_out_of_range": lambda t: t["split_indices"].__setitem__(0, 99),
    "ragged_arrays": lambda t: t["left_children"].pop(),
    "string_threshold": lambda t: t["split_conditions"].__setitem__(0, "1.0"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_xgboost_json_is_a_model_error(tmp_path, xgb_doc, name):
    doc, X = xgb_doc
    p = tmp_path / "good.json"
    p.write_text(json.dumps(doc))
    good = load_model(p)
    assert good.predict(X).shape == (X.shape[0],)
    bad = json.loads(json.dumps(doc))
    MALFORMED[name](_deep_tree(bad))
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))  # NaN/inf written as JSON's NaN/Infinity tokens, as Python reads them back
    _one_line_model_error(lambda: load_model(p))


def test_malformed_xgboost_json_inside_a_saved_model_dir(tmp_path, iris):
    fit_cached("xgb", iris, 0, tmp_path / "cache", **SMALL["xgb"])
    entry = _cache_entry(tmp_path / "cache", "xgb")
    doc = json.loads((entry / "xgboost.json").read_text())
    _deep_tree(doc)["split_conditions"][0] = float("nan")
    (entry / "xgboost.json").write_text(json.dumps(doc))
    _one_line_model_error(lambda: load_model(entry))
    _, cached, _ = fit_cached("xgb", iris, 0, tmp_path / "cache", **SMALL["xgb"])
    assert not cached


# ================================================================================================
# Hostile names in every report format
# ================================================================================================
HOSTILE_NAMES = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "a|b", "{}\\%$&_#^~", "`code`",
                 "[x](javascript:alert(1))", "", "ü列", "1", "NaN", "null", " lead", "a,b", '"', "'", "&lt;b&gt;", "--", "=1+1"]
NAMES = st.one_of(st.sampled_from(HOSTILE_NAMES),
                  st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=10))


def _frames(models, dataset="<b>ds</b>", threat="linf", family="f", flag="x"):
    runs, pts = [], []
    for k, m in enumerate(models):
        rid = f"r{k}"
        runs.append({"run_id": rid, "model": m, "family": family, "dataset": dataset, "threat": threat, "norm": "linf", "seed": 0,
                     "status": "ok", "attacks": ["fab", flag], "flags": {flag: "msg"}, "rejected": 0, "fit_time": 1.0, "eval_time": 2.0})
        for i in range(4):
            r = 0.15 * (i + k + 1)
            pts.append({"run_id": rid, "model": m, "family": family, "dataset": dataset, "threat": threat, "norm": "linf", "seed": 0,
                        "idx": i, "correct": int(i != 0), "radius": 0.0 if i == 0 else r, "lower_bound": np.nan,
                        "robust_at": {e: int((0.0 if i == 0 else r) > float(e)) for e in ("0.1", "0.5")},
                        "normal_alignment": 0.2 + 0.1 * i, "centroid_alignment": 0.1, "effective_rank": 1.5})
    return pd.DataFrame(runs), pd.DataFrame(pts)


def _board(models, **kw):
    from robustbench_align.reports.tables import leaderboard_from_frames, overall_ranking

    runs, pts = _frames(models, **kw)
    board = leaderboard_from_frames(runs, pts)
    return board, overall_ranking(board), runs, pts


class _Page(html.parser.HTMLParser):
    """Collects tags, attributes and the text of every <td> (entities decoded, as a browser shows them)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.cells, self.sections = [], [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "td":
            self._cell = []
        if tag == "section":
            self.sections.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td",
                "section", "div", "img", "script"}


def _check_html(text, models, dataset, threat):
    page = _Page()
    page.feed(text)
    page.close()
    assert set(page.tags) <= ALLOWED_TAGS, set(page.tags) - ALLOWED_TAGS
    assert page.tags.count("script") == 1  # the page's own sorter, nothing injected
    names = {a for a, _ in page.attrs}
    assert not any(a.startswith("on") for a in names), names
    assert all(v.startswith("data:image/png;base64,") for a, v in page.attrs if a == "src")
    assert [(s["data-dataset"], s["data-threat"]) for s in page.sections] == [(dataset, threat)]
    for m in models:
        assert m in page.cells, (m, page.cells[:30])  # shown as text, exactly


def _split_md_row(line: str) -> list[str]:
    cells, cur, i = [], "", 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            cur += line[i:i + 2]
            i += 2
            continue
        if ch == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    cells.append(cur)
    return cells[1:-1]


def _check_markdown(text):
    assert "<" not in text and ">" not in text
    tables, cur = [], []
    for line in text.split("\n"):
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    if cur:
        tables.append(cur)
    assert tables
    for t in tables:
        widths = {len(_split_md_row(row)) for row in t}
        assert len(widths) == 1, t


def _latex_scan(text):
    """(brace depth never negative and ends 0, unescaped special characters outside commands)."""
    depth, raw, i = 0, [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            j = i + 1
            while j < len(text) and text[j].isalpha():
                j += 1
            i = max(j, i + 2)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            assert depth >= 0, text[max(0, i - 40):i + 1]
        elif ch in "%$#_^~<>":
            raw.append(ch)
        i += 1
    assert depth == 0
    return raw


def _check_latex(text):
    assert _latex_scan(text) == []
    for block in text.split(r"\begin{tabular}")[1:]:
        body = block.split(r"\end{tabular}")[0]
        assert "\n\n" not in body
        rows = [ln for ln in body.split("\n") if ln.endswith(r"\\")]
        seps = {len([1 for k, ch in enumerate(r) if ch == "&" and (k == 0 or r[k - 1] != "\\")]) for r in rows}
        assert len(seps) == 1, rows


@PROPS
@given(st.lists(NAMES, min_size=1, max_size=3, unique=True), NAMES, NAMES, NAMES, NAMES)
def test_hostile_names_in_every_report_format(models, dataset, threat, family, flag):
    from robustbench_align.reports.export import csv_cell, render

    board, overall, runs, pts = _board(models, dataset=dataset, threat=threat, family=family, flag=flag)
    assert sorted(board["model"]) == sorted(models)
    _check_markdown(render(board, "md", overall))
    _check_latex(render(board, "latex", overall))
    _check_html(render(board, "html", overall, points=pts, runs=runs, plots=False), models, dataset, threat)
    back = pd.read_csv(io.StringIO(render(board, "csv", overall)), dtype=str, keep_default_na=False)
    for col in ("model", "family", "dataset", "threat"):
        assert list(back[col]) == [csv_cell(str(v)) for v in board[col]], col  # CSV is data: exact round trip, formulas neutralised
    rows = json.loads(render(board, "json", overall))  # strict JSON (no NaN tokens) that round-trips
    assert [(r["name"], r["family"], r["dataset"], r["threat_model"]) for r in rows] == \
        list(zip(board["model"], board["family"], board["dataset"], board["threat"], strict=True))


def test_hostile_names_with_plots_in_the_page():
    from robustbench_align.reports.export import render

    models = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "rfm"]
    board, overall, runs, pts = _board(models, dataset='"><svg onload=alert(1)>', threat="<i>linf</i>")
    text = render(board, "html", overall, points=pts, runs=runs)
    _check_html(text, models, '"><svg onload=alert(1)>', "<i>linf</i>")
    assert text.count("<img ") >= 1  # the plots are there, as data: images


def test_carriage_return_in_a_name_round_trips_in_csv():
    from robustbench_align.reports.export import render

    board, overall, _, _ = _board(["a\rb", "c"])
    back = pd.read_csv(io.StringIO(render(board, "csv", overall)), dtype=str, keep_default_na=False)
    assert sorted(back["model"]) == ["a\rb", "c"]


def test_carriage_return_in_a_name_keeps_markdown_rows():
    from robustbench_align.reports.export import render

    board, overall, _, _ = _board(["a\rb", "c"])
    text = render(board, "md", overall)
    assert "\r" not in text
    _check_markdown(text)


def test_blank_line_in_a_name_keeps_latex_valid():
    from robustbench_align.reports.export import render

    board, overall, _, _ = _board(["a\n\nb", "c"])
    _check_latex(render(board, "latex", overall))


@pytest.mark.parametrize("name", ["$$", "$\\frac{$"])
def test_dollar_signs_in_names_do_not_break_the_plots(name):
    from robustbench_align.reports.export import render

    board, overall, runs, pts = _board([name, "rfm", "rfam"])
    text = render(board, "html", overall, points=pts, runs=runs)
    _check_html(text, [name, "rfm", "rfam"], "<b>ds</b>", "linf")
