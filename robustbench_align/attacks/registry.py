"""Attacks and threat models as data.

An attack entry is `name -> AttackSpec(class path, default kwargs, description)`; a threat model is
a norm, a kind ("minimal": per-point minimal radius, "fixed": robust accuracy at fixed eps only), an
ordered list of (attack name, kwargs) and an eps grid. A threat model lists the attacks of every
model family; `ThreatModel.resolve` keeps those the model's capabilities allow, so a torch model gets
the gradient attacks, a tree ensemble the exact ones and a black box the decision-based attack.
"""
from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import AttackError
from .base import Attack, check_norm, lookup, path_of, strongest_path

log = logging.getLogger(__name__)

_PKG = "robustbench_align.attacks"


@dataclass(frozen=True)
class AttackSpec:
    """One registered attack. `target` is "module:Class" inside robustbench_align.attacks (imported
    lazily, so an optional backend costs nothing until used) or an `Attack` subclass itself.

    `wraps` names another registered (fixed-eps) attack that the target class takes as its first
    argument (e.g. bisection turning AutoAttack into a minimal attack).
    """

    name: str
    target: str | type
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    wraps: str | None = None


_ATTACKS: dict[str, AttackSpec] = {
    s.name: s
    for s in (
        AttackSpec("fmn", "fmn:FMN", {}, "Fast Minimum-Norm attack (Pintor et al. 2021); minimal, linf/l2/l1, torch models"),
        AttackSpec("fab", "fab:FAB", {}, "Fast Adaptive Boundary attack (Croce & Hein 2020); minimal, linf/l2/l1, torch models"),
        AttackSpec("deepfool", "deepfool:DeepFool", {}, "DeepFool (Moosavi-Dezfooli et al. 2016); minimal, l2, torch models"),
        AttackSpec("cw", "cw:CW", {}, "Carlini-Wagner L2 (2017); minimal, l2, torch models"),
        AttackSpec("pgd", "pgd:PGD", {}, "Projected gradient descent with restarts; fixed eps, linf/l2, torch models"),
        AttackSpec("paper-pgd", "paper_pgd:PaperPGD", {}, "The paper's protocol: 20-step linf PGD on MSE, step eps/10, random start, no restarts"),
        AttackSpec("autoattack", "autoattack:AutoAttack", {}, "AutoAttack (Croce & Hein 2020) for tabular inputs; fixed eps, linf/l2, torch models"),
        AttackSpec("pgd-bisect", "bisection:MinimalByBisection", {}, "PGD turned into a minimal attack by bisection on eps", wraps="pgd"),
        AttackSpec("autoattack-bisect", "bisection:MinimalByBisection", {}, "AutoAttack turned into a minimal attack by bisection on eps", wraps="autoattack"),
        AttackSpec("pgd-refine", "refine:Refine", {"loss": "margin", "rounds": 3},
                   "margin-loss PGD just below each point's best radius so far (cheap refinement)", wraps="pgd"),
        AttackSpec("autoattack-refine", "refine:Refine", {}, "AutoAttack just below each point's best radius so far (refinement)", wraps="autoattack"),
        AttackSpec("veritas", "trees.veritas:VeritasLinf", {}, "Veritas A* search (Devos et al. 2021); exact/anytime linf, tree ensembles"),
        AttackSpec("milp", "trees.milp:KantchelianMILP", {},
                   "Kantchelian et al. 2016 MILP via HiGHS; exact linf/l2/l1 with certified lower bounds, tree ensembles"),
        AttackSpec("hsj", "decision:HopSkipJump", {}, "HopSkipJump (Chen et al. 2020); decision-based, linf/l2, any model with predict"),
        AttackSpec("linear", "linear:LinearExact", {}, "closed-form exact minimal radius of a linear classifier; linf/l2/l1"),
    )
}

def register_attack(name: str, target: str | type, kwargs: Mapping[str, Any] | None = None, description: str = "",
                    *, wraps: str | None = None, replace: bool = False) -> AttackSpec:
    """Add an attack to the registry: `target` is an `Attack` subclass or "module:Class" in robustbench_align.attacks.

    The new name then works everywhere a registry name does (get_attack, minimal_radius(attacks=[...]),
    threat-model steps). AttackError when the name is taken (pass replace=True to overwrite) or the
    target is not an Attack subclass.
    """
    key = str(name).lower()
    if not key or any(c in key for c in "|# \t"):
        raise AttackError(f"attack name {name!r} must be non-empty without spaces, '|' or '#'")
    if key in _ATTACKS and not replace:
        raise AttackError(f"attack {key!r} is already registered; pass replace=True to overwrite it")
    if isinstance(target, type) and not issubclass(target, Attack):
        raise AttackError(f"attack {key!r}: {target.__name__} is not an Attack subclass (subclass MinimalAttack or FixedEpsAttack)")
    if wraps is not None:
        _spec(wraps)
    spec = AttackSpec(key, target, dict(kwargs or {}), description, wraps=wraps)
    _ATTACKS[key] = spec
    return spec


def unregister_attack(name: str) -> None:
    """Remove an attack added with `register_attack` (AttackError for unknown names)."""
    _ATTACKS.pop(_spec(name).name)


# kwargs every attack may or may not take; passed where the constructor accepts them, dropped otherwise
COMMON_KWARGS = frozenset({"seed", "time_limit", "verbose"})


class _Unavailable(AttackError):
    """An attack whose module or optional backend is missing here."""


def _load_class(spec: AttackSpec) -> type[Attack]:
    """Import the class behind a spec; _Unavailable saying why when it cannot run here."""
    if isinstance(spec.target, type):
        cls: Any = spec.target
    else:
        # the package's own modules import their optional backends lazily, so an ImportError here is a bug: it propagates
        module, _, cls_name = spec.target.partition(":")
        mod = importlib.import_module(f"{_PKG}.{module}")
        cls = getattr(mod, cls_name, None)
        if cls is None:
            raise AttackError(f"attack {spec.name!r}: {_PKG}.{module} has no {cls_name}")
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise AttackError(f"attack {spec.name!r}: {spec.target!r} is not an Attack subclass")
    try:
        ok = bool(cls.available())
    except Exception as exc:  # noqa: BLE001 - a broken optional backend counts as unavailable
        log.debug("%s.available() raised %s", cls.__name__, exc)
        ok = False
    if not ok:
        hint = f"; {cls.install_hint}" if cls.install_hint else ""
        raise _Unavailable(f"attack {spec.name!r} is not available here (its optional backend is not installed){hint}")
    if spec.wraps is not None:
        _load_class(_spec(spec.wraps))
    return cls


def _load_or_explain(spec: AttackSpec) -> type[Attack]:
    try:
        return _load_class(spec)
    except _Unavailable as exc:
        raise AttackError(f"{exc}; available attacks: {', '.join(list_attacks()) or 'none'}") from None


def _spec(name: str) -> AttackSpec:
    return lookup(_ATTACKS, name, "attack", sorted(_ATTACKS))


def is_available(name: str) -> bool:
    """True when the attack's module imports here (and its optional backend is installed)."""
    try:
        _load_class(_spec(name))
    except _Unavailable:
        return False
    return True


def list_attacks(include_unavailable: bool = False) -> list[str]:
    """Names of the registered attacks (by default only those that can run here), in registry order."""
    if include_unavailable:
        return list(_ATTACKS)
    out = []
    for name, spec in _ATTACKS.items():
        try:
            _load_class(spec)
        except _Unavailable:
            continue
        out.append(name)
    return out


def _accepted(cls: type[Attack]) -> tuple[set[str], bool]:
    """Keyword names the constructor takes, and whether it takes **kwargs."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return set(), True
    names = {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def _split_kwargs(cls: type[Attack], kw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names, var_kw = _accepted(cls)
    if var_kw:
        return dict(kw), {}
    return {k: v for k, v in kw.items() if k in names}, {k: v for k, v in kw.items() if k not in names}


def _build(name: str, kw: Mapping[str, Any], strict: bool) -> Attack:
    spec = _spec(name)
    cls = _load_or_explain(spec)
    merged = {**spec.kwargs, **kw}
    if spec.wraps is None:
        use, rest = _split_kwargs(cls, merged)
        bad = set(rest) - COMMON_KWARGS
        if bad and strict:
            names, _ = _accepted(cls)
            raise AttackError(f"attack {spec.name!r} takes no argument {', '.join(sorted(bad))}; it accepts {', '.join(sorted(names)) or 'none'}")
        if bad:
            log.debug("attack %s: dropping unsupported kwargs %s", spec.name, sorted(bad))
        try:
            return cls(**use)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, AttackError):
                raise
            raise AttackError(f"attack {spec.name!r}: bad arguments {use!r} ({exc})") from None
    # a wrapper: kwargs the wrapper takes go to it, the rest (and common ones) to the wrapped attack
    inner_cls = _load_or_explain(_spec(spec.wraps))
    outer_names, _ = _accepted(cls)
    outer_names.discard("fixed_eps_attack")
    outer_kw = {k: v for k, v in merged.items() if k in outer_names}
    inner_kw = {k: v for k, v in merged.items() if k not in outer_names or k in COMMON_KWARGS}
    _, rest = _split_kwargs(inner_cls, inner_kw)
    bad = set(rest) - COMMON_KWARGS
    if bad and strict:
        raise AttackError(f"attack {spec.name!r} takes no argument {', '.join(sorted(bad))}; "
                          f"it accepts {', '.join(sorted(outer_names | _accepted(inner_cls)[0]))}")
    inner = _build(spec.wraps, inner_kw, strict)
    wrapper: Callable[..., Attack] = cls  # a wrapper class takes the wrapped attack first (Attack's own constructor does not)
    try:
        return wrapper(inner, **outer_kw)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, AttackError):
            raise
        raise AttackError(f"attack {spec.name!r}: bad arguments {outer_kw!r} ({exc})") from None


def get_attack(name: str, **kw: Any) -> Attack:
    """A fresh attack instance by registry name; unknown names or arguments raise AttackError."""
    return _build(name, kw, strict=True)


def build_attack(name: str, kw: Mapping[str, Any] | None = None) -> Attack:
    """Like get_attack, but silently drops kwargs the attack does not take (threat-model defaults)."""
    return _build(name, dict(kw or {}), strict=False)


def attack_kwargs(name: str) -> set[str] | None:
    """Keyword arguments a registered attack accepts (wrapper and wrapped); None when it takes any."""
    spec = _spec(name)
    names, var_kw = _accepted(_load_or_explain(spec))
    if var_kw:
        return None
    if spec.wraps is not None:
        inner = attack_kwargs(spec.wraps)
        if inner is None:
            return None
        names = (names - {"fixed_eps_attack"}) | inner
    return names


def _applicable_spec(name: str, model: Any, norm: str) -> bool:
    spec = _spec(name)
    try:
        classes = [_load_class(spec)] + ([_load_class(_spec(spec.wraps))] if spec.wraps else [])
    except _Unavailable:
        return False
    caps = model.capabilities
    return all(c.requires <= caps and norm in c.norms for c in classes) and all(c.refuses(model) is None for c in classes)


def attack_path(names: Iterable[str]) -> str:
    """The strongest path ("exact", "gradient", "black-box"; see `path_of`) among registered attack names,
    e.g. a run's stored `attacks` list ("fmn#2" counts as "fmn"); names the registry does not know are ignored."""
    paths = []
    for label in names:
        key = str(label).strip().split("#")[0].lower()
        if key not in _ATTACKS:
            continue
        spec = _ATTACKS[key]
        try:
            classes = [_load_class(spec)] + ([_load_class(_spec(spec.wraps))] if spec.wraps else [])
        except _Unavailable:
            continue
        paths += [path_of(c) for c in classes]  # a wrapper reaches what the attack it wraps reaches
    return strongest_path(paths)


def applicable_attacks(model: Any, norm: str) -> list[str]:
    """Registered, available attacks whose required capabilities the model has and that support `norm`."""
    from ..models.base import wrap

    norm = check_norm(norm)
    m = wrap(model)
    return [n for n in list_attacks() if _applicable_spec(n, m, norm)]


# ----------------------------------------------------------------------------------------
# Threat models
# ----------------------------------------------------------------------------------------
EPS_GRIDS: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "linf": (0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
    "l2": (0.1, 0.25, 0.5, 1.0, 2.0, 4.0),
    "l1": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
})
PAPER_EPS = (0.1, 1.0, 2.0)
EFFORTS = ("fast", "default", "full")


def default_eps_grid(norm: str) -> tuple[float, ...]:
    """The eps grid of the robust-accuracy curve for a norm (standardised tabular features)."""
    return EPS_GRIDS[check_norm(norm)]


@dataclass(frozen=True)
class ThreatModel:
    """A named evaluation protocol.

    attacks: ordered (name, kwargs) steps; a name "a|b" means the first of a, b available here;
    a kwargs key "efforts" limits a step to those efforts.
    Steps the model's capabilities do not allow are skipped; when no step applies, `fallback`
    steps are tried. effort_kwargs[effort][name] overrides a step's kwargs, None drops the step.
    carry_over (fixed kind): an adversarial verified at a smaller eps also counts at every larger
    eps; False reproduces protocols that attack each eps independently (then non-monotone curves
    are possible and flagged).
    """

    name: str
    norm: str
    kind: str  # "minimal" | "fixed"
    attacks: tuple[tuple[str, Mapping[str, Any]], ...]
    eps: tuple[float, ...]
    description: str = ""
    fallback: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    effort_kwargs: Mapping[str, Mapping[str, Mapping[str, Any] | None]] = field(default_factory=dict)
    carry_over: bool = True

    def _pick(self, steps: Sequence[tuple[str, Mapping[str, Any]]], model: Any, effort: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        over = self.effort_kwargs.get(effort, {})
        for names, kw in steps:
            chosen = None
            for n in names.split("|"):
                if is_available(n):
                    chosen = n
                    break
            if chosen is None or not _applicable_spec(chosen, model, self.norm):
                continue
            if chosen in over and over[chosen] is None:
                continue
            kw = dict(kw)
            if effort not in kw.pop("efforts", EFFORTS):
                continue
            out.append((chosen, {**kw, **(over.get(chosen) or {})}))
        return out

    def resolve(self, model: Any, effort: str = "default") -> list[tuple[str, dict[str, Any]]]:
        """The (attack name, kwargs) steps to run on this model; AttackError when none applies."""
        from ..models.base import wrap

        if effort not in EFFORTS:
            raise AttackError(f"unknown attack effort {effort!r}; choose one of {', '.join(EFFORTS)}")
        m = wrap(model)
        steps = self._pick(self.attacks, m, effort) or self._pick(self.fallback, m, effort)
        if not steps:
            app = applicable_attacks(m, self.norm)
            raise AttackError(
                f"no attack of threat model {self.name!r} applies to {m.name!r} (capabilities: {', '.join(sorted(m.capabilities))}); "
                f"attacks applicable for {self.norm}: {', '.join(app) or 'none'}"
            )
        return steps


_FAST_HSJ = {"max_queries": 1000}
_FULL_HSJ = {"max_queries": 20000}
# default effort: AutoAttack's white-box part (the decision-based hsj covers Square's role), two calls
_AA_REFINE = {"attacks": ["apgd-ce", "fab-t"], "max_groups": 2}
_FULL_REFINE = {"attacks": None, "rounds": 3, "max_groups": 12}

_THREATS: dict[str, ThreatModel] = {
    t.name: t
    for t in (
        ThreatModel(
            "linf", "linf", "minimal",
            attacks=(
                ("linear", {}),  # closed-form exact (linear classifiers): certifies every point, the rest skip them
                ("fmn|pgd-bisect", {}),  # fast first pass (torch)
                ("fab", {}),
                ("pgd-refine", {}),  # margin-PGD just below the radii found so far (torch, cheap)
                ("autoattack-refine", _AA_REFINE),  # AutoAttack-based refinement (torch)
                ("veritas", {}),  # fast exact (trees)
                ("milp", {}),  # exact with certified lower bounds where veritas did not certify (trees)
                ("hsj", {}),  # decision-based: upper bound for trees/black boxes, masking cross-check for torch
            ),
            eps=EPS_GRIDS["linf"],
            description="minimal linf radius: FMN/FAB/AutoAttack-bisection for torch, Veritas+MILP for trees, HopSkipJump for all",
            effort_kwargs={"fast": {"autoattack-refine": None, "hsj": _FAST_HSJ},
                           "full": {"autoattack-refine": _FULL_REFINE, "hsj": _FULL_HSJ}},
        ),
        ThreatModel(
            "l2", "l2", "minimal",
            attacks=(
                ("linear", {}),  # closed-form exact (linear classifiers)
                ("deepfool", {}),  # fast first pass (torch)
                ("fmn|pgd-bisect", {}),
                ("fab", {}),
                ("cw", {}),
                ("pgd-refine", {}),
                ("autoattack-refine", {"efforts": ("full",)}),
                ("milp", {}),
                ("hsj", {}),
            ),
            eps=EPS_GRIDS["l2"],
            description="minimal l2 radius: DeepFool/FMN/FAB/CW for torch, MILP for trees, HopSkipJump for all",
            effort_kwargs={"fast": {"cw": None, "hsj": _FAST_HSJ}, "full": {"autoattack-refine": _FULL_REFINE, "hsj": _FULL_HSJ}},
        ),
        ThreatModel(
            "l1", "l1", "minimal",
            attacks=(("linear", {}), ("fmn", {}), ("fab", {}), ("milp", {})),
            eps=EPS_GRIDS["l1"],
            description="minimal l1 radius: FMN/FAB for torch, MILP for trees (no decision-based l1 attack)",
        ),
        ThreatModel(
            "paper-pgd", "linf", "fixed",
            attacks=(("paper-pgd", {}),),
            eps=PAPER_EPS,
            description="the paper's protocol: 20-step linf PGD at eps 0.1, 1, 2 (robust accuracy at those eps only)",
            fallback=(("linear", {}), ("veritas", {}), ("milp", {}), ("hsj", {})),
            carry_over=False,
        ),
    )
}


def list_threat_models() -> list[str]:
    return list(_THREATS)


def get_threat_model(name: str | ThreatModel) -> ThreatModel:
    """A named threat model; unknown names raise AttackError listing the valid ones."""
    if isinstance(name, ThreatModel):
        return name
    return lookup(_THREATS, name, "threat model")


def default_threat(norm: str) -> ThreatModel:
    """The minimal-radius threat model of a norm."""
    return _THREATS[check_norm(norm)]


def fixed_inner(name: str) -> str | None:
    """For a bisection wrapper, the fixed-eps attack it wraps (used directly in fixed-eps runs)."""
    return _spec(name).wraps


__all__ = [
    "COMMON_KWARGS",
    "EFFORTS",
    "EPS_GRIDS",
    "PAPER_EPS",
    "AttackSpec",
    "ThreatModel",
    "applicable_attacks",
    "attack_kwargs",
    "attack_path",
    "build_attack",
    "default_eps_grid",
    "default_threat",
    "fixed_inner",
    "get_attack",
    "get_threat_model",
    "is_available",
    "list_attacks",
    "list_threat_models",
    "register_attack",
    "unregister_attack",
]
