"""The MILP backends (HiGHS, Gurobi): the same exact answers, the licence's size limit handled, the choice recorded.

Gurobi is optional: the tests that need it skip, saying why, when gurobipy or its licence is
missing (`.ci/run` installs it, so they run in CI).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from robustbench_align.attacks.base import Norm
from robustbench_align.attacks.trees import KantchelianMILP, mip
from robustbench_align.attacks.trees.milp import MilpSolver
from robustbench_align.errors import AttackError
from test_forest_milp import forest
from test_trees_exact import EnsembleModel, brute_force

needs_gurobi = pytest.mark.skipif(bool(mip.gurobi_unavailable()), reason=f"Gurobi unusable here: {mip.gurobi_unavailable()}")


def knapsack(n: int, seed: int = 0):
    """max value s.t. weight <= cap over n binaries, as min -value: a program whose optimum brute force knows for small n."""
    rng = np.random.default_rng(seed)
    v, w = rng.uniform(1, 10, n), rng.uniform(1, 10, n)
    cap = 0.4 * w.sum()
    A = sp.csr_matrix(w[None, :])
    return -v, A, np.array([-np.inf]), np.array([cap]), np.zeros(n), np.ones(n), np.ones(n, dtype=np.int8), v, w, cap


@needs_gurobi
@pytest.mark.parametrize("solver", ["highs", "gurobi"])
def test_each_backend_solves_a_known_program(solver):
    c, A, lo, hi, lb, ub, integ, v, w, cap = knapsack(12)
    best = max(float(v[m].sum()) for m in (np.array([(k >> i) & 1 for i in range(12)], dtype=bool) for k in range(1 << 12))
               if float(w[m].sum()) <= cap)
    ans = mip.solve_mip(c, A, lo, hi, lb, ub, integ, node_limit=10_000, time_limit=60.0, rel_gap=1e-9, solver=solver)
    assert ans.solver == solver and ans.status == "optimal"
    assert -ans.fun == pytest.approx(best, rel=1e-9)
    assert ans.bound is not None and ans.bound <= ans.fun + 1e-9
    assert float(w @ ans.x) <= cap + 1e-9


@needs_gurobi
def test_infeasible_program_is_infeasible_on_both():
    A = sp.csr_matrix(np.ones((1, 3)))
    for solver in ("highs", "gurobi"):
        ans = mip.solve_mip(np.ones(3), A, np.array([4.0]), np.array([np.inf]), np.zeros(3), np.ones(3), np.ones(3, dtype=np.int8),
                            node_limit=100, time_limit=10.0, rel_gap=1e-9, solver=solver)
        assert ans.status == "infeasible" and ans.x is None and ans.solver == solver


def _size_limited() -> bool:
    """Whether the installed Gurobi licence refuses a 2,500-variable program (the pip wheel's licence does)."""
    import gurobipy as gp

    m = gp.Model(env=mip._gurobi_env())
    try:
        m.addMVar(2500, obj=1.0)
        try:
            m.optimize()
        except gp.GurobiError as e:
            return getattr(e, "errno", None) == 10010
        return False
    finally:
        m.dispose()


@needs_gurobi
def test_auto_takes_highs_for_a_program_the_licence_refuses():
    c, A, lo, hi, lb, ub, integ, _, w, cap = knapsack(2500, seed=1)
    ans = mip.solve_mip(c, A, lo, hi, lb, ub, integ, node_limit=50, time_limit=60.0, rel_gap=1e-4, solver="auto")
    assert ans.solver == ("highs" if _size_limited() else "gurobi")
    assert ans.x is not None and float(w @ ans.x) <= cap + 1e-6
    assert ans.bound is not None and ans.bound <= ans.fun + 1e-6


@needs_gurobi
@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_backends_agree_with_brute_force_on_forests(norm):
    """Both backends give the brute-force radius and certify it, on vote forests (ties) and boosted sums."""
    nm = Norm.of(norm)
    rng = np.random.default_rng(3)
    checked = 0
    for seed, votes in ((0, True), (1, True), (2, False)):
        ens = forest(seed, n_trees=4, depth=2, n_classes=2 if seed != 1 else 3, votes=votes, strict=seed == 2)
        model = EnsembleModel(ens)
        X = rng.uniform(-1, 1.2, size=(4, ens.n_features))
        y = model.predict(X)
        runs = {s: KantchelianMILP(max_cuts=64, mip_rel_gap=1e-9, solver=s).run(model, X, y, norm) for s in ("highs", "gurobi")}
        assert runs["gurobi"].flags["milp_gurobi_solves"] > 0 and runs["gurobi"].flags["milp_highs_solves"] == 0
        assert runs["highs"].flags["milp_gurobi_solves"] == 0
        for i in range(len(y)):
            bf = brute_force(ens, X[i], y[i], nm, flipped=lambda p, c=y[i], m=model: m.predict(p[None])[0] != c)
            for res in runs.values():
                if not np.isfinite(bf):
                    assert not res.success[i]
                    continue
                assert res.success[i] and model.predict(res.x_adv[i][None])[0] != y[i]
                assert res.distance[i] == pytest.approx(bf, rel=1e-9, abs=1e-12)
                assert res.lower_bound[i] <= res.distance[i] * (1 + 1e-9) + 1e-12
                assert res.lower_bound[i] == pytest.approx(bf, rel=1e-6, abs=1e-9)
                checked += 1
    assert checked >= 12


@needs_gurobi
def test_environment_variable_forces_highs(monkeypatch):
    ens = forest(0, n_trees=4, depth=2)
    model = EnsembleModel(ens)
    X = np.random.default_rng(0).uniform(-1, 1.2, size=(3, ens.n_features))
    y = model.predict(X)
    monkeypatch.setenv("RBA_MILP_SOLVER", "highs")
    res = KantchelianMILP().run(model, X, y, "l2")
    assert res.flags["milp_gurobi_solves"] == 0 and res.flags["milp_highs_solves"] > 0
    monkeypatch.setenv("RBA_MILP_SOLVER", "auto")
    res2 = KantchelianMILP().run(model, X, y, "l2")
    assert res2.flags["milp_gurobi_solves"] > 0
    np.testing.assert_allclose(res2.distance, res.distance, rtol=1e-9)


def test_bad_solver_settings_are_one_line_errors(monkeypatch):
    with pytest.raises(AttackError, match=r"solver must be one of auto, highs, gurobi, got 'cplex'"):
        KantchelianMILP(solver="cplex")
    monkeypatch.setenv("RBA_MILP_SOLVER", "glpk")
    ens = forest(0, n_trees=4, depth=2)
    with pytest.raises(AttackError, match=r"RBA_MILP_SOLVER must be one of .*got 'glpk'; unset it"):
        MilpSolver(ens, EnsembleModel(ens), Norm.of("l2"), 1e-6)


def test_without_gurobipy_auto_is_highs_and_gurobi_is_refused(tmp_path):
    """With gurobipy not importable, "auto" answers with HiGHS and asking for Gurobi names the fix."""
    code = """
import sys
sys.modules["gurobipy"] = None  # import gurobipy -> ImportError, as when it is not installed
sys.path.insert(0, "tests")
import numpy as np
from robustbench_align.attacks.trees import KantchelianMILP
from robustbench_align.errors import AttackError
from test_forest_milp import forest
from test_trees_exact import EnsembleModel
ens = forest(0, n_trees=4, depth=2)
model = EnsembleModel(ens)
X = np.random.default_rng(0).uniform(-1, 1.2, size=(3, ens.n_features))
res = KantchelianMILP().run(model, X, model.predict(X), "l2")
assert res.flags["milp_gurobi_solves"] == 0 and res.flags["milp_highs_solves"] > 0, res.flags
try:
    KantchelianMILP(solver="gurobi")
except AttackError as e:
    print("ERR", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [s for s in out.stdout.splitlines() if s.startswith("ERR")]
    assert line and "gurobipy is not installed" in line[0] and "solver='auto'" in line[0]
