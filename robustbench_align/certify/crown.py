"""Certified lower bounds for feed-forward networks by bound propagation: IBP, CROWN and alpha-CROWN.

Definitions. For a `Network` f = A_L o s o A_{L-1} o ... o s o A_1 (A_l affine, s element-wise),
the pre-activations are z_l = A_l(h_{l-1}) for l < L (h_0 = x, h_l = s(z_l)) and the logits z_L.
The ball of point x0 is B_p(x0, eps) = {x : ||x - x0||_p <= eps}, p in {inf, 2, 1}; a linear
function c.x + d is minimised over it in closed form, c.x0 + d - eps ||c||_q with the dual norm q
(linf -> l1, l2 -> l2, l1 -> linf). The margin of class k at a point with label y is z_y - z_k.

- IBP, interval bound propagation (Gowal et al. 2018, "On the Effectiveness of Interval Bound
  Propagation for Training Verifiably Robust Models"): the first layer exactly over the ball, then
  intervals layer by layer (centre/radius form); the margin is bounded through the last affine map
  applied to the interval of the last hidden layer (the specification folded into that map).
- CROWN (Zhang et al. 2018, "Efficient Neural Network Robustness Certification with General
  Activation Functions"): each neuron's activation on its pre-activation interval [l, u] is
  enclosed by two lines, a_L z + c_L <= s(z) <= a_U z + c_U, and the specification is propagated
  backwards through the network, choosing per coefficient sign the lower or upper line, down to a
  linear function of x that is minimised over the ball. ReLU: the chord above, the adaptive lower
  slope (1 if u > -l else 0) below. tanh / sigmoid: tangent at the midpoint and chord on one-signed
  intervals, on mixed intervals the tangent through the opposite end point (the chord when the
  tangency point falls outside [l, u]). GELU: the chord above and the midpoint tangent below; x^2:
  the chord above, the midpoint tangent below. Whatever the slope, the intercept is computed as the
  exact extremum of s(z) - a z over [l, u] (end points and stationary points located by bisection
  on the monotone pieces of s', with a remainder term for the bisection bracket), so every line is
  sound for its interval. Intermediate bounds are computed by CROWN too, layer by layer, and
  intersected with the IBP ones; the reported CROWN margin is the larger of the linear bound and
  the IBP bound computed from the same intervals (both are sound), so CROWN is never below IBP.
- alpha-CROWN (Xu et al. 2021, "Fast and Complete: Enabling Complete Neural Network Verification
  with Rapid and Massively Parallel Incomplete Verifiers"): the ReLU lower slopes of unstable
  neurons become free parameters alpha in [0, 1], one per neuron and per output specification,
  optimised by projected gradient ascent (Adam steps, then clipping to [0, 1]) on the final bound,
  starting from CROWN's choice; intermediate bounds stay CROWN's. The best bound met over the
  iterations is kept, and the result is max(alpha-CROWN, CROWN).

Floating point. All bounds are computed in float64 and widened outward by an allowance for the
float64 arithmetic of the computation itself (a multiple of gamma_N(2^-53) times the magnitude of
the summed terms; an allowance, not a formal proof of the float64 evaluation). The model computes
in its own dtype: `rounding_bound` is a forward error bound (Higham, "Accuracy and Stability of
Numerical Algorithms", ch. 3) on |computed - exact| of any logit difference: a rounded dot product
of length m has error <= gamma_m sum |w_i||h_i|, gamma_m = m u / (1 - m u); activations add a few
ulps of their value; the input is rounded to the dtype; earlier errors propagate through |W| and
the activation's Lipschitz constant; magnitudes |h| are IBP bounds over the ball; an absolute 8u
covers decisions taken on probabilities (softmax or logistic ties). A point is certified at eps when
every margin lower bound exceeds the rounding bound at that eps.

Certifiers turn the bounds into radii by a batched bisection on eps (geometric growth first when
no upper bound is known); every budget is a deterministic count (bisection steps, gradient steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..models.base import Model
from .base import Certificate, Certifier, work_budget
from .network import Activation, Affine, Network, network_of, stages_of

NORMS = ("linf", "l2", "l1")
METHODS = ("ibp", "crown", "alpha-crown")
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53}
U64 = 2.0**-53
BISECTION_ITERS = 36  # bisection steps when locating tangency / stationary points inside [l, u]
GELU_ARGMIN = -0.7517915246935645  # the minimiser of GELU (GELU' = 0 there)
GELU_LIP = 1.13  # sup |GELU'| = 1.1289...
SQRT2 = math.sqrt(2.0)

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------
def _dual(norm: str) -> float:
    if norm == "linf":
        return 1.0
    if norm == "l2":
        return 2.0
    if norm == "l1":
        return math.inf
    raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def _dual_norm(A: Tensor, q: float) -> Tensor:
    """||row||_q along the last axis."""
    if q == 1.0:
        return A.abs().sum(-1)
    if q == 2.0:
        out_: Tensor = torch.linalg.vector_norm(A, 2, dim=-1)
        return out_
    return A.abs().amax(-1)


def _inputs(net: Network, X: np.ndarray, eps: np.ndarray | float) -> tuple[Tensor, Tensor]:
    Xa = np.asarray(X, dtype=np.float64)
    if Xa.ndim == 1:
        Xa = Xa.reshape(1, -1)
    if Xa.ndim != 2 or Xa.shape[1] != net.n_in:
        raise ConfigError(f"X must have shape (n, {net.n_in}), got {Xa.shape}")
    e = np.broadcast_to(np.asarray(eps, dtype=np.float64), (Xa.shape[0],)).copy()
    if not (np.all(np.isfinite(e)) and np.all(e >= 0)):
        raise ConfigError("eps must be finite and >= 0")
    if not np.all(np.isfinite(Xa)):
        raise ConfigError("X must be finite")
    return torch.from_numpy(np.ascontiguousarray(Xa)), torch.from_numpy(e)


def _gamma(m: Tensor | float, u: float) -> Any:
    """gamma_m = m u / (1 - m u) (inf when m u >= 1)."""
    mu = m * u
    if isinstance(mu, Tensor):
        return torch.where(mu < 1, mu / (1 - mu).clamp_min(1e-300), torch.full_like(mu, math.inf))
    return mu / (1 - mu) if mu < 1 else math.inf


@dataclass
class _Net:
    """The network as float64 tensors: affine maps (W, b) and the activation kinds between them."""

    Ws: list[Tensor]
    bs: list[Tensor]
    kinds: list[str]
    source: Network

    @classmethod
    def of(cls, net: Network) -> _Net:
        Ws: list[Tensor] = []
        bs: list[Tensor] = []
        kinds: list[str] = []
        expect_affine = True
        for layer in net.layers:
            if isinstance(layer, Affine) != expect_affine:
                raise ConfigError("a Network must alternate Affine and Activation, starting and ending with Affine")
            if isinstance(layer, Affine):
                Ws.append(torch.as_tensor(np.asarray(layer.W, dtype=np.float64)))
                bs.append(torch.as_tensor(np.asarray(layer.b, dtype=np.float64).reshape(-1)))
            elif isinstance(layer, Activation):
                kinds.append(layer.kind)
            expect_affine = not expect_affine
        if expect_affine or not Ws:
            raise ConfigError("a Network must end with an Affine layer")
        return cls(Ws, bs, kinds, net)


# ----------------------------------------------------------------------------------------
# Activations: values, derivatives, intervals
# ----------------------------------------------------------------------------------------
def _act(kind: str, z: Tensor) -> Tensor:
    if kind == "relu":
        return z.clamp_min(0)
    if kind == "tanh":
        return torch.tanh(z)
    if kind == "sigmoid":
        return torch.sigmoid(z)
    if kind == "gelu":
        out_: Tensor = 0.5 * z * (1 + torch.special.erf(z / SQRT2))
        return out_
    if kind == "square":
        return z * z
    raise ConfigError(f"unknown activation {kind!r}")


def _dact(kind: str, z: Tensor) -> Tensor:
    if kind == "tanh":
        t = torch.tanh(z)
        return 1 - t * t
    if kind == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s)
    if kind == "gelu":
        out_: Tensor = 0.5 * (1 + torch.special.erf(z / SQRT2)) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return out_
    if kind == "square":
        return 2 * z
    raise ConfigError(f"no derivative for {kind!r}")


GELU_MIN = float(_act("gelu", torch.tensor(GELU_ARGMIN, dtype=torch.float64))) - 1e-15


def _act_interval(kind: str, zl: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The exact range of the activation over [zl, u], widened by a few float64 ulps."""
    if kind == "relu":
        return zl.clamp_min(0), u.clamp_min(0)
    if kind in ("tanh", "sigmoid"):
        lo, hi = _act(kind, zl), _act(kind, u)
    elif kind == "gelu":
        gl, gu = _act(kind, zl), _act(kind, u)
        inside = (zl < GELU_ARGMIN) & (u > GELU_ARGMIN)
        lo = torch.where(inside, torch.full_like(zl, GELU_MIN), torch.minimum(gl, gu))
        hi = torch.maximum(gl, gu)
    elif kind == "square":
        l2, u2 = zl * zl, u * u
        lo = torch.where((zl < 0) & (u > 0), torch.zeros_like(zl), torch.minimum(l2, u2))
        hi = torch.maximum(l2, u2)
    else:
        raise ConfigError(f"unknown activation {kind!r}")
    return lo - 4 * U64 * lo.abs(), hi + 4 * U64 * hi.abs()


# Monotone pieces of the derivative s' (for locating the stationary points of s(z) - a z).
_PIECES: dict[str, tuple[tuple[float, float, int], ...]] = {
    # (start, end, +1 if s' increases on the piece else -1)
    "tanh": ((-math.inf, 0.0, 1), (0.0, math.inf, -1)),
    "sigmoid": ((-math.inf, 0.0, 1), (0.0, math.inf, -1)),
    "gelu": ((-math.inf, -SQRT2, -1), (-SQRT2, SQRT2, 1), (SQRT2, math.inf, -1)),
}


def _root_bracket(kind: str, a: Tensor, A: Tensor, B: Tensor, sgn: Tensor) -> tuple[Tensor, Tensor]:
    """A bracket [A2, B2] of the root of g = s' - a on [A, B] where sgn*g(A) <= 0 <= sgn*g(B) (g monotone).

    tanh: around the closed-form root +-atanh(sqrt(1 - a)), kept only where the sign change is verified
    (else the whole [A, B]); GELU: by bisection.
    """
    if kind == "tanh":
        r = torch.atanh(torch.sqrt((1 - a).clamp(0.0, 1.0)).clamp_max(1 - 1e-16)) * (-sgn)
        d = 1e-9 * r.abs() + 1e-12
        A2, B2 = torch.maximum(A, r - d), torch.minimum(B, r + d)
        good = (A2 <= B2) & ((_dact(kind, A2) - a) * sgn <= 0) & ((_dact(kind, B2) - a) * sgn >= 0)
        return torch.where(good, A2, A), torch.where(good, B2, B)
    A2, B2 = A.clone(), B.clone()
    for _ in range(BISECTION_ITERS):
        M = 0.5 * (A2 + B2)
        left = (_dact(kind, M) - a) * sgn <= 0
        A2 = torch.where(left, M, A2)
        B2 = torch.where(left, B2, M)
    return A2, B2


def _intercepts(kind: str, a: Tensor, zl: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) of s(z) - a z over [zl, u]: lines a z + min <= s(z) <= a z + max are sound on [zl, u].

    The extremum is at an end point or at a stationary point (s' = a) inside a monotone piece of s';
    there the value is bounded through a bracket [A2, B2] of the root: f(z*) lies within
    f(A2) +- (B2 - A2) max(|g(A2)|, |g(B2)|) since g = f' = s' - a is monotone on the bracket.
    """
    fl, fu = _act(kind, zl) - a * zl, _act(kind, u) - a * u
    lo, hi = torch.minimum(fl, fu).flatten().clone(), torch.maximum(fl, fu).flatten().clone()
    af, lf, uf = a.flatten(), zl.flatten(), u.flatten()
    idxs, As, Bs, sgns = [], [], [], []
    for p0, p1, sgn in _PIECES[kind]:
        A = lf.clamp_min(p0) if math.isfinite(p0) else lf
        B = uf.clamp_max(p1) if math.isfinite(p1) else uf
        gA, gB = _dact(kind, A) - af, _dact(kind, B) - af
        idx = torch.nonzero((A < B) & (gA * gB <= 0)).flatten()
        idxs.append(idx)
        As.append(A[idx])
        Bs.append(B[idx])
        sgns.append(torch.full((idx.numel(),), float(sgn), dtype=torch.float64))
    idx = torch.cat(idxs)
    if idx.numel() > 0:
        ai = af[idx]
        A2, B2 = _root_bracket(kind, ai, torch.cat(As), torch.cat(Bs), torch.cat(sgns))
        fA, fB = _act(kind, A2) - ai * A2, _act(kind, B2) - ai * B2
        slack = (B2 - A2) * torch.maximum((_dact(kind, A2) - ai).abs(), (_dact(kind, B2) - ai).abs())
        lo = lo.scatter_reduce(0, idx, torch.minimum(fA, fB) - slack, reduce="amin")
        hi = hi.scatter_reduce(0, idx, torch.maximum(fA, fB) + slack, reduce="amax")
    tol = 8 * U64 * (torch.maximum(_act(kind, zl).abs(), _act(kind, u).abs()) + a.abs() * torch.maximum(zl.abs(), u.abs())) + 1e-300
    return lo.reshape(a.shape) - tol, hi.reshape(a.shape) + tol


def _line_pair(kind: str, aL: Tensor, aU: Tensor, zl: Tensor, u: Tensor) -> _Relax:
    """The relaxation with slopes aL (below) and aU (above), intercepts exact over [zl, u] (one call for both)."""
    lo, hi = _intercepts(kind, torch.stack([aL, aU]), torch.stack([zl, zl]), torch.stack([u, u]))
    return _Relax(aL, lo[0], aU, hi[1])


def _tangent_through(kind: str, zl: Tensor, u: Tensor) -> Tensor:
    """For an S-shaped s on zl < 0 < u: the slope of the upper tangent through the far end point.

    The tangent at d in [0, u] that passes through (zl, s(zl)), located by bisection on d; where the
    tangency point would fall beyond u, the chord slope. (Only the slope matters: the intercept is
    computed exactly by `_intercepts`.)
    """
    chord = (_act(kind, u) - _act(kind, zl)) / (u - zl).clamp_min(1e-300)
    f_end = _act(kind, zl)

    def h(d: Tensor) -> Tensor:  # the tangent at d evaluated at zl, minus s(zl): < 0 at d = 0, increasing in d
        return _act(kind, d) + _dact(kind, d) * (zl - d) - f_end

    lo, hi = torch.zeros_like(zl), u.clone()
    outside = h(hi) < 0
    for _ in range(BISECTION_ITERS):
        m = 0.5 * (lo + hi)
        right = h(m) < 0
        lo = torch.where(right, m, lo)
        hi = torch.where(right, hi, m)
    return torch.where(outside, chord, _dact(kind, hi))


@dataclass
class _Relax:
    """Per-neuron lines aL z + cL <= s(z) <= aU z + cU on the pre-activation interval; `unstable` ReLUs."""

    aL: Tensor
    cL: Tensor
    aU: Tensor
    cU: Tensor
    unstable: Tensor | None = None


def _relax(kind: str, zl: Tensor, u: Tensor) -> _Relax:
    if kind == "relu":
        pos, neg = zl >= 0, u <= 0
        unst = ~(pos | neg)
        den = (u - zl).clamp_min(1e-300)
        aU = torch.where(pos, torch.ones_like(zl), torch.where(neg, torch.zeros_like(zl), u / den))
        cU = torch.where(unst, -zl * u / den, torch.zeros_like(zl))
        cU = cU + torch.where(unst, 4 * U64 * cU.abs() + 1e-300, torch.zeros_like(cU))
        aL = torch.where(pos, torch.ones_like(zl), torch.where(neg | (u <= -zl), torch.zeros_like(zl), torch.ones_like(zl)))
        return _Relax(aL, torch.zeros_like(zl), aU, cU, unst)
    if kind == "square":
        aU = zl + u
        cU = -zl * u
        d = 0.5 * (zl + u)
        aL, cL = 2 * d, -d * d
        tol = 8 * U64 * (zl * zl + u * u) + 1e-300
        return _Relax(aL, cL - tol, aU, cU + tol)
    if kind == "sigmoid":  # sigmoid(z) = 1/2 + tanh(z/2)/2
        r = _relax("tanh", 0.5 * zl, 0.5 * u)
        return _Relax(0.25 * r.aL, 0.5 + 0.5 * r.cL - 4 * U64, 0.25 * r.aU, 0.5 + 0.5 * r.cU + 4 * U64)
    if kind == "tanh":
        width = u - zl
        mid = 0.5 * (zl + u)
        chord = torch.where(width > 1e-12, (_act(kind, u) - _act(kind, zl)) / width.clamp_min(1e-300), _dact(kind, mid))
        tmid = _dact(kind, mid)
        mixed = (zl < 0) & (u > 0)
        aU = torch.where(zl >= 0, tmid, chord)
        aL = torch.where(u <= 0, tmid, chord)
        if bool(mixed.any()):
            ls, us = torch.where(mixed, zl, -torch.ones_like(zl)), torch.where(mixed, u, torch.ones_like(u))
            # tanh is odd: the lower line on [l, u] mirrors the upper line on [-u, -l] (same slope)
            both = _tangent_through(kind, torch.cat([ls, -us]), torch.cat([us, -ls]))
            aU = torch.where(mixed, both[: ls.shape[0]], aU)
            aL = torch.where(mixed, both[ls.shape[0]:], aL)
        return _line_pair(kind, aL, aU, zl, u)
    if kind == "gelu":
        width = u - zl
        mid = 0.5 * (zl + u)
        chord = torch.where(width > 1e-12, (_act(kind, u) - _act(kind, zl)) / width.clamp_min(1e-300), _dact(kind, mid))
        aL = _dact(kind, mid)
        aU = chord
        return _line_pair(kind, aL, aU, zl, u)
    raise ConfigError(f"unknown activation {kind!r}")


# ----------------------------------------------------------------------------------------
# IBP and CROWN
# ----------------------------------------------------------------------------------------
def _first_layer(tn: _Net, X: Tensor, eps: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """Exact bounds of A_1(x) over the ball, widened for float64 rounding."""
    W, b = tn.Ws[0], tn.bs[0]
    c = X @ W.T + b
    r = eps[:, None] * _dual_norm(W, q)[None, :]
    mag = X.abs() @ W.abs().T + b.abs() + r
    slack = _gamma(W.shape[1] + 2, U64) * 2 * mag
    return c - r - slack, c + r + slack


def _ibp_step(W: Tensor, b: Tensor, hl: Tensor, hu: Tensor) -> tuple[Tensor, Tensor]:
    mid, rad = 0.5 * (hl + hu), 0.5 * (hu - hl)
    c = mid @ W.T + b
    r = rad @ W.abs().T
    mag = torch.maximum(hl.abs(), hu.abs()) @ W.abs().T + b.abs()
    slack = _gamma(W.shape[1] + 4, U64) * 2 * mag
    return c - r - slack, c + r + slack


def _ibp_all(tn: _Net, X: Tensor, eps: Tensor, q: float) -> list[tuple[Tensor, Tensor]]:
    """IBP bounds of every affine output z_1..z_L (the last one: the logits)."""
    out = [_first_layer(tn, X, eps, q)]
    for j, kind in enumerate(tn.kinds):
        hl, hu = _act_interval(kind, *out[-1])
        out.append(_ibp_step(tn.Ws[j + 1], tn.bs[j + 1], hl, hu))
    return out


def _backward(tn: _Net, m: int, Lam: Tensor, const: Tensor, relax: list[_Relax], X: Tensor, eps: Tensor, q: float,
              alphas: list[Tensor | None] | None = None) -> Tensor:
    """Lower bound over the ball of Lam . z_m + const, Lam (n, s, w_m) given on the pre-activation z_m.

    The coefficient is propagated down through A_m ... A_1 using the relaxations of activations 1..m-1;
    alphas (optional, per ReLU layer (n, s, w)) replace the lower slopes of unstable ReLUs.
    Returns (n, s), widened for float64 rounding.
    """
    absum = const.abs()
    depth = 1
    n_terms = 0
    for j in range(m, -1, -1):
        W, b = tn.Ws[j], tn.bs[j]
        const = const + Lam @ b
        absum = absum + Lam.abs() @ b.abs()
        Lam = Lam @ W
        n_terms += W.shape[0] + 1
        if j == 0:
            break
        r = relax[j - 1]
        pos, neg = Lam.clamp_min(0), Lam.clamp_max(0)
        aL = r.aL[:, None, :]
        if alphas is not None and alphas[j - 1] is not None and r.unstable is not None:
            al = alphas[j - 1]
            if al is not None:
                aL = torch.where(r.unstable[:, None, :], al, aL)
        add = (pos * r.cL[:, None, :] + neg * r.cU[:, None, :]).sum(-1)
        const = const + add
        absum = absum + (pos * r.cL[:, None, :]).abs().sum(-1) + (neg * r.cU[:, None, :]).abs().sum(-1)
        Lam = pos * aL + neg * r.aU[:, None, :]
        depth += 1
    lin = (Lam @ X[:, :, None]).squeeze(-1)
    rad = eps[:, None] * _dual_norm(Lam, q)
    absum = absum + (Lam.abs() @ X.abs()[:, :, None]).squeeze(-1) + rad
    slack = 4 * depth * _gamma(n_terms + X.shape[1] + 2, U64) * absum
    lb: Tensor = lin + const - rad - slack
    return lb


def _crown_all(tn: _Net, X: Tensor, eps: Tensor, q: float) -> tuple[list[tuple[Tensor, Tensor]], list[_Relax]]:
    """CROWN bounds of the pre-activations z_1..z_{L-1} (intersected with IBP) and their relaxations."""
    bounds = [_first_layer(tn, X, eps, q)]
    relax: list[_Relax] = []
    n = X.shape[0]
    for m in range(1, len(tn.Ws) - 1):
        kind = tn.kinds[m - 1]
        relax.append(_relax(kind, *bounds[-1]))
        il, iu = _ibp_step(tn.Ws[m], tn.bs[m], *_act_interval(kind, *bounds[-1]))
        w = tn.Ws[m].shape[0]
        eye = torch.eye(w, dtype=torch.float64)
        C = torch.cat([eye, -eye], 0).expand(n, 2 * w, w)
        lb = _backward(tn, m, C, torch.zeros(n, 2 * w, dtype=torch.float64), relax, X, eps, q)
        lo, hi = lb[:, :w], -lb[:, w:]
        bounds.append((torch.maximum(lo, il), torch.minimum(hi, iu)))
    if len(tn.Ws) > 1:
        relax.append(_relax(tn.kinds[-1], *bounds[-1]))
    return bounds, relax


def layer_bounds(net: Network, X: np.ndarray, eps: np.ndarray, norm: str, method: str = "crown") -> list[tuple[np.ndarray, np.ndarray]]:
    """Sound float64 (lower, upper) bounds, each (n, width), on every pre-activation over the balls.

    The pre-activations are the outputs of the Affine layers followed by an Activation (so a
    network with k activations gives k pairs). method: "ibp" or "crown" (CROWN intersected with IBP).
    """
    q = _dual(norm)
    tn = _Net.of(net)
    Xt, et = _inputs(net, X, eps)
    with torch.no_grad():
        if method == "ibp":
            bounds = _ibp_all(tn, Xt, et, q)[:-1]
        elif method == "crown":
            bounds = _crown_all(tn, Xt, et, q)[0] if len(tn.Ws) > 1 else []
        else:
            raise ConfigError(f"layer_bounds: method must be 'ibp' or 'crown', got {method!r}")
    return [(lo.numpy().copy(), hi.numpy().copy()) for lo, hi in bounds]


# ----------------------------------------------------------------------------------------
# Margins
# ----------------------------------------------------------------------------------------
def _spec(y: Tensor, K: int) -> Tensor:
    """C (n, K, K): row k is e_y - e_k (row y is zero)."""
    n = y.shape[0]
    C = -torch.eye(K, dtype=torch.float64).expand(n, K, K).clone()
    C[torch.arange(n), :, y] += 1.0
    return C


def _ibp_margin(tn: _Net, X: Tensor, eps: Tensor, q: float, C: Tensor, bounds: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
    W, b = tn.Ws[-1], tn.bs[-1]
    Cw, Cb = C @ W, C @ b
    if len(tn.Ws) == 1:
        return _backward(tn, 0, C, torch.zeros(C.shape[:2], dtype=torch.float64), [], X, eps, q)
    if bounds is None:
        bounds = _ibp_all(tn, X, eps, q)[:-1]
    hl, hu = _act_interval(tn.kinds[-1], *bounds[-1])
    mid, rad = 0.5 * (hl + hu), 0.5 * (hu - hl)
    c = (Cw @ mid[:, :, None]).squeeze(-1) + Cb
    r = (Cw.abs() @ rad[:, :, None]).squeeze(-1)
    mag = (Cw.abs() @ torch.maximum(hl.abs(), hu.abs())[:, :, None]).squeeze(-1) + C.abs() @ b.abs()
    out: Tensor = c - r - _gamma(W.shape[1] + W.shape[0] + 4, U64) * 4 * mag
    return out


def _alpha_opt(tn: _Net, X: Tensor, eps: Tensor, q: float, C: Tensor, relax: list[_Relax], init: Tensor,
               iterations: int, lr: float, target: Tensor | None) -> tuple[Tensor, int]:
    """alpha-CROWN: projected gradient ascent on the ReLU lower slopes; the best bound met (n, s)."""
    n, s = C.shape[0], C.shape[1]
    params: list[Tensor] = []
    alphas: list[Tensor | None] = []
    for r, kind in zip(relax, tn.kinds, strict=True):
        if kind == "relu" and r.unstable is not None and bool(r.unstable.any()):
            a = r.aL[:, None, :].expand(n, s, r.aL.shape[1]).clone().requires_grad_(True)
            params.append(a)
            alphas.append(a)
        else:
            alphas.append(None)
    best = init.clone()
    if not params:
        return best, 0
    opt = torch.optim.Adam(params, lr=lr)
    used = 0
    for _ in range(iterations):
        if target is not None and bool((best > target).all()):
            break
        with torch.enable_grad():
            lb = _backward_from_output(tn, C, relax, X, eps, q, alphas)
            used += 1
            best = torch.maximum(best, lb.detach())
            opt.zero_grad(set_to_none=True)
            (-lb.sum()).backward()  # type: ignore[no-untyped-call]
        opt.step()
        with torch.no_grad():
            for p in params:
                p.clamp_(0.0, 1.0)
    with torch.no_grad():
        lb = _backward_from_output(tn, C, relax, X, eps, q, alphas)
        used += 1
        best = torch.maximum(best, lb)
    return best, used


def _backward_from_output(tn: _Net, C: Tensor, relax: list[_Relax], X: Tensor, eps: Tensor, q: float,
                          alphas: list[Tensor | None] | None = None) -> Tensor:
    """CROWN lower bound of C z_L over the ball, (n, s)."""
    L = len(tn.Ws) - 1
    n, s = C.shape[0], C.shape[1]
    return _backward(tn, L, C, torch.zeros(n, s, dtype=torch.float64), relax, X, eps, q, alphas)


def _margins(tn: _Net, X: Tensor, eps: Tensor, q: float, y: Tensor, method: str, iterations: int = 20, lr: float = 0.25,
             target: Tensor | None = None) -> tuple[Tensor, int]:
    """Lower bounds (n, K) on z_y - z_k over the balls (+inf at k = y) and the bound evaluations used per point."""
    K = tn.Ws[-1].shape[0]
    C = _spec(y, K)
    with torch.no_grad():
        if method == "ibp":
            lb = _ibp_margin(tn, X, eps, q, C)
            used = 1
        else:
            if len(tn.Ws) == 1:
                lb = _ibp_margin(tn, X, eps, q, C)
                relax: list[_Relax] = []
            else:
                bounds, relax = _crown_all(tn, X, eps, q)
                lb = torch.maximum(_backward_from_output(tn, C, relax, X, eps, q), _ibp_margin(tn, X, eps, q, C, bounds))
            used = 1
    if method == "alpha-crown" and relax and iterations > 0:
        tgt = None if target is None else target[:, None].expand_as(lb).clone()
        if tgt is not None:
            tgt[torch.arange(X.shape[0]), y] = -math.inf
        lb2, extra = _alpha_opt(tn, X, eps, q, C, relax, lb, iterations, lr, tgt)
        lb = torch.maximum(lb, lb2)
        used += extra
    lb = lb.clone()
    lb[torch.arange(X.shape[0]), y] = math.inf
    return lb, used


def margin_bounds(net: Network, X: np.ndarray, y: np.ndarray, eps: np.ndarray, norm: str, method: str = "crown",
                  iterations: int = 20) -> np.ndarray:
    """Sound lower bounds (n, K) on z_{y_i}(x') - z_k(x') over the ball of each point (+inf in column y_i).

    method: "ibp", "crown" or "alpha-crown" (`iterations` gradient steps; the result is never below CROWN's).
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    q = _dual(norm)
    tn = _Net.of(net)
    Xt, et = _inputs(net, X, eps)
    yt = _labels(y, Xt.shape[0], net.n_out)
    it = work_budget("margin_bounds", "iterations", iterations) if method == "alpha-crown" else 0
    lb, _ = _margins(tn, Xt, et, q, yt, method, it)
    out: np.ndarray = lb.detach().numpy().copy()
    return out


def _labels(y: np.ndarray, n: int, K: int) -> Tensor:
    ya = np.asarray(y)
    if ya.shape != (n,) or not np.all((ya >= 0) & (ya < K) & (ya == np.round(ya))):
        raise ConfigError(f"y must hold {n} integer labels in 0..{K - 1}")
    return torch.from_numpy(ya.astype(np.int64))


# ----------------------------------------------------------------------------------------
# Rounding error of the model's own arithmetic
# ----------------------------------------------------------------------------------------
def _lipschitz(kind: str, a: Tensor, b: Tensor) -> Tensor:
    """max |s'| over [a, b] (tanh, sigmoid: at the point closest to 0; GELU: end points and +-sqrt(2))."""
    if kind in ("tanh", "sigmoid"):
        c = torch.minimum(torch.maximum(torch.zeros_like(a), a), b)
        out = _dact(kind, c)
    else:  # gelu: s' is monotone between -inf, -sqrt(2), sqrt(2), inf
        out = torch.maximum(_dact(kind, a).abs(), _dact(kind, b).abs())
        for p in (-SQRT2, SQRT2):
            inside = (a <= p) & (b >= p)
            out = torch.where(inside, torch.maximum(out, _dact(kind, torch.full_like(a, p)).abs()), out)
        out = out.clamp_max(GELU_LIP)
    return out * (1 + 1e-9) + 1e-300


def _act_error(kind: str, u: float, tiny: float, M: Tensor, E: Tensor, hmag: Tensor, zl: Tensor, zu: Tensor) -> Tensor:
    """Bound on |s^(z^) - s(z)| given z in [zl, zu], |z| <= M, |z^ - z| <= E (s^: the dtype's implementation).

    The propagated part uses the largest |s'| over [zl - E, zu + E]; the implementation's own error
    is a few ulps of the value (GELU: also of |z|, for the cancellation in 1 + erf).
    """
    Mz = M + E
    if kind == "relu":
        return E
    if kind == "square":
        return E * (2 * M + E) + 2 * u * Mz * Mz + tiny
    L = _lipschitz(kind, zl - E, zu + E)
    if kind == "tanh":
        return L * E + 8 * u * torch.clamp(hmag + L * E, max=1.0) + tiny
    if kind == "sigmoid":
        return L * E + 8 * u * torch.clamp(hmag + L * E, max=1.0) + tiny
    if kind == "gelu":
        return L * E + 16 * u * Mz + tiny
    raise ConfigError(f"unknown activation {kind!r}")


def _stage_chain(layer: Affine, M: Tensor, E: Tensor, u: float, zmag: Tensor | None) -> tuple[Tensor, Tensor]:
    """Propagate (magnitude bound, error bound) through the model's operations behind one Affine."""
    stages = stages_of(layer)
    us = u + 2 * U64  # the model's rounding plus the float64 merge of stages into one map
    for i, st in enumerate(stages):
        W = torch.as_tensor(np.asarray(st.W, dtype=np.float64))
        b = torch.as_tensor(np.asarray(st.b, dtype=np.float64).reshape(-1))
        Wa = W.abs()
        E_new = E @ Wa.T
        if not st.exact:
            k = (W != 0).sum(1).to(torch.float64) + (b != 0).to(torch.float64)
            E_new = E_new + _gamma(k.clamp_min(1.0), us)[None, :] * ((M + E) @ Wa.T + b.abs())
        M = M @ Wa.T + b.abs()
        E = E_new
        if i == len(stages) - 1 and zmag is not None:
            M = torch.minimum(M, zmag)
    if not stages and zmag is not None:
        M = torch.minimum(M, zmag)
    return M, E


def _logit_errors(tn: _Net, X: Tensor, eps: Tensor, q: float) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(E_L, |z_L| bound, error and magnitude of the last hidden layer) for the model's dtype."""
    net = tn.source
    if net.dtype not in UNIT_ROUNDOFF:
        raise ConfigError(f"Network.dtype must be float32 or float64, got {net.dtype!r}")
    u = UNIT_ROUNDOFF[net.dtype]
    tiny = 1e-300 if net.dtype == "float64" else 1e-36
    ibp = _ibp_all(tn, X, eps, q)
    M = X.abs() + eps[:, None]
    E = u * M if net.dtype == "float32" else torch.zeros_like(M)
    affines = net.affines
    hE: Tensor | None = None
    hM: Tensor | None = None
    for j, layer in enumerate(affines):
        zl, zu = ibp[j]
        zmag = torch.maximum(zl.abs(), zu.abs())
        if j == len(affines) - 1:
            hE, hM = E, M
        M, E = _stage_chain(layer, M, E, u, zmag)
        if j < len(tn.kinds):

            kind = tn.kinds[j]
            hl, hu = _act_interval(kind, zl, zu)
            hmag = torch.maximum(hl.abs(), hu.abs())
            E = _act_error(kind, u, tiny, M, E, hmag, zl, zu)
            if kind == "relu":  # z <= zu and |z^ - z| <= E: where zu + E <= 0 both h and h^ are 0
                E = torch.where(zu + E <= 0, torch.zeros_like(E), E)
            M = hmag
    return E, M, hE, hM


def logit_rounding_errors(net: Network, X: np.ndarray, eps: np.ndarray, norm: str) -> np.ndarray:
    """Per-logit bounds (n, K) on |computed z_j - exact z_j| over the ball, for the model's dtype."""
    q = _dual(norm)
    tn = _Net.of(net)
    Xt, et = _inputs(net, X, eps)
    with torch.no_grad():
        E = _logit_errors(tn, Xt, et, q)[0]
    out: np.ndarray = E.numpy().copy()
    return out


def _rounding(tn: _Net, X: Tensor, eps: Tensor, q: float) -> Tensor:
    net = tn.source
    u = UNIT_ROUNDOFF.get(net.dtype, 2.0**-24)
    E, _, hE, hM = _logit_errors(tn, X, eps, q)
    last = net.affines[-1]
    K = E.shape[1]
    if K < 2:
        return torch.zeros(X.shape[0], dtype=torch.float64)
    st = stages_of(last)
    if len(st) == 1 and not st[0].exact and hE is not None and hM is not None and K <= 256:
        # local rounding of each logit, plus the exact propagation (W_j - W_k)(h^ - h) of earlier errors
        W = torch.as_tensor(np.asarray(st[0].W, dtype=np.float64))
        b = torch.as_tensor(np.asarray(st[0].b, dtype=np.float64).reshape(-1))
        k = (W != 0).sum(1).to(torch.float64) + (b != 0).to(torch.float64)
        loc = _gamma(k.clamp_min(1.0), u + 2 * U64)[None, :] * ((hM + hE) @ W.abs().T + b.abs())
        D = (W[:, None, :] - W[None, :, :]).abs().reshape(K * K, -1)
        prop = (hE @ D.T).reshape(-1, K, K)
        pair = loc[:, :, None] + loc[:, None, :] + prop
        pair = pair.masked_fill(torch.eye(K, dtype=torch.bool)[None], 0.0)
        r = pair.flatten(1).amax(1)
        r = torch.minimum(r, torch.topk(E, 2, dim=1).values.sum(1))
    else:
        r = torch.topk(E, 2, dim=1).values.sum(1)
    out: Tensor = r + 8 * u
    return out


def rounding_bound(net: Network, X: np.ndarray, eps: np.ndarray, norm: str) -> np.ndarray:
    """(n,) rigorous bound, for every x' in the ball, on |computed - exact| of any logit difference z_j - z_k.

    "computed" is the model evaluating the network in `net.dtype` (any summation order); the bound
    also covers a decision taken on softmax / logistic probabilities (an absolute 8u).
    """
    q = _dual(norm)
    tn = _Net.of(net)
    Xt, et = _inputs(net, X, eps)
    with torch.no_grad():
        out: np.ndarray = _rounding(tn, Xt, et, q).numpy().copy()
    return out


# ----------------------------------------------------------------------------------------
# Certifiers: radii by batched bisection on eps
# ----------------------------------------------------------------------------------------
CHUNK_ELEMENTS = 4_000_000  # float64 entries of the largest backward coefficient tensor per chunk of points


class _Evaluator:
    """certified(idx, eps): every margin lower bound exceeds the rounding bound, for the rows idx."""

    def __init__(self, tn: _Net, X: Tensor, y: Tensor, q: float, method: str, iterations: int) -> None:
        self.tn, self.X, self.y, self.q, self.method, self.iterations = tn, X, y, q, method, iterations
        self.work = np.zeros(X.shape[0], dtype=np.int64)

    def __call__(self, idx: np.ndarray, eps: np.ndarray) -> np.ndarray:
        if idx.size == 0:
            return np.zeros(0, dtype=bool)
        it = torch.from_numpy(idx)
        X, y = self.X[it], self.y[it]
        e = torch.from_numpy(np.ascontiguousarray(eps, dtype=np.float64))
        with torch.no_grad():
            rnd = _rounding(self.tn, X, e, self.q)
        lb, used = _margins(self.tn, X, e, self.q, y, self.method, self.iterations, target=rnd)
        self.work[idx] += used
        ok: np.ndarray = (lb.detach().amin(1) > rnd).numpy()
        return ok


def _scale(X: np.ndarray, norm: str) -> float:
    """A data scale for the first eps of the geometric growth: the median input norm (1 when zero)."""
    p = {"linf": np.inf, "l2": 2.0, "l1": 1.0}[norm]
    s = float(np.median(np.linalg.norm(X, ord=p, axis=1))) if X.size else 1.0
    return s if s > 0 and math.isfinite(s) else 1.0


class _BoundCertifier(Certifier):
    """Shared bisection driver; subclasses set `name` and `method`."""

    norms = NORMS
    method = "crown"

    def __init__(self, steps: int = 14, growth: int = 40, iterations: int = 20) -> None:
        who = type(self).__name__
        self.steps = work_budget(who, "steps", steps)
        self.growth = work_budget(who, "growth", growth)
        self.iterations = work_budget(who, "iterations", iterations)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, growth={self.growth})"

    def refuses(self, model: Model) -> str | None:
        net = network_of(model)
        return net if isinstance(net, str) else None

    def certify(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, upper: np.ndarray) -> Certificate:
        if norm not in self.norms:
            raise ConfigError(f"{self.name}: norm must be one of {', '.join(self.norms)}, got {norm!r}")
        Xa = np.asarray(X, dtype=np.float64)
        if Xa.ndim != 2:
            raise ConfigError(f"{self.name}: X must be 2-D, got shape {Xa.shape}")
        n = Xa.shape[0]
        net = network_of(model)
        if isinstance(net, str):
            return Certificate.empty(Xa, "", reason=net)
        if Xa.shape[1] != net.n_in:
            raise ConfigError(f"{self.name}: X has {Xa.shape[1]} columns, the network takes {net.n_in}")
        ya = np.asarray(y)
        up = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy()
        up[~(up >= 0)] = np.inf  # NaN: nothing known
        cert = Certificate.empty(Xa, "")
        if n == 0:
            return cert
        yt = _labels(ya, n, net.n_out)
        pred = np.asarray(model.predict(Xa))
        wrong = pred != ya
        cert.reason[wrong] = "misclassified"
        todo = np.flatnonzero(~wrong & np.all(np.isfinite(Xa), axis=1))
        tn = _Net.of(net)
        widths = [W.shape[0] for W in tn.Ws] + [tn.Ws[0].shape[1]]
        chunk = max(1, CHUNK_ELEMENTS // max(1, 2 * max(widths) ** 2))
        ev = _Evaluator(tn, torch.from_numpy(np.ascontiguousarray(Xa)), yt, _dual(norm), self.method, self.iterations)
        s0 = 1e-3 * _scale(Xa[todo], norm) if todo.size else 1.0
        for start in range(0, todo.size, chunk):
            part = todo[start:start + chunk]
            lo, notes = self._radius(ev, part, up[part], s0, len(tn.Ws) == 1, Xa[part], tn, _dual(norm))
            cert.lower[part] = lo
            cert.reason[part] = notes
        cert.work[:] = ev.work
        cert.method[cert.lower > 0] = self.name
        close = np.isfinite(up) & (cert.lower > 0) & (np.abs(cert.lower - up) <= 1e-9 * np.maximum(up, 1e-300))
        cert.exact[:] = close
        return cert

    def _radius(self, ev: _Evaluator, idx: np.ndarray, up: np.ndarray, s0: float, linear: bool, X: np.ndarray, tn: _Net,
                q: float) -> tuple[np.ndarray, np.ndarray]:
        m = idx.size
        notes = np.full(m, "", dtype=object)
        lo = np.zeros(m)
        hi = up.copy()
        ok0 = ev(idx, np.zeros(m))
        notes[~ok0] = "margin within the rounding bound at eps = 0"
        live = ok0.copy()
        if linear and bool(live.any()):
            cand = self._linear_radius(ev, idx[live], hi[live], X[live], tn, q)
            sel = np.flatnonzero(live)
            good = cand > 0
            lo[sel[good]] = cand[good]
            # a closed-form radius that verifies needs no bisection; the rest fall through
            live[sel[good]] = False
        # geometric growth where no upper bound is known
        eps = np.full(m, s0)
        grow = live & ~np.isfinite(hi)
        for _ in range(self.growth):
            g = np.flatnonzero(grow)
            if g.size == 0:
                break
            ok = ev(idx[g], eps[g])
            lo[g[ok]] = eps[g[ok]]
            hi[g[~ok]] = eps[g[~ok]]
            eps[g[ok]] *= 2.0
            grow[g[~ok]] = False
        notes[grow] = "not bracketed within the growth budget"
        live &= np.isfinite(hi)
        for _ in range(self.steps):
            b = np.flatnonzero(live)
            if b.size == 0:
                break
            mid = 0.5 * (lo[b] + hi[b])
            ok = ev(idx[b], mid)
            lo[b[ok]] = mid[ok]
            hi[b[~ok]] = mid[~ok]
        return lo, notes

    def _linear_radius(self, ev: _Evaluator, idx: np.ndarray, up: np.ndarray, X: np.ndarray, tn: _Net, q: float) -> np.ndarray:
        """For a single affine map: eps = min_k (m_k - rounding) / ||w_y - w_k||_q, verified (0 where it does not)."""
        W, b = tn.Ws[0].numpy(), tn.bs[0].numpy()
        y = ev.y[torch.from_numpy(idx)].numpy()
        Z = X @ W.T + b
        marg = Z[np.arange(idx.size), y][:, None] - Z
        D = W[y][:, None, :] - W[None, :, :]
        p = {1.0: 1.0, 2.0: 2.0, math.inf: np.inf}[q]
        nrm = np.linalg.norm(D, ord=p, axis=2)
        nrm[np.arange(idx.size), y] = np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            eps = np.where(nrm > 0, marg / nrm, np.inf)
        eps[np.arange(idx.size), y] = np.inf
        e0 = np.minimum(eps.min(1), np.where(np.isfinite(up), up, np.inf))
        e0 = np.where(np.isfinite(e0), e0, 0.0)
        out = np.zeros(idx.size)
        for _ in range(3):
            with torch.no_grad():
                rnd = _rounding(tn, torch.from_numpy(X), torch.from_numpy(e0), q).numpy()
            slack = 1e-12 * (np.abs(marg) + 1e-300)
            with np.errstate(divide="ignore", invalid="ignore"):
                cand = np.where(nrm > 0, (marg - rnd[:, None] - slack) / nrm, np.inf)
            cand[np.arange(idx.size), y] = np.inf
            c = np.clip(np.minimum(cand.min(1), e0), 0.0, None)
            c = np.where(np.isfinite(c), c, 0.0) * (1 - 1e-12)
            ok = ev(idx, c) & (c > 0)
            out = np.where(ok & (c > out), c, out)
            e0 = c
        return out


class IBPCertifier(_BoundCertifier):
    """Interval bound propagation (Gowal et al. 2018) inside a bisection on eps."""

    name = "ibp"
    method = "ibp"

    def __init__(self, steps: int = 14, growth: int = 40) -> None:
        super().__init__(steps=steps, growth=growth)


class CrownCertifier(_BoundCertifier):
    """CROWN (Zhang et al. 2018) with CROWN intermediate bounds, inside a bisection on eps."""

    name = "crown"
    method = "crown"

    def __init__(self, steps: int = 14, growth: int = 40) -> None:
        super().__init__(steps=steps, growth=growth)


class AlphaCrownCertifier(_BoundCertifier):
    """alpha-CROWN (Xu et al. 2021): CROWN with optimised ReLU lower slopes, never below CROWN."""

    name = "alpha-crown"
    method = "alpha-crown"

    def __init__(self, steps: int = 14, growth: int = 40, iterations: int = 20) -> None:
        super().__init__(steps=steps, growth=growth, iterations=iterations)

    def __repr__(self) -> str:
        return f"AlphaCrownCertifier(steps={self.steps}, growth={self.growth}, iterations={self.iterations})"


__all__ = [
    "METHODS",
    "NORMS",
    "AlphaCrownCertifier",
    "CrownCertifier",
    "IBPCertifier",
    "layer_bounds",
    "logit_rounding_errors",
    "margin_bounds",
    "rounding_bound",
]
