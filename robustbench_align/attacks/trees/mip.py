"""Mixed-integer solver backends of the exact tree attacks: HiGHS (through scipy, always there) and Gurobi (optional).

One call solves min c.x subject to row_lo <= A x <= row_hi, lb <= x <= ub, the columns marked in
`integrality` integer, within a node budget (the work budget of the attack; GUROBI_NODE_FACTOR
times as many Gurobi nodes) and a wall-clock safety net. Both backends run single-threaded with a
fixed seed, so a solve is deterministic for a given solver and version; both report their dual
bound, which the attacks turn into certified lower bounds with the same 1e-9 allowance for the
solver's tolerances.

`solver="auto"` takes Gurobi when `gurobipy` imports and its licence accepts the program (the
licence that comes with the pip wheel is limited to 2,000 variables and 2,000 constraints), and
HiGHS otherwise, program by program; the environment variable RBA_MILP_SOLVER ("highs", "gurobi"
or "auto") overrides what "auto" means, for instance to reproduce a machine without Gurobi.
Gurobi is an optional dependency (`pip install gurobipy`; the licence terms are Gurobi's). It is
several times faster on the forest programs, whose time is the solver's own branch-and-bound
(see benchmarks/results/forest_milp.md).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from ...errors import AttackError

SOLVERS = ("auto", "highs", "gurobi")
# Gurobi's branch-and-bound nodes per node of the attacks' budget. Its nodes are much cheaper than
# HiGHS' (no cuts, no strong branching at every node), and it uses more of them on the same program:
# with cuts on it needed 1-6x HiGHS' node count on the benchmark forests. With 10x, and cuts off, it
# certified every point HiGHS certifies within its 100 nodes, and more (benchmarks/results/forest_milp.md).
GUROBI_NODE_FACTOR = 10
_SIZE_LIMIT_ERRNO = 10010  # GurobiError: "Model too large for size-limited license"


@dataclass
class MipAnswer:
    """One solve: status "optimal" / "limit" (node or time budget) / "infeasible" / "error".

    x: the best solution found (None when there is none); fun: its objective; bound: the solver's
    dual bound (None when it reported none); time_hit: the wall-clock limit stopped it; solver:
    the backend that answered ("highs" or "gurobi").
    """

    status: str
    x: np.ndarray | None
    fun: float
    bound: float | None
    time_hit: bool
    solver: str
    message: str = ""


def check_solver(who: str, solver: object) -> str:
    """A solver name from SOLVERS; AttackError naming the choices otherwise, or when "gurobi" is asked and unusable."""
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise AttackError(f"{who}: solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if resolve(solver) == "gurobi":
        why = gurobi_unavailable()
        if why:
            raise AttackError(f"{who}: solver='gurobi' cannot run here ({why}); install gurobipy with a licence, or use solver='auto'")
    return solver


_ENV: dict[int, Any] = {}  # per process id: fork-started workers open their own environment
_UNAVAILABLE: list[str] = []


def _gurobi_env() -> Any:
    """The process's Gurobi environment (quiet), or None when gurobipy is missing or has no licence."""
    if _UNAVAILABLE:
        return None
    pid = os.getpid()
    if pid in _ENV:
        return _ENV[pid]
    try:
        import gurobipy as gp
    except ImportError:
        _UNAVAILABLE.append("gurobipy is not installed")
        return None
    try:
        env = gp.Env(empty=True)
        env.setParam("OutputFlag", 0)
        env.start()
    except gp.GurobiError as e:
        _UNAVAILABLE.append(f"no usable Gurobi licence: {e}")
        return None
    _ENV[pid] = env
    return env


def gurobi_unavailable() -> str:
    """Why Gurobi cannot be used in this process ('' when it can)."""
    _gurobi_env()
    return _UNAVAILABLE[0] if _UNAVAILABLE else ""


def resolve(solver: str) -> str:
    """The backend a solver setting asks for: "auto" follows RBA_MILP_SOLVER when it is set."""
    if solver != "auto":
        return solver
    env = os.environ.get("RBA_MILP_SOLVER", "").strip().lower()
    if env and env not in SOLVERS:
        raise AttackError(f"milp: RBA_MILP_SOLVER must be one of {', '.join(SOLVERS)}, got {env!r}; unset it or fix the value")
    return env or "auto"


def solve_mip(c: np.ndarray, A: sp.csr_matrix, row_lo: np.ndarray, row_hi: np.ndarray, lb: np.ndarray, ub: np.ndarray,
              integrality: np.ndarray, node_limit: int, time_limit: float, rel_gap: float, abs_gap: float = 1e-9,
              tol: float = 1e-9, solver: str = "auto") -> MipAnswer:
    """Solve the program with `solver` ("auto": Gurobi when it can take the program, else HiGHS)."""
    solver = resolve(solver)
    if solver in ("auto", "gurobi"):
        env = _gurobi_env()
        if env is not None:
            ans = _gurobi(env, c, A, row_lo, row_hi, lb, ub, integrality, node_limit, time_limit, rel_gap, abs_gap, tol)
            if ans is not None:
                return ans
        if solver == "gurobi" and env is None:
            raise AttackError(f"milp: solver='gurobi' cannot run here ({gurobi_unavailable()}); use solver='auto'")
    return _highs(c, A, row_lo, row_hi, lb, ub, integrality, node_limit, time_limit, rel_gap, abs_gap, tol)


def _highs(c: np.ndarray, A: sp.csr_matrix, row_lo: np.ndarray, row_hi: np.ndarray, lb: np.ndarray, ub: np.ndarray,
           integrality: np.ndarray, node_limit: int, time_limit: float, rel_gap: float, abs_gap: float, tol: float) -> MipAnswer:
    """HiGHS through scipy.optimize.milp."""
    # the tolerances and mip_abs_gap are outside scipy's typed option keys; scipy passes them on verbatim.
    # Presolve stays off: on these programs it costs seconds at the root that no node budget bounds
    opts: dict[str, Any] = {"time_limit": max(time_limit, 1e-3), "node_limit": int(node_limit), "mip_rel_gap": rel_gap,
                            "presolve": False, "mip_abs_gap": abs_gap, "mip_feasibility_tolerance": tol,
                            "primal_feasibility_tolerance": tol}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # Any: the stubs tie a solution x to status 0, but a time-out (status 1) can return one too
        res: Any = milp(c, constraints=[LinearConstraint(A, row_lo, row_hi)], integrality=integrality,
                        bounds=Bounds(lb, ub), options=cast(Any, opts))
    time_hit = bool(res.status == 1 and time.perf_counter() - t0 >= 0.99 * time_limit)
    dual = res.get("mip_dual_bound")
    bound = float(dual) if dual is not None and np.isfinite(dual) else None
    if res.status == 2:
        return MipAnswer("infeasible", None, np.inf, None, False, "highs")
    if res.x is None:
        return MipAnswer("limit" if res.status == 1 else "error", None, np.inf, bound, time_hit, "highs", str(res.message))
    status = "optimal" if res.status == 0 else "limit"
    return MipAnswer(status, np.asarray(res.x), float(res.fun), bound, time_hit, "highs")


def _gurobi(env: Any, c: np.ndarray, A: sp.csr_matrix, row_lo: np.ndarray, row_hi: np.ndarray, lb: np.ndarray, ub: np.ndarray,
            integrality: np.ndarray, node_limit: int, time_limit: float, rel_gap: float, abs_gap: float, tol: float) -> MipAnswer | None:
    """Gurobi (one thread, seed 0); None when its licence refuses the program's size (the caller takes HiGHS).

    Presolve is off, as for HiGHS: with it, Gurobi returned points that miss the margin row by the full
    1e-8 guard (its tolerance applies to the presolved program); without it, they meet the rows to 1e-9.
    Cutting planes are off: on the forest programs they cost more than the nodes they save (1.1-2x
    faster without them, with the same programs solved to optimality within the node budget).
    """
    import gurobipy as gp
    from gurobipy import GRB

    m = gp.Model(env=env)
    try:
        for name, value in (("Threads", 1), ("Seed", 0), ("NodeLimit", float(node_limit) * GUROBI_NODE_FACTOR), ("TimeLimit", max(time_limit, 1e-3)),
                            ("MIPGap", rel_gap), ("MIPGapAbs", abs_gap), ("FeasibilityTol", tol), ("IntFeasTol", tol),
                            ("OptimalityTol", tol), ("Presolve", 0), ("Cuts", 0)):
            m.setParam(name, value)
        vtype = np.where(np.asarray(integrality) > 0, GRB.BINARY if np.all(lb[integrality > 0] >= 0) and np.all(ub[integrality > 0] <= 1)
                         else GRB.INTEGER, GRB.CONTINUOUS)
        inf = GRB.INFINITY
        xv = m.addMVar(c.size, lb=np.clip(lb, -inf, inf), ub=np.clip(ub, -inf, inf), vtype=vtype, obj=c)
        A = sp.csr_matrix(A)
        eq = np.isfinite(row_lo) & (row_lo == row_hi)
        ge = np.isfinite(row_lo) & ~eq
        le = np.isfinite(row_hi) & ~eq
        for mask, sense, rhs in ((eq, GRB.EQUAL, row_lo), (ge, GRB.GREATER_EQUAL, row_lo), (le, GRB.LESS_EQUAL, row_hi)):
            if mask.any():
                m.addMConstr(A[mask], xv, sense, rhs[mask])
        t0 = time.perf_counter()
        try:
            m.optimize()
        except gp.GurobiError as e:
            if getattr(e, "errno", None) == _SIZE_LIMIT_ERRNO:
                return None
            raise
        st = m.Status
        if st == GRB.INTERRUPTED:
            raise KeyboardInterrupt  # Gurobi catches Ctrl-C itself; the run stops as it does under HiGHS
        if st in (GRB.INFEASIBLE, GRB.INF_OR_UNBD):  # every column is bounded or minimised from below: not unbounded
            return MipAnswer("infeasible", None, np.inf, None, False, "gurobi")
        try:
            bound: float | None = float(m.ObjBound)
        except (gp.GurobiError, AttributeError):
            bound = None
        if bound is not None and not np.isfinite(bound):
            bound = None
        time_hit = bool(st == GRB.TIME_LIMIT and time.perf_counter() - t0 >= 0.99 * time_limit)
        if st == GRB.OPTIMAL:
            status = "optimal"
        elif st in (GRB.NODE_LIMIT, GRB.TIME_LIMIT, GRB.SUBOPTIMAL, GRB.SOLUTION_LIMIT, GRB.WORK_LIMIT, GRB.ITERATION_LIMIT):
            status = "limit"
        else:
            return MipAnswer("error", None, np.inf, None, False, "gurobi", f"Gurobi status {st}")
        if m.SolCount == 0:
            return MipAnswer(status if status == "limit" else "error", None, np.inf, bound, time_hit, "gurobi")
        return MipAnswer(status, np.asarray(xv.X, dtype=np.float64), float(m.ObjVal), bound, time_hit, "gurobi")
    finally:
        m.dispose()


__all__ = ["GUROBI_NODE_FACTOR", "SOLVERS", "MipAnswer", "check_solver", "gurobi_unavailable", "resolve", "solve_mip"]
