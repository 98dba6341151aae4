"""Offline datasets: shapes, train-only scaling, stratified seeded splits, generated label rules,
the UCI-121 layout (fixture in tests/fixtures/uci121), CSV/Parquet tables and every bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import robustbench_align
from robustbench_align.data.registry import describe_datasets, list_datasets, load_dataset
from robustbench_align.data.tabular import Dataset, build_dataset
from robustbench_align.data.uci121 import ENV_VAR, list_uci121
from robustbench_align.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "uci121"
NAMES = list_datasets()


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- registered datasets ---------------------------------------------------------------------


def test_registry_lists_bundled_generated_and_presets():
    for n in ["breast_cancer", "wine", "iris", "digits", "sparse_parity", "xor", "synthetic",
              "synthetic:easy", "synthetic:hard", "synthetic:multiclass"]:
        assert n in NAMES
    rows = describe_datasets()
    assert [r["name"] for r in rows] == NAMES
    assert all(set(r) == {"name", "n", "d", "classes", "source", "description"} for r in rows)
    assert robustbench_align.load_dataset is load_dataset


@pytest.mark.parametrize("row", describe_datasets(), ids=lambda r: r["name"])
def test_each_dataset_loads_with_its_card_shape(row):
    ds = load_dataset(row["name"], seed=0)
    assert isinstance(ds, Dataset) and ds.name == row["name"]
    n_tr, n_te = ds.X_train.shape[0], ds.X_test.shape[0]
    assert n_tr + n_te == row["n"] and ds.n_features == row["d"] and ds.n_classes == row["classes"]
    assert n_te == int(np.ceil(0.3 * row["n"]))
    assert ds.X_train.dtype == np.float64 and ds.X_test.shape[1] == row["d"]
    assert ds.y_train.dtype == np.int64 and set(np.unique(np.r_[ds.y_train, ds.y_test])) == set(range(row["classes"]))
    assert len(ds.feature_names) == row["d"] and len(ds.class_names) == row["classes"]
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()
    assert ds.X_val is None and ds.y_val is None
    # split indices partition the rows
    idx = np.r_[ds.meta["train_index"], ds.meta["test_index"]]
    assert np.array_equal(np.sort(idx), np.arange(row["n"]))
    assert ds.meta["source"] and ds.meta["params"]["test_size"] == 0.3


def test_sklearn_class_names_and_counts():
    bc = load_dataset("breast_cancer")
    assert bc.class_names == ["malignant", "benign"]
    assert bc.meta["class_counts"] == [212, 357]
    assert load_dataset("wine").meta["class_counts"] == [59, 71, 48]


@pytest.mark.parametrize("name,loader", [("wine", "load_wine"), ("digits", "load_digits"), ("breast_cancer", "load_breast_cancer")])
def test_standardisation_is_fitted_on_train_only(name, loader):
    from sklearn import datasets as skd

    raw = getattr(skd, loader)().data.astype(np.float64)
    ds = load_dataset(name, seed=3)
    tr, te = ds.meta["train_index"], ds.meta["test_index"]
    mean, std = ds.meta["mean"], ds.meta["std"]
    np.testing.assert_allclose(mean, raw[tr].mean(axis=0), rtol=1e-12, atol=1e-12)   # the stored mean is the train mean
    assert not np.allclose(mean, raw[te].mean(axis=0))                                  # ... not the test mean
    assert not np.allclose(mean, raw.mean(axis=0))                                      # ... nor the all-rows mean
    np.testing.assert_allclose(ds.X_train, (raw[tr] - mean) / std, atol=1e-12)
    np.testing.assert_allclose(ds.X_test, (raw[te] - mean) / std, atol=1e-12)
    varying = raw[tr].std(axis=0) > 0
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(ds.X_train.std(axis=0)[varying], 1, atol=1e-10)
    # test statistics are not re-fitted: the test means are not all zero
    assert np.abs(ds.X_test.mean(axis=0)[varying]).max() > 0.02
    np.testing.assert_allclose(ds.unstandardize(ds.X_test), raw[te], atol=1e-9)


def test_constant_columns_get_std_one():
    ds = load_dataset("digits", seed=0)
    const = np.flatnonzero(ds.X_train.std(axis=0) == 0)
    assert const.size >= 1                                   # pixel_0_0 is always 0
    assert np.all(ds.meta["std"][const] == 1.0)
    assert np.all(np.isfinite(ds.X_test))
    X = np.c_[np.arange(20.0), np.full(20, 5.0)]
    y = np.arange(20) % 2
    d2 = build_dataset("toy", X, y, seed=0)
    assert d2.meta["std"][1] == 1.0 and np.all(d2.X_train[:, 1] == 0.0)


@pytest.mark.parametrize("name", ["wine", "digits", "synthetic:multiclass", "breast_cancer"])
def test_split_is_stratified(name):
    ds = load_dataset(name, seed=5)
    k = ds.n_classes
    allp = np.bincount(np.r_[ds.y_train, ds.y_test], minlength=k)
    for y in (ds.y_train, ds.y_test):
        counts = np.bincount(y, minlength=k)
        # stratified: each class count within one row of its proportional share
        assert np.all(np.abs(counts - allp * y.size / allp.sum()) <= 1.0 + 1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed_and_different_across_seeds(name):
    a, b = load_dataset(name, seed=7), load_dataset(name, seed=7)
    for f in ("X_train", "y_train", "X_test", "y_test"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert a.fingerprint() == b.fingerprint()
    c = load_dataset(name, seed=8)
    assert a.fingerprint() != c.fingerprint()
    assert not np.array_equal(a.meta["train_index"], c.meta["train_index"])


def test_data_seed_fixes_rows_and_varies_only_the_split():
    a = load_dataset("xor", seed=1, data_seed=0, standardize=False)
    b = load_dataset("xor", seed=2, data_seed=0, standardize=False)
    rows_a = np.r_[a.X_train, a.X_test][np.argsort(np.r_[a.meta["train_index"], a.meta["test_index"]])]
    rows_b = np.r_[b.X_train, b.X_test][np.argsort(np.r_[b.meta["train_index"], b.meta["test_index"]])]
    assert np.array_equal(rows_a, rows_b)
    assert not np.array_equal(a.meta["train_index"], b.meta["train_index"])
    assert a.name == "xor(data_seed=0,standardize=False)"


# --- generated label rules -------------------------------------------------------------------


def test_sparse_parity_product_rule_and_unique_rows():
    ds = load_dataset("sparse_parity", seed=0, standardize=False)
    X = np.r_[ds.X_train, ds.X_test]
    y = np.r_[ds.y_train, ds.y_test]
    assert X.shape == (2000, 43) and set(np.unique(X)) == {-1.0, 1.0}
    assert np.unique(X, axis=0).shape[0] == 2000
    assert np.array_equal(y, (X[:, 0] * X[:, 1] * X[:, 2] > 0).astype(int))
    assert ds.feature_names[:4] == ["parity1", "parity2", "parity3", "noise1"]
    # standardised version: the same rows, signs preserved (train means of ±1 bits are far from ±1)
    st = load_dataset("sparse_parity", seed=0)
    assert np.array_equal(np.sign(st.X_train), ds.X_train)
    assert np.array_equal(st.y_train, (np.prod(np.sign(st.X_train[:, :3]), axis=1) > 0).astype(int))
    assert np.abs(st.meta["mean"]).max() < 0.2
    half = load_dataset("sparse_parity", seed=0, test_size=0.5)
    assert half.X_train.shape[0] == half.X_test.shape[0] == 1000


def test_sparse_parity_small_space_enumerates_unique_vectors():
    ds = load_dataset("sparse_parity", seed=0, n_bits=4, k=2, n=16, test_size=0.5, standardize=False)
    X = np.r_[ds.X_train, ds.X_test]
    assert np.unique(X, axis=0).shape[0] == 16
    assert np.array_equal(np.r_[ds.y_train, ds.y_test], (X[:, 0] * X[:, 1] > 0).astype(int))
    assert ds.name == "sparse_parity(k=2,n=16,n_bits=4,standardize=False,test_size=0.5)"


def test_xor_sign_rule_in_raw_units():
    ds = load_dataset("xor", seed=2, d=6, n=500)
    assert ds.n_features == 6 and ds.X_train.shape[0] + ds.X_test.shape[0] == 500
    for X, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        raw = ds.unstandardize(X)
        assert np.array_equal(y, (raw[:, 0] * raw[:, 1] > 0).astype(int))
    raw = load_dataset("xor", seed=2, d=6, n=500, standardize=False)
    assert np.array_equal(raw.y_train, (raw.X_train[:, 0] * raw.X_train[:, 1] > 0).astype(int))
    assert abs(raw.X_train.mean()) < 0.1 and abs(raw.X_train.std() - 1) < 0.1
    np.testing.assert_allclose(ds.unstandardize(ds.X_train), raw.X_train, atol=1e-12)


def test_synthetic_presets_differ_and_take_overrides():
    easy, hard = load_dataset("synthetic:easy"), load_dataset("synthetic:hard")
    assert easy.n_features == 10 and hard.n_features == 30
    small = load_dataset("synthetic", n=200, d=8, n_informative=4, n_redundant=2)
    assert small.n_features == 8 and small.X_train.shape[0] + small.X_test.shape[0] == 200
    with pytest.raises(DataError, match=r"synthetic.*invalid parameters"):
        load_dataset("synthetic", d=5, n_informative=5, n_redundant=3)


# --- UCI-121 ----------------------------------------------------------------------------------


def _read_fixture(name: str):
    lines = (FIXTURE / name / f"{name}_R.dat").read_text().splitlines()
    assert lines[0].split("\t")[-1] == "clase"
    rows = [ln.split("\t") for ln in lines[1:]]
    X = np.array([[float(v) for v in r[1:-1]] for r in rows])
    y = np.array([int(r[-1]) for r in rows])
    val = [[int(t) for t in ln.split()] for ln in (FIXTURE / name / "conxuntos.dat").read_text().splitlines()]
    kf = [[int(t) for t in ln.split()] for ln in (FIXTURE / name / "conxuntos_kfold.dat").read_text().splitlines()]
    return X, y, val, kf


def test_list_uci121_fixture(monkeypatch):
    assert list_uci121(FIXTURE) == ["toy-binary", "toy-three"]
    monkeypatch.setenv(ENV_VAR, str(FIXTURE))
    assert list_uci121() == ["toy-binary", "toy-three"]


@pytest.mark.parametrize("name,k", [("toy-binary", 2), ("toy-three", 3)])
def test_uci121_folds_and_val_exactly_as_the_files_say(name, k):
    X, y, val, kf = _read_fixture(name)
    assert len(val) == 2 and len(kf) == 8
    for fold in range(4):
        ds = load_dataset(f"uci121:{name}", seed=fold, root=FIXTURE)
        assert ds.meta["fold"] == fold and ds.n_classes == k and ds.n_features == X.shape[1]
        tr, te = kf[2 * fold], kf[2 * fold + 1]
        assert np.array_equal(ds.X_train, X[tr]) and np.array_equal(ds.y_train, y[tr])   # no re-standardisation
        assert np.array_equal(ds.X_test, X[te]) and np.array_equal(ds.y_test, y[te])
        assert np.array_equal(ds.X_val, X[val[1]]) and np.array_equal(ds.y_val, y[val[1]])
        assert np.array_equal(ds.meta["search_train_index"], val[0])
        assert ds.meta["mean"] is None and ds.meta["standardize"] is False
        assert ds.feature_names == [f"f{j + 1}" for j in range(X.shape[1])]
    # seed wraps modulo 4; an explicit fold wins over the seed
    assert np.array_equal(load_dataset(f"uci121:{name}", seed=5, root=FIXTURE).X_test, X[kf[3]])
    assert np.array_equal(load_dataset(f"uci121:{name}", seed=0, fold=2, uci_dir=FIXTURE).X_test, X[kf[5]])


def test_uci121_env_var_standardize_and_no_val(monkeypatch):
    X, _, val, kf = _read_fixture("toy-three")
    monkeypatch.setenv(ENV_VAR, str(FIXTURE))
    ds = load_dataset("uci121:toy-three", seed=1, standardize=True)
    mean, std = X[kf[2]].mean(axis=0), X[kf[2]].std(axis=0)
    np.testing.assert_allclose(ds.meta["mean"], mean)
    np.testing.assert_allclose(ds.X_test, (X[kf[3]] - mean) / std)
    np.testing.assert_allclose(ds.X_val, (X[val[1]] - mean) / std)
    assert ds.name == "uci121:toy-three(standardize=True)"
    nv = load_dataset("uci121:toy-three", val="none")
    assert nv.X_val is None and nv.y_val is None


def test_uci121_separate_train_file_named_in_txt(tmp_path):
    src = FIXTURE / "toy-binary"
    d = tmp_path / "pair"
    d.mkdir()
    shutil.copy(src / "toy-binary_R.dat", d / "pair_train_R.dat")
    shutil.copy(src / "conxuntos.dat", d / "conxuntos.dat")
    shutil.copy(src / "conxuntos_kfold.dat", d / "conxuntos_kfold.dat")
    (d / "pair.txt").write_text("n_entradas= 3\nn_clases= 2\nn_arquivos= 2\nfich1= pair_train_R.dat\nn_patrons1= 40\n"
                                "fich2= pair_test_R.dat\nn_patrons2= 10\n")
    assert list_uci121(tmp_path) == ["pair"]
    a = load_dataset("uci121:pair", root=tmp_path)
    b = load_dataset("uci121:toy-binary", root=FIXTURE)
    assert np.array_equal(a.X_train, b.X_train) and a.meta["data_file"] == "pair_train_R.dat"


def _copy_fixture(tmp_path: Path, name: str = "toy-three") -> Path:
    shutil.copytree(FIXTURE / name, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("missing", ["conxuntos_kfold.dat", "conxuntos.dat", "toy-three_R.dat"])
def test_uci121_missing_file_names_it_and_the_layout(tmp_path, missing):
    d = _copy_fixture(tmp_path)
    (d / missing).unlink()
    before = _listing(tmp_path)
    with pytest.raises(DataError, match=f"missing file .*{missing}.*expected <root>/<name>/<name>_R.dat"):
        load_dataset("uci121:toy-three", root=tmp_path)
    assert _listing(tmp_path) == before


def test_uci121_malformed_index_and_header(tmp_path):
    d = _copy_fixture(tmp_path)
    kf = (d / "conxuntos_kfold.dat").read_text().splitlines()
    (d / "conxuntos_kfold.dat").write_text("\n".join(kf[:6]) + "\n")
    with pytest.raises(DataError, match=r"conxuntos_kfold\.dat has 6 index lines, expected 8"):
        load_dataset("uci121:toy-three", root=tmp_path)
    (d / "conxuntos_kfold.dat").write_text("\n".join(kf[:7] + [kf[7] + " 42"]) + "\n")
    with pytest.raises(DataError, match=r"line 8 has index 42 outside 0\.\.41"):
        load_dataset("uci121:toy-three", root=tmp_path)
    (d / "conxuntos_kfold.dat").write_text("\n".join(kf) + "\n")
    lines = (d / "toy-three_R.dat").read_text().splitlines()
    (d / "toy-three_R.dat").write_text("\n".join([lines[0].replace("clase", "label")] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="last column is 'clase'"):
        load_dataset("uci121:toy-three", root=tmp_path)


def test_uci121_unknown_name_root_and_fold():
    with pytest.raises(DataError, match=r"unknown dataset.*did you mean toy-three.*available \(2\): toy-binary, toy-three"):
        load_dataset("uci121:toy-tree", root=FIXTURE)
    with pytest.raises(DataError, match="not a dataset directory name"):
        load_dataset("uci121:../uci121", root=FIXTURE)
    with pytest.raises(DataError, match=r"fold must be an integer 0\.\.3"):
        load_dataset("uci121:toy-three", root=FIXTURE, fold=4)
    with pytest.raises(DataError, match="does not take parameter 'test_size'"):
        load_dataset("uci121:toy-three", root=FIXTURE, test_size=0.2)


def test_uci121_without_root_says_how_to_set_it(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(DataError, match=f"pass root=<dir> or set {ENV_VAR}"):
        load_dataset("uci121:toy-three")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("uci121:toy-three", root=tmp_path / "nowhere")


# --- CSV / Parquet ----------------------------------------------------------------------------


def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": np.arange(n), "a": rng.normal(size=n), "b": rng.integers(0, 5, n), "flag": rng.random(n) > 0.5,
        "label": np.array(["cat", "dog", "eel"])[np.arange(n) % 3],
    })


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_table_round_trip(tmp_path, kind):
    df = _frame()
    path = tmp_path / f"t.{kind}"
    df.to_csv(path, index=False) if kind == "csv" else df.to_parquet(path, index=False)
    ds = load_dataset(f"{kind}:{path}", seed=1, drop=["id"], standardize=False)
    assert ds.feature_names == ["a", "b", "flag"] and ds.class_names == ["cat", "dog", "eel"]
    expect = df[["a", "b", "flag"]].to_numpy(dtype=float)
    np.testing.assert_allclose(ds.X_train, expect[ds.meta["train_index"]], rtol=1e-15)
    codes = df["label"].map({"cat": 0, "dog": 1, "eel": 2}).to_numpy()
    assert np.array_equal(ds.y_test, codes[ds.meta["test_index"]])
    assert ds.meta["target"] == "label" and ds.meta["params"]["drop"] == ["id"]
    st = load_dataset(f"{kind}:{path}", seed=1, drop="id")
    np.testing.assert_allclose(st.meta["mean"], expect[st.meta["train_index"]].mean(axis=0))
    np.testing.assert_allclose(st.X_train.mean(axis=0), 0, atol=1e-12)
    # an explicit target: here "b" (5 integer classes), the string column dropped
    tb = load_dataset(f"{kind}:{path}", target="b", drop=["label", "id"])
    assert tb.n_classes == 5 and tb.feature_names == ["a", "flag"] and tb.class_names == ["0", "1", "2", "3", "4"]
    assert load_dataset(f"{kind}:{path}", seed=1, drop=["id"]).fingerprint() == st.fingerprint()


def _csv(tmp_path: Path, df: pd.DataFrame, name: str = "bad.csv") -> str:
    p = tmp_path / name
    df.to_csv(p, index=False)
    return f"csv:{p}"


def test_table_bad_inputs_raise_one_line(tmp_path):
    df = _frame(30)
    cases = []
    nan = df.copy()
    nan.loc[3, "a"] = np.nan
    cases.append((_csv(tmp_path, nan, "nan.csv"), {"drop": "id"}, r"NaN or inf in 1 rows \(columns: a\)"))
    inf = df.copy()
    inf["a"] = inf["a"].astype(float)
    inf.loc[4, "a"] = np.inf
    cases.append((_csv(tmp_path, inf, "inf.csv"), {"drop": "id"}, r"NaN or inf.*columns: a"))
    txt = df.assign(colour=["red", "blue", "green"] * 10)
    cases.append((_csv(tmp_path, txt, "txt.csv"), {}, r"non-numeric feature columns colour"))
    cases.append((_csv(tmp_path, df, "ok.csv"), {"target": "species"},
                  r"target column 'species' not found; available columns: id, a, b, flag, label"))
    cases.append((_csv(tmp_path, df.rename(columns={"label": "kind"}), "nolabel.csv"), {"drop": ["kind"]},
                  r"no target column \(looked for target, label, class, y\).*available columns: id, a, b, flag, kind"))
    cases.append((_csv(tmp_path, df.assign(label="cat"), "one.csv"), {}, r"only one class \(cat\)"))
    three = df.head(3).assign(label=["x", "y", "z"])
    cases.append((_csv(tmp_path, three, "three.csv"), {},
                  r"class x, y, z has fewer than 2 rows; a stratified train/test split needs at least 2 rows per class"))
    ten = df.head(10).assign(label=list("aabbccddee"))
    cases.append((_csv(tmp_path, ten, "ten.csv"), {}, r"leaves 3 test rows for 5 classes"))
    cases.append((_csv(tmp_path, df.assign(label=[None] + ["a", "b"] * 14 + ["a"]), "miss.csv"), {},
                  r"target column 'label' has 1 missing values"))
    cases.append((f"csv:{tmp_path / 'absent.csv'}", {}, r"no such file"))
    cases.append((_csv(tmp_path, df, "ok.csv"), {"drop": ["nope"]}, r"drop names unknown columns nope"))
    cases.append((_csv(tmp_path, df, "ok.csv"), {"test_size": 1.5}, r"test_size must be in \(0, 1\)"))
    cases.append((_csv(tmp_path, df, "ok.csv"), {"sep": ";"}, r"does not take parameter 'sep'; accepted: drop, standardize, target, test_size"))
    (tmp_path / "empty.csv").write_text("")
    cases.append((f"csv:{tmp_path / 'empty.csv'}", {}, r"could not be read as csv"))
    before = _listing(tmp_path)
    for name, params, pattern in cases:
        with pytest.raises(DataError, match=pattern) as info:
            load_dataset(name, **params)
        assert "\n" not in str(info.value), str(info.value)
    assert _listing(tmp_path) == before            # nothing written


def test_unknown_names_and_params():
    with pytest.raises(DataError, match=r"unknown dataset 'irsi' \(did you mean iris\?\); valid: breast_cancer, wine, iris, digits, "
                                        r"sparse_parity, xor, synthetic.*uci121:<name>, csv:<path>, parquet:<path>"):
        load_dataset("irsi")
    with pytest.raises(DataError, match="unknown dataset 'synthetic:medium'"):
        load_dataset("synthetic:medium")
    with pytest.raises(DataError, match="missing the part after the colon"):
        load_dataset("csv:")
    with pytest.raises(DataError, match=r"dataset 'xor' does not take parameter 'dims'; accepted: d, data_seed, n, standardize, test_size"):
        load_dataset("xor", dims=3)
    with pytest.raises(DataError, match="dataset 'wine' does not take parameter 'data_seed'"):
        load_dataset("wine", data_seed=1)
    with pytest.raises(DataError, match=r"seed must be in 0\.\.4294967295"):
        load_dataset("wine", seed=-1)
    with pytest.raises(DataError, match=r"n must be in 2\.\.8"):
        load_dataset("sparse_parity", n_bits=3, n=9)
    with pytest.raises(DataError, match=r"k must be in 1\.\.43"):
        load_dataset("sparse_parity", k=50)
    with pytest.raises(DataError, match="standardize must be true or false"):
        load_dataset("iris", standardize="yes")


def test_build_dataset_rejects_nonfinite_and_bad_shapes():
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    X[2, 1] = np.nan
    with pytest.raises(DataError, match=r"NaN or inf in 1 rows \(columns: x2\)"):
        build_dataset("toy", X, y, seed=0)
    with pytest.raises(DataError, match="20 feature rows but 19 labels"):
        build_dataset("toy", np.nan_to_num(X), y[:19], seed=0)
