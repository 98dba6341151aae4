"""Choosing a certifier per model and merging its certificate into an attack result.

`certifier_names()` lists what can be asked for; `choose(model, norm, method)` picks the
strongest certifier the model and norm allow ("auto"); `certify_result(...)` runs it on the points
whose bracket is still open and folds the proof into a `RadiusResult`: lower bounds (never above a
verified adversarial: a contradiction drops the bound and raises `unsound_certificate`), witnesses
of complete methods (re-verified with the model's predict before they count), and per point
`exact` and `certifier` (the method, or why there is none).

Tree ensembles and linear models are certified by their exact attacks (Kantchelian's MILP,
Veritas, the closed form), which run as part of the attack ensemble; "auto" adds nothing for them.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..models.base import Model
from .base import Certificate, Certifier

log = logging.getLogger(__name__)

# ReLU networks with at most this many hidden units get the complete MILP after CROWN under "auto"
AUTO_MILP_MAX_UNITS = 64
# exact: the lower bound is within 0.01% of the verified radius (a float32 model's own rounding leaves a band of
# about 1e-5..1e-4 relative at its decision boundary, inside which no certificate can be sharper)
CERT_RTOL = 1e-4


# name -> (module in this package, class)
CERTIFIERS: dict[str, tuple[str, str]] = {
    "ibp": ("crown", "IBPCertifier"), "crown": ("crown", "CrownCertifier"), "alpha-crown": ("crown", "AlphaCrownCertifier"),
    "milp": ("relu_milp", "ReluMilpCertifier"), "kernel": ("kernel", "KernelCertifier"),
}


def _certifier_class(name: str) -> type[Certifier]:
    """The class behind a certifier name (its module imported on first use)."""
    import importlib

    module, cls = CERTIFIERS[name]
    out: type[Certifier] = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    return out


def build_certifier(name: str, budgets: dict[str, Any] | None = None) -> Certifier:
    """The certifier `name` with the budget keywords its constructor takes (others are for other certifiers)."""
    import inspect

    cls = _certifier_class(name)
    params = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in (budgets or {}).items() if k in params})


def certifier_names() -> list[str]:
    """The names `certify=` accepts: "auto", "none" and each certifier."""
    return ["auto", "none", *CERTIFIERS]


def check_method(method: Any) -> str:
    """`certify=` as a method name: True -> "auto", False/None -> "none"; ConfigError for anything else."""
    if method is True:
        return "auto"
    if method is False or method is None:
        return "none"
    if isinstance(method, str) and method.lower() in certifier_names():
        return method.lower()
    raise ConfigError(f"unknown certifier {method!r}; use one of {', '.join(certifier_names())} (or True/False)")


def _hidden_relus(model: Model) -> int | None:
    """Total hidden units of a pure-ReLU feed-forward model, or None when it is not one."""
    from .network import Activation, network_of

    net = network_of(model)
    if isinstance(net, str):
        return None
    acts = [layer for layer in net.layers if isinstance(layer, Activation)]
    if any(a.kind != "relu" for a in acts):
        return None
    return sum(int(layer.W.shape[0]) for layer in net.affines[:-1])


def choose(model: Model, norm: str, method: str, budgets: dict[str, Any] | None = None) -> tuple[list[Certifier], str]:
    """The certifiers to run for `model` under `norm` (strongest last), or [] and the reason there are none."""
    budgets = dict(budgets or {})
    method = check_method(method)
    if method == "none":
        return [], "not requested"
    caps = model.capabilities
    if method == "auto":
        if "tree_ensemble" in caps:
            return [], "exact tree attack"
        if "linear" in caps:
            return [], "closed form"
        from ..models.rfm import RFM

        if isinstance(model, RFM):
            names = ["kernel"]
        else:
            from .network import network_of

            net = network_of(model)
            if isinstance(net, str):
                return [], f"no certifier: {net}"
            names = ["crown"]
            units = _hidden_relus(model)
            if units is not None and units <= AUTO_MILP_MAX_UNITS and norm in ("linf", "l1"):
                names.append("milp")
    else:
        names = [method]
    out: list[Certifier] = []
    reasons: list[str] = []
    for name in names:
        cert = build_certifier(name, budgets)
        why = cert.refuses(model)
        if why is None and norm not in cert.norms:
            why = f"{name} certifies {', '.join(cert.norms)}, not {norm}"
        if why is None:
            out.append(cert)
        else:
            reasons.append(f"{name}: {why}")
    return out, "; ".join(reasons)


def certify_result(model: Model, X: np.ndarray, y: np.ndarray, res: Any, method: Any = "auto",
                   budgets: dict[str, Any] | None = None) -> Any:
    """Fold certificates into a RadiusResult `res` (in place, also returned); see the module docstring."""
    from ..attacks.base import verify
    from ..attacks.ensemble import sound_lower

    method = check_method(method)
    n = X.shape[0]
    cc = np.ones(n, dtype=bool) if res.clean_correct is None else np.asarray(res.clean_correct, dtype=bool)
    lower = np.zeros(n) if res.lower_bound is None else np.asarray(res.lower_bound, dtype=np.float64).copy()
    dist = np.asarray(res.distance, dtype=np.float64)
    def closed(lower: np.ndarray, dist: np.ndarray) -> np.ndarray:
        out: np.ndarray = ~cc | (lower >= dist * (1 - CERT_RTOL) - 1e-12)
        return out

    exact = closed(lower, dist)
    label = np.full(n, "", dtype=object)
    label[~cc] = "misclassified"
    have = cc & (lower > 0)
    label[have] = res.path if res.path == "exact" else "attack"
    certs, why = choose(model, res.norm, method, budgets)
    if method != "none" and not certs:
        label[cc & ~have] = why
    flags: dict[str, str] = {}
    for cert in certs:
        todo = np.flatnonzero(cc & ~exact)
        if todo.size == 0:
            break
        try:
            c: Certificate = cert.certify(model, X[todo], y[todo], res.norm, dist[todo])
        except Exception as exc:  # noqa: BLE001 - a certifier failure leaves lower bounds as they were, with the reason
            log.warning("certifier %s failed: %s: %s", cert.name, type(exc).__name__, exc)
            label[todo[lower[todo] <= 0]] = f"{cert.name} failed: {type(exc).__name__}: {exc}"[:200]
            continue
        flags.update(c.flags)
        if c.witness.any():
            w = np.flatnonzero(c.witness)
            ok, d = verify(model, X[todo[w]], y[todo[w]], np.asarray(c.x_witness, dtype=np.float64)[w], res.norm, None)
            better = ok & (d < dist[todo[w]])
            idx = todo[w[better]]
            if idx.size:
                res.x_adv[idx] = np.asarray(c.x_witness, dtype=np.float64)[w[better]]
                dist[idx] = d[better]
                res.success[idx] = True
                if res.by_attack is not None:
                    res.by_attack[idx] = cert.name
            if (~ok).any():
                flags["rejected_witness"] = f"{int((~ok).sum())} witness(es) of {cert.name} did not flip the model and were dropped"
        new = np.asarray(c.lower, dtype=np.float64)
        gain = new > lower[todo]
        lower[todo[gain]] = new[gain]
        label[todo[gain]] = cert.name
        reasons = np.asarray(c.reason, dtype=object)
        for j in np.flatnonzero(~gain & (lower[todo] <= 0)):
            if reasons[j]:
                label[todo[j]] = f"{cert.name}: {reasons[j]}"
        exact = closed(lower, dist)
    res.distance = dist
    lower, bad, flag = sound_lower(lower, dist, X)
    if flag is not None:
        flags[flag[0]] = flag[1]
        label[bad] = "dropped: contradicted by a verified adversarial"
    lower[~cc] = 0.0
    res.lower_bound = lower
    res.exact = closed(lower, dist) & ~bad
    res.certifier = label
    res.flags = {**dict(res.flags or {}), **flags}
    return res


__all__ = ["AUTO_MILP_MAX_UNITS", "CERTIFIERS", "build_certifier", "certifier_names", "certify_result", "check_method", "choose"]
