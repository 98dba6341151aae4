"""Reliability flags for an evaluation, in the spirit of AutoAttack's checks.py.

Each check is a small function returning `(flag name, message)` when something looks unreliable,
else None. The ensemble collects them into `result.flags` ({name: message}); a flag does not change
any number, it tells the reader which numbers to distrust.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np

from ..models.base import Model, TorchLogits

log = logging.getLogger(__name__)

Flag = tuple[str, str]


def non_monotone(eps: Sequence[float] | np.ndarray, robust_acc: Sequence[float] | np.ndarray, tol: float = 1e-12) -> Flag | None:
    """Robust accuracy must not increase with eps; when it does, the attack missed points at the larger eps."""
    e = np.asarray(eps, dtype=np.float64)
    ra = np.asarray(robust_acc, dtype=np.float64)
    order = np.argsort(e, kind="stable")
    e, ra = e[order], ra[order]
    ok = np.isfinite(ra)
    e, ra = e[ok], ra[ok]
    bad = np.flatnonzero(np.diff(ra) > tol)
    if bad.size == 0:
        return None
    i = int(bad[0])
    return ("non_monotone_eps", f"robust accuracy rises from {ra[i]:.4g} at eps={e[i]:g} to {ra[i + 1]:.4g} at eps={e[i + 1]:g}; "
            "the attack is too weak or masked at the larger eps (use a minimal-radius threat model)")


def black_box_beats_white_box(black_box: np.ndarray, white_box: np.ndarray, ratio: float = 0.95,
                              min_fraction: float = 0.1) -> Flag | None:
    """A decision-based attack finding much smaller adversarials than the gradient attacks.

    The gradient attacks are then masked (zero or misleading gradients) or stuck in a local optimum
    (a farther region of another class); either way their radii alone would overstate robustness.

    black_box/white_box are per-point best distances (NaN where the attack did not run, inf where it
    found nothing). Fires when bb < ratio*wb on more than min_fraction of the points both ran on.
    """
    bb = np.asarray(black_box, dtype=np.float64)
    wb = np.asarray(white_box, dtype=np.float64)
    both = ~np.isnan(bb) & ~np.isnan(wb) & (np.isfinite(bb) | np.isfinite(wb))
    if not both.any():
        return None
    beaten = both & np.isfinite(bb) & (bb < ratio * wb)
    frac = beaten.sum() / both.sum()
    if frac <= min_fraction:
        return None
    return ("black_box_beats_white_box", f"the decision-based attack found adversarials under {ratio:g}x the best gradient-attack "
            f"distance on {beaten.sum()}/{both.sum()} points ({frac:.0%}); the gradient attacks are masked or stuck in local optima "
            "there, so only the minimum over all attacks (the reported radius) is trustworthy")


def black_box_breaks_robust(n_broken: int, n_robust: int, min_fraction: float = 0.0) -> Flag | None:
    """Fixed-eps version (AutoAttack's Square check): the black box broke points every gradient attack left robust."""
    if n_robust <= 0 or n_broken <= 0 or n_broken / n_robust <= min_fraction:
        return None
    return ("black_box_beats_white_box", f"the decision-based attack broke {n_broken} of {n_robust} points the gradient attacks "
            "left robust; gradients may be masked")


def margin_gradient_norms(model: Model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-point norm of the gradient of the logit margin z_y - max_{k!=y} z_k at the clean points."""
    import torch

    if X.shape[0] == 0:
        return np.zeros(0)
    x = torch.as_tensor(np.asarray(X, dtype=np.float64)).clone().requires_grad_(True)
    z = cast(TorchLogits, model).torch_logits(x)  # the callers (zero_gradients) check the capability first
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    zy = z.gather(1, yt[:, None])[:, 0]
    other = z.clone()
    other.scatter_(1, yt[:, None], float("-inf"))
    margin = zy - other.max(dim=1).values
    (g,) = torch.autograd.grad(margin.sum(), x)
    norms: np.ndarray = g.detach().double().norm(dim=1).numpy()
    return norms


def zero_gradients(model: Model, X: np.ndarray, y: np.ndarray, threshold: float = 1e-12,
                   min_fraction: float = 0.1) -> Flag | None:
    """Many points with a (numerically) zero margin gradient defeat gradient attacks there."""
    if "torch_logits" not in model.capabilities or X.shape[0] == 0:
        return None
    try:
        gn = margin_gradient_norms(model, X, y)
    except Exception as exc:  # noqa: BLE001 - a model whose logits cannot be differentiated is flagged, not fatal
        return ("zero_gradients", f"the margin gradient could not be computed ({type(exc).__name__}: {exc})")
    frac = float(np.mean(gn < threshold))
    if frac <= min_fraction:
        return None
    return ("zero_gradients", f"{frac:.0%} of the points have a margin gradient of norm < {threshold:g}; gradient attacks "
            "cannot move them, so their radii come from the other attacks")


def nondeterministic(model: Model, X: np.ndarray, atol: float = 1e-9) -> Flag | None:
    """Predicting the same points twice must give the same outputs, else verification is meaningless."""
    if X.shape[0] == 0:
        return None
    p1 = np.asarray(model.predict_proba(X), dtype=np.float64)
    p2 = np.asarray(model.predict_proba(X), dtype=np.float64)
    diff = float(np.max(np.abs(p1 - p2))) if p1.size else 0.0
    if diff <= atol and np.array_equal(np.argmax(p1, 1), np.argmax(p2, 1)):
        return None
    return ("nondeterministic", f"two predictions of the same points differ (max |dp| = {diff:.3g}); the model is random at "
            "inference, so radii are not reproducible (evaluate an expectation over its randomness)")


def softmax_output(model: Model, X: np.ndarray) -> Flag | None:
    """torch_logits returning probabilities (rows summing to 1) flattens the loss that gradient attacks climb."""
    if "torch_logits" not in model.capabilities or X.shape[0] == 0:
        return None
    import torch

    with torch.no_grad():
        z = cast(TorchLogits, model).torch_logits(torch.as_tensor(np.asarray(X[:64], dtype=np.float64))).double().numpy()
    if np.all(z >= -1e-9) and np.allclose(z.sum(axis=1), 1.0, atol=1e-5):
        return ("softmax_output", "torch_logits returns probabilities (rows sum to 1); return pre-softmax logits so "
                "gradient attacks see an unsaturated loss")
    return None


def exact_not_certified(distance: np.ndarray, lower_bound: np.ndarray | None, exact_ran: np.ndarray,
                        rtol: float = 1e-6) -> Flag | None:
    """Points an exact attack worked on but could not certify (time limit): their radius is only an upper bound."""
    ran = np.asarray(exact_ran, dtype=bool)
    if not ran.any():
        return None
    d = np.asarray(distance, dtype=np.float64)
    lb = np.zeros_like(d) if lower_bound is None else np.asarray(lower_bound, dtype=np.float64)
    certified = np.isfinite(d) & (lb >= d * (1 - rtol) - 1e-12)
    bad = ran & ~certified
    if not bad.any():
        return None
    return ("exact_not_certified", f"{int(bad.sum())}/{int(ran.sum())} points were not certified by the exact attack "
            "(time limit); their radius is an upper bound and lower_bound holds the certified part (raise the time limit)")


def unsound_certificates(distance: np.ndarray, lower_bound: np.ndarray, rtol: float = 1e-6,
                         atol: float | np.floating[Any] | np.ndarray = 1e-9) -> np.ndarray:
    """Per point: a certified lower bound above a verified adversarial's distance (the certificate is wrong).

    atol absorbs the float32 grid of tree thresholds (a few ulp of the point's largest feature).
    """
    d = np.asarray(distance, dtype=np.float64)
    lb = np.asarray(lower_bound, dtype=np.float64)
    bad: np.ndarray = np.isfinite(d) & (lb > d * (1 + rtol) + atol)
    return bad


def unsound_certificate(bad: np.ndarray) -> Flag | None:
    """The flag for points whose certificate a verified adversarial contradicts (their bounds were dropped)."""
    if not bad.any():
        return None
    return ("unsound_certificate", f"on {int(bad.sum())} points a certified lower bound exceeded the distance of a verified "
            "adversarial; those certificates were dropped (lower bound 0). This is a bug: please report the model")


def rejected_candidates(rejected: int) -> Flag | None:
    """Candidates that attacks claimed but that did not flip the model or broke the budget."""
    if rejected <= 0:
        return None
    return ("rejected_candidates", f"{rejected} claimed adversarial candidates failed re-verification with the model and were "
            "dropped (float32 rounding at the boundary, or an attack/model mismatch)")


def unbroken_points(distance: np.ndarray, clean_correct: np.ndarray) -> Flag | None:
    """Correctly classified points no attack could move: a minimal radius should always exist."""
    d = np.asarray(distance, dtype=np.float64)
    bad = np.asarray(clean_correct, dtype=bool) & ~np.isfinite(d)
    if not bad.any():
        return None
    return ("no_adversarial_found", f"no attack found an adversarial for {int(bad.sum())} correctly classified points; "
            "their radius is reported as inf (the model may be constant there, or the attacks too weak)")


def attack_failures(errors: dict[str, str]) -> Flag | None:
    if not errors:
        return None
    return ("attack_failed", "; ".join(f"{k}: {v}" for k, v in errors.items())[:500])


def black_box_only(path: str, note: str | None) -> Flag | None:
    """The model reached only the decision-based attack: its radii are upper bounds from a weak path."""
    if path != "black-box":
        return None
    why = f" ({note})" if note else ""
    return ("black_box_only", f"only the black-box attack applied to this model{why}; its radii are upper bounds from a query-only "
            "search and can be several times the true minimal radius")


def model_checks(model: Model, X: np.ndarray, y: np.ndarray) -> list[Flag]:
    """The checks that only need the model and the clean points."""
    out = [nondeterministic(model, X)]
    if "torch_logits" in model.capabilities:
        out += [softmax_output(model, X), zero_gradients(model, X, y)]
    return [f for f in out if f is not None]


def collect(flags: Iterable[Flag | None]) -> dict[str, str]:
    """{name: message} of the flags that fired (later messages of a name are appended)."""
    out: dict[str, str] = {}
    for f in flags:
        if f is None:
            continue
        name, msg = f
        out[name] = f"{out[name]}; {msg}" if name in out else msg
    return out


__all__ = [
    "Flag",
    "attack_failures",
    "black_box_beats_white_box",
    "black_box_breaks_robust",
    "black_box_only",
    "collect",
    "exact_not_certified",
    "margin_gradient_norms",
    "model_checks",
    "non_monotone",
    "nondeterministic",
    "rejected_candidates",
    "softmax_output",
    "unbroken_points",
    "unsound_certificate",
    "unsound_certificates",
    "zero_gradients",
]
