"""The per-point-best attack ensemble and the public entry points `minimal_radius` and `robust_accuracy`.

Minimal mode: every attack runs in order on every point that is not yet settled (clean-misclassified
points have radius 0; points an exact attack certified need nothing more), and each point keeps the
smallest verified distance any attack found. Fixed-eps mode (AutoAttack's trick): later attacks run
only on the points still robust at that eps. Either way every candidate is re-predicted with the
model and checked against the budget before it counts; claimed candidates that fail are dropped and
counted in `rejected`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import AttackError
from ..models.base import Model, wrap
from .base import (
    BUDGET_RTOL,
    AttackResult,
    Attack,
    FixedEpsAttack,
    MinimalAttack,
    applicable_names,
    check_eps,
    check_inputs,
    check_norm,
    verify,
)
from . import checks as chk

log = logging.getLogger(__name__)

CERT_RTOL = 1e-6


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------
@dataclass
class RadiusResult(AttackResult):
    """An AttackResult of a minimal-radius run, with the robust-accuracy curve helpers.

    per_attack[name] holds each attack's own verified distances (NaN where it did not run, inf
    where it found nothing); attack_times its wall time; clean_correct the clean correctness.
    """

    clean_correct: np.ndarray | None = None
    attacks_used: list[str] = field(default_factory=list)
    attack_times: dict[str, float] = field(default_factory=dict)
    attack_rejected: dict[str, int] = field(default_factory=dict)
    per_attack: dict[str, np.ndarray] = field(default_factory=dict)

    def curve(self, eps_grid: Sequence[float] | None = None) -> "Any":
        """Robust accuracy vs eps as a DataFrame (eps, robust_accuracy); eps 0 gives the clean accuracy."""
        import pandas as pd

        from .registry import default_eps_grid

        e = np.asarray(default_eps_grid(self.norm) if eps_grid is None else eps_grid, dtype=np.float64).ravel()
        if e.size == 0 or not np.all(np.isfinite(e)) or np.any(e < 0):
            raise AttackError(f"eps grid must be finite and >= 0, got {eps_grid!r}")
        return pd.DataFrame({"eps": e, "robust_accuracy": self.robust_accuracy(e)})

    def auc(self, max_eps: float | None = None) -> float:
        """Normalised area under the robust-accuracy curve on [0, max_eps] (1 = robust at every eps there).

        Exact for the step curve: (1/max_eps) * integral of RA = mean over points of min(d, max_eps)/max_eps.
        """
        from .registry import default_eps_grid

        e = _as_eps(max(default_eps_grid(self.norm)) if max_eps is None else max_eps)
        if e.size != 1:
            raise AttackError(f"max_eps must be one number, got {max_eps!r}")
        m = float(e[0])
        if self.n == 0:
            return float("nan")
        return float(np.mean(np.minimum(self.distance, m)) / m)

    def optimality(self, max_eps: float | None = None) -> dict[str, float]:
        """AttackBench's optimality of each attack against the ensemble's per-point best, on [0, max_eps].

        1 - (area_a - area_best) / (clean_acc * max_eps - area_best), with area the integral of the
        robust-accuracy curve; 1 = the attack alone matches the ensemble. Points an attack did not
        run on (certified or misclassified earlier) count at the ensemble's distance.
        """
        from .registry import default_eps_grid

        e = _as_eps(max(default_eps_grid(self.norm)) if max_eps is None else max_eps)
        if e.size != 1:
            raise AttackError(f"max_eps must be one number, got {max_eps!r}")
        m = float(e[0])
        if self.n == 0:
            return {k: float("nan") for k in self.per_attack}
        cc = np.ones(self.n, dtype=bool) if self.clean_correct is None else self.clean_correct
        best_area = float(np.mean(np.minimum(self.distance, m)))
        worst = float(np.mean(cc)) * m
        out = {}
        for name, d in self.per_attack.items():
            d = np.where(np.isnan(d), self.distance, d)
            area = float(np.mean(np.minimum(d, m)))
            out[name] = float(1.0 - (area - best_area) / (worst - best_area)) if worst > best_area else float("nan")
        return out

    @property
    def median(self) -> float:
        """Median radius over the correctly classified points (0 when there are none)."""
        cc = np.ones(self.n, dtype=bool) if self.clean_correct is None else self.clean_correct
        return float(np.median(self.distance[cc])) if cc.any() else 0.0

    @property
    def clean_accuracy(self) -> float:
        if self.clean_correct is None or self.n == 0:
            return float("nan")
        return float(np.mean(self.clean_correct))


@dataclass
class FixedEpsResult:
    """Robust accuracy at fixed eps values: one AttackResult per eps (distance inf = robust there)."""

    eps: np.ndarray
    results: dict[float, AttackResult]
    clean_correct: np.ndarray
    norm: str
    attacks_used: list[str] = field(default_factory=list)
    attack_times: dict[str, float] = field(default_factory=dict)
    rejected: int = 0
    flags: dict[str, str] = field(default_factory=dict)

    def robust(self, eps: float) -> np.ndarray:
        """Per-point: True where no verified adversarial within eps was found."""
        return ~self.results[float(eps)].success

    def certified(self, eps: float) -> np.ndarray:
        """Per-point: True where an exact attack's lower bound proves robustness at eps."""
        r = self.results[float(eps)]
        return ~r.success & (r.lower_bound > float(eps)) if r.lower_bound is not None else np.zeros(r.n, dtype=bool)

    @property
    def robust_accuracy(self) -> np.ndarray:
        return np.array([self.robust(e).mean() if self.clean_correct.size else np.nan for e in self.eps])

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean()) if self.clean_correct.size else float("nan")


# ----------------------------------------------------------------------------------------
# The ensemble
# ----------------------------------------------------------------------------------------
@dataclass
class _Step:
    label: str
    attack: Attack


def _is_black_box(attack: Attack) -> bool:
    return set(attack.requires) <= {"predict_proba"}


def _is_white_box(attack: Attack) -> bool:
    return "torch_logits" in set(attack.requires)


def _to_minimal(attack: Attack) -> Attack:
    if isinstance(attack, MinimalAttack) or not isinstance(attack, FixedEpsAttack):
        return attack
    try:
        from .bisection import MinimalByBisection
    except ImportError as exc:
        raise AttackError(f"fixed-eps attack {attack.name!r} needs bisection to give a minimal radius, which is not available ({exc})") from None
    return MinimalByBisection(attack)


class Refine(MinimalAttack):
    """Shrinks known radii with a fixed-eps attack (e.g. AutoAttack-based refinement of FMN/FAB radii).

    Given each point's best distance so far (`run_from`), it asks the fixed-eps attack for an
    adversarial at eps a little below it, for `rounds` rounds, stopping for a point at its first
    failure. Attacks taking one eps per point run once per round; others once per group of points
    whose bands [shrink[0], shrink[1]] * radius share an eps, at most `max_groups` calls per round
    (largest groups first). Without known radii (`run`) it falls back to bisection.
    """

    name = "refine"

    def __init__(self, fixed_eps_attack: FixedEpsAttack, rounds: int = 1, shrink: tuple[float, float] = (0.8, 0.97),
                 max_groups: int = 4, time_limit: float | None = None):
        if not isinstance(fixed_eps_attack, FixedEpsAttack):
            raise AttackError(f"refine wraps a FixedEpsAttack, got {type(fixed_eps_attack).__name__}")
        lo, hi = (float(v) for v in shrink)
        if not (0 < lo <= hi < 1):
            raise AttackError(f"refine: shrink must satisfy 0 < lo <= hi < 1, got {shrink!r}")
        if int(rounds) != rounds or rounds < 1 or int(max_groups) != max_groups or max_groups < 1:
            raise AttackError("refine: rounds and max_groups must be integers >= 1")
        self.inner = fixed_eps_attack
        self.rounds, self.shrink, self.max_groups, self.time_limit = int(rounds), (lo, hi), int(max_groups), time_limit
        self.name = f"{fixed_eps_attack.name}-refine"
        self.requires = fixed_eps_attack.requires
        self.norms = tuple(fixed_eps_attack.norms)

    def __repr__(self) -> str:
        return f"Refine({self.inner!r}, rounds={self.rounds}, shrink={self.shrink}, max_groups={self.max_groups})"

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:
        return _to_minimal(self.inner).run(model, X, y, norm)

    def run_from(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, upper: np.ndarray) -> AttackResult:
        """Try to beat `upper` (per-point best distances; inf = unknown, left alone)."""
        from .bisection import stab_groups
        from .base import finalize

        t0 = time.perf_counter()
        model = wrap(model)
        X, y, norm = self._check(model, X, y, norm)
        n = X.shape[0]
        hi = np.asarray(upper, dtype=np.float64).copy()
        best, best_d = X.copy(), np.full(n, np.inf)
        queries = np.zeros(n, dtype=np.int64)
        alive = np.isfinite(hi) & (hi > 0)
        per_point = bool(getattr(self.inner, "per_point_eps", False))
        for _ in range(self.rounds):
            if self.time_limit is not None and time.perf_counter() - t0 > self.time_limit:
                break
            act = np.flatnonzero(alive)
            if act.size == 0:
                break
            a, b = self.shrink[0] * hi[act], self.shrink[1] * hi[act]
            if per_point:
                calls = [(act, b)]
            else:
                groups = sorted(stab_groups(a, b), key=lambda g: -g[1].size)[: self.max_groups]
                calls = [(act[mem], v) for v, mem in groups]
            tried = np.zeros(n, dtype=bool)
            for rows, eps in calls:
                res = self.inner.run(model, X[rows], y[rows], norm, eps)
                ok = np.asarray(res.success, dtype=bool) & np.isfinite(res.distance) & (np.asarray(res.distance) > 0)
                d = np.where(ok, res.distance, np.inf)
                better = d < best_d[rows]
                best[rows[better]] = np.asarray(res.x_adv, dtype=np.float64)[better]
                best_d[rows[better]] = d[better]
                hi[rows] = np.minimum(hi[rows], d)
                alive[rows[~ok]] = False
                tried[rows] = True
                if res.queries is not None and np.shape(res.queries) == (rows.size,):
                    queries[rows] += np.asarray(res.queries, dtype=np.int64)
                if self.time_limit is not None and time.perf_counter() - t0 > self.time_limit:
                    break
        found = np.isfinite(best_d)
        return finalize(model, X, y, np.where(found[:, None], best, X), norm, self.name, t0=t0, queries=queries, claimed=found)


class EnsembleAttack(MinimalAttack):
    """Runs attacks in order and keeps each point's best verified adversarial.

    attacks: Attack instances, registry names, or (name, kwargs) pairs. skip_certified: later
    attacks skip points whose distance an exact attack certified. checks: attach reliability flags.
    """

    name = "ensemble"
    requires = frozenset({"predict_proba"})

    def __init__(self, attacks: Iterable[Attack | str | tuple[str, Mapping[str, Any]]], *, skip_certified: bool = True,
                 checks: bool = True):
        from .registry import get_attack

        steps: list[_Step] = []
        for item in attacks:
            if isinstance(item, _Step):
                step = item
            elif isinstance(item, Attack):
                step = _Step(item.name, item)
            elif isinstance(item, str):
                step = _Step(item, get_attack(item))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                step = _Step(item[0], get_attack(item[0], **dict(item[1])))
            else:
                raise AttackError(f"ensemble: cannot use {item!r} as an attack; pass Attack instances, registry names or (name, kwargs)")
            label, k = step.label, 2
            while label in {s.label for s in steps}:
                label, k = f"{step.label}#{k}", k + 1
            steps.append(_Step(label, step.attack))
        if not steps:
            raise AttackError("ensemble: no attacks given; pass at least one")
        self.steps = steps
        self.skip_certified = bool(skip_certified)
        self.checks = bool(checks)
        self.norms = tuple(n for n in steps[0].attack.norms if all(n in s.attack.norms for s in steps))  # every step must support it

    def __repr__(self) -> str:
        return f"EnsembleAttack([{', '.join(s.label for s in self.steps)}])"

    def applicable(self, model: Model, norm: str) -> bool:
        return any(s.attack.applicable(model, norm) for s in self.steps)

    def _validate(self, model: Model, X: Any, y: Any, norm: str) -> tuple[np.ndarray, np.ndarray, str]:
        norm = check_norm(norm)
        for s in self.steps:
            a = s.attack
            if norm not in a.norms:
                raise AttackError(f"attack {s.label!r} does not support norm {norm!r}; it supports {', '.join(a.norms)}")
            missing = set(a.requires) - set(model.capabilities)
            if missing:
                raise AttackError(
                    f"attack {s.label!r} needs the {', '.join(sorted(missing))} capability, which {model.name!r} lacks; "
                    f"applicable attacks: {', '.join(applicable_names(model, norm)) or 'none'}"
                )
        X, y = check_inputs(model, X, y)
        return X, y, norm

    @staticmethod
    def _accept(model: Model, X: np.ndarray, y: np.ndarray, res: AttackResult, norm: str,
                eps: float | None) -> tuple[np.ndarray, np.ndarray, int]:
        """Re-verify an attack's claimed adversarials: (counted mask, true distances, rejected count)."""
        n = X.shape[0]
        x_adv = np.asarray(res.x_adv, dtype=np.float64)
        if x_adv.shape != X.shape or np.asarray(res.success).shape != (n,):
            raise RuntimeError(f"returned x_adv of shape {x_adv.shape} / success of shape {np.shape(res.success)} for {n} points")
        claimed = np.asarray(res.success, dtype=bool)
        ok, dist = verify(model, X, y, x_adv, norm, eps)
        counted = claimed & ok
        rejected = int(res.rejected or 0) + int((claimed & ~ok).sum())
        return counted, dist, rejected

    # --------------------------------------------------------------------------------
    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> RadiusResult:
        """Minimal radius per point: the smallest verified distance over the attacks."""
        t0 = time.perf_counter()
        model = wrap(model)
        X, y, norm = self._validate(model, X, y, norm)
        n = X.shape[0]
        clean_wrong = model.predict(X) != y if n else np.zeros(0, dtype=bool)
        best_x = X.copy()
        best_d = np.full(n, np.inf)
        best_d[clean_wrong] = 0.0
        by = np.full(n, None, dtype=object)
        lb = np.zeros(n)
        have_lb = False
        exact_ran = np.zeros(n, dtype=bool)
        queries = np.zeros(n, dtype=np.int64)
        rejected = 0
        per_attack: dict[str, np.ndarray] = {}
        times: dict[str, float] = {}
        rej_by: dict[str, int] = {}
        used: list[str] = []
        errors: dict[str, str] = {}
        for step in self.steps:
            att = _to_minimal(step.attack)
            per_attack[step.label] = np.full(n, np.nan)
            certified = have_lb & np.isfinite(best_d) & (lb >= best_d * (1 - CERT_RTOL) - 1e-12)
            todo = ~clean_wrong & ~(certified if self.skip_certified else np.zeros(n, dtype=bool))
            sub = np.flatnonzero(todo)
            if sub.size == 0:
                times[step.label] = 0.0
                continue
            ts = time.perf_counter()
            try:
                if callable(getattr(att, "run_from", None)):  # refinement steps start from the current radii
                    res = att.run_from(model, X[sub], y[sub], norm, best_d[sub])
                else:
                    res = att.run(model, X[sub], y[sub], norm)
                counted, dist, rej = self._accept(model, X[sub], y[sub], res, norm, None)
            except Exception as exc:  # noqa: BLE001 - one failing attack must not lose the others' results
                log.warning("attack %s failed: %s: %s", step.label, type(exc).__name__, exc)
                errors[step.label] = f"{type(exc).__name__}: {exc}"
                times[step.label] = time.perf_counter() - ts
                continue
            times[step.label] = time.perf_counter() - ts
            used.append(step.label)
            rejected += rej
            rej_by[step.label] = rej
            d_sub = np.where(counted, dist, np.inf)
            per_attack[step.label][sub] = d_sub
            better = d_sub < best_d[sub]
            idx = sub[better]
            best_d[idx] = d_sub[better]
            best_x[idx] = np.asarray(res.x_adv, dtype=np.float64)[better]
            by[idx] = step.label
            if res.queries is not None and np.shape(res.queries) == (sub.size,):
                queries[sub] += np.asarray(res.queries, dtype=np.int64)
            if res.lower_bound is not None:
                lbs = np.nan_to_num(np.asarray(res.lower_bound, dtype=np.float64), nan=0.0, posinf=np.inf, neginf=0.0)
                lb[sub] = np.maximum(lb[sub], np.maximum(lbs, 0.0))
                have_lb = True
            if getattr(att, "exact", False):
                exact_ran[sub] = True
            log.debug("%s: %d/%d points improved in %.2fs", step.label, int(better.sum()), sub.size, times[step.label])
        _raise_if_all_failed(errors, used)
        flags: list[chk.Flag | None] = []
        lower = None
        if have_lb:
            ulp = 4 * np.finfo(np.float32).eps * (1.0 + (np.abs(X).max(axis=1) if X.shape[1] else 0.0))
            flags.append(chk.lower_bound_above_adversarial(best_d, lb, atol=ulp))
            lower = np.minimum(lb, best_d)
            lower[clean_wrong] = 0.0
        clean_correct = ~clean_wrong
        result = RadiusResult(
            x_adv=best_x, distance=best_d, success=np.isfinite(best_d), norm=norm, attack=self.name, lower_bound=lower,
            queries=queries, wall_time=0.0, rejected=rejected, by_attack=by, clean_correct=clean_correct, attacks_used=used,
            attack_times=times, attack_rejected=rej_by, per_attack=per_attack,
        )
        if self.checks:
            flags += self._checks_minimal(model, X, y, result, exact_ran, errors)
        else:
            flags.append(chk.attack_failures(errors))
        result.flags = chk.collect(flags)
        result.wall_time = time.perf_counter() - t0
        return result

    def _checks_minimal(self, model: Model, X: np.ndarray, y: np.ndarray, res: RadiusResult, exact_ran: np.ndarray,
                        errors: dict[str, str]) -> list[chk.Flag | None]:
        out: list[chk.Flag | None] = list(chk.model_checks(model, X, y))
        out.append(chk.exact_not_certified(res.distance, res.lower_bound, exact_ran & res.clean_correct))
        out.append(chk.rejected_candidates(res.rejected))
        out.append(chk.unbroken_points(res.distance, res.clean_correct))
        out.append(chk.attack_failures(errors))
        if "torch_logits" in model.capabilities:
            bb = [res.per_attack[s.label] for s in self.steps if _is_black_box(s.attack) and s.label in res.attacks_used]
            wb = [res.per_attack[s.label] for s in self.steps if _is_white_box(s.attack) and s.label in res.attacks_used]
            if bb and wb:
                out.append(chk.black_box_beats_white_box(_nanmin(bb), _nanmin(wb)))
        return out

    # --------------------------------------------------------------------------------
    def run_fixed(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, eps: float | Sequence[float],
                  *, carry_over: bool = True) -> FixedEpsResult:
        """Robust accuracy at each eps; later attacks only see the points still robust at that eps.

        Minimal attacks run once (on the points robust at any eps) and are thresholded per eps;
        fixed-eps attacks run per eps. With carry_over, an adversarial found at a smaller eps also
        counts at every larger eps (it is within their budget).
        """
        t0 = time.perf_counter()
        model = wrap(model)
        X, y, norm = self._validate(model, X, y, norm)
        eps_arr = np.sort(np.unique(_as_eps(eps)))
        n = X.shape[0]
        clean_wrong = model.predict(X) != y if n else np.zeros(0, dtype=bool)
        results: dict[float, AttackResult] = {}
        for e in eps_arr:
            r = AttackResult(x_adv=X.copy(), distance=np.full(n, np.inf), success=clean_wrong.copy(), norm=norm, attack=self.name,
                             queries=np.zeros(n, dtype=np.int64), by_attack=np.full(n, None, dtype=object))
            r.distance[clean_wrong] = 0.0
            results[float(e)] = r
        times: dict[str, float] = {}
        used: list[str] = []
        errors: dict[str, str] = {}
        rejected = 0
        bb_broken = 0
        wb_robust_before = None

        def record(e: float, idx: np.ndarray, xa: np.ndarray, d: np.ndarray, label: str) -> None:
            targets = [e2 for e2 in results if e2 >= e] if carry_over else [e]
            for e2 in targets:
                r = results[e2]
                new = ~r.success[idx]
                i = idx[new]
                r.success[i] = True
                r.distance[i] = d[new]
                r.x_adv[i] = xa[new]
                r.by_attack[i] = label

        lb = np.zeros(n)  # certified lower bounds from exact attacks: robust at e when lb > e

        def open_at(e: float) -> np.ndarray:
            return ~results[e].success & ~(lb > e)

        for step in self.steps:
            att = step.attack
            white_ran = any(_is_white_box(s.attack) for s in self.steps if s.label in used)
            if wb_robust_before is None and _is_black_box(att) and "torch_logits" in model.capabilities and white_ran:
                wb_robust_before = sum(int(open_at(e).sum()) for e in results)
            if not any(open_at(e).any() for e in results):
                break
            ts = time.perf_counter()
            broke = 0
            try:
                if isinstance(att, FixedEpsAttack):
                    for e in results:
                        sub = np.flatnonzero(open_at(e))
                        if sub.size == 0:
                            continue
                        res = att.run(model, X[sub], y[sub], norm, e)
                        counted, dist, rej = self._accept(model, X[sub], y[sub], res, norm, e)
                        rejected += rej
                        broke += int(counted.sum())
                        record(e, sub[counted], np.asarray(res.x_adv, dtype=np.float64)[counted], dist[counted], step.label)
                        if res.queries is not None and np.shape(res.queries) == (sub.size,):
                            results[e].queries[sub] += np.asarray(res.queries, dtype=np.int64)
                else:
                    sub = np.flatnonzero(np.any([open_at(e) for e in results], axis=0))
                    res = att.run(model, X[sub], y[sub], norm)
                    counted, dist, rej = self._accept(model, X[sub], y[sub], res, norm, None)
                    rejected += rej
                    xa = np.asarray(res.x_adv, dtype=np.float64)
                    for e in results:
                        inb = counted & (dist <= e * (1 + BUDGET_RTOL)) & ~results[e].success[sub]
                        broke += int(inb.sum())
                        record(e, sub[inb], xa[inb], dist[inb], step.label)
                    if res.lower_bound is not None:
                        lbs = np.nan_to_num(np.asarray(res.lower_bound, dtype=np.float64), nan=0.0, neginf=0.0)
                        lb[sub] = np.maximum(lb[sub], np.maximum(lbs, 0.0))
            except Exception as exc:  # noqa: BLE001 - inputs were validated above; this is the attack's own failure
                log.warning("attack %s failed: %s: %s", step.label, type(exc).__name__, exc)
                errors[step.label] = f"{type(exc).__name__}: {exc}"
                times[step.label] = time.perf_counter() - ts
                continue
            times[step.label] = time.perf_counter() - ts
            used.append(step.label)
            if wb_robust_before is not None and _is_black_box(att):
                bb_broken += broke
        _raise_if_all_failed(errors, used)
        for r in results.values():
            r.lower_bound = np.minimum(lb, r.distance)
        out = FixedEpsResult(eps=eps_arr, results=results, clean_correct=~clean_wrong, norm=norm, attacks_used=used,
                             attack_times=times, rejected=rejected)
        for r in results.values():
            r.rejected = rejected
            r.wall_time = time.perf_counter() - t0
        flags: list[chk.Flag | None] = [chk.non_monotone(eps_arr, out.robust_accuracy), chk.rejected_candidates(rejected),
                                        chk.attack_failures(errors)]
        if self.checks:
            flags += chk.model_checks(model, X, y)
            if wb_robust_before is not None:
                flags.append(chk.black_box_breaks_robust(bb_broken, wb_robust_before))
        out.flags = chk.collect(flags)
        for r in results.values():
            r.flags = dict(out.flags)
        return out


def _raise_if_all_failed(errors: dict[str, str], used: list[str]) -> None:
    """Partial failures become the attack_failed flag; when every attack that had work failed, say why."""
    if errors and not used:
        name, msg = next(iter(errors.items()))
        raise AttackError(f"every attack failed; {name}: {msg}"[:400])


def _nanmin(arrays: list[np.ndarray]) -> np.ndarray:
    a = np.stack(arrays)
    allnan = np.all(np.isnan(a), axis=0)
    out = np.where(allnan, np.nan, np.nanmin(np.where(np.isnan(a), np.inf, a), axis=0))
    return out


# ----------------------------------------------------------------------------------------
# Building the attack list
# ----------------------------------------------------------------------------------------
def _steps(model: Model, norm: str, attacks: Any, threat: Any, mode: str, seed: int, effort: str,
           kw: dict[str, Any]) -> list[_Step]:
    """Attacks for a run: explicit ones (strict: each must apply) or a threat model's applicable ones."""
    from .registry import COMMON_KWARGS, attack_kwargs, build_attack, fixed_inner

    common = {"seed": int(seed), **kw}
    steps: list[_Step] = []
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
            steps.append(_Step(name, build(name, skw, strict=False)))  # registry data: kwargs a step does not take are dropped
    else:
        items = [attacks] if isinstance(attacks, (str, Attack)) else list(attacks)
        if not items:
            raise AttackError("attacks is empty; pass attack names (see list_attacks()) or leave it None for the threat model's")
        for item in items:
            if isinstance(item, Attack):
                steps.append(_Step(item.name, item))
                takes_any = True
            elif isinstance(item, str):
                steps.append(_Step(item.lower(), build(item, {})))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Mapping):
                steps.append(_Step(item[0].lower(), build(item[0], item[1])))
            else:
                raise AttackError(f"cannot use {item!r} as an attack; pass registry names, (name, kwargs) pairs or Attack instances")
    unknown = set(kw) - COMMON_KWARGS - accepted_any
    if unknown and not takes_any:
        raise AttackError(f"no attack in this run takes argument {', '.join(sorted(unknown))}; "
                          f"the attacks accept {', '.join(sorted(accepted_any - {'seed'})) or 'nothing else'}")
    return steps


def _as_eps(eps: Any) -> np.ndarray:
    """eps as a 1-D float array, finite and > 0: one value or a flat list; anything else is an AttackError."""
    try:
        arr = np.asarray(eps, dtype=np.float64)
    except (TypeError, ValueError):
        raise AttackError(f"eps must be a number or a flat list of numbers, got {eps!r}") from None
    if arr.ndim > 1:
        raise AttackError(f"eps must be a number or a flat list of numbers, got shape {arr.shape}")
    return check_eps(arr)


def _prepare(model: Any, X: Any, y: Any, norm: str) -> tuple[Model, np.ndarray, np.ndarray, str]:
    m = wrap(model)
    norm = check_norm(norm)
    X, y = check_inputs(m, X, y)
    return m, X, y, norm


# ----------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------
def minimal_radius(model: Any, X: Any, y: Any, norm: str = "linf", *, attacks: Any = None, threat: Any = None,
                   seed: int = 0, **kw: Any) -> RadiusResult:
    """Per-point minimal adversarial distance under `norm`: the best verified result over an attack ensemble.

    attacks: registry names / (name, kwargs) / Attack instances (each must apply to the model);
    default: the threat model's attacks the model's capabilities allow (threat defaults to the
    norm's, e.g. "linf"; a threat model sets the norm). Extra keywords: effort ("fast", "default",
    "full"), checks (bool), and attack arguments such as time_limit, passed to attacks that take them.
    """
    from .registry import default_threat, get_threat_model

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
    return EnsembleAttack(steps, checks=do_checks).run(m, X, y, norm)


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
    eps_arr = _as_eps(tm.eps if eps is None else eps)
    if carry_over is None:
        carry_over = tm.carry_over
    steps = _steps(m, norm, attacks, tm, "fixed", seed, effort, kw)
    return EnsembleAttack(steps, checks=do_checks).run_fixed(m, X, y, norm, eps_arr, carry_over=carry_over)


def robust_accuracy(model: Any, X: Any, y: Any, norm: str = "linf", eps: Any = None, *, attacks: Any = None, seed: int = 0,
                    from_radius: bool = True, threat: Any = None, **kw: Any) -> "Any":
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
    eps_arr = _as_eps(tm.eps if eps is None else eps)
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


__all__ = ["EnsembleAttack", "Refine", "RadiusResult", "FixedEpsResult", "minimal_radius", "robust_accuracy", "fixed_eps_run", "fixed_eps_per_point"]
