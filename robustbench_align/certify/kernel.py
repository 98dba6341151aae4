"""Certified lower bounds on the minimal adversarial radius of RFM / RFAM kernel machines.

The model (Radhakrishnan et al. 2024, "Mechanism for feature learning in neural networks and
backpropagation-free machine learning models", Science 383:1461; `models.rfm`) is

    f_k(x) = sum_i A_ik phi(t_i(x)),   phi(t) = exp(-t / L),   t_i(x) = ||x - c - z_i||_M,

with centred training points z_i, centre c, metric M and bandwidth L. For a point x0 of class y
and a target k the margin is g(x) = f_y(x) - f_k(x) = sum_i c_i phi(t_i(x)), c_i = A_iy - A_ik.
A radius eps is certified when g(x) > delta for every x of the closed ball {||x - x0||_p <= eps}
(p = inf, 2, 1) and every k != y, where delta bounds the model's own rounding error; the reported
radius is the largest eps a bisection on [0, upper] certified (no adversarial lies strictly closer).

Linear relaxation in the spirit of CROWN (Zhang et al. 2018, "Efficient Neural Network Robustness
Certification with General Activation Functions", NeurIPS), on a region
Omega = box(m, rho) ∩ ball(x0, eps) written x = m + d (the root region is the ball itself, m = x0):

- M is replaced by M+ = R^T R (R from the eigendecomposition, negative eigenvalues clipped); the
  difference is part of delta. Then t_i(d) = ||w_i + R d||_2, w_i = R(m - c - z_i), t0_i = ||w_i||.
- Two features describe every term: a_i = g_i . d with g_i = R^T w_i / t0_i (linear, per term) and
  S = ||R d||^2 (quadratic, shared by all terms). Exactly t_i^2 = t0_i^2 + 2 t0_i a_i + S, and on
  Omega |a_i| <= gd_i, a_i^2 <= S <= r^2 (gd_i, r: box and dual-norm bounds over Omega).
- psi_i(a, S) = phi(sqrt(t0^2 + 2 t0 a + S)) is convex (phi convex and decreasing, the square root
  of an affine function concave). For c_i > 0 a tangent plane of psi_i bounds phi(t_i) from below
  (tangent points (0, 0) and (0, r^2): two candidate relaxations, the better final bound is kept);
  for c_i < 0 a plane through the chord at S = gd^2 tilted down in S as far as the corners
  (+-gd, r^2) allow bounds it from above (four points suffice: on the arc S = a^2 the plane is
  concave and psi = phi(t0 + a) convex). Terms with t0 <= gd fall back to the chord of phi over the
  range of the lower bound t_i >= t0 + a_i (Cauchy-Schwarz), terms at a training point to the
  interval t_i in [max(0, t0 - r), t0 + r].
- Summing, g >= alpha + beta . d + gamma S: the linear and the S coefficients add up with their
  signs, so the cancellation of the near-interpolating coefficients c_i survives (a termwise interval
  or Lipschitz bound loses it). The minimum over Omega is bounded by alpha - max_Omega(-beta . d)
  (box: sum |beta_j| rho_j; ball: the dual norm) + min(gamma, 0) r^2.

Branch and bound (optional `splits`): a region whose bound fails is halved along one axis of a
frame (by default the eigenvectors of M, so that splitting the dominant directions shrinks ||R d||
fastest), the axis with the largest share of rho^T |Q^T M+ Q| rho; sub-boxes are intersected with
the ball (those missing it are dropped) and relaxed around their own centres. The root box of the
frame contains the ball. Children's half-widths are widened by the rounding of their centres.

Rounding (delta). With u the model dtype's unit roundoff, gamma_m = m u / (1 - m u), and b a
bound on |x - c| over Omega, the model's Gram-trick squared distance (computed from the rounded
query q^ = fl(fl(x) - c)) is within E_i = 4 gamma_{d+2} (b + |z_i|)^T |M| (b + |z_i|)
+ nu (||b|| + ||z_i||)^2 + ||M - M^T|| ||b|| ||z_i|| of (q^ - z_i)^T M+ (q^ - z_i), nu bounding
||sym(M) - R^T R||_2. The query rounding moves t_i by at most ||R||_2 ||q^ - q||. The coincidence
rule (squared distance <= tol -> distance 0) moves t_i by at most sqrt(tol_max + E_i) wherever
the rule can fire (t_lo^2 <= tol_max + E_i), otherwise the square root's error is at most
min(sqrt(E_i), E_i / t_lo); plus the rounding of the square root, the scaling by -1/L (4u) and
exp (8u). That gives |K^_i - K_i| <= kappa_i; the matrix product adds gamma_{n+1} sum |A_ik| K^_i.
delta is twice the sum of both outputs' bounds. The certifier's own float64 arithmetic enters as a
slack tau on every distance (the rounding of t0_i, g_i and the products), as the factors
exp(-+4 tau / L) on the planes, and as (16(n + d) + 256) 2^-53 times the sum of the magnitudes of
the relaxation's terms on the final value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..models.base import Model
from .base import Certificate, Certifier, work_budget

_U64 = 2.0**-53
_CHUNK = 1 << 17  # elements of one (regions x training points x features) block
_NORMS = ("linf", "l2", "l1")
_DUAL = {"linf": 1.0, "l2": 2.0, "l1": math.inf}  # the dual norm's order
_S_STARS = (0.0, 1.0)  # tangent points S* / rr^2 of the candidate lower planes (see _phi_relaxation)


def _gamma(m: int, u: float) -> float:
    """gamma_m = m u / (1 - m u): the classical bound on the relative error of an m-term sum."""
    return m * u / (1.0 - m * u)


def _dual_norm(V: np.ndarray, norm: str, axis: int = -1) -> np.ndarray:
    """Dual norm (linf -> l1, l2 -> l2, l1 -> linf) along `axis`."""
    p = _DUAL[norm]
    if V.ndim == 3 and axis in (-1, 2):
        if p == 1.0:
            out: np.ndarray = (np.abs(V) @ np.ones(V.shape[2]))
        elif p == 2.0:
            out = np.sqrt(np.einsum("rnd,rnd->rn", V, V))
        else:
            out = np.abs(V).max(axis=2)
        return out
    if p == 1.0:
        out = np.abs(V).sum(axis=axis)
    elif p == 2.0:
        out = np.sqrt((V * V).sum(axis=axis))
    else:
        out = np.abs(V).max(axis=axis)
    return out


def _p_norm(V: np.ndarray, norm: str, axis: int = -1) -> np.ndarray:
    """The input norm along `axis`."""
    if norm == "linf":
        out: np.ndarray = np.abs(V).max(axis=axis)
    elif norm == "l2":
        out = np.sqrt((V * V).sum(axis=axis))
    else:
        out = np.abs(V).sum(axis=axis)
    return out


@dataclass
class _Kernel:
    """The fitted predictor in float64 (the model's own parameters, exactly), plus the derived bounds."""

    Z: np.ndarray  # (n, d) centred training points as the model stores them
    A: np.ndarray  # (n, K) coefficients as the model stores them
    absA: np.ndarray
    center: np.ndarray  # (d,)
    R: np.ndarray  # (d, d), M+ = R^T R
    Mp: np.ndarray  # R^T R as computed
    Mabs: np.ndarray  # entrywise bound on |R^T R|
    absM: np.ndarray  # |M| of the model's M
    RZ: np.ndarray  # Z R^T
    ZM: np.ndarray  # Z Mp
    zMz: np.ndarray  # (n,) |z_i|^T |M| |z_i|
    absZM: np.ndarray  # (n, d) |z_i|^T |M|
    znorm: np.ndarray  # (n,) ||z_i||_2
    sigma: float  # bound on ||R||_2
    r_unit: float  # bound on ||R||_{p -> 2} for the input norm
    nu: float  # bound on ||sym(M) - R^T R||_2
    asym: float  # bound on ||M - M^T||_2
    nz_max: float  # the model's nz_max (its coincidence tolerance uses it)
    L: float
    u: float  # unit roundoff of the model's dtype
    tau_scale: float  # slack per unit length of the certifier's own float64 distances
    Q: np.ndarray | None  # frame of the branch-and-bound boxes (None: the coordinate axes)
    absQ: np.ndarray | None
    MabsQ: np.ndarray  # entrywise bound on |Q^T M+ Q| (= Mabs without a frame)
    q_slack: float  # relative slack of products with Q
    root: np.ndarray  # (d,) half-widths of the root box per unit radius (the box contains the unit ball)
    MpQ: np.ndarray  # Mp Q (Mp without a frame)
    ZMQ: np.ndarray  # Z Mp Q (ZM without a frame)
    zn1: np.ndarray  # (n,) ||z_i||_1
    g_err: float  # entrywise rounding bound of R^T w per unit of ||q||_1 + ||z_i||_1
    l1_radius: float  # the unit p-ball's largest l1 norm (d, sqrt d, 1)
    nRZ: np.ndarray  # (n,) ||R z_i||^2 as computed
    nRZn: np.ndarray  # (n,) ||R z_i||
    ZMn: np.ndarray  # (n,) ||M+ z_i||_2
    ZMinf: np.ndarray  # (n,) ||M+ z_i||_inf
    ZMQn: np.ndarray
    ZMQinf: np.ndarray

    n_sum: int  # training points of the whole model (the block's sums are parts of sums of this length)

    @property
    def n(self) -> int:
        return int(self.Z.shape[0])

    def block(self, s: int, e: int) -> _Kernel:
        """The same kernel restricted to training points s:e (per-term arrays sliced)."""
        per_term = ("Z", "A", "absA", "RZ", "ZM", "zMz", "absZM", "znorm", "ZMQ", "zn1", "nRZ", "nRZn", "ZMn", "ZMinf", "ZMQn", "ZMQinf")
        return replace(self, **{k: getattr(self, k)[s:e] for k in per_term})

    @property
    def d(self) -> int:
        return int(self.Z.shape[1])


def _kernel_data(model: Any, norm: str, frame: str) -> _Kernel:
    """Extract the model's parameters (in the model's own dtype, widened exactly to float64)."""
    st = model._state()
    Z = st["Z"].double().numpy().copy()
    A = st["A"].double().numpy().copy()
    M = st["M"].double().numpy().copy()
    center = st["center"].double().numpy().copy()
    import torch

    u = float(torch.finfo(st["dtype"]).eps) / 2.0
    d = Z.shape[1]
    Ms = 0.5 * (M + M.T)
    asym = float(np.linalg.norm(M - M.T)) * (1.0 + 1e-10)
    lam, V = np.linalg.eigh(Ms)
    lam = np.clip(lam, 0.0, None)
    R = np.sqrt(lam)[:, None] * V.T
    Mp = R.T @ R
    absRtR = np.abs(R).T @ np.abs(R)
    g_d = _gamma(d + 2, _U64)
    Mabs = np.abs(Mp) + g_d * absRtR
    nu = float(np.linalg.norm(Ms - Mp)) * (1.0 + 1e-10) + 4.0 * g_d * float(np.linalg.norm(absRtR) + np.linalg.norm(Ms))
    sigma = math.sqrt(float(lam.max()) if lam.size else 0.0) * (1.0 + 1e-10) + math.sqrt(g_d * float(np.linalg.norm(absRtR)))
    if norm == "linf":
        r_unit = min(math.sqrt(float(Mabs.sum())), math.sqrt(d) * sigma)
    elif norm == "l2":
        r_unit = sigma
    else:
        r_unit = math.sqrt(float(np.diag(Mabs).max()))
    r_unit *= 1.0 + 1e-10
    absM = np.abs(M)
    absZ = np.abs(Z)
    absZM = absZ @ absM
    zMz = (absZM * absZ).sum(1)
    Q: np.ndarray | None = None
    absQ: np.ndarray | None = None
    MabsQ = Mabs
    q_slack = 0.0
    if frame == "eigen" and d > 1:
        # boxes in the eigenframe of M: splitting the top eigen-directions shrinks ||R d|| fastest.
        # Used only if V is orthogonal to 1e-10.
        sv = np.linalg.svd(V, compute_uv=False)
        if float(sv.min()) >= 1.0 - 1e-10 and float(sv.max()) <= 1.0 + 1e-10:
            Q = V
            absQ = np.abs(V)
            q_slack = _gamma(2 * d + 4, _U64)
            MabsQ = np.abs(V.T @ Mp @ V) + q_slack * (absQ.T @ (np.abs(Mp) + g_d * absRtR) @ absQ) + g_d * (absQ.T @ absRtR @ absQ)
    MpQ = Mp if Q is None else Mp @ Q
    # |computed R^T w - exact|_j <= g_err (||q||_1 + ||z||_1): Mp, Mp Q and the products each round
    # (Mabs bounds |R^T R|; |Mp| |Q| bounds the frame product)
    big = float(Mabs.max()) if Q is None else max(float(Mabs.max()), float((np.abs(Mp) @ np.abs(Q)).max()))
    g_err = 8.0 * _gamma(2 * d + 8, _U64) * big
    RZ = Z @ R.T
    nRZ = (RZ * RZ).sum(1)
    ZM = Z @ Mp
    ZMQ = Z @ MpQ
    return _Kernel(
        Z=Z, A=A, absA=np.abs(A), center=center, R=R, Mp=Mp, Mabs=Mabs, absM=absM, RZ=RZ, ZM=ZM, zMz=zMz, absZM=absZM,
        znorm=np.sqrt((Z * Z).sum(1)), sigma=sigma, r_unit=r_unit, nu=nu, asym=asym, nz_max=float(st["nz_max"]),
        L=float(model.bandwidth), u=u, tau_scale=64.0 * (d + 8) * _U64 * (1.0 + float(np.abs(R).sum())),
        Q=Q, absQ=absQ, MabsQ=MabsQ, q_slack=q_slack,
        root=np.ones(d) if Q is None else _dual_norm(Q, norm, axis=0) * (1.0 + 1e-9),
        MpQ=MpQ, ZMQ=ZMQ, zn1=absZ.sum(1), g_err=g_err, l1_radius={"linf": float(d), "l2": math.sqrt(d), "l1": 1.0}[norm],
        nRZ=nRZ, nRZn=np.sqrt(nRZ), ZMn=np.sqrt((ZM * ZM).sum(1)), ZMinf=np.abs(ZM).max(1), ZMQn=np.sqrt((ZMQ * ZMQ).sum(1)),
        ZMQinf=np.abs(ZMQ).max(1), n_sum=int(Z.shape[0]),
    )


def _phi_slope_chord(a: np.ndarray, w: np.ndarray, L: float) -> np.ndarray:
    """Slope of the chord of exp(-t/L) over [a, a + w] (w >= 0), computed without cancellation."""
    x = w / L
    small = x < 1e-12
    xs = np.where(small, 1.0, x)
    ratio = np.where(small, 1.0 - 0.5 * x, -np.expm1(-xs) / xs)
    out: np.ndarray = -np.exp(-a / L) * ratio / L
    return out


@dataclass
class _Regions:
    """A batch of regions box(m, rho) ∩ ball(x0, eps) for the points `pidx`."""

    pidx: np.ndarray  # (R,) index into the point batch
    m: np.ndarray  # (R, d) box centre (linearisation point)
    rho: np.ndarray  # (R, d) box half-widths
    eps: np.ndarray  # (R,) ball radius around x0[pidx]
    root: bool = False  # all regions are root boxes around a rotated frame (their box bounds are skipped)


def _evaluate(kd: _Kernel, norm: str, x0: np.ndarray, y: np.ndarray, reg: _Regions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each region: (certified value, centre margin, split coordinate).

    value > 0 proves every point of the region keeps class y (min over k != y of the relaxed
    margin minus delta and the evaluation slack). The centre margin is the float64 margin at the
    box centre (a heuristic to stop splitting when the region holds an adversarial).
    """
    nr = reg.pidx.shape[0]
    val = np.empty(nr)
    cmar = np.empty(nr)
    dim = np.zeros(nr, dtype=np.int64)
    step = max(1, _CHUNK // max(1, kd.n * kd.d))
    for s in range(0, nr, step):
        e = min(nr, s + step)
        sub = _Regions(reg.pidx[s:e], reg.m[s:e], reg.rho[s:e], reg.eps[s:e], reg.root)
        val[s:e], cmar[s:e], dim[s:e] = _evaluate_chunk(kd, norm, x0, y, sub)
    return val, cmar, dim


def _box_dot(V: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """sum_j |V_j| rho_j for V (R, k, d) in frame coordinates and rho (R, d): shape (R, k)."""
    out: np.ndarray = (np.abs(V) @ rho[:, :, None])[:, :, 0]
    return out


def _grad(qM: np.ndarray, ZM: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """(qM - ZM_i) * inv, shape (R, n, d), in one buffer."""
    out: np.ndarray = np.subtract(qM[:, None, :], ZM[None])
    out *= inv
    return out


@dataclass
class _DistBounds:
    """Bounds on t_i(m + d) = ||x - c - z_i||_{M+} over each region (arrays (R, n) unless noted).

    For every x = m + d of the region: t_lo <= t_i <= t_hi; where ok, t_i >= lo_base + g_i . d with
    g_i = (M+ q - M+ z_i) / t0 as computed, |g_i . d| <= gd and max(0, lo_base + g_i . d) in
    [a_lo, b_lo]; where affU also t_i <= t0 + tau + h + g_i . d. ||R d|| <= rr (R,). tau is the
    slack for the certifier's own rounding (t_i is within tau of its computed relaxations).
    """

    q: np.ndarray  # (R, d) m - c
    off: np.ndarray  # (R, d) x0 - m
    offQ: np.ndarray
    offn: np.ndarray  # (R,)
    qMp: np.ndarray  # (R, d)
    t0: np.ndarray
    tau: np.ndarray
    ok: np.ndarray
    inv: np.ndarray  # 1 / t0 where ok, else 0
    gd: np.ndarray
    rr: np.ndarray
    reach: np.ndarray  # (R,) bound on ||d||_1 over the region
    lo_base: np.ndarray
    a_lo: np.ndarray
    b_lo: np.ndarray
    h: np.ndarray
    affU: np.ndarray
    t_lo: np.ndarray
    t_hi: np.ndarray
    use_ball: bool


def _region_rr(kd: _Kernel, norm: str, x0: np.ndarray, reg: _Regions) -> np.ndarray:
    """Bound on ||R d|| over each region (d = x - m): the box's and the ball's, whichever is smaller."""
    rr = np.sqrt(np.einsum("rd,de,re->r", reg.rho, kd.MabsQ, reg.rho))
    if norm != "linf" or kd.Q is not None:
        rr = np.minimum(rr, np.sqrt((((x0 - reg.m) @ kd.R.T) ** 2).sum(1)) + kd.r_unit * reg.eps)
    out: np.ndarray = rr * (1.0 + 1e-12)
    return out


def _distance_bounds(kd: _Kernel, norm: str, x0: np.ndarray, reg: _Regions) -> _DistBounds:
    """The per-term distance relaxation over each region (x0: (R, d), the ball centre of each region)."""
    n, d = kd.n, kd.d
    m, rho, eps = reg.m, reg.rho, reg.eps
    nr = m.shape[0]
    use_ball = norm != "linf" or kd.Q is not None  # axis boxes for linf are sub-boxes of the ball
    q = m - kd.center  # (R, d) linearisation point, centred
    off = x0 - m  # ball centre relative to the linearisation point
    offQ = off if kd.Q is None else off @ kd.Q
    offn = np.sqrt((off * off).sum(1))
    # distances at the linearisation point by the Gram trick on w_i = R q - R z_i (its rounding goes into tau)
    Rq = q @ kd.R.T
    nRq = (Rq * Rq).sum(1)
    t0sq = (Rq @ kd.RZ.T) * -2.0 + nRq[:, None] + kd.nRZ[None]
    t0 = np.sqrt(np.maximum(t0sq, 0.0))  # (R, n)
    E0 = 3.0 * _gamma(d + 4, _U64) * (np.sqrt(nRq)[:, None] + kd.nRZn[None]) ** 2
    et0 = np.where(t0 > 0, np.minimum(np.sqrt(E0), E0 / np.where(t0 > 0, t0, 1.0)), np.sqrt(E0))
    rr = _region_rr(kd, norm, x0, reg)
    rr2 = rr[:, None]
    # l1 reach of the region (for the rounding of the gradients)
    reach = rho.sum(1) if kd.absQ is None else (rho @ kd.absQ.T).sum(1)
    if use_ball:
        reach = np.minimum(reach, np.abs(off).sum(1) + eps * kd.l1_radius)
    qn1 = np.abs(q).sum(1)
    # slack covering the certifier's own float64 errors in t0, g and the norms
    tau = kd.tau_scale * (t0 + (rr + np.sqrt((q * q).sum(1)) + reach + eps)[:, None] + kd.znorm[None]) + et0
    ok = t0 > 1e3 * tau  # affine bounds with a usable gradient
    inv2 = np.where(ok, 1.0 / np.where(ok, t0, 1.0), 0.0)
    inv = inv2[:, :, None]
    # entrywise error bound of the gradients g_i = R^T w_i / t0 (|g_j| <= ||R^T w|| / t0 <= sigma)
    eg = (kd.g_err * (qn1[:, None] + kd.zn1[None]) + kd.sigma * et0) * inv2 + 8.0 * (d + 4) * _U64 * kd.sigma
    # its effect on g . d over the region (twice, and sqrt(d) for frame coordinates: generous)
    eg = eg * reach[:, None] * (2.0 if kd.Q is None else 2.0 * math.sqrt(d))
    tau += eg
    ga = 2.0 * _gamma(d + 2, _U64)
    qMp = q @ kd.Mp
    if kd.Q is not None and norm == "l2":  # rotation invariant: everything in the frame (Q orthogonal to 1e-10)
        qMQ = q @ kd.MpQ
        GQ = _grad(qMQ, kd.ZMQ, inv)
        gd = np.full((nr, n), np.inf) if reg.root else (np.abs(GQ) @ rho[:, :, None])[:, :, 0]
        gdot = ((qMQ * offQ).sum(1)[:, None] - offQ @ kd.ZMQ.T) * inv2
        gdot_err = ga * (np.sqrt((qMQ * qMQ).sum(1))[:, None] + kd.ZMQn[None]) * offn[:, None] * inv2
        gnorm = np.sqrt(np.einsum("rnd,rnd->rn", GQ, GQ)) * (1.0 + 1e-9)
        gd = np.minimum(gd, np.abs(gdot) + gdot_err + (eps + 1e-9 * offn)[:, None] * gnorm)
        del GQ
    else:
        absG = np.abs(_grad(qMp, kd.ZM, inv))
        if kd.Q is None:
            cols = np.stack([rho, np.ones_like(rho)], axis=2)  # box and l1 norm in one product
            both = absG @ cols
            gd, gl1 = both[:, :, 0], both[:, :, 1]
        else:
            gd = np.full((nr, n), np.inf) if reg.root else (np.abs(_grad(q @ kd.MpQ, kd.ZMQ, inv)) @ rho[:, :, None])[:, :, 0]
            gl1 = absG @ np.ones(d)
        if use_ball:
            gdual = gl1 if norm == "linf" else _dual_norm(absG, norm, axis=2)  # the dual norm of g_i
            gdot = ((qMp * off).sum(1)[:, None] - off @ kd.ZM.T) * inv2
            gdot_err = ga * (np.sqrt((qMp * qMp).sum(1))[:, None] + kd.ZMn[None]) * offn[:, None] * inv2
            gd = np.minimum(gd, np.abs(gdot) + gdot_err + eps[:, None] * gdual)
        del absG
    gd = np.minimum(gd * (1.0 + 1e-12) + eg, rr2)

    # lower bound of t: affine Lo = t0 - tau + g.d (ok), else the constant max(0, t0 - tau - rr)
    lo_base = t0 - tau
    a_lo = np.where(ok, np.maximum(0.0, lo_base - gd), np.maximum(0.0, lo_base - rr2))
    b_lo = np.where(ok, lo_base + gd, a_lo)
    # upper bound of t: affine U = t0 + tau + h + g.d where usable, else the constant t0 + tau + rr
    den = lo_base - gd
    h = np.where(den > 0, rr2 * rr2 / (2.0 * np.where(den > 0, den, 1.0)), np.inf) * (1.0 + 1e-12)
    affU = ok & (h < rr2)
    t_hi = np.where(affU, np.minimum(t0 + tau + h + gd, t0 + tau + rr2), t0 + tau + rr2)
    t_lo = a_lo
    return _DistBounds(q=q, off=off, offQ=offQ, offn=offn, qMp=qMp, t0=t0, tau=tau, ok=ok, inv=inv2, gd=gd, rr=rr, reach=reach,
                       lo_base=lo_base, a_lo=a_lo, b_lo=b_lo, h=h, affU=affU, t_lo=t_lo, t_hi=t_hi, use_ball=use_ball)


Plane = tuple[np.ndarray, np.ndarray, np.ndarray]  # (constant, coefficient of a_i = g_i . d, coefficient of S = ||R d||^2)


def _phi_relaxation(tb: _DistBounds, L: float) -> tuple[list[Plane], Plane]:
    """Per-term planes bounding phi(t_i) = exp(-t_i / L) over the region in the features a_i = g_i . d and
    S = ||R d||^2 (shared by all terms): lower planes (alpha, slope, curv) (candidates, for c_i > 0) and one
    upper plane (for c_i < 0), each with

        alpha_lo + slope_lo a_i + curv_lo S <= phi(t_i) <= alpha_up + slope_up a_i + curv_up S.

    Exactly t_i^2 = t0^2 + 2 t0 a_i + S, so psi(a, S) = phi(sqrt(t0^2 + 2 t0 a + S)) is phi (convex,
    decreasing) of a concave function: convex where t0^2 + 2 t0 a + S >= 0, which holds on
    F = {|a| <= gd, a^2 <= S <= rr^2} (S >= a^2 by Cauchy-Schwarz). Lower candidates: the tangent
    planes of psi at (0, 0) and at (0, rr^2). Upper (t0 > gd): the plane through the chord at
    S = gd^2 (a = -gd, +gd) with the steepest S-slope <= 0 that stays above psi at (+-gd, rr^2); on the
    arc S = a^2 that plane is concave in a and psi = phi(t0 + a) convex, so the four points suffice.
    Terms with t0 <= gd use the chord of phi over the range of t0 + a (a lower bound of t), terms at a
    training point constants. The rounding of t0 and g_i (tau) enters as the factors exp(-+4 tau / L).
    The S-slopes of the terms add up with their signs, so the curvature of the near-cancelling sum is
    not paid term by term.
    """
    rr = tb.rr[:, None]
    t0, tau, gd, ok = tb.t0, tb.tau, tb.gd, tb.ok
    zero = np.zeros_like(t0)
    t0s = np.where(ok, t0, 1.0)
    lo_fac, up_fac = np.exp(-4.0 * tau / L), np.exp(4.0 * tau / L)
    const_lo = np.exp(-(t0 + tau + rr) / L)
    lower = []
    for frac in _S_STARS:  # tangent planes of psi at (0, S*)
        S_star = frac * rr * rr + zero
        ts = np.sqrt(t0s * t0s + S_star)
        ph = np.exp(-ts / L) * lo_fac
        dS = -ph / (2.0 * L * ts)  # d psi / dS at (0, S*); d psi / da = 2 t0 dS
        lower.append((np.where(ok, ph - dS * S_star, const_lo), np.where(ok, 2.0 * t0s * dS, 0.0), np.where(ok, dS, 0.0)))
    # upper, t0 > gd: plane through (-gd, gd^2), (gd, gd^2) and above (+-gd, rr^2)
    two = ok & (t0 - tau > gd)
    t1 = np.where(two, t0 - gd, 1.0)
    t2 = np.where(two, t0 + gd, 2.0)
    sa = _phi_slope_chord(t1, t2 - t1, L)  # the chord's slope in a: (phi(t2) - phi(t1)) / (2 gd)
    extra = np.maximum(rr * rr - gd * gd, 0.0)
    t3 = np.sqrt(t1 * t1 + extra)  # t at (-gd, rr^2) and (+gd, rr^2)
    t4 = np.sqrt(t2 * t2 + extra)
    # (psi(P3) - psi(P1)) / (rr^2 - gd^2) = chord slope over [t1, t3] / (t1 + t3); likewise P4 / P2
    cS = np.minimum(np.maximum(_phi_slope_chord(t1, t3 - t1, L) / (t1 + t3), _phi_slope_chord(t2, t4 - t2, L) / (t2 + t4)), 0.0)
    alpha_two = (np.exp(-t1 / L) + sa * gd - cS * gd * gd) * up_fac
    # fallback for gd >= t0: the chord of phi over [a_lo, b_lo] composed with Lo = t0 - tau + a
    sc = _phi_slope_chord(tb.a_lo, tb.b_lo - tb.a_lo, L)
    alpha_one = np.exp(-tb.a_lo / L) + np.where(ok, sc * (tb.lo_base - tb.a_lo), 0.0)
    upper = (np.where(two, alpha_two, alpha_one), np.where(two, sa * up_fac, np.where(ok, sc, 0.0)), np.where(two, cS * up_fac, 0.0))
    return lower, upper


def _evaluate_chunk(kd: _Kernel, norm: str, x0all: np.ndarray, yall: np.ndarray, reg: _Regions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_evaluate for one chunk of regions, summing over blocks of training points (bounded memory)."""
    L, u, d, ntot = kd.L, kd.u, kd.d, kd.n_sum
    x0 = x0all[reg.pidx]
    y = yall[reg.pidx]
    m, rho, eps = reg.m, reg.rho, reg.eps
    nr = m.shape[0]
    rows = np.arange(nr)
    nk = kd.A.shape[1]
    frame = kd.Q is not None and norm == "l2"  # l2 regions live in the frame (rotation invariant)
    use_ball = norm != "linf" or kd.Q is not None

    # region-level pieces of the rounding bound: |x - c| over the region, the query's rounding, the tolerance
    ac = np.abs(kd.center)
    spread = rho if kd.absQ is None else rho @ kd.absQ.T  # componentwise reach of the box
    b = np.abs(m - kd.center) + spread
    xabs = np.abs(m) + spread
    if use_ball:
        b = np.minimum(b, np.abs(x0 - kd.center) + eps[:, None])
        xabs = np.minimum(xabs, np.abs(x0) + eps[:, None])
    ein = 3.0 * u * (xabs + ac[None])  # |q^ - q| componentwise
    b = (b + ein) * (1.0 + 4.0 * _U64)
    dt_in = kd.sigma * np.sqrt((ein * ein).sum(1))  # (R,)
    bMb = np.einsum("rd,de,re->r", b, kd.absM, b)
    bn = np.sqrt((b * b).sum(1))
    tol = ((bMb * (1.0 + 4.0 * _gamma(d + 2, u)) + kd.nz_max) * (8.0 * math.sqrt(d) * 2.0 * u) + 1e-20) * (1.0 + 16.0 * u)

    nv = len(_S_STARS)  # candidate lower planes for c_i > 0 (see _phi_relaxation); the best bound over them is kept
    alpha = np.zeros((nv, nr, nk))
    gamma = np.zeros((nv, nr, nk))  # coefficients of S = ||R d||^2
    beta = np.zeros((nv, nr, nk, d))
    berr = np.zeros((nv, nr, nk))
    cmargin = np.zeros((nr, nk))
    out_err = np.zeros((nr, nk))
    sx = np.zeros((nr, nk))
    reach = np.zeros(nr)
    nb = max(1, _CHUNK // max(1, nr * d))
    for s in range(0, kd.n, nb):
        kb = kd if nb >= kd.n else kd.block(s, min(kd.n, s + nb))
        tb = _distance_bounds(kb, norm, x0, reg)
        reach = tb.reach
        t0, inv, gd, t_lo, t_hi = tb.t0, tb.inv, tb.gd, tb.t_lo, tb.t_hi
        nblk = kb.n
        rr2 = tb.rr[:, None]
        lower, upper = _phi_relaxation(tb, L)

        # margins per class: c_ik = A_iy - A_ik, split by sign
        A = kb.A
        C = A[:, y].T[:, :, None] - A[None]  # (R, n, K)
        Cp = np.maximum(C, 0.0)
        Cn = np.minimum(C, 0.0)
        qv, ZMv, ZMinf = (tb.q @ kb.MpQ, kb.ZMQ, kb.ZMQinf) if frame else (tb.qMp, kb.ZM, kb.ZMinf)
        gerr = (_gamma(ntot + 2, _U64) + 4.0 * _U64) * (np.abs(qv).max(1)[:, None] * inv + inv * ZMinf[None])  # (R, n)
        mag = np.zeros_like(t0)
        for v, (al, sl, cu) in enumerate([*lower]):
            for Cs, (al_, sl_, cu_) in ((Cp, (al, sl, cu)), (Cn, upper)):
                alpha[v] += np.einsum("rnk,rn->rk", Cs, al_)
                gamma[v] += np.einsum("rnk,rn->rk", Cs, cu_)
                # beta = sum_i coef_i g_i = (sum_i coef_i / t0_i) M+ q - sum_i (coef_i / t0_i) M+ z_i
                cw = Cs * (sl_ * inv)[:, :, None]  # (R, n, K)
                cwT = np.ascontiguousarray(cw.transpose(0, 2, 1)).reshape(nr * nk, nblk)
                beta[v] += cw.sum(1)[:, :, None] * qv[:, None, :] - (cwT @ ZMv).reshape(nr, nk, d)  # in the frame for l2
                berr[v] += np.einsum("rnk,rn->rk", np.abs(Cs), np.abs(sl_) * gerr)
            mag = np.maximum(mag, np.abs(al) + np.abs(sl) * gd + np.abs(cu) * rr2 * rr2)
        cmargin += np.einsum("rnk,rn->rk", C, np.exp(-t0 / L))  # float64 margin at the centre (heuristic only)
        mag = np.maximum(mag, np.abs(upper[0]) + np.abs(upper[1]) * gd + np.abs(upper[2]) * rr2 * rr2)

        # --- the model's rounding error, term by term ---------------------------------------
        P = bMb[:, None] + 2.0 * (b @ kb.absZM.T) + kb.zMz[None]
        E = 4.0 * _gamma(d + 2, u) * P + kd.nu * (bn[:, None] + kb.znorm[None]) ** 2 + kd.asym * bn[:, None] * kb.znorm[None]
        E *= 1.0 + 1e-6
        tlo2 = np.maximum(0.0, t_lo - dt_in[:, None])
        thi2 = t_hi + dt_in[:, None]
        near = tlo2 * tlo2 <= tol[:, None] + E
        far_err = np.minimum(np.sqrt(E), E / np.where(tlo2 > 0, tlo2, 1.0))
        dsq = np.where(near, np.sqrt(tol[:, None] + E), far_err) + 1.01 * u * np.sqrt(thi2 * thi2 + E + tol[:, None])
        dtot = (dt_in[:, None] + dsq) * (1.0 + 1e-6)
        D = (dtot + 4.0 * u * (t_hi + dtot)) / L
        Kmax = np.exp(-t_lo / L)
        eD = np.exp(D)
        kappa = Kmax * (np.expm1(D) + 8.0 * u * eD)
        err_i = kappa + _gamma(ntot + 1, u) * Kmax * eD * (1.0 + 8.0 * u)  # (R, n)
        out_err += err_i @ kb.absA
        sx += mag @ kb.absA  # magnitudes of the relaxation's terms (for the slack of this evaluation)

    rrf = _region_rr(kd, norm, x0, reg)
    lb = np.full((nr, nk), -np.inf)
    for v in range(nv):
        bv = beta[v]
        if frame:
            offQ = (x0 - m) @ kd.Q if kd.Q is not None else x0 - m
            offn = np.sqrt(((x0 - m) ** 2).sum(1))
            bdot = (bv @ offQ[:, :, None])[:, :, 0]
            bdual = (eps + 1e-9 * offn)[:, None] * _dual_norm(bv, norm, axis=2) * (1.0 + 1e-9)
            bbox = _box_dot(bv, rho)
            lin_min = np.maximum(-bbox, bdot - bdual)
            mag_lin = bbox + np.abs(bdot) + bdual
        else:
            if kd.Q is None:
                bbox = _box_dot(bv, rho)
            else:
                absQ = kd.absQ if kd.absQ is not None else np.abs(kd.Q)
                bbox = _box_dot(bv @ kd.Q, rho) + kd.q_slack * _box_dot(bv, rho @ absQ.T)
            lin_min = -bbox
            mag_lin = bbox
            if use_ball:
                off = x0 - m
                bdot = (bv @ off[:, :, None])[:, :, 0]
                bdual = eps[:, None] * _dual_norm(bv, norm, axis=2)
                lin_min = np.maximum(lin_min, bdot - bdual)
                mag_lin = mag_lin + np.abs(bdot) + bdual
        lin_min -= berr[v] * reach[:, None] + 8.0 * (d + 4) * _U64 * mag_lin  # beta's rounding; this evaluation's
        lb = np.maximum(lb, alpha[v] + lin_min + np.minimum(gamma[v], 0.0) * (rrf * rrf)[:, None])  # S in [0, rr^2]
    delta = 2.0 * (out_err[rows, y][:, None] + out_err)
    S = sx[rows, y][:, None] + sx + delta
    slack = (16.0 * (ntot + d) + 256.0) * _U64 * S  # the certifier's own float64 evaluation

    value = lb - delta - slack
    value[rows, y] = np.inf
    cmargin[rows, y] = np.inf
    share = rho * (rho @ kd.MabsQ)  # split coordinate: largest share of rho^T |Q^T M+ Q| rho
    return value.min(1), cmargin.min(1), share.argmax(1)


def _region_empty(kd: _Kernel, norm: str, x0: np.ndarray, m: np.ndarray, rho: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Boxes that certainly miss the ball around x0 (axis boxes for linf never do: they split the ball)."""
    off = x0 - m
    if kd.Q is None:
        if norm == "linf":
            return np.zeros(m.shape[0], dtype=bool)
        far = _p_norm(np.maximum(0.0, np.abs(off) - rho), norm, axis=1)
        out: np.ndarray = far > eps * (1.0 + 1e-8)
        return out
    # rotated boxes: compare l2 distances (the p-ball of radius eps lies in the l2 ball of radius eps * s)
    s = math.sqrt(off.shape[1]) if norm == "linf" else 1.0
    far = np.sqrt((np.maximum(0.0, np.abs(off @ kd.Q) - rho) ** 2).sum(1))
    out = far > eps * s * (1.0 + 1e-8) + 1e-8 * np.sqrt((off * off).sum(1))
    return out


def _split(kd: _Kernel, norm: str, x0: np.ndarray, reg: _Regions, j: np.ndarray) -> _Regions:
    """Halve each region along frame coordinate j; children that miss the ball are dropped.

    The children's centres are rounded, so every half-width is widened by the rounding of the
    centre (2.01 u ||m + shift||), keeping the children's union a cover of the parent.
    """
    rows = np.arange(reg.pidx.size)
    half = reg.rho[rows, j] * 0.5
    shift = half[:, None] * (np.eye(reg.m.shape[1])[j] if kd.Q is None else kd.Q[:, j].T)
    rho = reg.rho.copy()
    rho[rows, j] = half
    m = np.concatenate([reg.m - shift, reg.m + shift])
    widen = 2.01 * _U64 * (np.sqrt((m * m).sum(1)) + np.concatenate([half, half]))
    rho = np.concatenate([rho, rho]) * (1.0 + 4.0 * _U64) + widen[:, None]
    p = np.concatenate([reg.pidx, reg.pidx])
    e = np.concatenate([reg.eps, reg.eps])
    empty = _region_empty(kd, norm, x0[p], m, rho, e)
    return _Regions(p[~empty], m[~empty], rho[~empty], e[~empty])


class KernelCertifier(Certifier):
    """Linear-relaxation (CROWN-style) certificate for RFM / RFAM, with optional input branch and bound.

    steps: bisection steps on the radius per point (with no finite upper bound the first steps
        double a first-order guess until it fails). Work per point: one evaluation at the point,
        one for the guess where upper is inf, and one per step (more with splits).
    splits: None (no branching) or the largest number of extra sub-region evaluations per point and
        bisection step (branch and bound: a failing region is halved along one axis of `frame`).
    batch: points bounded together. Memory is bounded independently of the training-set size: the
        relaxation is summed over blocks of training points (about 2^17 array elements each).
    frame: axes of the branch-and-bound boxes: "eigen" (eigenvectors of M), "axes" (coordinates) or
        "auto" (eigen with splits, axes without; the unsplit bound is the same either way).
    """

    name = "kernel"
    norms = _NORMS
    complete = False

    def __init__(self, steps: int = 12, splits: int | None = None, batch: int = 64, frame: str = "auto"):
        if frame not in ("auto", "axes", "eigen"):
            raise ConfigError(f"KernelCertifier: frame must be 'auto', 'axes' or 'eigen', got {frame!r}")
        self.frame = frame
        self.steps = work_budget("KernelCertifier", "steps", steps)
        self.splits = None if splits is None else work_budget("KernelCertifier", "splits", splits)
        self.batch = work_budget("KernelCertifier", "batch", batch)

    def __repr__(self) -> str:
        return f"KernelCertifier(steps={self.steps}, splits={self.splits}, batch={self.batch}, frame={self.frame!r})"

    def refuses(self, model: Model) -> str | None:
        from ..models.rfm import RFM

        if not isinstance(model, RFM):
            return f"kernel: needs an RFM / RFAM model (robustbench_align.models.rfm.RFM), got {type(model).__name__}"
        if getattr(model, "A_", None) is None:
            return "kernel: the RFM is not fitted"
        return None

    def certify(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, upper: np.ndarray) -> Certificate:
        why = self.refuses(model)
        if why is not None:
            raise ModelError(why)
        if norm not in self.norms:
            raise ConfigError(f"kernel: norm must be one of {', '.join(self.norms)}, got {norm!r}")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != model.n_features:
            raise ModelError(f"kernel: X must have shape (n, {model.n_features}), got {X.shape}")
        y = np.asarray(y).astype(np.int64).ravel()
        up = np.broadcast_to(np.asarray(upper, dtype=np.float64), (X.shape[0],)).copy()
        if y.shape[0] != X.shape[0]:
            raise ModelError(f"kernel: y has {y.shape[0]} labels for {X.shape[0]} rows")
        cert = Certificate.empty(X)
        if X.shape[0] == 0:
            return cert
        frame = self.frame if self.frame != "auto" else ("axes" if self.splits is None else "eigen")
        kd = _kernel_data(model, norm, frame)
        pred = np.asarray(model.predict(X))
        wrong = pred != y
        cert.reason[wrong] = "misclassified"
        idx = np.flatnonzero(~wrong)
        for s in range(0, idx.size, self.batch):
            rows = idx[s : s + self.batch]
            lower, work, reason = self._bisect(kd, norm, X[rows], y[rows], up[rows])
            cert.lower[rows] = lower
            cert.work[rows] = work
            cert.reason[rows] = reason
            cert.method[rows] = np.where(lower > 0, "kernel", "")
        return cert

    # --- bisection with optional branch and bound --------------------------------------------
    def _test(self, kd: _Kernel, norm: str, x0: np.ndarray, y: np.ndarray, eps: np.ndarray, active: np.ndarray,
              work: np.ndarray) -> np.ndarray:
        """Certified (bool per point) at radius eps for the `active` points; adds the evaluations to `work`."""
        npt = x0.shape[0]
        ok = np.zeros(npt, dtype=bool)
        act = np.flatnonzero(active)
        if act.size == 0:
            return ok
        budget = np.zeros(npt, dtype=np.int64)
        budget[act] = 0 if self.splits is None else self.splits
        failed = np.zeros(npt, dtype=bool)
        # the root box contains the ball; in a rotated frame its box bounds are far weaker than the ball's
        reg = _Regions(act.copy(), x0[act].copy(), eps[act, None] * kd.root[None], eps[act].copy(), root=kd.Q is not None)
        while reg.pidx.size:
            val, cm, dim = _evaluate(kd, norm, x0, y, reg)
            np.add.at(work, reg.pidx, 1)
            bad = val <= 0.0
            if not bad.any():
                break
            # points with an uncertified region: split if budget remains, else fail
            inside = _p_norm(reg.m - x0[reg.pidx], norm, axis=1) <= reg.eps
            refuted = bad & (cm < 0.0) & inside
            failed[reg.pidx[refuted]] = True
            nbad = np.bincount(reg.pidx[bad], minlength=npt)
            failed |= nbad * 2 > budget
            keep = bad & ~failed[reg.pidx]
            budget -= 2 * np.bincount(reg.pidx[keep], minlength=npt)
            if not keep.any():
                break
            reg = _split(kd, norm, x0, _Regions(reg.pidx[keep], reg.m[keep], reg.rho[keep], reg.eps[keep]), dim[keep])
        ok[act] = ~failed[act]
        return ok

    def _bisect(self, kd: _Kernel, norm: str, x0: np.ndarray, y: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        npt, d = x0.shape
        work = np.zeros(npt, dtype=np.int64)
        zero = np.zeros(npt)
        val0, _, _ = _evaluate(kd, norm, x0, y, _Regions(np.arange(npt), x0.copy(), np.zeros((npt, d)), zero))
        work += 1
        good = val0 > 0.0
        reason = np.where(good, "linear-relaxation bound", "margin within the rounding bound at the point itself").astype(object)
        lo = np.zeros(npt)
        hi = upper.copy()
        soft = ~np.isfinite(hi)
        if soft.any():
            hi[soft] = self._guess(kd, norm, x0[soft], y[soft], val0[soft])
            work[soft] += 1
        for _ in range(self.steps):
            mid = np.where(soft, hi, 0.5 * (lo + hi))
            act = good & (mid > lo)
            cert = self._test(kd, norm, x0, y, mid, act, work)
            lo = np.where(cert, mid, lo)
            hi = np.where(cert & soft, 2.0 * hi, np.where(act & ~cert, mid, hi))
            soft &= cert
        return np.where(good, lo, 0.0), work, reason

    @staticmethod
    def _guess(kd: _Kernel, norm: str, x0: np.ndarray, y: np.ndarray, val0: np.ndarray) -> np.ndarray:
        """A first-order radius guess to start a bisection with no upper bound: val0 / slope, the slope from a
        second bound evaluation at radius 1e-4 (the rounding terms, nearly constant in the radius, cancel)."""
        d = x0.shape[1]
        e = np.full(x0.shape[0], 1e-4)
        val, _, _ = _evaluate(kd, norm, x0, y, _Regions(np.arange(x0.shape[0]), x0.copy(), e[:, None] * kd.root[None], e, root=kd.Q is not None))
        slope = np.maximum((val0 - val) / e, 1e-300)
        out: np.ndarray = np.clip(val0 / slope, 1e-6, 1e6) if d else np.ones(x0.shape[0])
        return out


__all__ = ["KernelCertifier"]
