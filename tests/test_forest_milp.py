"""The MILP restricted to what is reachable within the incumbent: exact against brute force, sound, deterministic.

Small random forests (mean of per-tree class votes, like scikit-learn's), tie-heavy ones (even tree
counts, duplicated trees, integer leaf values) and boosted sums, in l2, l1 and linf.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from robustbench_align.attacks.base import Norm, distances
from robustbench_align.attacks.trees import KantchelianMILP
from robustbench_align.attacks.trees.milp import MilpSolver, MilpStructure
from robustbench_align.models.base import Tree, TreeEnsemble
from test_trees_exact import EnsembleModel, brute_force

F32_INF = np.float32(np.inf)
GRID = np.array([-0.6, -0.2, 0.1, 0.1 + 1e-9, 0.3, 0.7, 1 / 3], dtype=np.float64)


def random_tree(rng, depth, n_features, n_outputs, votes):
    feature, threshold, left, right, value = [], [], [], [], []

    def grow(d):
        i = len(feature)
        feature.append(-1)
        threshold.append(np.float32(0))
        left.append(-1)
        right.append(-1)
        value.append(np.zeros(n_outputs))
        if d == depth or (d > 0 and rng.random() < 0.15):
            if votes:  # a forest leaf: one class's vote (exact ties between classes are common)
                value[i][int(rng.integers(n_outputs))] = 1.0
            else:
                value[i] = rng.normal(size=n_outputs)
            return i
        feature[i] = int(rng.integers(n_features))
        threshold[i] = np.float32(rng.choice(GRID))
        left[i] = grow(d + 1)
        right[i] = grow(d + 1)
        return i

    grow(0)
    return Tree(feature=np.array(feature, dtype=np.int64), threshold=np.array(threshold, dtype=np.float32),
                left=np.array(left, dtype=np.int64), right=np.array(right, dtype=np.int64), value=np.array(value, dtype=np.float64))


def forest(seed, *, n_trees=4, depth=2, n_features=3, n_classes=2, duplicate=False, votes=True, strict=False):
    """A random forest (mean of votes) or boosted sum (votes=False, one output when binary)."""
    rng = np.random.default_rng(seed)
    combine = "mean" if votes else "sum"
    n_outputs = n_classes if votes or n_classes > 2 else 1
    trees = [random_tree(rng, depth, n_features, n_outputs, votes) for _ in range(n_trees)]
    if duplicate:
        trees = trees + trees[: max(1, n_trees // 2)]
    bias = np.zeros(n_outputs) if votes else rng.normal(scale=0.3, size=n_outputs)
    link = "identity" if votes else ("logistic" if n_outputs == 1 else "softmax")
    return TreeEnsemble(trees=tuple(trees), n_features=n_features, n_classes=n_classes, n_outputs=n_outputs, strict=strict,
                        bias=bias, combine=combine, link=link, source="sklearn.RandomForestClassifier" if votes else "").validate()


CASES = [
    # (n_trees, depth, n_classes, duplicate, votes, strict)
    (4, 2, 2, False, True, False),  # even forest: vote ties at margin 0
    (3, 3, 2, True, True, False),  # duplicated trees
    (4, 2, 3, False, True, True),  # three classes, strict comparisons
    (5, 2, 2, False, False, True),  # boosted sum
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"t{c[0]}-d{c[1]}-k{c[2]}{'-dup' if c[3] else ''}{'-votes' if c[4] else '-sum'}")
@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_restricted_milp_equals_brute_force(case, norm):
    n_trees, depth, n_classes, duplicate, votes, strict = case
    rng = np.random.default_rng(11)
    for seed in range(1 if norm == "linf" else 2):
        ens = forest(seed, n_trees=n_trees, depth=depth, n_classes=n_classes, duplicate=duplicate, votes=votes, strict=strict)
        model = EnsembleModel(ens)
        X = rng.uniform(-1, 1.2, size=(5, ens.n_features))
        X[0, 0] = 0.1  # on a float32-inexact threshold
        X[1, 1] = np.float32(0.3)  # exactly on a threshold
        y = model.predict(X)
        res = KantchelianMILP(max_cuts=64, mip_rel_gap=1e-9).run(model, X, y, norm)
        for i in range(len(y)):
            bf = brute_force(ens, X[i], y[i], Norm.of(norm), flipped=lambda p, m=model, c=y[i]: m.predict(p[None])[0] != c)
            if not np.isfinite(bf):
                assert not res.success[i]
                continue
            assert res.success[i]
            assert model.predict(res.x_adv[i][None])[0] != y[i]
            assert res.distance[i] == pytest.approx(bf, rel=1e-9, abs=1e-12), (seed, i)
            # never above a verified adversarial; exact here (the budgets suffice on trees this small)
            assert res.lower_bound[i] <= res.distance[i] * (1 + 1e-9) + 1e-12
            assert res.lower_bound[i] == pytest.approx(bf, rel=1e-6, abs=1e-9), (seed, i)


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_restriction_keeps_the_optimum(norm):
    """Restricted to a verified incumbent's distance, each target's program has the unrestricted optimum."""
    nm = Norm.of(norm)
    rng = np.random.default_rng(5)
    compared = 0
    for seed in range(3):
        ens = forest(seed, n_trees=6, depth=3, n_features=4, duplicate=seed % 2 == 1)
        model = EnsembleModel(ens)
        solver = MilpSolver(ens, model, nm, 1e-9, max_cuts=8)
        for x in rng.uniform(-1, 1.2, size=(3, ens.n_features)):
            y = int(model.predict(x[None])[0])
            out = solver.solve_point(x, y)
            if out.x_adv is None:
                continue
            for t, u in itertools.product(solver.targets(y), (out.dist, 1.25 * out.dist)):
                st = MilpStructure(ens, t)
                full = st.solve(x, nm, np.inf, t.guard(1), 1e-9, 10_000, 60.0)
                cut = st.solve(x, nm, u, t.guard(1), 1e-9, 10_000, 60.0)
                if full["status"] == "optimal" and full["obj"] <= u * (1 - 1e-9):
                    assert cut["status"] == "optimal"
                    assert cut["obj"] == pytest.approx(full["obj"], rel=1e-7, abs=1e-12)
                    compared += 1
                if cut["status"] == "optimal":  # a restricted solution is a point of the full program
                    assert cut["obj"] >= full["lb"] * (1 - 1e-7) - 1e-12
                    d = float(distances(x[None], cut["x"][None], nm)[0])
                    assert d == pytest.approx(cut["obj"], rel=1e-7, abs=1e-12)
    assert compared > 0


def test_node_budget_is_deterministic_and_sound():
    """A one-node budget on a larger forest: bounds below the verified radii and repeatable."""
    ens = forest(3, n_trees=12, depth=4, n_features=5, n_classes=2)
    model = EnsembleModel(ens)
    X = np.random.default_rng(2).uniform(-1, 1.2, size=(6, 5))
    y = model.predict(X)
    for norm in ("l2", "l1"):
        a = KantchelianMILP(node_limit=1, max_cuts=1).run(model, X, y, norm)
        b = KantchelianMILP(node_limit=1, max_cuts=1).run(model, X, y, norm)
        np.testing.assert_array_equal(a.distance, b.distance)
        np.testing.assert_array_equal(a.lower_bound, b.lower_bound)
        assert np.all(a.lower_bound <= a.distance * (1 + 1e-9) + 1e-12)
        ok = a.success & (a.distance > 0)
        assert np.all(model.predict(a.x_adv[ok]) != y[ok])


def test_targets_with_the_same_trees_share_one_topology():
    """Every class pair of a 3-class forest keeps all trees: one topology, built once; per-target leaf values differ."""
    ens = forest(4, n_trees=5, depth=3, n_classes=3)
    model = EnsembleModel(ens)
    solver = MilpSolver(ens, model, Norm.of("l2"), 1e-9)
    structs = [solver.structure(t) for y in range(3) for t in solver.targets(y)]
    by_trees: dict[tuple[int, ...], object] = {}
    for st in structs:
        topo = by_trees.setdefault(tuple(st.active_index), st.topology)
        assert st.topology is topo  # shared, not rebuilt
        # its leaf values are this target's margin contributions, in the topology's leaf order
        expect = np.concatenate([st.target.w[i][ens.trees[i].is_leaf] for i in st.active_index])
        np.testing.assert_array_equal(st.leaf_w, expect)
    assert len(by_trees) < len(structs)
    # a structure built on its own (no shared cache entry yet) has the same arrays
    fresh = MilpStructure(forest(4, n_trees=5, depth=3, n_classes=3), structs[0].target)
    for name in ("leaf_tree", "pair_leaf", "pair_feat", "pair_lo", "pair_hi", "row_q", "row_side", "ent_row", "ent_leaf"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(structs[0], name))
