"""The fast paths of the exact linf tree attack give exactly what the reference code gives.

No timing assertions: every optimisation is checked for bit-identical outputs against the
straightforward implementation it replaces (kept as the reference), or against the MILP / brute
force, and the per-model structures are counted to be built once per run.
"""
from __future__ import annotations

import numpy as np
import pytest

from robustbench_align.attacks.trees import KantchelianMILP, VeritasLinf
from robustbench_align.attacks.trees import veritas as vmod
from robustbench_align.attacks.trees.flat import FlatEnsemble
from robustbench_align.attacks.trees.grid import Grid
from robustbench_align.attacks.trees.local_search import LocalSearch
from robustbench_align.attacks.trees.margins import targets_of
from robustbench_align.attacks.trees.points import PointOutcome
from robustbench_align.models import trees as trees_mod
from test_trees_exact import EnsembleModel, brute_force, random_ensemble

needs_veritas = pytest.mark.skipif(not VeritasLinf.available(), reason="dtai-veritas is not installed (pip install dtai-veritas)")


def tabular(n=300, d=6, classes=2, seed=0):
    from sklearn.datasets import make_classification

    X, y = make_classification(n, d, n_informative=min(d, 4), n_redundant=0, n_classes=classes, n_clusters_per_class=1, random_state=seed)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32).astype(np.float64)
    return X, y


@pytest.fixture(scope="module")
def models():
    X, y = tabular()
    X3, y3 = tabular(classes=3, seed=1)
    return [
        (trees_mod.XGBoostModel(n_estimators=12, max_depth=3).fit(X, y), X, y),
        (trees_mod.RandomForestModel(n_estimators=10, max_depth=4).fit(X, y), X, y),
        (trees_mod.RandomForestModel(n_estimators=6, max_depth=3).fit(X3, y3), X3, y3),
    ]


def structures(model):
    ens = model.tree_ensemble()
    return ens, Grid.of_trees(list(ens.trees), ens.strict, ens.dtype), FlatEnsemble(ens)


def test_raw_moves_is_bit_identical_to_raw(models):
    rng = np.random.default_rng(0)
    for model, X, _ in models:
        ens, _, flat = structures(model)
        for x in X[:15]:
            n = 60
            cols = rng.integers(0, X.shape[1], n)
            vals = np.where(rng.random(n) < 0.2, x[cols], rng.normal(size=n))
            rows = np.repeat(x[None], n, axis=0)
            rows[np.arange(n), cols] = vals
            assert np.array_equal(flat.raw_moves(x, cols, vals), flat.raw(rows))
            assert np.array_equal(flat.raw_moves(x, cols, vals, flat.leaves(x)), flat.raw(rows))
            assert np.array_equal(flat.leaves(x), FlatEnsemble(ens).leaves(x))
        assert flat.raw_moves(X[0], np.zeros(0, dtype=np.int64), np.zeros(0)).shape == (0, ens.n_outputs)


def test_vectorised_intervals_equal_the_loop(models):
    for model, X, _ in models:
        _, grid, _ = structures(model)
        pts = [X[i] for i in range(20)]
        edge = X[0].copy()
        edge[grid.features[0]] = float(grid.thr[0][0])  # exactly on a threshold
        pts.append(edge)
        nan = X[1].copy()
        nan[grid.features[-1]] = np.nan  # the loop's searchsorted semantics
        pts.append(nan)
        for x in pts:
            a, b = grid.intervals(x), grid.intervals_loop(x)
            assert a[0] == b[0]
            for u, v in zip(a[1] + a[2], b[1] + b[2], strict=True):
                assert np.array_equal(u, v, equal_nan=True)


def test_linf_search_ascent_equals_local_search(models):
    for model, X, y in models:
        _, grid, flat = structures(model)
        for x, yi in zip(X[:12], y[:12], strict=True):
            ref = LocalSearch(flat, grid, model, x, int(yi))
            fast = vmod._LinfSearch(flat, grid, model, x, int(yi))
            radii = list(np.random.default_rng(1).permutation(ref.radii))[:25] + [0.0]
            for d in radii:
                a, b = ref.ascent(ref.cand_d <= d), fast.ascent(fast.cand_d <= d)
                assert (a is None) == (b is None)
                if a is not None:
                    assert np.array_equal(a, b)
                wa, wb = ref.within(d), fast.within(d)
                assert (wa is None) == (wb is None)
                if wa is not None:
                    assert np.array_equal(wa, wb)
            assert fast.evaluations <= len(fast._scores) * len(radii)


@needs_veritas
def test_radius_boxes_equal_the_reference_box(models):
    for model, X, y in models:
        _, grid, flat = structures(model)
        pad = vmod._RadiusBoxes.padding(grid)
        for x, yi in zip(X[:8], y[:8], strict=True):
            s = LocalSearch(flat, grid, model, x, int(yi))
            boxes = vmod._RadiusBoxes(grid, s, pad)
            for k in range(s.radii.size):
                a = VeritasLinf._box_at(grid, s.dists, float(s.radii[k]))
                b = boxes.at(k)
                assert len(a) == len(b) == grid.features[-1] + 1
                assert [(iv.lo, iv.hi) for iv in a] == [(iv.lo, iv.hi) for iv in b], k


def sequential_search(att, vt, box, x, y, model, guard, out):
    """The one-by-one band check `_search` replaces (a predict per combination, in order)."""
    import veritas

    cfg = veritas.Config(veritas.HeuristicType.MAX_OUTPUT)
    cfg.stop_when_optimal = False
    cfg.ignore_state_when_worse_than = guard
    cfg.stop_when_num_new_solutions_exceeds = 0
    cfg.max_memory = att.max_memory
    cfg.focal_eps = att.focal_eps
    s = cfg.get_search(vt.at, (box + [veritas.Interval()] * vt.n_feat)[:vt.n_feat])
    seen = resolved = 0
    chunk = min(1000, att.query_steps)
    while True:
        reason = s.steps(chunk)
        for i in range(seen, s.num_solutions()):
            q = s.get_solution(i)
            if q.output < guard:
                continue
            xa = att._closest(x, q.box())
            if int(model.predict(xa[None])[0]) != y:
                return "adv", xa
            resolved += 1
            out.retries += 1
            if resolved > att.max_cuts:
                out.limited = True
                return "unknown", None
        seen = s.num_solutions()
        if reason == veritas.StopReason.NO_MORE_OPEN or s.num_open() == 0 or s.current_bounds().top_of_open < guard:
            return "none", None
        if reason == veritas.StopReason.OUT_OF_MEMORY or int(s.stats.num_steps) >= att.query_steps:
            out.limited = True
            return "unknown", None


@needs_veritas
@pytest.mark.parametrize("max_cuts", [0, 3, 32])
def test_batched_band_checks_replay_the_sequential_loop(max_cuts):
    # integer leaf values: many exact ties, so band combinations that do not flip are common
    cases = resolved = 0
    for seed in range(6):
        ens = random_ensemble(seed, n_trees=6, depth=2, n_features=3, integer_values=True)
        model = EnsembleModel(ens)
        att = VeritasLinf(max_cuts=max_cuts, query_steps=50 if seed % 2 else 20000)
        grid, flat = Grid.of_trees(list(ens.trees), ens.strict, ens.dtype), FlatEnsemble(ens)
        rng = np.random.default_rng(seed)
        for x in rng.normal(scale=0.6, size=(6, 3)):
            yi = int(model.predict(x[None])[0])
            s = LocalSearch(flat, grid, model, x, yi)
            for t in targets_of(ens, yi):
                vt = vmod._VeritasTarget(ens, t)
                if vt.empty:
                    continue
                for d in list(s.radii[:: max(1, s.radii.size // 4)]):
                    box = VeritasLinf._box_at(grid, s.dists, float(d))
                    o1, o2 = PointOutcome(), PointOutcome()
                    r1 = sequential_search(att, vt, box, x, yi, model, t.guard(0), o1)
                    r2 = att._search(vt, box, x, yi, model, t.guard(0), o2, vmod._Labels(model))
                    assert r1[0] == r2[0] and (o1.retries, o1.limited) == (o2.retries, o2.limited)
                    assert (r1[1] is None) == (r2[1] is None)
                    if r1[1] is not None:
                        assert np.array_equal(r1[1], r2[1])
                    cases += 1
                    resolved += o1.retries
    assert cases > 50 and resolved > 0  # band combinations that did not flip were met and resolved


def test_labels_memoise_the_models_predict(models):
    model, X, _ = models[0]
    lab = vmod._Labels(model)
    pts = [X[0], X[1], X[0].copy(), X[2]]
    lab.many(pts[2:])
    assert lab.calls == 1
    assert [lab(p) for p in pts] == [int(v) for v in model.predict(np.stack(pts))]
    assert lab.calls == 2  # X[1] only


@needs_veritas
@pytest.mark.parametrize("seed", range(4))
def test_veritas_equals_brute_force_and_milp_on_random_ensembles(seed):
    ens = random_ensemble(seed, n_trees=3, depth=2, n_features=3, strict=bool(seed % 2), combine="sum")
    model = EnsembleModel(ens)
    X = np.random.default_rng(seed).normal(scale=0.6, size=(8, 3))
    y = model.predict(X)
    ver = VeritasLinf().run(model, X, y, "linf")
    milp = KantchelianMILP(mip_rel_gap=1e-9).run(model, X, y, "linf")
    for i in range(len(X)):
        bf = brute_force(ens, X[i], y[i], "linf")
        assert ver.distance[i] == pytest.approx(bf, rel=1e-12, abs=0)
        assert ver.lower_bound[i] == pytest.approx(bf, rel=1e-12, abs=0)
    np.testing.assert_array_equal(ver.distance, milp.distance)


@needs_veritas
def test_real_models_equal_milp(models):
    for model, X, y in models:
        Xt, yt = X[:10], y[:10]
        ver = VeritasLinf().run(model, Xt, yt, "linf")
        milp = KantchelianMILP().run(model, Xt, yt, "linf")
        np.testing.assert_allclose(ver.distance, milp.distance, rtol=1e-9, atol=0)
        assert np.all(ver.is_exact())


@needs_veritas
def test_per_model_structures_are_built_once(models, monkeypatch):
    counts = {"target": 0, "flat": 0, "grid": 0, "labels": 0}
    real_target, real_flat, real_grid = vmod._VeritasTarget.__init__, FlatEnsemble.__init__, Grid.of_trees.__func__
    real_labels = vmod._Labels.__init__

    def spy(key, fn):
        def inner(*a, **k):
            counts[key] += 1
            return fn(*a, **k)
        return inner

    monkeypatch.setattr(vmod._VeritasTarget, "__init__", spy("target", real_target))
    monkeypatch.setattr(FlatEnsemble, "__init__", spy("flat", real_flat))
    monkeypatch.setattr(Grid, "of_trees", classmethod(spy("grid", real_grid)))
    monkeypatch.setattr(vmod._Labels, "__init__", spy("labels", real_labels))
    model, X, y = models[2]  # 3 classes: 2 targets per true class, 6 class pairs
    Xt, yt = X[:20], y[:20]
    res = VeritasLinf().run(model, Xt, yt, "linf")
    n_solved = int(np.sum(model.predict(Xt) == yt))
    assert res.flags["milp_fallback"] == 0
    assert counts["flat"] <= 1 and counts["grid"] <= 1  # once per ensemble (per run at most), not per point
    assert counts["target"] <= 6  # once per (target, true class) pair
    assert counts["labels"] == n_solved  # one predict memo per point
