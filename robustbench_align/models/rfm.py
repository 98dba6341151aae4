"""Recursive Feature Machines (RFM) and Recursive Feature Alignment Machines (RFAM).

Both are Laplace–Mahalanobis kernel ridge classifiers whose metric M is learned by repeated
average-gradient-outer-product (AGOP) updates (Radhakrishnan et al. 2024, "Mechanism for feature
learning in neural networks and backpropagation-free machine learning models", Science 383:1461):

    K_M(x, z) = exp(-||x - z||_M / L),   ||u||_M = sqrt(max(u^T M u, 0))
    f(x)      = K_M(x, X) A,             A = (K_M(X, X) + reg I)^{-1} Y   (Y one-hot)
    M0        = (1 - alpha) cov(X) + alpha I, scaled to trace d
    M_{t+1}   = AGOP_t = mean_x grad f(x)^T grad f(x), scaled to trace d

RFM starts from the identity (alpha=1); RFAM is the RFM initialised at the centred data
covariance (alpha=0; Walker et al., arXiv 2605.08464).

Design choices (all deliberate, all documented here):
- The reg grid is searched the way the reference RFAM code does it: one RFM trajectory per reg
  (each starting from M0), validation accuracy recorded for every (reg, iteration); the best pair
  is the first maximum in (grid order, iteration order). The AGOP after the last iteration is
  never evaluated, so it is not computed.
- The final model is the ridge solve with the best (M, reg) on the training split only (the
  validation rows are not refitted in), i.e. exactly the predictor whose validation accuracy was
  recorded; no extra solve is needed.
- The AGOP averages over all training points when n <= max_agop_points, else over a subset drawn
  without replacement from a local, seeded Generator.
- Distances use the Gram trick on training-mean-centred inputs. Pairs whose squared distance is
  below the Gram trick's rounding level (or whose distance is < 1e-10) count as coincident:
  distance 0, kernel 1, and no gradient contribution (the self-term of the gradient is zeroed). The torch
  path uses the same rule through a double `where`, so autograd reproduces the analytic gradient
  at training points too.
- Before allocating anything large, `fit` estimates its peak memory (`fit_memory_bytes`: the d x d
  metrics grow with the square of the feature count, the kernel with the square of the rows) and
  refuses with a one-line ResourceError above `guards.memory_limit()` ($RBA_MEMORY_LIMIT_GB, else
  half the available memory).
- `predict_proba` is the softmax of the raw kernel outputs (they are not probabilities);
  `predict` is the argmax of the raw outputs, ties to the lowest index.

All heavy work runs in torch (one BLAS per hot path), batched as matrix products and chunked over
query points to bound memory; the n x n system is solved by Cholesky with an LU fallback.
"""
from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import DataError, ModelError
from ..guards import check_memory
from .base import FittedModel, argmax_rows, check_features, check_training_data, softmax_rows
from .constraints import Check, Constraint, Integer, Options, Real, is_number
from .dtypes import DTYPES, torch_dtype

log = logging.getLogger(__name__)

STATE_FILE = "rfm.npz"
_ABS_TOL_SQ = 1e-20  # (1e-10)^2: pairs closer than 1e-10 count as coincident (no self-term)
_REL_TOL = 8.0  # multiples of sqrt(d) * eps * (||x||_M^2 + max ||z||_M^2): Gram-trick rounding level
_CHUNK_ELEMS = 1 << 23  # elements of one (query chunk x n) block (64 MB in float64)


def _torch() -> Any:
    """The torch module, imported on first use (importing this module stays cheap)."""
    import torch

    return torch


# ----------------------------------------------------------------------------------------
# Kernel primitives (torch). Z are the centred training inputs, ZM = Z @ M, nz = ||z||_M^2.
# ----------------------------------------------------------------------------------------
def _sq_dist(QM: Any, nq: Any, Z: Any, nz: Any) -> Any:
    """Squared M-distances (m, n) by the Gram trick: ||q||_M^2 + ||z||_M^2 - 2 q^T M z."""
    torch = _torch()
    return torch.addmm(nz.unsqueeze(0), QM, Z.T, beta=1, alpha=-2).add_(nq.unsqueeze(1))


def _near_tol(nq: Any, nz_max: float, d: int) -> Any:
    """Per-row squared-distance level at or below which a pair counts as coincident, shape (m, 1)."""
    torch = _torch()
    eps = torch.finfo(nq.dtype).eps
    return (nq.clamp(min=0) + nz_max).mul_(_REL_TOL * math.sqrt(d) * eps).add_(_ABS_TOL_SQ).unsqueeze(1)


def _kernel_block(Q: Any, M: Any, Z: Any, nz: Any, nz_max: float, L: float, self_index: Any = None, weights: bool = False) -> tuple[Any, Any]:
    """(K, QM) for centred query rows Q, or (W, QM) with W = K/dist when `weights` (no autograd).

    K = exp(-dist/L) with coincident pairs at distance 0 (K = 1); W zeroes coincident pairs.
    `self_index` (optional, length m) names the training row each query row is, so that self-pairs
    are coincident even if rounding put them above the tolerance.
    """
    torch = _torch()
    QM = Q @ M
    nq = (Q * QM).sum(1)
    sq = _sq_dist(QM, nq, Z, nz)
    near = sq <= _near_tol(nq, nz_max, Q.shape[1])
    if self_index is not None:
        near[torch.arange(Q.shape[0]), self_index] = True
    dist = sq.sqrt_()  # negative entries become NaN; they are all coincident and overwritten next
    if weights:
        dist.masked_fill_(near, math.inf)
        return torch.exp(dist * (-1.0 / L)).div_(dist), QM  # exp(-inf)/inf = 0 at coincident pairs
    return dist.masked_fill_(near, 0.0).mul_(-1.0 / L).exp_(), QM


def _gradient_block(Q: Any, M: Any, Z: Any, nz: Any, nz_max: float, L: float, A: Any, C: Any, self_index: Any = None) -> Any:
    """Exact input gradients (m, c, d) of f = K_M(., X) A at centred rows Q (coincident pairs contribute nothing).

    grad f_k(x) = -(1/L) sum_i A_ik K_i / dist_i * M (x - x_i) = (1/L) [sum_i W_i A_ik M x_i - (W A)_k M x],
    computed as two matrix products; C = (A[:, :, None] * ZM[:, None, :]).reshape(n, c*d).
    """
    W, QM = _kernel_block(Q, M, Z, nz, nz_max, L, self_index, weights=True)
    m, d = Q.shape
    c = A.shape[1]
    B = W @ A  # (m, c)
    G = (W @ C).view(m, c, d)
    G.sub_(B.unsqueeze(2) * QM.unsqueeze(1)).mul_(1.0 / L)
    return G


def _kernel_matrix(Z: Any, ZM: Any, nz: Any, nz_max: float, L: float) -> Any:
    """Training kernel K_M(X, X) (n, n), built in row chunks into one buffer (bounded temporaries)."""
    torch = _torch()
    n, d = Z.shape
    K = torch.empty((n, n), dtype=Z.dtype)
    step = max(1, _CHUNK_ELEMS // max(n, 1))
    for s in range(0, n, step):
        e = min(n, s + step)
        blk = K[s:e]
        torch.addmm(nz.unsqueeze(0), ZM[s:e], Z.T, beta=1, alpha=-2, out=blk)
        blk.add_(nz[s:e].unsqueeze(1))
        near = blk <= _near_tol(nz[s:e], nz_max, d)
        near[torch.arange(e - s), torch.arange(s, e)] = True
        blk.sqrt_().masked_fill_(near, 0.0).mul_(-1.0 / L).exp_()
    return K


def _ridge_solve(build: Callable[[], Any], reg: float, Y: Any) -> Any:
    """Solve (K + reg I) A = Y with K = build(): in-place Cholesky, then LU, then least squares.

    The Cholesky factor overwrites K (factoring the column-major view K.T, which equals K), so the
    solve needs no second n x n buffer. If K + reg I is not numerically positive definite the
    kernel is rebuilt and solved by LU (then least squares if singular).
    """
    torch = _torch()
    K = build()
    K.diagonal().add_(reg)
    Lf = K.T  # column-major view; K is symmetric
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(Lf, upper=False, out=(Lf, info))
    if int(info) == 0:
        # two triangular solves: much faster here than cholesky_solve on a row-major factor
        z = torch.linalg.solve_triangular(Lf, Y, upper=False)
        return torch.linalg.solve_triangular(Lf.T, z, upper=True)
    del K, Lf
    log.debug("kernel system not positive definite (reg=%g); falling back to LU", reg)
    K = build()
    K.diagonal().add_(reg)
    A, info = torch.linalg.solve_ex(K, Y)
    if int(info) == 0 and bool(torch.isfinite(A).all()):
        return A
    log.warning("kernel system singular (reg=%g); using least squares", reg)
    return torch.linalg.lstsq(K, Y, driver="gelsd").solution


def fit_memory_bytes(n: int, n_val: int, d: int, k: int, n_regs: int, iters: int, itemsize: int = 8) -> float:
    """Estimated peak bytes of `RFM.fit` (and of the fitted predictor's state) on n training rows, d features, k classes.

    The terms, from the largest at many features: the metric path (n_regs x iters d x d float64
    matrices kept for inspection), about ten more d x d matrices alive at once (covariance, M0,
    the current and best M, its torch copy, the AGOP accumulator and the normalisation's
    temporaries), the n x n kernel (factored in place; the rare LU fallback needs a second one, left
    to the headroom the limit keeps), about six
    (n + n_val) x d copies of the inputs, the (n, k*d) gradient coefficients of the AGOP pass and
    of the fitted state, one chunk of per-row gradients and the chunked kernel blocks.
    """
    n, n_val, d, k = int(n), int(n_val), int(d), int(k)
    chunk_rows = min(n, max(1, _CHUNK_ELEMS // max(n, 1)))
    metric = 8.0 * (n_regs * iters + 10) * d * d
    kernel = 1.0 * itemsize * n * n
    inputs = 6.0 * 8 * (n + n_val) * d
    grads = itemsize * (2.0 * n * k * d + 2.0 * chunk_rows * k * d)
    blocks = 4.0 * itemsize * _CHUNK_ELEMS
    return metric + kernel + inputs + grads + blocks


def _trace_normalise(M: np.ndarray) -> np.ndarray:
    """M * d / trace(M) when the trace exceeds 1e-10 (else M unchanged), symmetrised."""
    M = 0.5 * (M + M.T)
    tr = float(np.trace(M))
    if tr > 1e-10:
        out: np.ndarray = M * (M.shape[0] / tr)
        return out
    log.warning("feature matrix has trace %.3g <= 1e-10; left unnormalised", tr)
    return M


# ----------------------------------------------------------------------------------------
# The estimators
# ----------------------------------------------------------------------------------------
def _as_reg_list(v: Any) -> list[Any]:
    """`regs` as a list: one number, or the items of a sequence."""
    return [v] if isinstance(v, numbers.Real) else list(v)


def _is_reg_grid(v: Any) -> bool:
    """A non-empty list of finite numbers >= 0 (or one such number)."""
    regs = _as_reg_list(v)
    return bool(regs) and all(is_number(r) and r >= 0 for r in regs)


class RFM(BaseEstimator, FittedModel):  # type: ignore[misc]  # sklearn is untyped
    """Recursive Feature Machine: Laplace–Mahalanobis kernel ridge with AGOP-learned metric, M0 = I.

    `alpha` blends the initial metric between the centred covariance (0) and the identity (1).
    Fit with `fit(X, y)` (a stratified validation split of `val_size` is carved from X) or
    `fit(X, y, X_val, y_val)`. Capabilities: `predict_proba`, `torch_logits`, plus the analytic
    batched `gradient(X)`.
    """

    _fitted_attr = "A_"

    name = "rfm"

    _tstate: dict[str, Any] | None

    _param_constraints: ClassVar[dict[str, Constraint]] = {
        "alpha": Real(0, 1),
        "bandwidth": Real(0, closed="neither"),
        "iters": Integer(low=1),
        "regs": Check(_is_reg_grid, text="a non-empty list of finite numbers >= 0"),
        "max_agop_points": Integer(low=1),
        "val_size": Real(0, 1, closed="neither"),
        "dtype": Options(*DTYPES),
        "max_direct_n": Integer(low=2),
    }

    def __init__(
        self,
        alpha: float = 1.0,
        bandwidth: float = 10.0,
        iters: int = 5,
        regs: tuple[float, ...] = (10.0, 1.0, 0.1, 1e-2, 1e-3),
        max_agop_points: int = 20000,
        val_size: float = 0.2,
        dtype: str = "float64",
        max_direct_n: int = 30000,
        random_state: int | None = 0,
    ):
        self.alpha = alpha
        self.bandwidth = bandwidth
        self.iters = iters
        self.regs = regs
        self.max_agop_points = max_agop_points
        self.val_size = val_size
        self.dtype = dtype
        self.max_direct_n = max_direct_n
        self.random_state = random_state

    def _reg_grid(self) -> list[float]:
        """The ridge regularisers to search, as floats (`regs` may be one number; checked by _check_params)."""
        return [float(r) for r in _as_reg_list(self.regs)]

    # --- fitting ------------------------------------------------------------------------
    def _split(self, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Stratified train/validation split of (X, y) with this estimator's val_size."""
        from sklearn.model_selection import train_test_split

        n = X.shape[0]
        n_val = math.ceil(self.val_size * n)
        if n_val < 1 or n - n_val < 2:
            raise DataError(
                f"{type(self).__name__}: {n} rows are too few to carve a validation split of {self.val_size}; "
                "pass X_val/y_val or more rows"
            )
        seed = int(rng.integers(0, 2**31 - 1))
        _, counts = np.unique(y, return_counts=True)
        strat = y if counts.min() >= 2 and n_val >= counts.size and n - n_val >= counts.size else None
        if strat is None:
            log.info("validation split not stratified: a class has fewer than 2 rows or the split is smaller than the class count")
        Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=n_val, random_state=seed, stratify=strat)
        return Xtr, ytr, Xva, yva

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> RFM:
        """Learn M by AGOP iterations, selecting (iteration, reg) by validation accuracy; returns self."""
        torch = _torch()
        self._check_params()
        regs = self._reg_grid()
        who = type(self).__name__
        X, y, k = check_training_data(X, y, f"{who}.fit")
        rng = np.random.default_rng(self.random_state)
        if (X_val is None) != (y_val is None):
            raise DataError(f"{who}.fit: pass both X_val and y_val, or neither")
        if X_val is None:
            Xtr, ytr, Xva, yva = self._split(X, y, rng)
        else:
            Xva = check_features(X_val, X.shape[1], who=f"{who}.fit(X_val)")
            yva = np.asarray(y_val)
            if yva.ndim != 1 or yva.shape[0] != Xva.shape[0] or yva.size == 0:
                raise DataError(f"{who}.fit: y_val must be 1-D with {Xva.shape[0]} labels, got shape {yva.shape}")
            if (
                not np.issubdtype(yva.dtype, np.number)
                or not np.all(np.isfinite(yva))
                or np.any(yva != np.round(yva))
                or yva.min() < 0
            ):
                raise DataError(f"{who}.fit: y_val labels must be integers 0..K-1")
            yva = yva.astype(np.int64)
            k = max(k, int(yva.max()) + 1)
            Xtr, ytr = X, y
        n, d = Xtr.shape
        if n < 2:
            raise DataError(f"{who}.fit: the training split has {n} row; need at least 2")
        if n > self.max_direct_n:
            raise ModelError(
                f"{who}.fit: the training split has {n} rows > max_direct_n={self.max_direct_n} (the direct solve needs an "
                f"{n}x{n} kernel matrix); subsample the data or raise max_direct_n"
            )

        itemsize = 8 if self.dtype == "float64" else 4
        need = fit_memory_bytes(n, Xva.shape[0], d, k, len(regs), int(self.iters), itemsize)
        check_memory(need, f"{who}.fit on {n} rows x {d} features x {k} classes ({len(regs)} regs x {self.iters} iters)",
                     hint="use fewer features (its d x d metrics grow with the square), fewer regs or iters")

        tdt = torch_dtype(self.dtype)
        center = Xtr.mean(axis=0)
        Zc = Xtr - center
        cov = (Zc.T @ Zc) / (n - 1)
        M0 = _trace_normalise((1.0 - float(self.alpha)) * cov + float(self.alpha) * np.eye(d))

        Z = torch.as_tensor(Zc, dtype=tdt)
        Zv = torch.as_tensor(Xva - center, dtype=tdt)
        Y = torch.zeros((n, k), dtype=tdt)
        Y[torch.arange(n), torch.as_tensor(ytr)] = 1.0
        yva_t = torch.as_tensor(yva)
        L = float(self.bandwidth)

        m_agop = min(n, int(self.max_agop_points))
        agop_idx = None if m_agop == n else np.sort(rng.choice(n, size=m_agop, replace=False))

        history: list[dict[str, Any]] = []
        M_path = np.zeros((len(regs), int(self.iters), d, d))
        best = (-1.0, 0, 0)  # (val acc, reg index, iteration)
        best_A: Any = None
        best_M = M0
        for ri, reg in enumerate(regs):
            M = M0
            for t in range(int(self.iters)):
                M_path[ri, t] = M
                Mt = torch.as_tensor(M, dtype=tdt)
                ZM = Z @ Mt
                nz = (Z * ZM).sum(1)
                nz_max = float(nz.max().clamp(min=0))
                A = _ridge_solve(functools.partial(_kernel_matrix, Z, ZM, nz, nz_max, L), reg, Y)
                out = self._outputs(Zv, Mt, Z, nz, nz_max, L, A)
                acc = float((out.argmax(1) == yva_t).double().mean())
                history.append({"reg": reg, "iter": t, "val_acc": acc})
                log.debug("%s reg=%g iter=%d val_acc=%.4f", who, reg, t, acc)
                if acc > best[0]:
                    best, best_A, best_M = (acc, ri, t), A.clone(), M
                if t + 1 < int(self.iters):
                    M = _trace_normalise(self._agop(Z, Mt, nz, nz_max, L, A, agop_idx))

        self.n_features_in_ = d
        self.n_classes_ = k
        self.classes_ = np.arange(k)
        self.X_fit_ = np.ascontiguousarray(Xtr, dtype=np.float64)
        self.center_ = center
        self.M_init_ = M0
        self.M_ = np.asarray(best_M, dtype=np.float64)
        self.A_ = best_A.double().numpy()
        self.reg_ = regs[best[1]]
        self.best_iter_ = best[2]
        self.best_val_acc_ = best[0]
        self.history_ = history
        self.M_path_ = M_path
        self.n_agop_points_ = m_agop
        self._tstate = None
        return self

    @staticmethod
    def _outputs(Q: Any, M: Any, Z: Any, nz: Any, nz_max: float, L: float, A: Any) -> Any:
        """Raw outputs K_M(Q, X) A for centred rows Q, chunked; no autograd."""
        torch = _torch()
        m, n = Q.shape[0], Z.shape[0]
        out = torch.empty((m, A.shape[1]), dtype=Z.dtype)
        step = max(1, _CHUNK_ELEMS // max(n, 1))
        for s in range(0, m, step):
            K, _ = _kernel_block(Q[s : s + step], M, Z, nz, nz_max, L)
            torch.mm(K, A, out=out[s : s + step])
        return out

    @staticmethod
    def _agop(Z: Any, M: Any, nz: Any, nz_max: float, L: float, A: Any, idx: np.ndarray | None) -> np.ndarray:
        """AGOP (d, d) = mean over the chosen training rows of grad f^T grad f, one fused pass per chunk."""
        torch = _torch()
        n, d = Z.shape
        c = A.shape[1]
        ZM = Z @ M
        C = (A.unsqueeze(2) * ZM.unsqueeze(1)).reshape(n, c * d)
        rows = torch.arange(n) if idx is None else torch.as_tensor(idx)
        acc = torch.zeros((d, d), dtype=Z.dtype)
        step = max(1, _CHUNK_ELEMS // max(n, 1))
        for s in range(0, rows.shape[0], step):
            r = rows[s : s + step]
            G = _gradient_block(Z[r], M, Z, nz, nz_max, L, A, C, self_index=r).reshape(-1, d)
            acc.addmm_(G.T, G)
        agop: np.ndarray = (acc / rows.shape[0]).double().numpy()
        return agop

    # --- fitted state -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """Torch tensors of the fitted predictor (cached), in the fit dtype."""
        self._require_fitted()
        st = getattr(self, "_tstate", None)
        if st is None:
            torch = _torch()
            tdt = torch_dtype(self.dtype)
            Z = torch.as_tensor(self.X_fit_ - self.center_, dtype=tdt)
            M = torch.as_tensor(self.M_, dtype=tdt)
            A = torch.as_tensor(self.A_, dtype=tdt)
            ZM = Z @ M
            nz = (Z * ZM).sum(1)
            n = Z.shape[0]
            st = {
                "Z": Z, "M": M, "A": A, "nz": nz, "nz_max": float(nz.max().clamp(min=0)),
                "center": torch.as_tensor(self.center_, dtype=tdt),
                "C": (A.unsqueeze(2) * ZM.unsqueeze(1)).reshape(n, -1),
                "dtype": tdt,
            }
            self._tstate = st
        return st

    # --- Model contract --------------------------------------------------------------------
    def decision_function(self, X: Any) -> np.ndarray:
        """Raw kernel outputs K_M(X, X_fit) A, shape (n, n_classes), float64."""
        torch = _torch()
        st = self._state()
        X = self._check_X(X)
        Q = torch.as_tensor(X, dtype=st["dtype"]) - st["center"]
        with torch.no_grad():
            out = self._outputs(Q, st["M"], st["Z"], st["nz"], st["nz_max"], float(self.bandwidth), st["A"])
        raw: np.ndarray = out.double().numpy()
        return raw

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the raw outputs (a monotone map to the simplex; the outputs are not probabilities)."""
        return softmax_rows(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        """Argmax of the raw outputs, ties to the lowest class index."""
        return argmax_rows(self.decision_function(X))

    def torch_logits(self, x: Any) -> Any:
        """The fitted predictor in torch (differentiable, fit dtype): raw outputs (n, n_classes).

        Coincident pairs (distance below the Gram-trick rounding level) get distance 0 through a
        double `where`, so their gradient is exactly zero, matching the analytic self-term rule.
        """
        torch = _torch()
        st = self._state()
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ModelError(f"{self.name}: torch_logits expects shape (n, {self.n_features}), got {tuple(x.shape)}")
        Q = x.to(st["dtype"]) - st["center"]
        Z, M, nz = st["Z"], st["M"], st["nz"]
        QM = Q @ M
        nq = (Q * QM).sum(1)
        sq = nq.unsqueeze(1) + nz.unsqueeze(0) - 2.0 * (QM @ Z.T)
        near = sq <= _near_tol(nq.detach(), st["nz_max"], Q.shape[1])
        safe = torch.where(near, torch.ones_like(sq), sq)
        dist = torch.where(near, torch.zeros_like(sq), torch.sqrt(safe))
        K = torch.exp(dist * (-1.0 / float(self.bandwidth)))
        return K @ st["A"]

    def gradient(self, X: Any) -> np.ndarray:
        """Exact input gradients of the raw outputs, shape (n, n_classes, n_features), float64.

        Batched analytic formula (see `_gradient_block`; coincident pairs contribute nothing), chunked over rows.
        """
        torch = _torch()
        st = self._state()
        X = self._check_X(X)
        Q = torch.as_tensor(X, dtype=st["dtype"]) - st["center"]
        n_fit = st["Z"].shape[0]
        step = max(1, _CHUNK_ELEMS // max(n_fit, 1))
        parts = []
        with torch.no_grad():
            for s in range(0, Q.shape[0], step):
                parts.append(
                    _gradient_block(Q[s : s + step], st["M"], st["Z"], st["nz"], st["nz_max"], float(self.bandwidth), st["A"], st["C"])
                )
        if not parts:
            return np.zeros((0, self.n_classes, self.n_features))
        grads: np.ndarray = torch.cat(parts).double().numpy()
        return grads

    def agop(self, X: Any) -> np.ndarray:
        """Unnormalised AGOP (d, d) of the fitted predictor over the rows of X (mean of grad^T grad)."""
        G = self.gradient(X)
        G2 = G.reshape(-1, G.shape[2])
        agop: np.ndarray = G2.T @ G2 / max(G.shape[0], 1)
        return agop

    # --- persistence hooks ----------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        """Write the fitted state to `directory/rfm.npz` (numeric arrays only, no pickle)."""
        self._require_fitted()
        hist = self.history_
        np.savez(
            Path(directory) / STATE_FILE,
            M=np.asarray(self.M_, dtype=np.float64),
            coef=np.asarray(self.A_, dtype=np.float64),
            X_fit=self.X_fit_,
            center=self.center_,
            M_init=self.M_init_,
            bandwidth=np.float64(self.bandwidth),
            reg=np.float64(self.reg_),
            best_iter=np.int64(self.best_iter_),
            best_val_acc=np.float64(self.best_val_acc_),
            n_classes=np.int64(self.n_classes_),
            hist_reg=np.array([h["reg"] for h in hist], dtype=np.float64),
            hist_iter=np.array([h["iter"] for h in hist], dtype=np.int64),
            hist_acc=np.array([h["val_acc"] for h in hist], dtype=np.float64),
        )

    @classmethod
    def _load_state(cls, directory: Path, params: dict[str, Any]) -> RFM:
        """Rebuild a fitted estimator from `directory/rfm.npz` (allow_pickle=False) and its params."""
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise ModelError(f"{str(directory)!r}: {STATE_FILE} is missing; re-save the model")
        try:
            est = cls(**params)
        except TypeError as exc:
            raise ModelError(f"{path}: parameters do not match {cls.__name__} ({exc})") from None
        est._check_params()
        with np.load(path, allow_pickle=False) as z:
            need = {"M", "coef", "X_fit", "center", "M_init", "bandwidth", "reg", "best_iter", "n_classes"}
            missing = sorted(need - set(z.files))
            if missing:
                raise ModelError(f"{path}: missing arrays {', '.join(missing)}; the file is not an RFM state")
            arr = {k: np.asarray(z[k]) for k in z.files}
        X_fit, M, A = arr["X_fit"].astype(np.float64), arr["M"].astype(np.float64), arr["coef"].astype(np.float64)
        k = int(arr["n_classes"])
        if X_fit.ndim != 2 or X_fit.shape[0] < 1:
            raise ModelError(f"{path}: X_fit must be a 2-D array")
        n, d = X_fit.shape
        if M.shape != (d, d) or A.shape != (n, k) or arr["center"].shape != (d,) or arr["M_init"].shape != (d, d) or k < 2:
            raise ModelError(f"{path}: inconsistent array shapes; the file is corrupted")
        if not all(np.all(np.isfinite(a)) for a in (X_fit, M, A, arr["center"])):
            raise ModelError(f"{path}: non-finite values in the saved state; the file is corrupted")
        if not np.isclose(float(arr["bandwidth"]), float(est.bandwidth)):
            raise ModelError(f"{path}: saved bandwidth {float(arr['bandwidth'])} differs from the manifest's {est.bandwidth}")
        est.n_features_in_ = d
        est.n_classes_ = k
        est.classes_ = np.arange(k)
        est.X_fit_ = X_fit
        est.center_ = arr["center"].astype(np.float64)
        est.M_ = M
        est.M_init_ = arr["M_init"].astype(np.float64)
        est.A_ = A
        est.reg_ = float(arr["reg"])
        est.best_iter_ = int(arr["best_iter"])
        est.best_val_acc_ = float(arr.get("best_val_acc", np.nan))
        if {"hist_reg", "hist_iter", "hist_acc"} <= set(arr):
            est.history_ = [
                {"reg": float(r), "iter": int(t), "val_acc": float(a)}
                for r, t, a in zip(arr["hist_reg"], arr["hist_iter"], arr["hist_acc"], strict=False)
            ]
        else:
            est.history_ = []
        est._tstate = None
        return est


class RFAM(RFM):
    """Recursive Feature Alignment Machine: the RFM started at the centred data covariance (alpha=0)."""

    name = "rfam"

    def __init__(
        self,
        alpha: float = 0.0,
        bandwidth: float = 10.0,
        iters: int = 5,
        regs: tuple[float, ...] = (10.0, 1.0, 0.1, 1e-2, 1e-3),
        max_agop_points: int = 20000,
        val_size: float = 0.2,
        dtype: str = "float64",
        max_direct_n: int = 30000,
        random_state: int | None = 0,
    ):
        super().__init__(
            alpha=alpha, bandwidth=bandwidth, iters=iters, regs=regs, max_agop_points=max_agop_points,
            val_size=val_size, dtype=dtype, max_direct_n=max_direct_n, random_state=random_state,
        )


__all__ = ["RFAM", "RFM", "fit_memory_bytes"]
