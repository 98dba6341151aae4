"""Pipelines of affine scalers and ONNX models reach their strongest attack path (and say when they do not)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import robustbench_align as rba
from robustbench_align.errors import ModelError
from robustbench_align.models.base import wrap
from robustbench_align.models.persistence import load_model

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402


def raw_data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features on very different raw scales (so the scaler matters), binary labels."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * np.array([1.0, 10.0, 100.0, 0.1]) + np.array([5.0, -3.0, 50.0, 0.0])
    y = ((X[:, 0] - 5.0) + (X[:, 1] + 3.0) / 10.0 - (X[:, 2] - 50.0) / 100.0 > 0).astype(np.int64)
    return X, y


def quiet_fit(est: Any, X: np.ndarray, y: np.ndarray) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


# ----------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["standard-logreg", "minmax-mlp"])
def test_pipeline_gradient_path_in_raw_space(kind: str) -> None:
    X, y = raw_data()
    if kind == "standard-logreg":
        pipe = quiet_fit(make_pipeline(StandardScaler(), LogisticRegression()), X, y)
    else:
        pipe = quiet_fit(make_pipeline(MinMaxScaler(), MLPClassifier((16,), max_iter=600, random_state=0)), X, y)
    m = wrap(pipe)
    assert m.has("torch_logits") and getattr(m, "input_space", None) == "raw"
    z = m.torch_logits(torch.as_tensor(X)).detach().numpy()  # type: ignore[attr-defined]
    np.testing.assert_array_equal(z.argmax(1), pipe.predict(X))
    np.testing.assert_allclose(torch.softmax(torch.as_tensor(z), 1).numpy(), pipe.predict_proba(X), atol=1e-9)

    Xa, ya = X[:12], y[:12]
    # the default threat model for the linear Pipeline (its exact linear attack certifies every point);
    # for the MLP Pipeline two gradient attacks plus the per-point-best hsj step, to keep the test fast
    attacks = None if kind == "standard-logreg" else ["deepfool", "pgd-refine", "hsj"]
    strong = rba.minimal_radius(pipe, Xa, ya, "l2", attacks=attacks, seed=0)
    hsj = rba.minimal_radius(pipe, Xa, ya, "l2", attacks=["hsj"], seed=0)
    pa = strong.per_attack  # the white-box attacks' own verified radii
    own = pa["linear"] if kind == "standard-logreg" else np.fmin(pa["deepfool"], pa["pgd-refine"])
    ratio = own[np.isfinite(hsj.distance) & (hsj.distance > 0)] / hsj.distance[np.isfinite(hsj.distance) & (hsj.distance > 0)]
    assert np.median(ratio) < 1.0 and (np.all(ratio <= 1 + 1e-6) if kind == "standard-logreg" else np.all(ratio <= 1.05))
    ok = np.isfinite(strong.distance) & (strong.distance > 0)
    assert ok.sum() >= 8
    # verified by the Pipeline's own predict, in raw feature space, at the reported raw-space distance
    assert np.all(pipe.predict(strong.x_adv[ok]) != ya[ok])
    np.testing.assert_allclose(np.linalg.norm(strong.x_adv[ok] - Xa[ok], axis=1), strong.distance[ok], rtol=1e-6)
    both = ok & np.isfinite(hsj.distance)
    assert np.all(strong.distance[both] <= hsj.distance[both] * (1 + 1e-6))
    assert strong.path == ("exact" if kind == "standard-logreg" else "gradient")


def test_pipeline_scaler_chain_matches_sklearn_transform_exactly() -> None:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MaxAbsScaler, RobustScaler

    X, y = raw_data()
    pipe = quiet_fit(Pipeline([("r", RobustScaler()), ("p", "passthrough"), ("m", MaxAbsScaler()), ("s", StandardScaler(with_mean=False)),
                               ("mm", MinMaxScaler((-2, 3))), ("lr", LogisticRegression())]), X, y)
    m: Any = wrap(pipe)
    Z = pipe[:-1].transform(X)
    np.testing.assert_array_equal(m.transform(X), Z)
    x = torch.as_tensor(X)
    assert torch.equal(m.torch_logits(x), m.inner.torch_logits(torch.as_tensor(Z)))  # the scalers' own float64 operations
    W, b = m.linear_scores()
    np.testing.assert_array_equal((X @ W.T + b).argmax(1), pipe.predict(X))
    np.testing.assert_allclose(X @ W.T + b, m.inner.scores(Z), atol=1e-10)
    bad = quiet_fit(make_pipeline(MinMaxScaler(clip=True), LogisticRegression()), X, y)
    assert "clip=True" in wrap(bad).path_note  # type: ignore[attr-defined]


def test_pipeline_with_pca_is_a_black_box_with_reason() -> None:
    X, y = raw_data()
    pipe = quiet_fit(make_pipeline(StandardScaler(), PCA(3), LogisticRegression()), X, y)
    m = wrap(pipe)
    assert m.capabilities == frozenset({"predict_proba"})
    assert "PCA" in m.path_note and m.path_note.startswith("black box")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(m.predict(X), pipe.predict(X))


def test_pipeline_tree_final_refuses_exact_path_with_reason() -> None:
    X, y = raw_data()
    pipe = quiet_fit(make_pipeline(StandardScaler(), RandomForestClassifier(5, max_depth=3, random_state=0)), X, y)
    m = wrap(pipe)
    assert not m.has("tree_ensemble") and "exact tree path refused" in m.path_note  # type: ignore[attr-defined]
    np.testing.assert_allclose(m.predict_proba(X), pipe.predict_proba(X))


# ----------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def run_ort(path: Path, X: np.ndarray) -> np.ndarray:
    """The raw onnxruntime class-score output of the file (the reference)."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = s.run(None, {s.get_inputs()[0].name: X.astype(np.float32)})
    return np.asarray(next(o for o in outs if np.asarray(o).ndim == 2), dtype=np.float64)


def skl_onnx(est: Any, X: np.ndarray, path: Path) -> Path:
    skl2onnx = pytest.importorskip("skl2onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = skl2onnx.to_onnx(est, X[:1].astype(np.float32), options={"zipmap": False})
    path.write_bytes(proto.SerializeToString())
    return path


def torch_onnx(path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8), torch.nn.LeakyReLU(0.1),
                              torch.nn.Linear(8, 3), torch.nn.Softmax(dim=1))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 4),), buf, dynamo=False, input_names=["x"], output_names=["p"],
                          dynamic_axes={"x": {0: "n"}, "p": {0: "n"}})
    path.write_bytes(buf.getvalue())
    return path, net


def test_onnx_torch_mlp_gradient_path(tmp_path: Path) -> None:
    path, net = torch_onnx(tmp_path / "mlp.onnx")
    m = load_model(path)
    assert m.has("torch_logits") and m.path_note.startswith("gradient path")  # type: ignore[attr-defined]
    X = np.random.default_rng(1).normal(size=(200, 4)) * 2
    ref = run_ort(path, X)
    assert np.max(np.abs(m.predict_proba(X) - ref)) < 1e-6
    p_torch = torch.softmax(m.torch_logits(torch.as_tensor(X)), 1).detach().numpy()  # type: ignore[attr-defined]
    assert np.max(np.abs(p_torch - ref)) < 1e-6
    with torch.no_grad():
        assert np.max(np.abs(p_torch - net(torch.as_tensor(X, dtype=torch.float32)).double().numpy())) < 1e-6
    y = m.predict(X[:10])
    res = rba.minimal_radius(m, X[:10], y, "l2", attacks=["deepfool", "pgd-refine"], seed=0)
    assert res.path == "gradient"
    ok = np.isfinite(res.distance)
    assert ok.sum() >= 8 and np.all(run_ort(path, res.x_adv[ok]).argmax(1) != y[ok])


def test_onnx_logistic_regression_fidelity(tmp_path: Path) -> None:
    X, y = raw_data()
    Xs = (X - X.mean(0)) / X.std(0)
    est = quiet_fit(LogisticRegression(), Xs, y)
    path = skl_onnx(est, Xs, tmp_path / "lr.onnx")
    m = load_model(path)
    assert m.has("torch_logits")
    ref = run_ort(path, Xs)
    p_torch = torch.softmax(m.torch_logits(torch.as_tensor(Xs)), 1).detach().numpy()  # type: ignore[attr-defined]
    assert np.max(np.abs(p_torch - ref)) < 1e-6 and np.max(np.abs(m.predict_proba(Xs) - ref)) < 1e-6
    np.testing.assert_array_equal(m.predict(Xs), est.predict(Xs))


def test_onnx_random_forest_exact_path(tmp_path: Path) -> None:
    X, y = raw_data(160, seed=2)
    Xs = (X - X.mean(0)) / X.std(0)
    est = quiet_fit(RandomForestClassifier(5, max_depth=4, random_state=0), Xs, y)  # odd tree count: no vote ties
    path = skl_onnx(est, Xs, tmp_path / "rf.onnx")
    m = load_model(path)
    assert m.has("tree_ensemble"), m.path_note  # type: ignore[attr-defined]
    ens = m.tree_ensemble()  # type: ignore[attr-defined]
    ref = run_ort(path, Xs)
    assert np.max(np.abs(ens.predict_proba(Xs) - ref)) < 1e-6
    np.testing.assert_array_equal(ens.predict(Xs), ref.argmax(1))
    Xa, ya = Xs[:10], y[:10]
    res = rba.minimal_radius(m, Xa, ya, "linf", seed=0)
    assert res.path == "exact"
    ok = np.isfinite(res.distance) & (res.distance > 0)
    assert ok.sum() >= 5
    assert np.all(run_ort(path, res.x_adv[ok]).argmax(1) != ya[ok])  # onnxruntime's prediction flips


def test_onnx_scaler_then_forest_folds_to_exact_raw_thresholds(tmp_path: Path) -> None:
    X, y = raw_data(160, seed=4)
    # fully grown trees (pure leaves) and an odd tree count: no vote ties for onnxruntime's float32 sum to decide
    pipe = quiet_fit(make_pipeline(StandardScaler(), RandomForestClassifier(5, random_state=0)), X, y)
    path = skl_onnx(pipe, X, tmp_path / "scaled-rf.onnx")
    m: Any = load_model(path)
    assert m.has("tree_ensemble") and "Scaler" in m.path_note, m.path_note
    ens = m.tree_ensemble()
    ref = run_ort(path, X)
    np.testing.assert_array_equal(ens.predict(X), ref.argmax(1))
    for tree in ens.trees[:2]:  # the raw-space thresholds are exact for onnxruntime: one ulp apart, the decision path changes
        i = int(np.flatnonzero(tree.left >= 0)[0])
        f, t = int(tree.feature[i]), tree.threshold[i]
        rows = np.repeat(X[:1], 2, axis=0)
        rows[0, f], rows[1, f] = t, np.nextafter(t, np.float32(np.inf))
        leaves = [int(tree.leaf_index(rows.astype(np.float32), False)[j]) for j in range(2)]
        assert leaves[0] != leaves[1]
    res = rba.minimal_radius(m, X[:6], y[:6], "linf", seed=0)
    ok = np.isfinite(res.distance) & (res.distance > 0)
    assert res.path == "exact" and ok.sum() >= 3 and np.all(run_ort(path, res.x_adv[ok]).argmax(1) != y[:6][ok])


def test_onnx_unsupported_op_is_black_box_naming_it(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    W = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Sin", ["h"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=1)],
        "sin-net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2])], [W])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sin.onnx"
    path.write_bytes(proto.SerializeToString())
    m = load_model(path)
    assert m.capabilities == frozenset({"predict_proba"})
    assert "'Sin'" in m.path_note and m.path_note.startswith("black box")  # type: ignore[attr-defined]
    X = np.random.default_rng(3).normal(size=(20, 3))
    assert np.max(np.abs(m.predict_proba(X) - run_ort(path, X))) < 1e-6


def test_onnx_truncated_file_is_one_line_model_error(tmp_path: Path) -> None:
    path, _ = torch_onnx(tmp_path / "mlp.onnx")
    blob = path.read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelError) as info:
        load_model(bad)
    assert "\n" not in str(info.value) and "cut.onnx" in str(info.value)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pipeline_linear_certificate_holds_for_the_pipelines_own_arithmetic(norm: str) -> None:
    """Large offsets and small scales make the folded raw-space scores differ from the Pipeline's own ((x - m) / s) @ W + b:
    the certificate must still never exceed a distance at which the Pipeline itself flips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    import robustbench_align as rba

    rng = np.random.default_rng(7)
    X = 1e4 + 1e-2 * rng.normal(size=(300, 6))
    y = (X[:, 0] - X[:, 1] + 0.3 * (X[:, 2] - 1e4) > 0).astype(int)
    pipe = make_pipeline(StandardScaler(), MinMaxScaler(), LogisticRegression(C=100.0)).fit(X[:240], y[:240])
    Xe, ye = X[240:], pipe.predict(X[240:])
    res = rba.minimal_radius(pipe, Xe, ye, norm, attacks=["linear"])
    assert res.path == "exact" and res.lower_bound is not None
    d, lb = res.distance, res.lower_bound
    assert (lb <= d).all() and np.median((d - lb) / d) < 1e-6  # a bracket this tight, never inverted
    assert (pipe.predict(res.x_adv) != ye).all()
    for tau in (1e-12, 1e-10, 1e-8, 1e-6):  # any shorter step along the found direction that still flips bounds the truth
        shorter = Xe + (1.0 - tau) * (res.x_adv - Xe)
        flips = pipe.predict(shorter) != ye
        dist = rba.attacks.base.Norm.of(norm).distance(Xe, shorter)
        assert (lb[flips] <= dist[flips]).all()


def test_onnx_predict_is_onnxruntimes_label_even_at_score_ties() -> None:
    """The label output decides exact float32 probability ties; adversarials must flip that label, not our argmax."""
    skl2onnx = pytest.importorskip("skl2onnx")
    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression

    import robustbench_align as rba

    ds = rba.load_dataset("breast_cancer", seed=0)
    lr = LogisticRegression(max_iter=1000).fit(ds.X_train, ds.y_train)
    proto = skl2onnx.to_onnx(lr, ds.X_train[:1].astype(np.float32), options={"zipmap": False})
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    model = rba.wrap(proto)
    X, y = ds.X_test[:20], ds.y_test[:20]
    res = rba.minimal_radius(model, X, y, "linf", attacks=["fmn"])
    ok = res.success & res.clean_correct
    assert ok.sum() >= 15
    label = sess.run(None, {name: res.x_adv[ok].astype(np.float32)})[0]
    assert (label != y[ok]).all()  # each adversarial flips onnxruntime's own decision (several sit on a 0.5/0.5 tie)
    np.testing.assert_array_equal(model.predict(res.x_adv), sess.run(None, {name: res.x_adv.astype(np.float32)})[0])
