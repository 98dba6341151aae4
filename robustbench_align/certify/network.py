"""A feed-forward network as plain float64 arrays: the form every bound-propagation method reads.

A `Network` alternates affine maps and element-wise activations, starting and ending with an
affine map (consecutive affine maps are merged). `dtype` is the floating type the model itself
computes in; certificates shrink their bounds by the rounding error of that type.

`network_of(model)` extracts that form from a model's torch module. The module is traced with
`torch.fx.symbolic_trace` (an `nn.Sequential` whose whole trace fails is walked child by child)
and interpreted node by node on a probe batch: every tensor that depends on the input must be an
affine function of the output of the last activation (so a chain, no skip connections), built from
`nn.Linear` / `F.linear` / `addmm`, matmul, add, sub, mul and div by constants, negation, flatten,
reshape to the same width, identity, dropout in eval mode, dtype casts and concatenation with
constant columns (such as the binary logit layout [0, z]); the non-linear steps must be one of the
element-wise activations ReLU, tanh, sigmoid, exact GELU or x*x (x**2). Constants are taken as the
model uses them (a Python scalar multiplying a float32 tensor is the float32 scalar). Each merged
affine map keeps the sequence of operations the model performs (`ComposedAffine.stages`), so that
the rounding analysis follows the model's own arithmetic rather than the merged product.

The extracted network is checked against `model.torch_logits` on probe points: the difference
must lie within twice the rigorous forward rounding bound of `crown.logit_rounding_errors` (for a
float32 model of unit-scale weights about 1e-5 to 1e-4 absolute, far above the errors seen in
practice and far below any structural mismatch); otherwise `network_of` returns the reason.

`Network.dtype` is the lowest precision among the module's parameters and buffers, the tensors it
computes, the model's `torch_dtype`, and (for adapters that predict with a library, not the torch
copy) the library's own weights (`est.coefs_`) or runtime input type (`np_input`).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "square")


@dataclass(frozen=True)
class Affine:
    """z = W x + b, W of shape (out, in), float64."""

    W: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class Activation:
    """An element-wise activation, one of ACTIVATIONS."""

    kind: str


@dataclass
class Network:
    """layers: Affine, Activation, Affine, ..., Affine; dtype: "float32" or "float64" (the model's arithmetic)."""

    layers: list[Affine | Activation]
    dtype: str = "float32"

    @property
    def n_in(self) -> int:
        first = self.layers[0]
        if not isinstance(first, Affine):
            raise ValueError("a Network starts with an Affine layer")
        return int(first.W.shape[1])

    @property
    def n_out(self) -> int:
        last = self.layers[-1]
        if not isinstance(last, Affine):
            raise ValueError("a Network ends with an Affine layer")
        return int(last.W.shape[0])

    @property
    def affines(self) -> list[Affine]:
        return [layer for layer in self.layers if isinstance(layer, Affine)]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """The outputs (n, n_out) in float64 (a reference evaluation, not the model's own arithmetic)."""
        h = np.asarray(X, dtype=np.float64)
        for layer in self.layers:
            if isinstance(layer, Affine):
                h = h @ layer.W.T + layer.b
            else:
                h = apply_activation(layer.kind, h)
        return h


def apply_activation(kind: str, h: np.ndarray) -> np.ndarray:
    """The activation `kind` applied element-wise in float64."""
    if kind == "relu":
        relu: np.ndarray = np.maximum(h, 0.0)
        return relu
    if kind == "tanh":
        th: np.ndarray = np.tanh(h)
        return th
    if kind == "sigmoid":
        sg: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * h))
        return sg
    if kind == "gelu":
        from scipy.special import erf

        out: np.ndarray = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))
        return out
    if kind == "square":
        sq: np.ndarray = h * h
        return sq
    raise ValueError(f"unknown activation {kind!r}; expected one of {', '.join(ACTIVATIONS)}")


# ----------------------------------------------------------------------------------------
# The model's own sequence of affine operations inside one merged Affine
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One affine operation the model performs, v -> W v + b in its dtype.

    exact: the operation involves no rounding (negation, reshape, selection, concatenation with
    constants); otherwise each output is a rounded sum of nnz(W[r]) products plus the bias.
    """

    W: np.ndarray
    b: np.ndarray
    exact: bool = False


@dataclass(frozen=True)
class ComposedAffine(Affine):
    """An Affine that is the product of `stages` (applied first to last), as `network_of` extracts them.

    (W, b) is the product in float64; `stages` is what the model computes (empty: the identity).
    """

    stages: tuple[Stage, ...] = ()


def stages_of(layer: Affine) -> tuple[Stage, ...]:
    """The model's operations behind an Affine (a plain Affine is one rounded matrix product)."""
    if isinstance(layer, ComposedAffine):
        return layer.stages
    return (Stage(layer.W, layer.b, exact=False),)


# ----------------------------------------------------------------------------------------
# network_of: tracing a torch module
# ----------------------------------------------------------------------------------------
class _Refused(Exception):
    """Internal: the module is not a supported feed-forward chain (the message is the reason)."""


@dataclass
class _Lin:
    """A tensor that depends on the input: W @ base + b (base = the last activation's output)."""

    W: np.ndarray
    b: np.ndarray
    stages: list[Stage]
    segment: int
    val: Any  # the concrete torch tensor on the probe batch


@dataclass
class _Const:
    """A tensor or Python value that does not depend on the input."""

    val: Any


_PRECISION = {"float64": 2, "float32": 1}


def _dtype_name(dt: Any) -> str:
    import torch

    if dt == torch.float64:
        return "float64"
    if dt == torch.float32:
        return "float32"
    raise _Refused(f"the module computes in {dt}; only float32 and float64 are supported")


class _Tracer:
    """Interprets fx graphs on a probe batch, keeping input-dependent tensors as affine maps."""

    def __init__(self, d: int, probe: Any) -> None:
        self.layers: list[Affine | Activation] = []
        self.segment = 0
        self.n = int(probe.shape[0])
        self.dtypes: set[str] = {_dtype_name(probe.dtype)}
        self.input = _Lin(np.eye(d), np.zeros(d), [], 0, probe)

    # --- helpers ------------------------------------------------------------------------
    def _lin(self, v: Any) -> _Lin:
        if not isinstance(v, _Lin):
            raise _Refused("internal: expected an input-dependent tensor")
        if v.segment != self.segment:
            raise _Refused("the graph reuses a tensor from before an activation (a skip or residual connection)")
        return v

    def _check_2d(self, t: Any, what: str) -> int:
        import torch

        if not isinstance(t, torch.Tensor) or t.ndim != 2 or int(t.shape[0]) != self.n:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise _Refused(f"{what} gives a tensor of shape {shape}; only (n, width) chains are supported")
        self.dtypes.add(_dtype_name(t.dtype))
        return int(t.shape[1])

    def _apply(self, v: _Lin, W: np.ndarray, b: np.ndarray, exact: bool, val: Any, what: str) -> _Lin:
        w = self._check_2d(val, what)
        if W.shape[0] != w:
            raise _Refused(f"{what}: output width {w} does not match the affine map ({W.shape[0]})")
        lowers = _PRECISION[_dtype_name(val.dtype)] < _PRECISION[_dtype_name(v.val.dtype)]
        stage = Stage(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64), exact=exact and not lowers)
        return _Lin(W @ v.W, W @ v.b + b, [*v.stages, stage], v.segment, val)

    def _row(self, c: Any, width: int, like: Any, what: str) -> np.ndarray:
        """A constant operand as one row of `width` values, converted to the dtype the op computes in."""
        import torch

        t = c if isinstance(c, torch.Tensor) else torch.as_tensor(c)
        if not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.bool)):
            raise _Refused(f"{what}: unsupported constant of dtype {t.dtype}")
        t = t.detach().to(like.dtype).to(torch.float64)
        if t.ndim == 2 and int(t.shape[0]) == self.n and self.n > 1:
            if not bool((t == t[:1]).all()):
                raise _Refused(f"{what}: a constant that differs between rows")
            t = t[:1]
        if t.ndim > 2 or (t.ndim == 2 and int(t.shape[0]) != 1):
            raise _Refused(f"{what}: a constant of shape {tuple(t.shape)} does not broadcast over rows")
        try:
            row = torch.broadcast_to(t.reshape(-1) if t.ndim == 2 else t, (width,))
        except RuntimeError:
            raise _Refused(f"{what}: a constant of shape {tuple(t.shape)} does not broadcast to width {width}") from None
        out: np.ndarray = row.numpy().astype(np.float64, copy=True)
        return out

    def _activation(self, kind: str, v: Any, val: Any) -> _Lin:
        v = self._lin(v)
        w = self._check_2d(val, kind)
        self.layers.append(ComposedAffine(v.W, v.b, tuple(v.stages)))
        self.layers.append(Activation(kind))
        self.segment += 1
        return _Lin(np.eye(w), np.zeros(w), [], self.segment, val)

    def _identity(self, v: Any, val: Any, what: str) -> _Lin:
        import torch

        v = self._lin(v)
        if not isinstance(val, torch.Tensor) or tuple(val.shape) != tuple(v.val.shape):
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
            raise _Refused(f"{what} changes the shape {tuple(v.val.shape)} to {shape}")
        w = int(val.shape[1])
        return self._apply(v, np.eye(w), np.zeros(w), True, val, what)

    # --- the graph ------------------------------------------------------------------------
    def run(self, gm: Any, x: _Lin) -> _Lin | _Const:
        import torch

        env: dict[Any, _Lin | _Const] = {}
        modules = dict(gm.named_modules())
        placeholders = 0

        def load(a: Any) -> Any:
            if isinstance(a, torch.fx.Node):
                return env[a]
            if isinstance(a, (list, tuple)):
                return type(a)(load(i) for i in a)
            if isinstance(a, dict):
                return {k: load(i) for k, i in a.items()}
            return a

        def concrete(a: Any) -> Any:
            def unwrap(o: Any) -> Any:
                if isinstance(o, (_Lin, _Const)):
                    return o.val
                if isinstance(o, (list, tuple)):
                    return type(o)(unwrap(i) for i in o)
                if isinstance(o, dict):
                    return {k: unwrap(i) for k, i in o.items()}
                return o

            return unwrap(a)

        def has_lin(a: Any) -> bool:
            if isinstance(a, _Lin):
                return True
            if isinstance(a, (list, tuple)):
                return any(has_lin(i) for i in a)
            if isinstance(a, dict):
                return any(has_lin(i) for i in a.values())
            return False

        for node in gm.graph.nodes:
            if node.op == "placeholder":
                if placeholders == 0:
                    env[node] = x
                elif node.args:
                    env[node] = _Const(node.args[0])
                else:
                    raise _Refused("the module takes more than one input")
                placeholders += 1
                continue
            if node.op == "get_attr":
                obj: Any = gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                env[node] = _Const(obj)
                continue
            if node.op == "output":
                out = load(node.args[0])
                if isinstance(out, _Lin):
                    return self._lin(out)
                if isinstance(out, _Const):
                    return out
                raise _Refused("the module returns several outputs")
            args, kwargs = _wrap_consts(load(node.args)), _wrap_consts(load(node.kwargs))
            if node.op == "call_module":
                sub = modules[str(node.target)]
                fn: Any = sub
            elif node.op == "call_function":
                sub, fn = None, node.target
            elif node.op == "call_method":
                sub, fn = None, None
            else:  # pragma: no cover - fx has no other node kinds
                raise _Refused(f"unsupported graph node {node.op}")
            cargs, ckwargs = concrete(args), concrete(kwargs)
            try:
                with torch.no_grad():
                    if node.op == "call_method":
                        val = getattr(cargs[0], str(node.target))(*cargs[1:], **ckwargs)
                    else:
                        val = fn(*cargs, **ckwargs)
            except Exception as exc:  # noqa: BLE001 - any failure of the module on the probe is a reason
                raise _Refused(f"{_node_name(node, sub)} fails on a probe batch ({type(exc).__name__})") from None
            if not has_lin(args) and not has_lin(kwargs):
                env[node] = _Const(val)
                continue
            env[node] = self._op(node, sub, args, kwargs, val)
        raise _Refused("the graph has no output")

    def _op(self, node: Any, sub: Any, args: tuple[Any, ...], kwargs: dict[str, Any], val: Any) -> _Lin | _Const:
        import torch
        import torch.nn.functional as F

        name = _node_name(node, sub)
        if sub is not None:
            return self._module(sub, name, args, kwargs, val)
        target = node.target if node.op == "call_function" else str(node.target)
        meth = node.op == "call_method"
        a0 = args[0] if args else None

        def is_t(*cands: Any) -> bool:
            return any(target is c or (meth and target == c) for c in cands)

        # activations
        if is_t(F.relu, torch.relu, "relu") and not _cval(kwargs.get("inplace", False)):
            return self._activation("relu", a0, val)
        if is_t(torch.tanh, F.tanh, "tanh"):
            return self._activation("tanh", a0, val)
        if is_t(torch.sigmoid, F.sigmoid, torch.special.expit, "sigmoid"):
            return self._activation("sigmoid", a0, val)
        if is_t(F.gelu, "gelu"):
            if _cval(kwargs.get("approximate", "none")) != "none":
                raise _Refused("GELU with the tanh approximation is not supported (only the exact erf form)")
            return self._activation("gelu", a0, val)
        if is_t(torch.square, "square"):
            return self._activation("square", a0, val)
        if is_t(operator.pow, torch.pow, "pow"):
            e = args[1] if len(args) > 1 else kwargs.get("exponent")
            if isinstance(a0, _Lin) and isinstance(e, _Const) and _is_two(e.val):
                return self._activation("square", a0, val)
            raise _Refused(f"{name}: only x ** 2 is supported")
        if is_t(torch.clamp, torch.clamp_min, "clamp", "clamp_min"):
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
            if isinstance(lo, _Const) and _is_zero(lo.val) and (hi is None or (isinstance(hi, _Const) and hi.val is None)):
                return self._activation("relu", a0, val)
            raise _Refused(f"{name}: only clamp(min=0) (a ReLU) is supported")
        # shape-preserving no-ops
        if is_t(torch.flatten, "flatten", "reshape", "view", "contiguous", "clone", "to", "float", "double", "type_as",
                torch.reshape, F.dropout, "detach", torch.detach):
            if is_t(F.dropout):
                tr = kwargs.get("training", args[2] if len(args) > 2 else _Const(True))
                if not (isinstance(tr, _Const) and tr.val is False):
                    raise _Refused("F.dropout in training mode")
            return self._identity(a0, val, name)
        if is_t(operator.getitem) and isinstance(a0, _Lin):
            raise _Refused(f"{name}: indexing an input-dependent tensor is not supported")
        if is_t(getattr, "size", "dim"):
            return _Const(val)
        if is_t(torch.zeros_like, torch.ones_like, torch.full_like, "new_zeros", "new_ones", "new_full"):
            return _Const(val)
        # affine operations
        if is_t(F.linear):
            wt = args[1] if len(args) > 1 else kwargs.get("weight")
            bs = args[2] if len(args) > 2 else kwargs.get("bias")
            return self._linear(a0, wt, bs, val, name)
        if is_t(torch.addmm):
            if any(k in kwargs for k in ("beta", "alpha")):
                raise _Refused(f"{name}: addmm with beta/alpha is not supported")
            bias, x, m = args[0], args[1], args[2]
            if not isinstance(m, _Const):
                raise _Refused(f"{name}: addmm with an input-dependent matrix")
            return self._linear(x, _Const(m.val.t()), bias, val, name)
        if is_t(operator.matmul, torch.matmul, torch.mm, "matmul", "mm", "__matmul__"):
            x, m = args[0], args[1]
            if not isinstance(x, _Lin) or not isinstance(m, _Const) or not isinstance(m.val, torch.Tensor) or m.val.ndim != 2:
                raise _Refused(f"{name}: only (input-dependent rows) @ (constant matrix) is supported")
            return self._linear(x, _Const(m.val.t()), None, val, name)
        if is_t(operator.add, torch.add, operator.sub, torch.sub, torch.subtract, "add", "sub", "__add__", "__sub__", "__radd__", "__rsub__"):
            a, b = args[0], args[1]
            if "alpha" in kwargs:
                raise _Refused(f"{name}: add/sub with alpha is not supported")
            sub_op = is_t(operator.sub, torch.sub, torch.subtract, "sub", "__sub__")
            if is_t("__rsub__"):
                a, b, sub_op = b, a, True
            if isinstance(a, _Lin) and isinstance(b, _Lin):
                raise _Refused(f"{name}: adds two input-dependent tensors (a skip or residual connection)")
            if isinstance(a, _Lin):
                a = self._lin(a)
                w = self._check_2d(val, name)
                c = self._row(b.val, w, val, name)
                return self._apply(a, np.eye(w), -c if sub_op else c, False, val, name)
            b = self._lin(b)
            w = self._check_2d(val, name)
            c = self._row(a.val, w, val, name)
            return self._apply(b, -np.eye(w) if sub_op else np.eye(w), c, False, val, name)
        if is_t(operator.mul, torch.mul, torch.multiply, "mul", "__mul__", "__rmul__"):
            a, b = args[0], args[1]
            if isinstance(a, _Lin) and isinstance(b, _Lin):
                if a is b:
                    return self._activation("square", a, val)
                raise _Refused(f"{name}: multiplies two input-dependent tensors")
            lin, c0 = (a, b) if isinstance(a, _Lin) else (b, a)
            lin = self._lin(lin)
            w = self._check_2d(val, name)
            c = self._row(c0.val, w, val, name)
            return self._apply(lin, np.diag(c), np.zeros(w), False, val, name)
        if is_t(operator.truediv, torch.div, torch.true_divide, "div", "__truediv__", "true_divide"):
            a, b = args[0], args[1]
            if _cval(kwargs.get("rounding_mode")) is not None:
                raise _Refused(f"{name}: rounded division")
            if not isinstance(a, _Lin) or isinstance(b, _Lin):
                raise _Refused(f"{name}: division by an input-dependent tensor")
            a = self._lin(a)
            w = self._check_2d(val, name)
            c = self._row(b.val, w, val, name)
            if not np.all(np.isfinite(1.0 / c)):
                raise _Refused(f"{name}: division by zero")
            return self._apply(a, np.diag(1.0 / c), np.zeros(w), False, val, name)
        if is_t(operator.neg, torch.neg, torch.negative, "neg", "__neg__"):
            a = self._lin(a0)
            w = self._check_2d(val, name)
            return self._apply(a, -np.eye(w), np.zeros(w), True, val, name)
        if is_t(operator.pos, torch.positive):
            return self._identity(a0, val, name)
        if is_t(torch.cat, torch.concat, torch.concatenate, torch.hstack, torch.column_stack):
            return self._cat(args, kwargs, val, name)
        raise _Refused(f"unsupported operation {name}")

    def _linear(self, x: Any, wt: Any, bs: Any, val: Any, name: str) -> _Lin:
        import torch

        x = self._lin(x)
        if not isinstance(wt, _Const) or not isinstance(wt.val, torch.Tensor) or wt.val.ndim != 2:
            raise _Refused(f"{name}: the weight must be a constant matrix")
        w = self._check_2d(val, name)
        W = wt.val.detach().to(val.dtype).to(torch.float64).numpy().astype(np.float64, copy=True)
        if bs is None or (isinstance(bs, _Const) and bs.val is None):
            b = np.zeros(w)
        elif isinstance(bs, _Const):
            b = self._row(bs.val, w, val, name)
        else:
            raise _Refused(f"{name}: an input-dependent bias")
        return self._apply(x, W, b, False, val, name)

    def _cat(self, args: tuple[Any, ...], kwargs: dict[str, Any], val: Any, name: str) -> _Lin:
        parts = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", _Const(0))
        dim_v = dim.val if isinstance(dim, _Const) else dim
        if name.endswith(("hstack", "column_stack")):
            dim_v = 1
        if dim_v not in (1, -1):
            raise _Refused(f"{name}: concatenation along dim {dim_v!r} (only along the feature dim 1)")
        lins = [p for p in parts if isinstance(p, _Lin)]
        if len(lins) != 1:
            raise _Refused(f"{name}: concatenates several input-dependent tensors")
        lin = self._lin(lins[0])
        w = self._check_2d(val, name)
        rows: list[np.ndarray] = []
        bias: list[np.ndarray] = []
        wl = lin.W.shape[0]
        for p in parts:
            pw = int(p.val.shape[1]) if getattr(p.val, "ndim", 0) == 2 else -1
            if pw < 0:
                raise _Refused(f"{name}: a concatenated part is not (n, width)")
            if isinstance(p, _Lin):
                rows.append(np.eye(wl))
                bias.append(np.zeros(wl))
            else:
                rows.append(np.zeros((pw, wl)))
                bias.append(self._row(p.val, pw, val, name))
        W = np.vstack(rows)
        if W.shape[0] != w:
            raise _Refused(f"{name}: widths do not add up")
        return self._apply(lin, W, np.concatenate(bias), True, val, name)

    def _module(self, sub: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], val: Any) -> _Lin | _Const:
        import torch.nn as nn

        a0 = args[0] if args else None
        if not isinstance(a0, _Lin) or len(args) != 1 or kwargs:
            raise _Refused(f"{name}: unsupported call")
        if isinstance(sub, nn.Linear):
            bias = None if getattr(sub, "bias", None) is None else _Const(sub.bias)
            return self._linear(a0, _Const(sub.weight), bias, val, name)
        if isinstance(sub, nn.ReLU):
            return self._activation("relu", a0, val)
        if isinstance(sub, nn.Tanh):
            return self._activation("tanh", a0, val)
        if isinstance(sub, nn.Sigmoid):
            return self._activation("sigmoid", a0, val)
        if isinstance(sub, nn.GELU):
            if getattr(sub, "approximate", "none") != "none":
                raise _Refused("GELU with the tanh approximation is not supported (only the exact erf form)")
            return self._activation("gelu", a0, val)
        if isinstance(sub, (nn.Identity, nn.Flatten)):
            return self._identity(a0, val, name)
        if isinstance(sub, (nn.Dropout, nn.AlphaDropout, nn.Dropout1d)):
            if sub.training:
                raise _Refused(f"{name}: dropout in training mode (call .eval())")
            return self._identity(a0, val, name)
        raise _Refused(f"unsupported layer {type(sub).__name__}")


def _wrap_consts(a: Any) -> Any:
    """Literal arguments of a graph node (numbers, None, dtypes) as _Const, recursively in lists and dicts."""
    if isinstance(a, (_Lin, _Const)):
        return a
    if isinstance(a, (list, tuple)):
        return type(a)(_wrap_consts(i) for i in a)
    if isinstance(a, dict):
        return {k: _wrap_consts(i) for k, i in a.items()}
    return _Const(a)


def _cval(a: Any) -> Any:
    return a.val if isinstance(a, _Const) else a


def _node_name(node: Any, sub: Any) -> str:
    if sub is not None:
        return type(sub).__name__
    t = node.target
    return str(t) if isinstance(t, str) else getattr(t, "__name__", str(t))


def _is_two(v: Any) -> bool:
    try:
        return bool(float(v) == 2.0)
    except (TypeError, ValueError, RuntimeError):
        return False


def _is_zero(v: Any) -> bool:
    try:
        return v is not None and bool(float(v) == 0.0)
    except (TypeError, ValueError, RuntimeError):
        return False


def _module_of(model: Any) -> Any:
    for attr in ("module_", "module"):
        m = getattr(model, attr, None)
        if m is not None:
            return m
    return None


def _arith_dtypes(model: Any, module: Any) -> set[str]:
    """The float types the model's own predictions use (parameters, library copies, runtime input type)."""
    out: set[str] = set()
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            out.add(_dtype_name(t.dtype))
    tdt = getattr(model, "torch_dtype", None)
    if tdt is not None:
        out.add(_dtype_name(tdt))
    est = getattr(model, "est", None)
    coefs = getattr(est, "coefs_", None) if est is not None else None
    if isinstance(coefs, (list, tuple)):
        for c in coefs:
            dt = np.asarray(c).dtype
            out.add("float32" if dt == np.float32 else "float64")
    np_in = getattr(model, "np_input", None)
    if np_in is not None:
        out.add("float32" if np.dtype(np_in) == np.float32 else "float64")
    return out


def _trace(module: Any, tracer: _Tracer) -> _Lin | _Const:
    import torch
    import torch.nn as nn

    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is a reason (or a Sequential walk)
        if not isinstance(module, nn.Sequential):
            raise _Refused(f"torch.fx cannot trace {type(module).__name__} ({type(exc).__name__})") from None
        v: _Lin | _Const = tracer.input
        for child in module.children():
            if not isinstance(v, _Lin):
                raise _Refused("the output does not depend on the input") from None
            v = _trace_child(child, tracer, v)
        return v
    return tracer.run(gm, tracer.input)


def _trace_child(child: Any, tracer: _Tracer, v: _Lin) -> _Lin | _Const:
    import torch
    import torch.nn as nn

    if isinstance(child, nn.Sequential):
        out: _Lin | _Const = v
        for c in child.children():
            if not isinstance(out, _Lin):
                raise _Refused("the output does not depend on the input")
            out = _trace_child(c, tracer, out)
        return out
    try:
        gm = torch.fx.symbolic_trace(child)
    except Exception as exc:  # noqa: BLE001
        raise _Refused(f"torch.fx cannot trace the layer {type(child).__name__} ({type(exc).__name__})") from None
    return tracer.run(gm, v)


def _probe_points(d: int, module: Any) -> np.ndarray:
    """A fixed pseudo-random probe cloud at unit scale plus the origin."""
    rng = np.random.default_rng(0)
    P: np.ndarray = np.vstack([np.zeros((1, d)), rng.normal(size=(7, d)), 3.0 * rng.normal(size=(4, d))])
    return P


def network_of(model: Any) -> Network | str:
    """The model's feed-forward graph as a `Network`, or a one-line reason why it has none.

    Never raises for an unsupported model: kernel machines, tree ensembles, models without a torch
    module, residual / LayerNorm / attention modules all give a reason string.
    """
    try:
        return _network_of(model)
    except _Refused as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - the contract is a reason string, never an exception
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"cannot extract a network ({type(exc).__name__}{': ' + text if text else ''})"


def _network_of(model: Any) -> Network:
    from ..models.base import Model

    if not isinstance(model, Model):
        from ..models.base import wrap

        try:
            model = wrap(model)
        except Exception as exc:  # noqa: BLE001
            raise _Refused(f"not a model ({type(exc).__name__})") from None
    if not callable(getattr(model, "torch_logits", None)):
        raise _Refused(f"{type(model).__name__} has no torch_logits (not a torch network)")
    import torch
    import torch.nn as nn

    module = _module_of(model)
    if not isinstance(module, nn.Module):
        raise _Refused(f"{type(model).__name__} exposes no torch module (module_ / module)")
    if module.training:
        raise _Refused("the module is in training mode (call .eval())")
    d = int(model.n_features)
    dtypes = _arith_dtypes(model, module)
    P = _probe_points(d, module)
    in_dtype = getattr(model, "torch_dtype", None) or torch.float32
    probe = torch.as_tensor(P).to(in_dtype)
    tracer = _Tracer(d, probe)
    out = _trace(module, tracer)
    if not isinstance(out, _Lin):
        raise _Refused("the output does not depend on the input")
    w = tracer._check_2d(out.val, "the output")
    if w < 2:
        raise _Refused(f"the module returns {w} output; one logit per class is needed")
    layers = [*tracer.layers, ComposedAffine(out.W, out.b, tuple(out.stages))]
    dtypes |= tracer.dtypes
    dtype = min(dtypes, key=lambda s: _PRECISION[s]) if dtypes else "float32"
    net = Network(layers, dtype)
    _check_against(net, model, P)
    return net


def _check_against(net: Network, model: Any, P: np.ndarray) -> None:
    """Refuse when net.forward differs from model.torch_logits beyond the rigorous rounding bound."""
    import torch

    from .crown import logit_rounding_errors

    with torch.no_grad():
        z = model.torch_logits(torch.as_tensor(P, dtype=torch.float64))
    Z = np.asarray(z.detach().to(torch.float64).cpu().numpy(), dtype=np.float64)
    F = net.forward(P)
    if Z.shape != F.shape:
        raise _Refused(f"the extracted network gives shape {F.shape}, the model {Z.shape}")
    if not np.all(np.isfinite(Z)):
        raise _Refused("the model returns non-finite logits on probe points")
    err = np.abs(F - Z)
    bound = logit_rounding_errors(net, P, np.zeros(P.shape[0]), "linf")
    tol = 2.0 * bound + 1e-300
    if not np.all(err <= tol):
        i = int(np.argmax((err - tol).max(axis=1)))
        raise _Refused(
            f"the extracted network differs from torch_logits by {float(err[i].max()):.3g} on a probe point "
            f"(more than the rounding bound {float(bound[i].max()):.3g})"
        )


__all__ = ["ACTIVATIONS", "Activation", "Affine", "ComposedAffine", "Network", "Stage", "apply_activation", "network_of", "stages_of"]
