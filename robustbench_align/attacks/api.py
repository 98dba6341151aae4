"""The public entry points: `minimal_radius`, `robust_accuracy`, and the fixed-eps runs the runner uses.

Each builds the attack list (explicit attacks, or the threat model's steps the model's
capabilities allow) and runs it through the per-point-best `EnsembleAttack`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import AttackError
from ..models.base import Model, wrap
from .base import Attack, check_eps, check_inputs, check_norm
from .ensemble import EnsembleAttack, Step
from .results import FixedEpsResult, RadiusResult


def _steps(model: Model, norm: str, attacks: Any, threat: Any, mode: str, seed: int, effort: str,
           kw: dict[str, Any]) -> list[Step]:
    """Attacks for a run: explicit ones (strict: each must apply) or a threat model's applicable ones."""
    from .registry import COMMON_KWARGS, attack_kwargs, build_attack, fixed_inner

    common = {"seed": int(seed), **kw}
    steps: list[Step] = []
    accepted_any: set[str] = set()
    takes_any = False

    def build(name: str, extra: Mapping[str, Any], strict: bool = True) -> Attack:
        nonlocal takes_any
        names = attack_kwargs(name)
        if names is None:
            takes_any = True
        else:
            accepted_any.update(names)
            bad = set(extra) - names - COMMON_KWARGS
            if bad and strict:
                raise AttackError(f"attack {name!r} takes no argument {', '.join(sorted(bad))}; it accepts {', '.join(sorted(names)) or 'none'}")
        return build_attack(name, {**common, **extra})

    if attacks is None:
        for name, skw in threat.resolve(model, effort):
            if mode == "fixed" and fixed_inner(name):
                name = fixed_inner(name)
            steps.append(Step(name, build(name, skw, strict=False)))  # registry data: kwargs a step does not take are dropped
    else:
        items = [attacks] if isinstance(attacks, (str, Attack)) else list(attacks)
        if not items:
            raise AttackError("attacks is empty; pass attack names (see list_attacks()) or leave it None for the threat model's")
        for item in items:
            if isinstance(item, Attack):
                steps.append(Step(item.name, item))
                takes_any = True
            elif isinstance(item, str):
                steps.append(Step(item.lower(), build(item, {})))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Mapping):
                steps.append(Step(item[0].lower(), build(item[0], item[1])))
            else:
                raise AttackError(f"cannot use {item!r} as an attack; pass registry names, (name, kwargs) pairs or Attack instances")
    unknown = set(kw) - COMMON_KWARGS - accepted_any
    if unknown and not takes_any:
        raise AttackError(f"no attack in this run takes argument {', '.join(sorted(unknown))}; "
                          f"the attacks accept {', '.join(sorted(accepted_any - {'seed'})) or 'nothing else'}")
    return steps


def _prepare(model: Any, X: Any, y: Any, norm: str) -> tuple[Model, np.ndarray, np.ndarray, str]:
    m = wrap(model)
    norm = check_norm(norm)
    X, y = check_inputs(m, X, y)
    return m, X, y, norm


# ----------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------
def minimal_radius(model: Any, X: Any, y: Any, norm: str = "linf", *, attacks: Any = None, threat: Any = None,
                   seed: int = 0, certify: Any = True, certify_budgets: Mapping[str, Any] | None = None, **kw: Any) -> RadiusResult:
    """Per-point minimal adversarial distance under `norm`, bracketed: the best verified adversarial over an
    attack ensemble (an upper bound on the true radius) and a certified lower bound.

    attacks: registry names / (name, kwargs) / Attack instances (each must apply to the model);
    default: the threat model's attacks the model's capabilities allow (threat defaults to the
    norm's, e.g. "linf"; a threat model sets the norm). certify: True/"auto" (the strongest
    certifier the model allows: the exact attacks for trees and linear models, CROWN for
    feed-forward torch models plus the complete MILP for small ReLU nets, the kernel bound for
    RFM/RFAM), a certifier name ("crown", "alpha-crown", "ibp", "milp", "kernel"), or False; the
    result's lower_bound, exact and certifier are filled per point. certify_budgets: work budgets
    for the certifiers (steps, iterations, node_limit, ...). Extra keywords: effort ("fast",
    "default", "full"), checks (bool), and attack arguments such as time_limit, passed to attacks
    that take them.
    """
    from ..certify.api import certify_result, check_method, choose
    from .registry import default_threat, get_threat_model

    method = check_method(certify)
    effort = kw.pop("effort", "default")
    do_checks = bool(kw.pop("checks", True))
    if threat is not None:
        tm = get_threat_model(threat)
        if tm.kind != "minimal":
            raise AttackError(f"threat model {tm.name!r} is fixed-eps (robust accuracy at {', '.join(f'{e:g}' for e in tm.eps)} only); "
                              f"use robust_accuracy(..., threat={tm.name!r})")
        norm = tm.norm
    m, X, y, norm = _prepare(model, X, y, norm)
    if threat is None:
        tm = default_threat(norm)
    steps = _steps(m, norm, attacks, tm, "minimal", seed, effort, kw)
    choose(m, norm, method, dict(certify_budgets or {}))  # a bad certifier budget fails before any attack runs
    res = EnsembleAttack(steps, checks=do_checks).run(m, X, y, norm)
    out: RadiusResult = certify_result(m, X, y, res, method, dict(certify_budgets or {}))
    return out


def fixed_eps_run(model: Any, X: Any, y: Any, norm: str = "linf", eps: Any = None, *, attacks: Any = None,
                  threat: Any = None, seed: int = 0, carry_over: bool | None = None, **kw: Any) -> FixedEpsResult:
    """Robust accuracy at fixed eps values by fixed-eps attacks (minimal ones thresholded), AutoAttack style."""
    from .registry import default_threat, get_threat_model

    effort = kw.pop("effort", "default")
    do_checks = bool(kw.pop("checks", True))
    tm = get_threat_model(threat) if threat is not None else None
    if tm is not None:
        norm = tm.norm
    m, X, y, norm = _prepare(model, X, y, norm)
    if tm is None:
        tm = default_threat(norm)
    eps_arr = check_eps(tm.eps if eps is None else eps)
    if carry_over is None:
        carry_over = tm.carry_over
    steps = _steps(m, norm, attacks, tm, "fixed", seed, effort, kw)
    return EnsembleAttack(steps, checks=do_checks).run_fixed(m, X, y, norm, eps_arr, carry_over=carry_over)


def robust_accuracy(model: Any, X: Any, y: Any, norm: str = "linf", eps: Any = None, *, attacks: Any = None, seed: int = 0,
                    from_radius: bool = True, threat: Any = None, **kw: Any) -> Any:
    """Robust accuracy at each eps as a DataFrame (eps, robust_accuracy, clean_accuracy).

    from_radius=True thresholds one minimal-radius run (monotone by construction); False runs the
    attacks per eps (fixed-eps attacks as given; a fixed threat model such as "paper-pgd" always
    does). eps defaults to the threat model's grid. df.attrs holds flags, attacks and rejected.
    """
    import pandas as pd

    from .registry import default_threat, get_threat_model

    tm = get_threat_model(threat) if threat is not None else None
    if tm is not None:
        norm = tm.norm
        if tm.kind == "fixed":
            from_radius = False
    norm = check_norm(norm)
    tm = tm or default_threat(norm)
    eps_arr = check_eps(tm.eps if eps is None else eps)
    if from_radius:
        res = minimal_radius(model, X, y, norm, attacks=attacks, threat=threat, seed=seed, **kw)
        ra, clean, flags, used, rej = res.robust_accuracy(eps_arr), res.clean_accuracy, res.flags, res.attacks_used, res.rejected
    else:
        fr = fixed_eps_run(model, X, y, norm, eps_arr, attacks=attacks, threat=threat, seed=seed, **kw)
        ra = np.array([fr.robust(e).mean() if fr.clean_correct.size else np.nan for e in eps_arr])
        clean, flags, used, rej = fr.clean_accuracy, fr.flags, fr.attacks_used, fr.rejected
    df = pd.DataFrame({"eps": eps_arr, "robust_accuracy": ra, "clean_accuracy": clean})
    df.attrs.update({"norm": norm, "flags": dict(flags), "attacks": list(used), "rejected": int(rej)})
    return df


def fixed_eps_per_point(model: Any, X: Any, y: Any, *, threat: Any, seed: int = 0, eps: Any = None,
                        attacks: Any = None, **kw: Any) -> tuple[dict[float, np.ndarray], list[str], int, dict[str, str]]:
    """For the runner: per eps the per-point robustness (True = robust), attacks used, rejected count, flags."""
    fr = fixed_eps_run(model, X, y, eps=eps, attacks=attacks, threat=threat, seed=seed, **kw)
    return {float(e): fr.robust(e) for e in fr.eps}, fr.attacks_used, fr.rejected, fr.flags


__all__ = ["FixedEpsResult", "RadiusResult", "fixed_eps_per_point", "fixed_eps_run", "minimal_radius", "robust_accuracy"]
