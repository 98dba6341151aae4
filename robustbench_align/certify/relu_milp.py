"""Complete verification of ReLU networks by mixed-integer linear programming (MIPVerify), on HiGHS.

Tjeng, Xiao and Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
Programming", ICLR 2019. For a clean-correct point x of class y and a verified adversarial at
distance R (`upper`), the minimal adversarial distance under the linf or l1 norm is

    r(x) = min_k min { ||d|| : ||d|| <= R, z_k(x + d) - z_y(x + d) >= -delta },   k != y,

one MILP per target class k. Definitions used here:

- Input: x' = x + R e with e the scaled perturbation. linf: |e_j| <= t, minimise t; l1:
  e = e+ - e-, e+, e- >= 0, minimise sum(e+ + e-), with sum(e+ + e-) <= 1 (the ball of radius R).
  Every distance below is R times the scaled objective.
- Hidden ReLU neurons a = max(z, 0) with sound pre-activation bounds l <= z <= u over the ball of
  radius R (`crown.layer_bounds`, method "crown"; with `tighten`, every hidden layer after the
  first is also bounded by two LPs per neuron over the relaxation of the layers before it, as in
  MIPVerify's progressive tightening, each LP value widened by 1e-6 (1 + |value|)): stable active
  (l >= 0): a = z (substituted); stable inactive (u <= 0): a = 0; unstable: a binary s and the
  big-M constraints a >= z, a >= 0, a <= z - l (1 - s), a <= u s (the tightest such formulation of
  one neuron given only its interval). Any other activation is refused: the encoding is exact
  only for piecewise-linear ReLU.
- delta = `crown.rounding_bound(net, x, R, norm)` bounds the floating-point error of every logit
  difference of the model in its own dtype. A point the model's real arithmetic flips has exact
  margin >= -delta, so the bound is on the model as it computes, not on the exact network.
- Targets are solved nearest first (largest clean logit first) and each later target is cut off at
  the best distance found so far (a verified flipping witness, or else the best MILP incumbent); a
  target infeasible within its cutoff c contributes c, which is sound because its own minimum is
  then above c.
- lower = (1 - 1e-7) * min over targets of HiGHS' dual bound (the optimum when solved). The factor
  covers HiGHS' feasibility tolerances (1e-9 on scaled rows and integrality).
- Box shrinking (`shrink_steps`, an addition to MIPVerify's scheme): when a target's MILP stops at
  a limit, its dual bound over the radius-R box is often weak, because bounds over that ball leave
  most neurons unstable. The target is then solved again on boxes of radius rho R, rho bisecting
  (bound, best known), each with its own CROWN (and LP) bounds, which are far tighter: a box
  infeasible for the -delta margin proves rho, an optimum inside it is the target's optimum, and a
  limit proves rho times that box's dual bound. Sound because the target's minimum is either at
  least rho R or inside the box.
- When a branch and bound stops at a limit without an incumbent, scipy returns no dual bound
  (bound 0). With `shrink_steps` = 0 the program is then re-solved once in elastic form
  (z_k - z_y + sigma >= -delta, sigma >= 0 at a large cost), which always has a solution, and its
  dual bound is used: it bounds the original program, whose points are the elastic program's
  points with sigma = 0.
- Witness: a point decoded from a solution, kept only if the model's own `predict` flips it. An
  optimum of the -delta program sits on the margin -delta (plus the solver tolerance) and usually
  does not flip the model, so the ray from x through it is stretched by 1 + eps (eps from 1e-10 to
  0.1, the first flipping eps refined by bisection-like grids) and the first flip is kept. When
  none flips, the target is re-solved with a positive guard margin >= g, g in (1e-6, 1e-4, 1e-2)
  times the logit scale, each solution followed by the same search on the segment from the
  optimum to it, until a point flips; the bound stays the one of the -delta program. `exact[i]`
  holds when a flipping witness lies within lower[i] * (1 + 1e-6). For a float64 model delta is
  ~1e-13 and solved points are exact; for a float32 model the rigorous band delta (~1e-5 in
  logits for small MLPs) separates the bound from the model's first flips by a relative ~1e-4,
  so the bracket is tight but `exact` rarely holds.

Work is limited by a deterministic HiGHS branch-and-bound `node_limit` per MILP (single-threaded,
fixed random seed, presolve on, the RENS sub-MIP heuristic off); a target takes at most
1 + `shrink_steps` MILPs (or 2 with the elastic re-solve), each followed by at most 3 guarded
witness re-solves. `time_limit` (seconds per MILP) is only a safety net, and hitting it is
reported in `flags["milp_time_limit"]` with the dual bound at that moment (sound, but
machine-dependent). `work[i]` counts HiGHS branch-and-bound nodes over every MILP of the point,
at least 1 per MILP (a program presolve solves still counts), and the node limit itself when
HiGHS stops there without reporting its count.

The l2 norm is not supported: minimising ||d||_2 under these constraints is a mixed-integer
quadratic program, which HiGHS does not solve.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import ConfigError
from ..models.base import Model
from .base import Certificate, Certifier, work_budget
from .network import Activation, Network

log = logging.getLogger(__name__)

NORMS = ("linf", "l1")
REL_TOL = 1e-7  # relative shrink of every reported bound for HiGHS' feasibility tolerances
EXACT_RTOL = 1e-6  # a witness within lower * (1 + EXACT_RTOL) closes the bracket
GUARDS = (1e-6, 1e-4, 1e-2)  # positive margin guards (times the logit scale) of the witness re-solves
NO_UPPER = "no adversarial known to bound the MILP box"
# tolerances and options outside scipy's typed keys are passed to HiGHS verbatim
_HIGHS: dict[str, Any] = {
    "mip_feasibility_tolerance": 1e-9,
    "primal_feasibility_tolerance": 1e-9,
    "dual_feasibility_tolerance": 1e-9,
    "mip_rel_gap": 1e-7,
    "mip_abs_gap": 1e-10,
    "mip_heuristic_run_rens": False,  # the RENS sub-MIP took about half the time of small programs, for no better bounds
    "threads": 1,
    "random_seed": 0,
    "presolve": True,
}


@dataclass
class _Solve:
    """One MILP: status ("optimal", "infeasible", "node", "time", "error"), the certified bound and
    the incumbent's objective (scaled units; inf when infeasible / none), the decoded point, nodes."""

    status: str
    bound: float
    obj: float
    x: np.ndarray | None
    nodes: int
    elastic: bool = False


class _Program:
    """The big-M MILP of one point, without the target's margin row.

    Columns: the scaled input perturbation (linf: e (d) then t; l1: e+ (d), e- (d)), then one (a, s)
    pair per unstable neuron. `out` / `out0` express the logits as out @ v + out0. With `tighten`,
    the bounds of every hidden layer after the first are intersected with the LP relaxation of the
    layers before it (two LPs per neuron CROWN leaves unstable), as in MIPVerify.
    """

    def __init__(self, net: Network, x: np.ndarray, radius: float, bounds: list[tuple[np.ndarray, np.ndarray]], norm: str,
                 tighten: bool = True) -> None:
        self.x, self.radius, self.norm = x, float(radius), norm
        d = net.n_in
        self.d = d
        affs = net.affines
        n_in = d + 1 if norm == "linf" else 2 * d
        n_max = n_in + 2 * sum(int(np.count_nonzero((lo < 0) & (hi > 0))) for lo, hi in bounds)
        R = self.radius
        H = np.zeros((d, n_max))
        H[:, :d] = R * np.eye(d)
        if norm == "l1":
            H[:, d:2 * d] = -R * np.eye(d)
        h0 = np.array(x, dtype=np.float64)
        lb = np.zeros(n_max)
        ub = np.ones(n_max)
        if norm == "linf":
            lb[:d] = -1.0
        integrality = np.zeros(n_max, dtype=np.int8)
        rows: list[np.ndarray] = []
        lo_r: list[np.ndarray] = []
        hi_r: list[np.ndarray] = []
        if norm == "linf":  # e_j - t <= 0 and e_j + t >= 0
            A = np.zeros((2 * d, n_max))
            A[:d, :d] = np.eye(d)
            A[:d, d] = -1.0
            A[d:, :d] = np.eye(d)
            A[d:, d] = 1.0
            rows.append(A)
            lo_r.append(np.r_[np.full(d, -np.inf), np.zeros(d)])
            hi_r.append(np.r_[np.zeros(d), np.full(d, np.inf)])
            self.ball_row = -1
        else:  # sum(e+ + e-) <= cutoff (set per solve)
            A = np.zeros((1, n_max))
            A[0, :2 * d] = 1.0
            rows.append(A)
            lo_r.append(np.array([-np.inf]))
            hi_r.append(np.array([1.0]))
            self.ball_row = 0
        col = n_in
        self.n_lp = 0
        for i, (layer, (lo, hi)) in enumerate(zip(affs[:-1], bounds, strict=True)):
            Z = layer.W @ H
            z0 = layer.W @ h0 + layer.b
            lo, hi = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
            if tighten and i > 0:
                self._tighten(Z[:, :col], z0, lo, hi, np.vstack(rows)[:, :col], np.concatenate(lo_r), np.concatenate(hi_r),
                              lb[:col], ub[:col])
            width = Z.shape[0]
            Hn = np.zeros((width, n_max))
            hn = np.zeros(width)
            act = lo >= 0
            Hn[act] = Z[act]
            hn[act] = z0[act]
            unst = np.flatnonzero((lo < 0) & (hi > 0))
            m = unst.size
            if m:
                a = col + 2 * np.arange(m)
                s = a + 1
                col += 2 * m
                Hn[unst, a] = 1.0
                ub[a] = hi[unst]
                integrality[s] = 1
                r = np.arange(m)
                # a - z >= z0
                A1 = -Z[unst]
                A1[r, a] += 1.0
                # a - z - l s <= z0 - l
                A2 = -Z[unst]
                A2[r, a] += 1.0
                A2[r, s] -= lo[unst]
                # a - u s <= 0
                A3 = np.zeros((m, n_max))
                A3[r, a] = 1.0
                A3[r, s] = -hi[unst]
                rows += [A1, A2, A3]
                lo_r += [z0[unst], np.full(m, -np.inf), np.full(m, -np.inf)]
                hi_r += [np.full(m, np.inf), z0[unst] - lo[unst], np.zeros(m)]
            H, h0 = Hn, hn
        self.n_var = col
        self.n_unstable = (col - n_in) // 2
        last = affs[-1]
        self.out = (last.W @ H)[:, :col]
        self.out0 = last.W @ h0 + last.b
        self.A = sp.csr_matrix(np.vstack(rows)[:, :col])
        self.A_lo = np.concatenate(lo_r)
        self.A_hi = np.concatenate(hi_r)
        self.lb, self.ub, self.integrality = lb[:col], ub[:col], integrality[:col]
        self.cost = np.zeros(col)
        if norm == "linf":
            self.cost[d] = 1.0
        else:
            self.cost[:2 * d] = 1.0

    def _tighten(self, Z: np.ndarray, z0: np.ndarray, lo: np.ndarray, hi: np.ndarray, A: np.ndarray, A_lo: np.ndarray,
                 A_hi: np.ndarray, lb: np.ndarray, ub: np.ndarray) -> None:
        """Intersect [lo, hi] (in place) with min / max of Z v + z0 over the LP relaxation so far.

        Each LP value is widened by 1e-6 (1 + |value|) for HiGHS' tolerances before it is used.
        """
        cons = LinearConstraint(sp.csr_matrix(A), A_lo, A_hi)
        bnds = Bounds(lb, ub)
        opts = {key: _HIGHS[key] for key in ("primal_feasibility_tolerance", "dual_feasibility_tolerance", "threads", "random_seed")}
        for j in np.flatnonzero((lo < 0) & (hi > 0)):
            for sign in (1.0, -1.0):
                res = _milp(sign * Z[j], cons, np.zeros(Z.shape[1], dtype=np.int8), bnds, {**opts, "presolve": True})
                self.n_lp += 1
                if int(res.status) != 0 or res.fun is None:
                    continue
                v = sign * float(res.fun) + float(z0[j])
                slack = 1e-6 * (1.0 + abs(v))
                if sign > 0:
                    lo[j] = max(lo[j], v - slack)
                else:
                    hi[j] = min(hi[j], v + slack)
                if not (lo[j] < 0 < hi[j]):
                    break

    def point(self, v: np.ndarray) -> np.ndarray:
        """The input x + R e decoded from a solution vector."""
        e = v[:self.d] if self.norm == "linf" else v[:self.d] - v[self.d:2 * self.d]
        out: np.ndarray = self.x + self.radius * e
        return out

    def solve(self, k: int, y: int, margin: float, cutoff: float, node_limit: int, time_limit: float, elastic: bool = True) -> _Solve:
        """Minimise the scaled distance to a point with z_k - z_y >= margin within the scaled `cutoff` (<= 1).

        When HiGHS stops at a limit without an incumbent, scipy reports no dual bound (bound 0); with
        `elastic` the program is then re-solved with an elastic margin (z_k - z_y + sigma >= margin, sigma >= 0 at cost P per
        logit unit), which always has a solution, and its dual bound is a bound of the original
        (every point of the original is a point of the elastic program with sigma = 0).
        """
        row = self.out[k] - self.out[y]
        const = float(self.out0[k] - self.out0[y])
        lb, ub = self.lb.copy(), self.ub.copy()
        A_hi = self.A_hi.copy()
        c = float(cutoff)
        if self.norm == "linf":
            lb[:self.d], ub[:self.d] = -c, c
            ub[self.d] = c
        else:
            ub[:2 * self.d] = c
            A_hi[self.ball_row] = c
        A = sp.vstack([self.A, sp.csr_matrix(row[None, :])], format="csr")
        cons = LinearConstraint(A, np.r_[self.A_lo, margin - const], np.r_[A_hi, np.inf])
        opts = {**_HIGHS, "node_limit": int(node_limit), "time_limit": float(time_limit)}
        res, limit, n_nodes = self._run(self.cost, cons, self.integrality, Bounds(lb, ub), opts)
        if limit == "infeasible":
            return _Solve("infeasible", np.inf, np.inf, None, n_nodes)
        if limit == "error":
            return _Solve("error", 0.0, np.inf, None, n_nodes)
        dual = res.get("mip_dual_bound")
        if res.get("x") is not None and res.get("fun") is not None:
            fun = float(res.fun)
            bound = float(dual) if dual is not None and np.isfinite(dual) else (fun if limit == "optimal" else 0.0)
            return _Solve(limit, min(bound, fun), fun, self.point(np.asarray(res.x)), n_nodes)
        if not elastic:
            return _Solve(limit, 0.0, np.inf, None, n_nodes)
        # a limit without an incumbent: the elastic program (one more column sigma, in the margin row)
        deficit = max(margin - const, 0.0)
        penalty = float(np.clip(1e3 / max(deficit, 1e-12), 1.0, 1e9))
        col = sp.csr_matrix(([1.0], ([A.shape[0] - 1], [0])), shape=(A.shape[0], 1))
        cons_e = LinearConstraint(sp.hstack([A, col], format="csr"), cons.lb, cons.ub)
        res_e, limit_e, nodes_e = self._run(np.r_[self.cost, penalty], cons_e, np.r_[self.integrality, 0].astype(np.int8),
                                            Bounds(np.r_[lb, 0.0], np.r_[ub, np.inf]), opts)
        n_nodes += nodes_e
        if limit_e == "time":
            limit = "time"
        dual = res_e.get("mip_dual_bound")
        if limit_e == "error" or res_e.get("x") is None:
            return _Solve(limit, 0.0, np.inf, None, n_nodes, elastic=True)
        fun = float(res_e.fun)
        bound = float(dual) if dual is not None and np.isfinite(dual) else (fun if limit_e == "optimal" else 0.0)
        v = np.asarray(res_e.x)
        if v[-1] <= 1e-9 * (1.0 + abs(margin)):  # sigma = 0: a point of the original program
            t = float(self.cost @ v[:-1])
            return _Solve(limit, min(bound, t), t, self.point(v[:-1]), n_nodes, elastic=True)
        return _Solve(limit, min(bound, fun), np.inf, None, n_nodes, elastic=True)

    @staticmethod
    def _run(cost: np.ndarray, cons: LinearConstraint, integrality: np.ndarray, bounds: Bounds, opts: dict[str, Any]) -> tuple[Any, str, int]:
        """One HiGHS run: (result, "optimal" / "infeasible" / "node" / "time" / "error", nodes used)."""
        t0 = time.perf_counter()
        res = _milp(cost, cons, integrality, bounds, opts)
        elapsed = time.perf_counter() - t0
        status = int(res.status)
        msg = str(res.get("message", "")).lower()
        nodes = res.get("mip_node_count")
        if status == 0:
            kind = "optimal"
        elif status == 2:
            kind = "infeasible"
        elif "time limit" in msg or elapsed >= float(opts["time_limit"]):
            kind = "time"
        elif status in (1, 4) and ("solution limit" in msg or "iteration limit" in msg or "node" in msg):
            kind = "node"
        else:
            kind = "error"
        if nodes is not None:
            n = max(int(nodes), 1)
        else:
            n = int(opts["node_limit"]) if kind == "node" else 1
        return res, kind, n


def _milp(c: np.ndarray, cons: LinearConstraint, integrality: np.ndarray, bounds: Bounds, opts: dict[str, Any]) -> Any:
    """scipy's milp with HiGHS options passed verbatim (its warning about untyped keys silenced)."""
    opts = {key: val for key, val in opts.items() if val is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # Any: the stubs tie a solution x to status 0, but a limit (status 1 or 4) can return one too
        return milp(c, constraints=cons, integrality=integrality, bounds=bounds, options=cast(Any, opts))


def _distance(x: np.ndarray, xa: np.ndarray, norm: str) -> float:
    diff = np.abs(np.asarray(xa, dtype=np.float64) - x)
    return float(diff.max() if norm == "linf" else diff.sum())


def _first_flip(model: Model, y: int, path: Callable[[np.ndarray], np.ndarray], ts: np.ndarray) -> np.ndarray | None:
    """The point of `path(t)` at the first t of the increasing grid `ts` that the model's predict flips
    off class y, the bracket before it refined by three 16-point grids; None when none flips."""
    cand = path(ts)
    flip = np.all(np.isfinite(cand), axis=1) & (np.asarray(model.predict(np.nan_to_num(cand))) != y)
    if not flip.any():
        return None
    j = int(np.argmax(flip))
    best = cand[j]
    lo, hi = (ts[j - 1], ts[j]) if j > 0 else (ts[0], ts[0])
    for _ in range(3):
        if hi <= lo:
            break
        grid = np.linspace(lo, hi, 17)[1:-1]
        cand = path(grid)
        flip = np.all(np.isfinite(cand), axis=1) & (np.asarray(model.predict(np.nan_to_num(cand))) != y)
        if not flip.any():
            break
        j = int(np.argmax(flip))
        best = cand[j]
        lo, hi = (grid[j - 1] if j > 0 else lo), grid[j]
    out: np.ndarray = np.array(best, dtype=np.float64)
    return out


@dataclass
class _PointResult:
    lower: float = 0.0
    exact: bool = False
    x_adv: np.ndarray | None = None
    dist: float = np.inf
    reason: str = ""
    work: int = 0
    timed_out: bool = False


def _keep(x: np.ndarray, xa: np.ndarray, norm: str, out: _PointResult) -> None:
    """Record the flipping point xa in `out` when it is nearer than the one there."""
    dist = _distance(x, xa, norm)
    if dist < out.dist:
        out.x_adv, out.dist = xa, dist


class ReluMilpCertifier(Certifier):
    """Exact minimal linf / l1 adversarial radius of a ReLU network, or a certified dual bound (MIPVerify on HiGHS).

    node_limit: HiGHS branch-and-bound nodes per MILP (one MILP per target class, plus witness
        re-solves), the deterministic work budget; ConfigError unless a whole number > 0.
    time_limit: seconds per MILP, a safety net only (hits are reported in `flags`); > 0.
    tighten: intersect the CROWN bounds of every hidden layer after the first with LP bounds over
        the relaxation of the layers before it (fewer unstable neurons, a tighter relaxation).
    shrink_steps: box-shrinking MILPs per target whose MILP stops at a limit (0: none, and the
        elastic re-solve gives the bound instead); see the module docstring.
    """

    name = "milp"
    norms = NORMS
    complete = True

    def __init__(self, node_limit: int = 2000, time_limit: float = 60.0, tighten: bool = True, shrink_steps: int = 4) -> None:
        self.node_limit = work_budget("milp", "node_limit", node_limit)
        tl: Any = time_limit  # checked at run time: callers pass configuration values
        if isinstance(tl, bool) or not isinstance(tl, (int, float, np.integer, np.floating)) or not tl > 0:
            raise ConfigError(f"milp: time_limit must be a number of seconds > 0, got {time_limit!r}")
        self.time_limit = float(time_limit)
        if not isinstance(tighten, (bool, np.bool_)):
            raise ConfigError(f"milp: tighten must be True or False, got {tighten!r}")
        self.tighten = bool(tighten)
        steps: Any = shrink_steps
        self.shrink_steps = 0 if (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps == 0) \
            else work_budget("milp", "shrink_steps", steps)

    def __repr__(self) -> str:
        return f"ReluMilpCertifier(node_limit={self.node_limit}, time_limit={self.time_limit:g}, tighten={self.tighten}, shrink_steps={self.shrink_steps})"

    def _network(self, model: Model) -> Network | str:
        """The model's ReLU network, or why there is none."""
        from .network import network_of

        net = network_of(model)
        if isinstance(net, str):
            return f"milp: {net}"
        kinds = sorted({layer.kind for layer in net.layers if isinstance(layer, Activation)} - {"relu"})
        if kinds:
            return (f"milp: needs a ReLU network, this one has {', '.join(kinds)} activations "
                    "(the big-M encoding is exact only for piecewise-linear ReLU)")
        return net

    def refuses(self, model: Model) -> str | None:
        net = self._network(model)
        return net if isinstance(net, str) else None

    def certify(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, upper: np.ndarray) -> Certificate:
        if norm not in NORMS:
            extra = " (l2 needs a mixed-integer quadratic program, which HiGHS does not solve)" if norm == "l2" else ""
            raise ConfigError(f"milp: certifies the norms {', '.join(NORMS)}, got {norm!r}{extra}")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64).ravel()
        up = np.asarray(upper, dtype=np.float64).ravel()
        if X.ndim != 2 or y.shape[0] != X.shape[0] or up.shape[0] != X.shape[0]:
            raise ConfigError(f"milp: X must be (n, d) with n labels and n upper bounds, got X {X.shape}, y {y.shape}, upper {up.shape}")
        cert = Certificate.empty(X)
        n = X.shape[0]
        if n == 0:
            return cert
        net = self._network(model)
        if isinstance(net, str):
            cert.reason[:] = net
            return cert
        from .crown import layer_bounds, rounding_bound

        pred = np.asarray(model.predict(X))
        todo = np.zeros(n, dtype=bool)
        for i in range(n):
            if not np.isfinite(up[i]):
                cert.reason[i] = NO_UPPER
            elif pred[i] != y[i]:
                cert.reason[i] = "the model misclassifies the clean point"
            elif up[i] <= 0:
                cert.reason[i] = "upper bound is 0"
            else:
                todo[i] = True
        idx = np.flatnonzero(todo)
        if idx.size == 0:
            return cert
        bounds = layer_bounds(net, X[idx], up[idx], norm, method="crown")
        delta = np.asarray(rounding_bound(net, X[idx], up[idx], norm), dtype=np.float64)
        timed = 0
        for j, i_np in enumerate(idx):
            i = int(i_np)
            if not (np.isfinite(delta[j]) and delta[j] >= 0):
                cert.reason[i] = "rounding-error bound is not finite"
                continue
            point_bounds = [(np.asarray(lo[j], dtype=np.float64), np.asarray(hi[j], dtype=np.float64)) for lo, hi in bounds]
            r = self._point(model, net, X[i], int(y[i]), float(up[i]), float(delta[j]), point_bounds, norm)
            cert.lower[i] = r.lower
            cert.exact[i] = r.exact
            cert.method[i] = "milp"
            cert.reason[i] = r.reason
            cert.work[i] = r.work
            if r.x_adv is not None:
                cert.x_witness[i] = r.x_adv
                cert.witness[i] = True
            timed += int(r.timed_out)
        if timed:
            cert.flags["milp_time_limit"] = (f"{timed} of {n} points hit the {self.time_limit:g} s per-MILP safety-net time limit; "
                                             "their bounds are HiGHS' dual bounds at that moment (sound, machine-dependent)")
        return cert

    def _shrink(self, net: Network, model: Model, x: np.ndarray, k: int, y: int, R: float, delta: float, norm: str,
                lo: float, hi: float, scale: float, out: _PointResult) -> float:
        """Raise target k's bound `lo` (scaled by R) by MILPs on smaller boxes of radius rho R, rho in (lo, hi).

        Each box gets its own CROWN (and LP) bounds, far tighter than over the radius-R ball. A box
        infeasible for the -delta margin proves lo = rho; an optimum inside it is the target's
        optimum; a limit proves min(rho, rho * dual bound) and, with an incumbent, lowers hi. The
        next rho bisects (lo, hi) (hi = rho after a limit without an incumbent).
        """
        from .crown import layer_bounds

        for _ in range(self.shrink_steps):
            if hi - lo <= 1e-6 * hi:
                break
            rho = 0.5 * (lo + hi)
            lb = layer_bounds(net, x[None], np.array([rho * R]), norm, method="crown")
            sub = _Program(net, x, rho * R, [(np.asarray(a[0], dtype=np.float64), np.asarray(b[0], dtype=np.float64)) for a, b in lb],
                           norm, tighten=self.tighten)
            r = sub.solve(k, y, -delta, 1.0, self.node_limit, self.time_limit, elastic=False)
            out.work += r.nodes
            out.timed_out |= r.status == "time"
            if r.status == "infeasible":
                lo = rho
                continue
            if r.status == "error":
                hi = rho
                continue
            lo = max(lo, min(r.bound, 1.0) * rho)
            if r.x is None:
                hi = rho
                continue
            hi = min(hi, r.obj * rho)
            if r.obj * rho < out.dist / R:
                self._witness(sub, model, k, y, r.x, scale, out)
            if r.status == "optimal":
                break
        return lo

    def _witness(self, prog: _Program, model: Model, k: int, y: int, xa: np.ndarray, scale: float, out: _PointResult) -> None:
        """The nearest flipping point found from the solution `xa` of target k's -delta program (into `out`).

        First the ray from x through xa, stretched by 1 + eps (eps from 1e-10 to 0.1, the first
        flipping eps refined): the optimum sits on the margin -delta, and the model's own arithmetic
        flips just beyond it. Then re-solves with a positive guard margin, each followed by the same
        search on the segment from xa to the guarded solution.
        """
        x, norm = prog.x, prog.norm
        ray = xa - x
        hit = _first_flip(model, y, lambda t: x[None, :] + (1.0 + t)[:, None] * ray[None, :], np.r_[0.0, np.geomspace(1e-10, 0.1, 46)])
        if hit is not None:
            _keep(x, hit, norm, out)
            return
        for g in GUARDS:
            cut = min(1.0, out.dist / prog.radius)
            sg = prog.solve(k, y, g * scale, cut, self.node_limit, self.time_limit)
            out.work += sg.nodes
            out.timed_out |= sg.status == "time"
            if sg.x is None:
                return
            seg = sg.x - xa

            def on_segment(t: np.ndarray, seg: np.ndarray = seg) -> np.ndarray:
                out: np.ndarray = xa[None, :] + t[:, None] * seg[None, :]
                return out

            hit = _first_flip(model, y, on_segment, np.r_[0.0, np.geomspace(1e-8, 1.0, 41)])
            if hit is not None:
                _keep(x, hit, norm, out)
                return
            log.debug("milp: decoded point does not flip the model (guard %.3g); retrying with a larger guard", g)

    def _point(self, model: Model, net: Network, x: np.ndarray, y: int, R: float, delta: float,
               bounds: list[tuple[np.ndarray, np.ndarray]], norm: str) -> _PointResult:
        """Every target MILP of one point, nearest first, with witness re-solves."""
        out = _PointResult()
        prog = _Program(net, x, R, bounds, norm, tighten=self.tighten)
        clean = net.forward(x[None])[0]
        scale = max(float(np.max(np.abs(clean))), 1e-12)
        targets = sorted((k for k in range(net.n_out) if k != y), key=lambda k: (-clean[k], k))
        cutoff = 1.0  # scaled: the ball of radius R
        lows: list[float] = []
        statuses: list[_Solve] = []
        shrunk = False
        for k in targets:
            s = prog.solve(k, y, -delta, cutoff, self.node_limit, self.time_limit, elastic=self.shrink_steps == 0)
            out.work += s.nodes
            statuses.append(s)
            low = min(s.bound, cutoff)
            if s.x is not None and s.obj < out.dist / R:
                self._witness(prog, model, k, y, s.x, scale, out)
            if s.status in ("node", "time") and self.shrink_steps:
                raised = self._shrink(net, model, x, k, y, R, delta, norm, low, min(cutoff, s.obj), scale, out)
                shrunk |= raised > low
                low = raised
            lows.append(low)
            cutoff = min(cutoff, out.dist / R) if np.isfinite(out.dist) else min(cutoff, s.obj)
        lower = max(0.0, min(lows)) * R * (1.0 - REL_TOL) if lows else 0.0
        if lower > R:
            lower = R
        if lower > out.dist:
            log.warning("milp: bound %.17g above the verified witness at %.17g; reporting the witness distance", lower, out.dist)
            lower = out.dist
        out.lower = lower
        out.exact = out.x_adv is not None and out.dist <= lower * (1.0 + EXACT_RTOL)
        out.timed_out |= any(s.status == "time" for s in statuses)
        kinds = {s.status for s in statuses}
        how = "bound from box shrinking" if shrunk else "dual bound"
        if "time" in kinds:
            out.reason = f"time limit: {how}"
        elif "node" in kinds:
            out.reason = f"node limit: {how}"
        elif "error" in kinds:
            out.reason = "solver error on a target: bound 0"
        elif kinds == {"infeasible"}:
            out.reason = "every target infeasible within the box: bound = its radius"
        elif out.exact:
            out.reason = "optimal"
        elif out.x_adv is None:
            out.reason = "optimal bound; no decoded point flips the model"
        else:
            out.reason = f"optimal bound; nearest flipping point found {out.dist / max(lower, 1e-300) - 1:.2g} farther"
        return out


__all__ = ["NO_UPPER", "ReluMilpCertifier"]
