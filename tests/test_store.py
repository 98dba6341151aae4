"""The SQLite store: atomic runs, schema versioning, refusal of foreign/truncated/newer files, locking."""
import math
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from robustbench_align.errors import StoreError
from robustbench_align.runner.store import RunRecord, Store, exclusive


def _record(run_id="r1", n=3, status="ok"):
    return RunRecord(
        run={"run_id": run_id, "model": "m", "family": "f", "dataset": "d", "threat": "linf", "norm": "linf", "seed": 0,
             "status": status, "config": {"a": 1}, "attacks": ["milp"], "flags": {}, "fit_time": 1.0, "eval_time": 2.0,
             "clean_accuracy": 0.5, "n_points": n, "rejected": 0},
        points=[{"idx": i, "y": 1, "pred": i % 2, "correct": int(i % 2 == 1), "radius": [0.0, 0.5, math.inf][i % 3],
                 "lower_bound": float("nan"), "robust_at": {"0.1": 1}, "normal_alignment": 0.3} for i in range(n)],
    )


def test_write_and_read_round_trip(tmp_path):
    p = tmp_path / "s.sqlite"
    with Store(p) as st:
        assert st.write([_record("a"), _record("b", n=5)]) == 2
        assert st.finished() == {"a", "b"}
        runs = st.runs()
        assert list(runs["run_id"]) == ["a", "b"] and runs.loc[0, "config"] == {"a": 1}
        pts = st.points(["b"])
        assert len(pts) == 5
        assert math.isinf(pts["radius"].iloc[2])  # inf survives, NaN becomes NULL
        assert pts["lower_bound"].isna().all()
        assert pts["robust_at"].iloc[0] == {"0.1": 1}
        assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rewrite_replaces_not_duplicates(tmp_path):
    p = tmp_path / "s.sqlite"
    with Store(p) as st:
        st.write([_record("a", n=3)])
        st.write([_record("a", n=4)])
        assert len(st.points()) == 4 and len(st.runs()) == 1


def test_failed_write_leaves_nothing(tmp_path):
    p = tmp_path / "s.sqlite"
    bad = _record("a")
    bad.points.append({"idx": 0})  # duplicate primary key -> the whole run must roll back
    with Store(p) as st:
        with pytest.raises(sqlite3.IntegrityError):
            st.write([bad])
        assert st.finished() == set() and len(st.points()) == 0


def test_refuses_foreign_files(tmp_path):
    txt = tmp_path / "notes.sqlite"
    txt.write_text("hello")
    with pytest.raises(StoreError, match="not a result store"):
        Store(txt)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a result store"):
        Store(other)


def test_refuses_newer_schema(tmp_path):
    p = tmp_path / "s.sqlite"
    Store(p).close()
    con = sqlite3.connect(p)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer"):
        Store(p)


def test_detects_truncated_file(tmp_path):
    p = tmp_path / "s.sqlite"
    with Store(p) as st:
        st.write([_record(f"r{i}", n=200) for i in range(5)])
        st.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError):
        Store(p).points()


def test_lock_refuses_second_driver(tmp_path):
    p = tmp_path / "s.sqlite"
    code = textwrap.dedent(f"""
        from robustbench_align.runner.store import exclusive
        from robustbench_align.errors import StoreError
        try:
            with exclusive({str(p)!r}):
                print("got")
        except StoreError as e:
            print("refused:", e)
    """)
    with exclusive(p):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("refused:") and "in use" in out
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "got"


def test_store_from_before_a_metric_was_declared_gains_its_column(tmp_path):
    p = tmp_path / "s.sqlite"
    with Store(p) as st:
        st.write([_record("old")])
        st.conn.execute("ALTER TABLE points DROP COLUMN r_lin")  # as if r_lin had been declared after this store was made
    with Store(p, readonly=True) as st:  # read-only: opened as it is
        assert "r_lin" not in st.points().columns
    with Store(p) as st:
        new = _record("new")
        for pt in new.points:
            pt["r_lin"] = 0.25
        st.write([new])
        pts = st.points().set_index("run_id")
    assert pts.loc["old", "r_lin"].isna().all() and (pts.loc["new", "r_lin"] == 0.25).all()
    assert pts.loc["old", "normal_alignment"].eq(0.3).all()


def test_jsonable_is_one_conversion_for_store_and_reports():
    import json

    import numpy as np
    import pandas as pd

    from robustbench_align.jsonable import jsonable

    value = {1: np.float64(0.5), "s": {3, 1}, "t": (np.int64(2), np.bool_(True)), "a": np.arange(2), "nan": float("nan"),
             "df": pd.DataFrame({"x": [1.0, float("inf")]})}
    kept = jsonable(value)
    assert kept["1"] == 0.5 and kept["s"] == [1, 3] and kept["t"] == [2, True] and kept["a"] == [0, 1]
    assert math.isnan(kept["nan"]) and kept["df"] == [{"x": 1.0}, {"x": math.inf}]
    strict = jsonable(value, finite=True)
    assert strict["nan"] is None and strict["df"][1]["x"] is None
    json.dumps(strict, allow_nan=False)
    assert type(strict["t"][0]) is int and type(strict["t"][1]) is bool
