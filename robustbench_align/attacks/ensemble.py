"""The per-point-best attack ensemble.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import numpy as np

from ..errors import AttackError
from ..models.base import Model, wrap
from . import checks as chk
from .base import (
    BUDGET_RTOL,
    Attack,
    AttackResult,
    FixedEpsAttack,
    MinimalAttack,
    Norm,
    RefiningAttack,
    check_eps,
    check_inputs,
    path_of,
    strongest_path,
    verify,
)
from .results import FixedEpsResult, RadiusResult

log = logging.getLogger(__name__)

CERT_RTOL = 1e-6


@dataclass
class Step:
    label: str
    attack: Attack


def _is_black_box(attack: Attack) -> bool:
    return attack.requires <= {"predict_proba"}


def _is_white_box(attack: Attack) -> bool:
    return "torch_logits" in attack.requires


def _to_minimal(attack: Attack) -> MinimalAttack:
    """A fixed-eps attack becomes a minimal one by bisection on eps; minimal attacks pass through."""
    if isinstance(attack, FixedEpsAttack):
        from .bisection import MinimalByBisection

        return MinimalByBisection(attack)
    if isinstance(attack, MinimalAttack):
        return attack
    raise AttackError(f"{attack!r} is neither a MinimalAttack nor a FixedEpsAttack")


class EnsembleAttack:
    """Runs attacks in order and keeps each point's best verified adversarial.

    attacks: Attack instances, registry names, or (name, kwargs) pairs. skip_certified: later
    attacks skip points whose distance an exact attack certified. checks: attach reliability flags.
    """

    name = "ensemble"

    def __init__(self, attacks: Iterable[Step | Attack | str | tuple[str, Mapping[str, Any]]], *, skip_certified: bool = True,
                 checks: bool = True):
        from .registry import get_attack

        steps: list[Step] = []
        for entry in attacks:
            item: object = entry  # checked at run time: callers need not be type-checked
            if isinstance(item, Step):
                step = item
            elif isinstance(item, Attack):
                step = Step(item.name, item)
            elif isinstance(item, str):
                step = Step(item, get_attack(item))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                step = Step(item[0], get_attack(item[0], **dict(item[1])))
            else:
                raise AttackError(f"ensemble: cannot use {item!r} as an attack; pass Attack instances, registry names or (name, kwargs)")
            label, k = step.label, 2
            while label in {s.label for s in steps}:
                label, k = f"{step.label}#{k}", k + 1
            steps.append(Step(label, step.attack))
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

    def _validate(self, model: Model, X: Any, y: Any, norm: str | Norm) -> tuple[np.ndarray, np.ndarray, str]:
        """Every step must support the norm and find its capabilities on the model (AttackError otherwise)."""
        nm = Norm.of(norm)
        for s in self.steps:
            s.attack.check_applicable(model, nm, label=s.label)
        X, y = check_inputs(model, X, y)
        return X, y, nm.name

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
    def run(self, model: Any, X: Any, y: Any, norm: str | Norm) -> RadiusResult:
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
            with _StepRun(step.label, errors, times) as step_run:
                if isinstance(att, RefiningAttack):  # refinement steps start from the current radii
                    res = att.run_from(model, X[sub], y[sub], norm, best_d[sub])
                else:
                    res = att.run(model, X[sub], y[sub], norm)
                counted, dist, rej = self._accept(model, X[sub], y[sub], res, norm, None)
            if not step_run.ok:
                continue
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
            if att.exact:
                exact_ran[sub] = True
            log.debug("%s: %d/%d points improved in %.2fs", step.label, int(better.sum()), sub.size, times[step.label])
        _raise_if_all_failed(errors, used)
        flags: list[chk.Flag | None] = []
        lower = None
        if have_lb:
            lower, _, flag = sound_lower(lb, best_d, X)
            flags.append(flag)
            lower[clean_wrong] = 0.0
        clean_correct = ~clean_wrong
        result = RadiusResult(
            x_adv=best_x, distance=best_d, success=np.isfinite(best_d), norm=norm, attack=self.name, lower_bound=lower,
            queries=queries, wall_time=0.0, rejected=rejected, by_attack=by, clean_correct=clean_correct, attacks_used=used,
            attack_times=times, attack_rejected=rej_by, per_attack=per_attack, path=self._path(used),
        )
        if self.checks:
            flags += self._checks_minimal(model, X, y, result, exact_ran, errors)
        else:
            flags.append(chk.attack_failures(errors))
        flags.append(self._black_box_only(model, result.path))
        result.flags = chk.collect(flags)
        result.wall_time = time.perf_counter() - t0
        return result

    def _path(self, used: list[str]) -> str:
        """The strongest path among the steps that ran (see `path_of`)."""
        return strongest_path(path_of(s.attack) for s in self.steps if s.label in used)

    @staticmethod
    def _black_box_only(model: Model, path: str) -> chk.Flag | None:
        """Flag (and log) a model that only the decision-based attack reached, with the model's reason when it has one."""
        flag = chk.black_box_only(path, model.path_note)
        if flag is not None:
            log.warning("%s: %s", model.name, flag[1])
        return flag

    def _checks_minimal(self, model: Model, X: np.ndarray, y: np.ndarray, res: RadiusResult, exact_ran: np.ndarray,
                        errors: dict[str, str]) -> list[chk.Flag | None]:
        clean_correct = cast(np.ndarray, res.clean_correct)  # run() always sets it
        out: list[chk.Flag | None] = list(chk.model_checks(model, X, y))
        out.append(chk.exact_not_certified(res.distance, res.lower_bound, exact_ran & clean_correct))
        out.append(chk.rejected_candidates(res.rejected))
        out.append(chk.unbroken_points(res.distance, clean_correct))
        out.append(chk.attack_failures(errors))
        if "torch_logits" in model.capabilities:
            bb = [res.per_attack[s.label] for s in self.steps if _is_black_box(s.attack) and s.label in res.attacks_used]
            wb = [res.per_attack[s.label] for s in self.steps if _is_white_box(s.attack) and s.label in res.attacks_used]
            if bb and wb:
                out.append(chk.black_box_beats_white_box(_nanmin(bb), _nanmin(wb)))
        return out

    # --------------------------------------------------------------------------------
    def run_fixed(self, model: Any, X: Any, y: Any, norm: str | Norm, eps: float | Sequence[float] | np.ndarray,
                  *, carry_over: bool = True) -> FixedEpsResult:
        """Robust accuracy at each eps; later attacks only see the points still robust at that eps.

        Minimal attacks run once (on the points robust at any eps) and are thresholded per eps;
        fixed-eps attacks run per eps. With carry_over, an adversarial found at a smaller eps also
        counts at every larger eps (it is within their budget).
        """
        t0 = time.perf_counter()
        model = wrap(model)
        X, y, norm = self._validate(model, X, y, norm)
        eps_arr = np.sort(np.unique(check_eps(eps)))
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
                by_attack = cast(np.ndarray, r.by_attack)  # every per-eps result is created with one
                by_attack[i] = label

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
            broke = 0
            with _StepRun(step.label, errors, times) as step_run:
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
                            queries = cast(np.ndarray, results[e].queries)  # every per-eps result is created with counters
                            queries[sub] += np.asarray(res.queries, dtype=np.int64)
                else:
                    sub = np.flatnonzero(np.any([open_at(e) for e in results], axis=0))
                    res = _to_minimal(att).run(model, X[sub], y[sub], norm)
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
            if not step_run.ok:
                continue
            used.append(step.label)
            if wb_robust_before is not None and _is_black_box(att):
                bb_broken += broke
        _raise_if_all_failed(errors, used)
        cert_flags: list[chk.Flag | None] = []
        nearest = np.min(np.stack([r.distance for r in results.values()]), axis=0) if results else np.full(n, np.inf)
        lb, _, flag = sound_lower(lb, nearest, X)
        cert_flags.append(flag)
        for r in results.values():
            r.lower_bound = np.minimum(lb, r.distance)
        out = FixedEpsResult(eps=eps_arr, results=results, clean_correct=~clean_wrong, norm=norm, attacks_used=used,
                             attack_times=times, rejected=rejected, path=self._path(used))
        for r in results.values():
            r.rejected = rejected
            r.wall_time = time.perf_counter() - t0
        flags: list[chk.Flag | None] = [*cert_flags, chk.non_monotone(eps_arr, out.robust_accuracy), chk.rejected_candidates(rejected),
                                        chk.attack_failures(errors), self._black_box_only(model, out.path)]
        if self.checks:
            flags += chk.model_checks(model, X, y)
            if wb_robust_before is not None:
                flags.append(chk.black_box_breaks_robust(bb_broken, wb_robust_before))
        out.flags = chk.collect(flags)
        for r in results.values():
            r.flags = dict(out.flags)
        return out


class _StepRun:
    """Times one ensemble step; a failing attack is logged and kept as a flag, and the other steps still run.

    The inputs were validated before any step ran, so an exception here is the attack's own failure.
    """

    def __init__(self, label: str, errors: dict[str, str], times: dict[str, float]) -> None:
        self.label, self.errors, self.times, self.ok = label, errors, times, False

    def __enter__(self) -> _StepRun:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        self.times[self.label] = time.perf_counter() - self.t0
        if exc is None:
            self.ok = True
            return False
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not the attack's failure
            return False
        log.warning("attack %s failed: %s: %s", self.label, type(exc).__name__, exc)
        self.errors[self.label] = f"{type(exc).__name__}: {exc}"
        return True


def sound_lower(lb: np.ndarray, best_d: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, chk.Flag | None]:
    """The global invariant: no certified lower bound above any verified adversarial's distance.

    A violation means a certificate is wrong: it is dropped (lower bound 0 at that point), logged,
    and flagged `unsound_certificate`. Bounds within a few float32 ulp of the distance are clipped.
    Returns (sound lower bounds, the mask of dropped points, the flag or None).
    """
    ulp = 4 * np.finfo(np.float32).eps * (1.0 + (np.abs(X).max(axis=1) if X.shape[1] else 0.0))
    bad = chk.unsound_certificates(best_d, lb, atol=ulp)
    if bad.any():
        log.error("%d certified lower bound(s) exceeded a verified adversarial's distance; dropped", int(bad.sum()))
    out: np.ndarray = np.where(bad, 0.0, np.minimum(lb, best_d))
    return out, bad, chk.unsound_certificate(bad)


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


__all__ = ["CERT_RTOL", "EnsembleAttack", "sound_lower"]
