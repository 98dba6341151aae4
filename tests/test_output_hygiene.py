"""Output hygiene: hostile names never reach a terminal raw, CSV cells cannot start a formula, a store without
successful runs still gets its reports, and an output path that cannot be written is a one-line error (exit 2)."""
import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustbench_align.cli import _write_all_reports, main
from robustbench_align.errors import OutputError, RBAError
from robustbench_align.reports.export import (
    FORMATS,
    csv_cell,
    csv_safe,
    no_rows_note,
    prepare_output_dir,
    prepare_output_file,
    render,
    terminal_safe,
    visible,
    write_reports,
)
from robustbench_align.runner.store import RunRecord, Store

# What a terminal acts on or what reorders text: C0 (but newline and tab), DEL, C1, bidirectional controls.
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

FORMULA = '=HYPERLINK("http://x","y")'
HOSTILE_MODELS = [FORMULA, "\x1b]0;pwned\x07", "<script>alert(1)</script>", "a|b\\textbf{x}", "@SUM(A1)", "-2+3", "ok\r\x9b31m\u202e"]
HOSTILE_DATASET = "\x1b[2Jds|=1"
EPS = ("0.1", "0.5")


def _record(model: str, k: int, dataset: str = HOSTILE_DATASET, threat: str = "linf") -> RunRecord:
    pts = []
    for i in range(4):
        r = 0.0 if i == 0 else 0.15 * (i + k + 1)
        pts.append({"idx": i, "test_index": i, "y": 1, "pred": 1 if i else 0, "correct": int(i != 0), "radius": r, "lower_bound": None,
                    "by_attack": "fab", "robust_at": {e: int(r > float(e)) for e in EPS},
                    "normal_alignment": 0.2 + 0.1 * i + 0.01 * k, "centroid_alignment": -0.25})
    run = {"run_id": f"r{k}", "model": model, "family": "=cmd|' /C calc'!A0", "dataset": dataset, "threat": threat, "norm": "linf",
           "seed": 0, "status": "ok", "config": {}, "attacks": ["fab"], "flags": {}, "fit_time": 1.0, "eval_time": 2.0,
           "clean_accuracy": 0.75, "n_points": 4, "rejected": 0}
    return RunRecord(run=run, points=pts)


@pytest.fixture
def hostile_store(tmp_path):
    path = tmp_path / "hostile.sqlite"
    with Store(path) as st:
        st.write([_record(m, k) for k, m in enumerate(HOSTILE_MODELS)])
    return path


def _failed(k: int, error: str | None) -> RunRecord:
    return RunRecord(run={"run_id": f"f{k}", "model": "xgb", "family": "tree", "dataset": "iris", "threat": "linf", "seed": k,
                          "status": "failed", "error": error, "config": {}}, points=[])


@pytest.fixture
def failed_store(tmp_path):
    path = tmp_path / "failed.sqlite"
    with Store(path) as st:
        st.write([_failed(0, "fit: ModelError: max_depth must be >= 1\nTraceback (most recent call last):"),
                  _failed(1, "fit: ModelError: max_depth must be >= 1"), _failed(2, None)])
    return path


@pytest.fixture
def empty_store(tmp_path):
    path = tmp_path / "empty.sqlite"
    Store(path).close()
    return path


def rba(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's entry point in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["rba", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("rba: error: "), err
    for n in needles:
        assert n in err, (n, err)


# ================================================================================================
# 1. Terminal sanitisation
# ================================================================================================
def test_visible_and_terminal_safe_escape_every_control():
    s = "a\x1b]0;pwned\x07b\x1b[2J\rc\x00\x7f\x9b\u202e\u2066d"
    assert visible(s) == "a\\x1b]0;pwned\\x07b\\x1b[2J\\x0dc\\x00\\x7f\\x9b\\u202e\\u2066d"
    assert visible("x\ny\tz") == "x\\x0ay\\x09z"  # a cell: line breaks and tabs too
    assert terminal_safe("x\ny\tz\r") == "x\ny\tz\\x0d"  # a whole text: its lines kept
    assert visible("ü列 – ∞ ✓") == "ü列 – ∞ ✓"  # printable text unchanged


@pytest.mark.parametrize("fmt", FORMATS)
def test_leaderboard_stdout_has_no_raw_control_characters(hostile_store, monkeypatch, capsys, fmt):
    code, out, err = rba(monkeypatch, capsys, "leaderboard", "-f", fmt, "--store", hostile_store)
    assert code == 0, err
    assert not RAW_CONTROL.search(out), repr(RAW_CONTROL.search(out))
    assert not RAW_CONTROL.search(err)
    if fmt == "json":
        assert "\\u001b]0;pwned\\u0007" in out  # json.dumps escapes them; the names round-trip
        assert {r["model"] for r in json.loads(out)} == set(HOSTILE_MODELS)
    else:
        assert "x1b" in out and "pwned" in out and "x07" in out  # shown, as escapes


def test_leaderboard_output_file_keeps_the_exact_data(hostile_store, monkeypatch, capsys, tmp_path):
    out = tmp_path / "sub" / "board.json"  # a missing directory is created
    code, stdout, err = rba(monkeypatch, capsys, "leaderboard", "-f", "json", "--store", hostile_store, "-o", out)
    assert code == 0 and stdout == "", err
    assert {r["model"] for r in json.loads(out.read_text())} == set(HOSTILE_MODELS)
    assert not list(out.parent.glob("*.tmp"))


def test_markdown_and_latex_files_escape_controls(hostile_store, tmp_path):
    files = _write_all_reports(str(hostile_store), str(tmp_path / "out"))
    for fmt in ("md", "latex"):
        text = files[fmt].read_text(encoding="utf-8")
        assert not RAW_CONTROL.search(text), (fmt, repr(RAW_CONTROL.search(text)))


def test_correlate_prints_no_raw_control_characters(hostile_store, monkeypatch, capsys, tmp_path):
    code, out, err = rba(monkeypatch, capsys, "correlate", "--store", hostile_store, "--confounder", "none",
                         "--plot", tmp_path / "p.png", "--forest", tmp_path / "f.png")
    assert code == 0, err
    assert not RAW_CONTROL.search(out) and not RAW_CONTROL.search(err)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# ================================================================================================
# 2. Names escaped in every format; CSV cells cannot start a formula
# ================================================================================================
def test_csv_cell_neutralises_formulas_and_keeps_numbers():
    for s in ("=1+1", "+1", "-x", "@A1", "\tx", "\rx", "\uff1d1"):
        assert csv_cell(s) == "'" + s
    for v in ("a=1", "x-1", "'=1", -0.5, 3, None):
        assert csv_cell(v) == v
    df = csv_safe(pd.DataFrame({"model": ["=1", "ok"], "num": [-0.5, 2.0], "=col": ["a", "b"]}))
    assert list(df["model"]) == ["'=1", "ok"] and list(df["num"]) == [-0.5, 2.0] and "'=col" in df.columns


def _csv_rows(text: str) -> list[list[object]]:
    return list(csv.reader(io.StringIO(text), quoting=csv.QUOTE_NONNUMERIC))


def _assert_csv_safe(text: str) -> None:
    rows = _csv_rows(text)
    for row in rows:
        for cell in row:
            assert not (isinstance(cell, str) and cell.startswith(("=", "+", "-", "@", "\t", "\r"))), cell
    head, body = rows[0], rows[1:]
    models = [r[head.index("model")] for r in body]
    assert "'" + FORMULA in models and "'@SUM(A1)" in models and "'-2+3" in models and "<script>alert(1)</script>" in models
    families = {r[head.index("family")] for r in body}
    assert families == {"'=cmd|' /C calc'!A0"}
    ca = [r[head.index("centroid_alignment")] for r in body]
    assert all(isinstance(v, float) and v == pytest.approx(-0.25) for v in ca), ca  # a negative number stays a number
    assert re.search(r",-0\.25,", text)  # written bare, not quoted


def test_csv_file_and_stdout_neutralise_formulas(hostile_store, monkeypatch, capsys, tmp_path):
    files = _write_all_reports(str(hostile_store), str(tmp_path / "out"))
    _assert_csv_safe(files["csv"].read_text(encoding="utf-8"))
    code, out, err = rba(monkeypatch, capsys, "leaderboard", "-f", "csv", "--store", hostile_store)
    assert code == 0, err
    _assert_csv_safe(out)
    back = pd.read_csv(io.StringIO(out))
    assert back["centroid_alignment"].dtype.kind == "f"


def test_hostile_names_escaped_in_every_format(hostile_store):
    from robustbench_align.reports.tables import leaderboard, overall_ranking

    board = leaderboard(hostile_store)
    assert sorted(board["model"]) == sorted(HOSTILE_MODELS)
    overall = overall_ranking(board)
    md = render(board, "md", overall)
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "a\\|b\\\\textbf{x}" in md  # the pipe cannot split the row, the backslash is literal
    assert "\\\\x1b\\]0;pwned\\\\x07" in md  # visible in the rendered Markdown (backslash and bracket escaped)
    for table in re.findall(r"(?:^\|.*\n)+", md, flags=re.M):
        widths = {len(re.findall(r"(?<!\\)\|", ln)) for ln in table.splitlines()}
        assert len(widths) == 1, table  # no name adds or removes a cell

    tex = render(board, "latex", overall)
    assert "\\textbf{x}" not in tex and "a|b\\textbackslash{}textbf\\{x\\}" in tex
    assert "\\textbackslash{}x1b]0;pwned\\textbackslash{}x07" in tex and "\x1b" not in tex
    assert "\\textless{}script\\textgreater{}" in tex

    page = render(board, "html", overall, plots=False)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # the page's own script only

    rows = json.loads(render(board, "json", overall))
    assert {r["model"] for r in rows} == set(HOSTILE_MODELS) and {r["dataset"] for r in rows} == {HOSTILE_DATASET}

    _assert_csv_safe(render(board, "csv", overall))


# ================================================================================================
# 3. A store without successful runs
# ================================================================================================
def test_all_failed_store_gets_its_reports(failed_store, tmp_path):
    files = _write_all_reports(str(failed_store), str(tmp_path / "out"))
    assert set(files) == set(FORMATS)
    md = files["md"].read_text()
    assert "No successful runs: all 3 runs failed" in md
    assert "fit: ModelError: max_depth must be &gt;= 1 (2 runs, e.g. xgb on iris/linf seed 0)" in md
    assert "Traceback" not in md and "no error recorded" in md
    tex = files["latex"].read_text()
    assert "No successful runs" in tex and r"\item fit: ModelError" in tex
    assert "No successful runs" in files["html"].read_text()
    assert json.loads(files["json"].read_text()) == []
    assert files["csv"].read_text().strip() == ""


def test_empty_store_gets_its_reports(empty_store, tmp_path):
    files = _write_all_reports(str(empty_store), str(tmp_path / "out"))
    for fmt in ("md", "latex", "html"):
        assert "No runs in the store yet" in files[fmt].read_text(), fmt
    assert json.loads(files["json"].read_text()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_leaderboard_of_a_failed_store_says_why(failed_store, monkeypatch, capsys, fmt):
    code, out, err = rba(monkeypatch, capsys, "leaderboard", "-f", fmt, "--store", failed_store)
    assert code == 0 and "Traceback" not in err, err
    if fmt in ("md", "latex", "html"):
        assert "No successful runs" in out and "ModelError: max" in out


def test_selection_without_rows_is_not_called_a_failure(hostile_store):
    with Store(hostile_store, readonly=True) as st:
        runs = st.runs()
    sentence, reasons = no_rows_note(runs)
    assert "none of the 7 successful runs" in sentence and reasons == []
    assert no_rows_note(None)[0].startswith("No runs in the store yet")


def test_run_whose_every_cell_fails_writes_the_reports(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["xgb"]\ndatasets = ["iris"]\nthreats = ["linf"]\npoints = 4\nseeds = [0]\n'
                    "[model_params.xgb]\nn_estimators = 2\nmax_depth = -3\n")
    store, out = tmp_path / "s.sqlite", tmp_path / "out"
    code, _, err = rba(monkeypatch, capsys, "--quiet", "run", "--config", plan, "--store", store, "--out", out, "--cache", tmp_path / "c",
                       "--workers", "1")
    assert code == 0 and "Traceback" not in err, err
    md = (out / "leaderboard.md").read_text()
    assert "No successful runs: the only run failed" in md and "max_depth" in md
    assert "No successful runs" in (out / "leaderboard.tex").read_text()
    # the same plan with an output directory under a regular file: one line, exit 2 (the failed cell is reused)
    (tmp_path / "afile").write_text("x")
    code, _, err = rba(monkeypatch, capsys, "--quiet", "run", "--config", plan, "--store", store, "--out", tmp_path / "afile" / "out",
                       "--cache", tmp_path / "c", "--workers", "1")
    _one_line_error(code, err, str(tmp_path / "afile" / "out"), "is a file, not a directory", "pass --out a writable directory")


# ================================================================================================
# 4. Output paths that cannot be written
# ================================================================================================
def _bad_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected reason) for paths no user can write: under a regular file, a name too long."""
    (tmp_path / "regular").write_text("x")
    return {"parent is a file": (tmp_path / "regular" / "x" / "y.out", "is a file, not a directory"),
            "name too long": (tmp_path / ("n" * 300) / "y.out", "too long")}


def test_prepare_output_paths(tmp_path):
    for path, why in _bad_paths(tmp_path).values():
        with pytest.raises(OutputError, match=why):
            prepare_output_file(path, "pass -o elsewhere")
        with pytest.raises(OutputError, match=why):
            prepare_output_dir(path, "pass --out elsewhere")
    with pytest.raises(OutputError, match="is a directory"):
        prepare_output_file(tmp_path, "pass -o elsewhere")
    with pytest.raises(OutputError, match="invalid path"):
        prepare_output_file("bad\x00name", "pass -o elsewhere")
    with pytest.raises(OutputError, match=r"'.*regular' is a file, not a directory; pass --out elsewhere"):
        prepare_output_dir(tmp_path / "regular", "pass --out elsewhere")
    assert isinstance(OutputError("x"), RBAError) and isinstance(OutputError("x"), OSError)
    assert prepare_output_dir(tmp_path / "new" / "dir").is_dir()


def test_write_reports_into_a_file_path_is_one_output_error(hostile_store, tmp_path):
    from robustbench_align.reports.tables import leaderboard

    (tmp_path / "regular").write_text("x")
    with pytest.raises(OutputError) as ei:
        write_reports(leaderboard(hostile_store), tmp_path / "regular" / "out", hint="pass --out a writable directory")
    msg = str(ei.value)
    assert len(msg.splitlines()) == 1 and "regular" in msg and "pass --out a writable directory" in msg


@pytest.mark.parametrize("case", ["parent is a file", "name too long"])
def test_leaderboard_output_that_cannot_be_written(hostile_store, monkeypatch, capsys, tmp_path, case):
    path, why = _bad_paths(tmp_path)[case]
    code, out, err = rba(monkeypatch, capsys, "leaderboard", "-f", "md", "--store", hostile_store, "-o", path)
    _one_line_error(code, err, str(path), why, "pass -o a writable file path")
    assert out == ""


def test_leaderboard_output_that_is_a_directory(hostile_store, monkeypatch, capsys, tmp_path):
    code, _, err = rba(monkeypatch, capsys, "leaderboard", "--store", hostile_store, "-o", tmp_path)
    _one_line_error(code, err, str(tmp_path), "is a directory", "pass -o")


@pytest.mark.parametrize("case", ["parent is a file", "name too long"])
def test_correlate_plot_that_cannot_be_written(hostile_store, monkeypatch, capsys, tmp_path, case):
    path, why = _bad_paths(tmp_path)[case]
    code, out, err = rba(monkeypatch, capsys, "correlate", "--store", hostile_store, "--confounder", "none", "--plot", path,
                         "--forest", tmp_path / "f.png")
    _one_line_error(code, err, str(path), why, "pass --plot a writable file path")
    assert out == ""  # refused before the tests were computed
    code, _, err = rba(monkeypatch, capsys, "correlate", "--store", hostile_store, "--confounder", "none", "--plot", tmp_path / "p.png",
                       "--forest", path)
    _one_line_error(code, err, str(path), why, "pass --forest a writable file path")


@pytest.mark.parametrize("case", ["parent is a file", "name too long"])
def test_evaluate_out_that_cannot_be_written(failed_store, monkeypatch, capsys, tmp_path, case):
    import robustbench_align.runner.api as api

    calls = []
    monkeypatch.setattr(api, "evaluate", lambda *a, **k: calls.append(k) or pd.DataFrame())  # the evaluation itself: stubbed
    path, why = _bad_paths(tmp_path)[case]
    code, _, err = rba(monkeypatch, capsys, "--quiet", "evaluate", "xgb", "--dataset", "iris", "--store", failed_store, "--out", path)
    assert calls
    _one_line_error(code, err, str(path), why, "pass --out a writable directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permission bits do not bind root")
def test_read_only_directory(hostile_store, monkeypatch, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = rba(monkeypatch, capsys, "leaderboard", "--store", hostile_store, "-o", ro / "board.md")
        _one_line_error(code, err, str(ro / "board.md"), "permission denied", "pass -o")
        code, _, err = rba(monkeypatch, capsys, "correlate", "--store", hostile_store, "--confounder", "none", "--plot", ro / "p.png",
                           "--forest", tmp_path / "f.png")
        _one_line_error(code, err, str(ro / "p.png"), "permission denied", "pass --plot")
        with pytest.raises(OutputError, match="permission denied"):
            _write_all_reports(str(hostile_store), str(ro / "out"))
    finally:
        ro.chmod(0o700)
