"""Adapter for ONNX classifiers (`.onnx` files and `onnx.ModelProto`s); onnxruntime is the reference.

Loading is `onnx.load` (protobuf: no code runs; external data is refused) and `onnx.checker`. The graph's
class-score output (a float (n, K) tensor; a ZipMap's input tensor) is what the Model reports:
probabilities as they are, or the softmax of logits. `predict`/`predict_proba` always come from
onnxruntime, so every adversarial is verified by onnxruntime itself. Then the strongest path:

- feed-forward graphs (Gemm, MatMul, Add, Sub, Mul, Div, Neg, Relu, LeakyRelu, Elu, Sigmoid, Tanh, Softplus,
  Softmax, LogSoftmax, Identity, Dropout, Flatten, Reshape with a constant shape, Cast to a float type,
  Constant, Concat, ONNX-ML Scaler, LinearClassifier and L1 Normalizer) become a float64 torch module (`torch_logits`;
  for probability outputs the logits are the pre-softmax scores / log-sigmoids); the conversion must agree with
  onnxruntime's probabilities to 1e-6 on random points, else the gradient path is refused;
- an ONNX-ML TreeEnsembleClassifier on the float input (optionally behind one ONNX-ML Scaler, whose float32
  arithmetic is monotone, so each split maps to an exact float32 raw-space threshold found by bisection)
  becomes a `TreeEnsemble` (`tree_ensemble()`, exact attacks) when its parse agrees with onnxruntime's
  decisions at, and one float32 ulp either side of, every (sampled) split threshold;
- anything else is a black box through onnxruntime. `path_note` says which path was taken and why.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ...errors import ModelError, first_line
from ..base import Model, Tree, TreeEnsemble, WrappedModel, argmax_rows, check_width, display_name, softmax_rows

if TYPE_CHECKING:
    import torch

INSTALL = 'pip install "robustbench-align[onnx]"'
FIDELITY_TOL = 1e-6  # max |p_torch - p_onnxruntime| accepted for the gradient path
_FLOAT, _DOUBLE, _FLOAT16 = 1, 11, 10
_N_PROBE = 256
_MAX_THRESHOLD_PROBES = 4000


def _import() -> tuple[Any, Any]:
    """(onnx, onnxruntime), imported lazily; ModelError with the install line when missing."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ModelError(f"ONNX models need onnx and onnxruntime: {INSTALL}") from None
    return onnx, onnxruntime


# ----------------------------------------------------------------------------------------
# Graph reading
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """One ONNX node with its attributes decoded to Python values."""

    op: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]


def _attrs(onnx: Any, node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [b.decode("utf-8", "replace") for b in v]
        out[a.name] = v
    return out


def _needed(nodes: list[Node], target: str) -> list[Node]:
    """The nodes `target` depends on, in graph (topological) order."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs}
    keep: set[int] = set()
    stack = [target]
    while stack:
        name = stack.pop()
        i = producer.get(name)
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(x for x in nodes[i].inputs if x)
    return [n for i, n in enumerate(nodes) if i in keep]


# ----------------------------------------------------------------------------------------
# The torch converter
# ----------------------------------------------------------------------------------------
GRADIENT_OPS = frozenset({
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "Softplus",
    "Softmax", "LogSoftmax", "Identity", "Dropout", "Flatten", "Reshape", "Cast", "Constant", "Concat",
    "LinearClassifier", "Normalizer", "Scaler",
})
_ML_OPS = frozenset({"LinearClassifier", "Normalizer", "Scaler", "TreeEnsembleClassifier", "ZipMap"})


def _unsupported(n: Node, consts: dict[str, np.ndarray]) -> str | None:
    """Why the converter cannot take node `n` (None: it can)."""
    if n.domain not in ("", "ai.onnx", "ai.onnx.ml") or (n.domain == "ai.onnx.ml") != (n.op in _ML_OPS):
        return f"unsupported ONNX op {n.op!r} (domain {n.domain or 'ai.onnx'!r})"
    if n.op not in GRADIENT_OPS:
        return f"unsupported ONNX op {n.op!r}"
    if n.op == "Cast" and int(n.attrs.get("to", 0)) not in (_FLOAT, _DOUBLE, _FLOAT16):
        return f"unsupported ONNX op 'Cast' to type {n.attrs.get('to')}"
    if n.op == "Reshape" and n.inputs[1] not in consts:
        return "unsupported ONNX op 'Reshape' with a computed shape"
    if n.op == "Normalizer" and n.attrs.get("norm", "MAX") != "L1":
        return f"unsupported ONNX op 'Normalizer' with norm {n.attrs.get('norm')!r}"
    if n.op == "LinearClassifier" and n.attrs.get("post_transform", "NONE") not in ("NONE", "LOGISTIC", "SOFTMAX"):
        return f"unsupported ONNX op 'LinearClassifier' with post_transform {n.attrs.get('post_transform')!r}"
    return None


def _linear_classifier(x: torch.Tensor, a: dict[str, Any], outputs: int) -> torch.Tensor:
    import torch

    coef = torch.as_tensor(np.asarray(a["coefficients"], dtype=np.float64), device=x.device)
    b = torch.as_tensor(np.asarray(a.get("intercepts", [0.0]), dtype=np.float64), device=x.device)
    labels = a.get("classlabels_ints") or a.get("classlabels_strings") or []
    rows = int(coef.numel() // x.shape[1])
    s = x @ coef.reshape(rows, -1).T + b
    post = a.get("post_transform", "NONE")
    if rows == 1 and len(labels) == 2:  # one score for two classes
        if post == "LOGISTIC":
            return torch.cat([torch.sigmoid(-s), torch.sigmoid(s)], dim=1)
        return torch.cat([-s, s], dim=1)
    if post == "LOGISTIC":
        return torch.sigmoid(s)
    if post == "SOFTMAX":
        return torch.softmax(s, dim=1)
    return s


def _run_node(n: Node, args: list[Any], env_consts: dict[str, np.ndarray]) -> Any:
    """Evaluate one supported node on float64 tensors."""
    import torch
    import torch.nn.functional as F

    op, a = n.op, n.attrs
    if op == "Gemm":
        A, B = args[0], args[1]
        A = A.T if a.get("transA", 0) else A
        B = B.T if a.get("transB", 0) else B
        y = float(a.get("alpha", 1.0)) * (A @ B)
        return y + float(a.get("beta", 1.0)) * args[2] if len(args) > 2 and args[2] is not None else y
    if op == "MatMul":
        return torch.matmul(args[0], args[1])
    if op == "Add":
        return args[0] + args[1]
    if op == "Sub":
        return args[0] - args[1]
    if op == "Mul":
        return args[0] * args[1]
    if op == "Div":
        return args[0] / args[1]
    if op == "Neg":
        return -args[0]
    if op == "Relu":
        return torch.relu(args[0])
    if op == "LeakyRelu":
        return F.leaky_relu(args[0], float(a.get("alpha", 0.01)))
    if op == "Elu":
        return F.elu(args[0], float(a.get("alpha", 1.0)))
    if op == "Sigmoid":
        return torch.sigmoid(args[0])
    if op == "Tanh":
        return torch.tanh(args[0])
    if op == "Softplus":
        return F.softplus(args[0])
    if op in ("Softmax", "LogSoftmax"):
        fn = torch.softmax if op == "Softmax" else torch.log_softmax
        return fn(args[0], dim=int(a.get("axis", -1)))
    if op in ("Identity", "Dropout", "Cast"):
        return args[0]
    if op == "Flatten":
        ax = int(a.get("axis", 1))
        x = args[0]
        lead = int(np.prod(x.shape[:ax])) if ax else 1
        return x.reshape(lead, -1)
    if op == "Reshape":
        shape = [int(s) for s in env_consts[n.inputs[1]].reshape(-1)]
        if not a.get("allowzero", 0):
            shape = [args[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return args[0].reshape(shape)
    if op == "Concat":
        return torch.cat(args, dim=int(a.get("axis", 1)))
    if op == "LinearClassifier":
        return _linear_classifier(args[0], a, len(n.outputs))
    if op == "Normalizer":
        return args[0] / args[0].abs().sum(dim=1, keepdim=True)
    if op == "Scaler":  # ONNX-ML: (x - offset) * scale, one value or one per feature
        x = args[0]
        off = torch.as_tensor(np.asarray(a.get("offset", [0.0]), dtype=np.float64), device=x.device)
        sc = torch.as_tensor(np.asarray(a.get("scale", [1.0]), dtype=np.float64), device=x.device)
        return (x - off) * sc
    raise ModelError(f"unsupported ONNX op {op!r}")  # pragma: no cover - filtered by _unsupported


class OnnxTorchModule:
    """The needed part of an ONNX graph evaluated in float64 torch; `__call__(x)` returns the logits tensor."""

    def __init__(self, nodes: list[Node], consts: dict[str, np.ndarray], input_name: str, logits_name: str,
                 extra: list[Node]) -> None:
        import torch

        self.nodes = nodes + extra
        self.np_consts = consts
        self.consts = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in consts.items() if np.issubdtype(v.dtype, np.number)}
        self.input_name = input_name
        self.logits_name = logits_name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        env: dict[str, Any] = {self.input_name: x.to(torch.float64)}
        for n in self.nodes:
            args: list[Any] = [env.get(i, self.consts.get(i)) if i else None for i in n.inputs]
            args = [v.to(x.device) if isinstance(v, torch.Tensor) and v.device != x.device else v for v in args]
            if n.op == "_LogSigmoid":
                out = F.logsigmoid(args[0])
            elif n.op == "_LogSigmoidNeg":
                out = F.logsigmoid(-args[0])
            elif n.op == "_Log":
                out = torch.log(args[0].clamp_min(1e-300))
            elif n.op == "_LinearScores":
                out = _linear_classifier(args[0], {**n.attrs, "post_transform": "NONE"}, 1)
            else:
                out = _run_node(n, args, self.np_consts)
            env[n.outputs[1] if n.op == "LinearClassifier" else n.outputs[0]] = out
        res: torch.Tensor = env[self.logits_name]
        return res


def _log_expr(nodes: list[Node], consts: dict[str, np.ndarray], name: str, extra: list[Node]) -> tuple[str, bool]:
    """A tensor whose softmax is the probability tensor `name`: (its name, whether it is exactly log p).

    Softmax → its input (log p up to a row constant); Sigmoid → logsigmoid; 1 - Sigmoid(z) → logsigmoid(-z);
    L1 Normalizer → its input's log; Concat of exact logs; LinearClassifier → its scores; else log(p).
    """
    producer = {o: n for n in nodes for o in n.outputs}
    n = producer.get(name)

    def emit(op: str, inputs: tuple[str, ...], attrs: dict[str, Any] | None = None) -> str:
        out = f"__log_{len(extra)}_{name}"
        extra.append(Node(op, "", inputs, (out,), attrs or {}))
        return out

    if n is not None:
        if n.op in ("Identity", "Dropout", "Cast"):
            return _log_expr(nodes, consts, n.inputs[0], extra)
        if n.op == "Softmax":
            return n.inputs[0], False
        if n.op == "Sigmoid":
            return emit("_LogSigmoid", (n.inputs[0],)), True
        if n.op == "Sub" and n.inputs[0] in consts and np.all(consts[n.inputs[0]] == 1.0):
            s = producer.get(n.inputs[1])
            if s is not None and s.op == "Sigmoid":
                return emit("_LogSigmoidNeg", (s.inputs[0],)), True
        if n.op == "Normalizer":
            inner, _ = _log_expr(nodes, consts, n.inputs[0], extra)
            return inner, False
        if n.op == "Concat":
            parts = [_log_expr(nodes, consts, i, extra) for i in n.inputs]
            if all(exact for _, exact in parts):
                return emit("Concat", tuple(p for p, _ in parts), dict(n.attrs)), True
        if n.op == "LinearClassifier" and n.attrs.get("post_transform") == "SOFTMAX":
            return emit("_LinearScores", (n.inputs[0],), dict(n.attrs)), False
    return emit("_Log", (name,)), True


# ----------------------------------------------------------------------------------------
# TreeEnsembleClassifier → TreeEnsemble
# ----------------------------------------------------------------------------------------
def parse_tree_classifier(a: dict[str, Any], n_features: int) -> TreeEnsemble | str:
    """The TreeEnsemble of an ONNX-ML TreeEnsembleClassifier's attributes, or why it cannot be parsed exactly."""
    if "nodes_values" not in a:
        return "thresholds stored as double tensors (nodes_values_as_tensor); the float32 comparison would not be exact"
    modes = list(a.get("nodes_modes", []))
    branch = {m for m in modes if m != "LEAF"}
    if not branch <= {"BRANCH_LEQ", "BRANCH_GT"} and not branch <= {"BRANCH_LT", "BRANCH_GTE"}:
        return f"split modes {', '.join(sorted(branch))} cannot share one comparison rule"
    strict = bool(branch & {"BRANCH_LT", "BRANCH_GTE"})
    labels = a.get("classlabels_int64s") or a.get("classlabels_strings") or []
    k = len(labels)
    if k < 2:
        return f"{k} class labels"
    post = a.get("post_transform", "NONE")
    tids = np.asarray(a["nodes_treeids"], dtype=np.int64)
    nids = np.asarray(a["nodes_nodeids"], dtype=np.int64)
    feats = np.asarray(a["nodes_featureids"], dtype=np.int64)
    vals = np.asarray(a["nodes_values"], dtype=np.float32)
    tnode = np.asarray(a["nodes_truenodeids"], dtype=np.int64)
    fnode = np.asarray(a["nodes_falsenodeids"], dtype=np.int64)
    ctree = np.asarray(a.get("class_treeids", []), dtype=np.int64)
    cnode = np.asarray(a.get("class_nodeids", []), dtype=np.int64)
    cid = np.asarray(a.get("class_ids", []), dtype=np.int64)
    cw = np.asarray(a.get("class_weights", []), dtype=np.float64)
    base = np.asarray(a.get("base_values", []), dtype=np.float64)
    same_nodes = tids.size == nids.size == feats.size == vals.size == tnode.size == fnode.size == len(modes)
    if not same_nodes or not ctree.size == cnode.size == cid.size == cw.size:
        return "node or class-weight attribute lists of different lengths"
    if cid.size and (cid.min() < 0 or cid.max() >= k):
        return "class id out of range"
    used = np.unique(cid)
    one_score = k == 2 and used.size <= 1 and (used.size == 0 or used[0] == 0)
    n_out = 1 if one_score else k
    if one_score:
        positive = bool(np.all(cw >= 0))
        if post == "LOGISTIC" and not positive:
            link: Literal["logistic", "softmax", "identity"] = "logistic"
        elif post == "NONE" and positive:
            link = "identity"  # onnxruntime reports [1 - s, s]
        else:
            return f"binary single-score ensemble with post_transform {post} and {'non-negative' if positive else 'mixed-sign'} weights"
    elif post in ("NONE", "SOFTMAX"):
        link = "identity" if post == "NONE" else "softmax"
    else:
        return f"post_transform {post} with {k} score columns"
    if base.size not in (0, 1, n_out) or (base.size == 1 and n_out != 1):
        return f"{base.size} base values for {n_out} score columns"
    from ..trees.checks import check_tree_caps, tree_caps

    node_cap = tree_caps()[1]
    trees: list[Tree] = []
    for t in np.unique(tids):
        rows = np.flatnonzero(tids == t)
        if rows.size > node_cap:  # before any per-node work: a huge tree is refused at once
            return f"tree {int(t)} has {rows.size} nodes, above the cap of {node_cap} per tree (RBA_MAX_TREE_NODES)"
        index = {int(nids[r]): int(r) for r in rows}
        if len(index) != rows.size:
            return f"tree {int(t)} repeats a node id"
        children = {int(c) for r in rows if modes[r] != "LEAF" for c in (tnode[r], fnode[r])}
        roots = [nid for nid in index if nid not in children]
        if len(roots) != 1:
            return f"tree {int(t)} has {len(roots)} roots"
        order: list[int] = []  # BFS renumbering: the root becomes node 0
        pos: dict[int, int] = {}
        queue = collections.deque([roots[0]])
        while queue:
            nid = queue.popleft()
            if nid in pos or nid not in index:
                return f"tree {int(t)} is not a tree (node {nid})"
            pos[nid] = len(order)
            order.append(nid)
            r = index[nid]
            if modes[r] != "LEAF":
                queue += [int(tnode[r]), int(fnode[r])]
        m = len(order)
        feature = np.full(m, -1, dtype=np.int64)
        thr = np.zeros(m, dtype=np.float32)
        left = np.full(m, -1, dtype=np.int64)
        right = np.full(m, -1, dtype=np.int64)
        value = np.zeros((m, n_out), dtype=np.float64)
        for i, nid in enumerate(order):
            r = index[nid]
            if modes[r] == "LEAF":
                continue
            if not 0 <= feats[r] < n_features:
                return f"tree {int(t)} splits on feature {int(feats[r])} of {n_features}"
            feature[i], thr[i] = feats[r], vals[r]
            true_child, false_child = pos[int(tnode[r])], pos[int(fnode[r])]
            # left means "x <= thr" (strict: "x < thr"); GT/GTE are the negations, so their children swap
            swap = modes[r] in ("BRANCH_GT", "BRANCH_GTE")
            left[i], right[i] = (false_child, true_child) if swap else (true_child, false_child)
        sel = np.flatnonzero(ctree == t)
        for j in sel:
            nid = int(cnode[j])
            if nid not in pos or modes[index[nid]] != "LEAF":
                return f"tree {int(t)}: a class weight on node {nid}, which is not a leaf"
            value[pos[nid], 0 if one_score else int(cid[j])] += cw[j]
        trees.append(Tree(feature=feature, threshold=thr, left=left, right=right, value=value))
    bias = np.zeros(n_out) if base.size == 0 else np.broadcast_to(base, (n_out,)).astype(np.float64)
    if one_score and link == "identity":  # scores [1 - s, s]: two columns, class 1 iff s > 1 - s
        trees = [Tree(t.feature, t.threshold, t.left, t.right, np.concatenate([-t.value, t.value], axis=1)) for t in trees]
        b = float(bias[0])
        bias = np.array([1.0 - b, b])
        n_out = 2
    ens = TreeEnsemble(trees=tuple(trees), n_features=n_features, n_classes=k, n_outputs=n_out, strict=strict, bias=bias,
                       combine="sum", link=link, source="onnx").validate()
    try:
        return check_tree_caps(ens)  # the depth cap, as for every other parser
    except ModelError as exc:
        return first_line(exc, with_type=False)


def threshold_probes(ens: TreeEnsemble, rng: np.random.Generator, limit: int = _MAX_THRESHOLD_PROBES) -> np.ndarray:
    """Rows with one feature at a split threshold and one float32 ulp either side (the other features random)."""
    feats, thrs = [], []
    for t in ens.trees:
        internal = t.left >= 0
        feats.append(t.feature[internal])
        thrs.append(t.threshold[internal])
    f = np.concatenate(feats) if feats else np.zeros(0, dtype=np.int64)
    th = np.concatenate(thrs) if thrs else np.zeros(0, dtype=np.float32)
    if f.size == 0:
        return np.zeros((0, ens.n_features))
    lo = np.full(ens.n_features, -1.0)
    hi = np.full(ens.n_features, 1.0)
    for j in range(ens.n_features):
        tj = th[f == j].astype(np.float64)
        if tj.size:
            lo[j], hi[j] = tj.min() - 1.0, tj.max() + 1.0
    pick = rng.choice(f.size, size=min(f.size, limit // 3), replace=False)
    rows = []
    for i in pick:
        t32 = th[i]
        for v in (np.nextafter(t32, np.float32(-np.inf)), t32, np.nextafter(t32, np.float32(np.inf))):
            r = rng.uniform(lo, hi)
            r[f[i]] = float(v)
            rows.append(r)
    out: np.ndarray = np.asarray(rows, dtype=np.float32).astype(np.float64)
    return out


_F32_MAX_KEY = 0x7F7FFFFF  # the ordered-integer key of the largest finite float32


def _f32_of_key(key: np.ndarray) -> np.ndarray:
    """The float32 values of ordered integer keys (key order = float order; 0 is +0.0)."""
    bits = np.where(key >= 0, key, (-key) | 0x80000000).astype(np.uint32)
    out: np.ndarray = bits.view(np.float32)
    return out


def fold_float32_scaler(ens: TreeEnsemble, attrs: dict[str, Any]) -> TreeEnsemble | str:
    """The ensemble as a function of the Scaler's float32 input: exact raw-space thresholds, or why not.

    onnxruntime computes z = float32((x32 - offset) * scale) and compares z with float32 thresholds. z is
    monotone in x32, so {x32 : z <= t} is {x32 <= T} (scale > 0) or {x32 >= T'} (scale < 0) for float32
    T, T' found by bisection over the finite float32 values; x32 >= T' is "not x32 <= prev(T')" (children swap).
    """
    d = ens.n_features
    off = np.broadcast_to(np.asarray(attrs.get("offset", [0.0]), dtype=np.float32).reshape(-1), (d,))
    sc = np.broadcast_to(np.asarray(attrs.get("scale", [1.0]), dtype=np.float32).reshape(-1), (d,))
    if not (np.all(np.isfinite(off)) and np.all(np.isfinite(sc))) or np.any(sc == 0):
        return "a Scaler with zero or non-finite scale before the tree ensemble"

    def z(xk: np.ndarray, f: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            out: np.ndarray = (_f32_of_key(xk) - off[f]) * sc[f]  # float32 arithmetic, as onnxruntime's Scaler
        return out

    new: list[Tree] = []
    for tree in ens.trees:
        internal = np.flatnonzero(tree.left >= 0)
        f = tree.feature[internal]
        thr = tree.threshold[internal]
        t_eff = np.nextafter(thr, np.float32(-np.inf)) if ens.strict else thr  # z < t  <=>  z <= prev(t)
        pos = sc[f] > 0
        # bisection for the boundary key: pos: largest key with z <= t; neg: smallest key with z <= t
        lo = np.full(f.size, -_F32_MAX_KEY - 1, dtype=np.int64)  # pos: P(lo) true (sentinel); neg: P(lo) false
        hi = np.full(f.size, _F32_MAX_KEY + 1, dtype=np.int64)  # pos: P(hi) false (sentinel); neg: P(hi) true
        while np.any(hi - lo > 1):
            mid = (lo + hi) // 2
            ok = z(np.clip(mid, -_F32_MAX_KEY, _F32_MAX_KEY), f) <= t_eff
            go_lo = np.where(pos, ok, ~ok)
            lo = np.where(go_lo, mid, lo)
            hi = np.where(go_lo, hi, mid)
        key = np.where(pos, lo, hi - 1)  # pos: x <= key ; neg: left iff x > key, i.e. not x <= key
        if np.any(key < -_F32_MAX_KEY) or np.any(key > _F32_MAX_KEY - (~pos)):
            return "a split the Scaler makes constant (no float32 input reaches one side)"
        th = tree.threshold.copy()
        th[internal] = _f32_of_key(key)
        left, right = tree.left.copy(), tree.right.copy()
        swap = internal[~pos]
        left[swap], right[swap] = tree.right[swap], tree.left[swap]
        new.append(Tree(feature=tree.feature, threshold=th, left=left, right=right, value=tree.value))
    return TreeEnsemble(trees=tuple(new), n_features=d, n_classes=ens.n_classes, n_outputs=ens.n_outputs, strict=False, bias=ens.bias,
                        combine=ens.combine, link=ens.link, source="onnx+scaler").validate()


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------
class OnnxModel(WrappedModel):
    """An ONNX classifier run by onnxruntime (black box unless a subclass adds a capability); see `path_note`."""

    path_note: str = ""

    def __init__(self, session: Any, input_name: str, input_type: int, output_name: str, d: int, c: int,
                 is_proba: bool, name: str, path_note: str, labels: tuple[Any, Any, list[Any]] | None = None) -> None:
        self.session = session
        # (session, output name, class labels): the graph's own predicted label, which decides ties as onnxruntime does
        self.labels = labels
        self.input_name = input_name
        self.np_input = np.float64 if input_type == _DOUBLE else np.float32
        self.output_name = output_name
        self._d, self._c = d, c
        self.is_proba = is_proba
        self.name = name
        self.path_note = path_note

    def scores(self, X: Any) -> np.ndarray:
        """onnxruntime's class-score output (probabilities or logits) for X, float64 (n, K)."""
        X = self._check_X(X)
        who = display_name(self.name)
        try:
            out = self.session.run([self.output_name], {self.input_name: X.astype(self.np_input)})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
            raise ModelError(f"{who}: onnxruntime failed on X of shape {X.shape} ({first_line(exc)[:200]})") from None
        z = np.asarray(out, dtype=np.float64).reshape(X.shape[0], -1)
        if z.shape != (X.shape[0], self._c):
            raise ModelError(f"{who}: onnxruntime returned shape {z.shape}, expected {(X.shape[0], self._c)}")
        if np.isnan(z).any():
            raise ModelError(f"{who}: onnxruntime returned NaN for {int(np.isnan(z).any(axis=1).sum())} of {z.shape[0]} rows")
        return z

    def predict_proba(self, X: Any) -> np.ndarray:
        """onnxruntime's probabilities (rows renormalised), or the softmax of its logits."""
        z = self.scores(X)
        if self.is_proba:
            p = np.clip(z, 0.0, None)
            s = p.sum(axis=1, keepdims=True)
            out: np.ndarray = np.divide(p, s, out=np.full_like(p, 1.0 / self._c), where=s > 0)
            return out
        return softmax_rows(z)

    def predict(self, X: Any) -> np.ndarray:
        """onnxruntime's own predicted label as a class index when the graph outputs one (it decides exact score ties),
        else the argmax of its class scores, ties to the lowest index."""
        if self.labels is None:
            return argmax_rows(self.scores(X))
        sess, out, classes = self.labels
        X = self._check_X(X)
        try:
            lab = np.asarray(sess.run([out], {self.input_name: X.astype(self.np_input)})[0]).reshape(-1)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
            raise ModelError(f"{display_name(self.name)}: onnxruntime failed on X of shape {X.shape} ({first_line(exc)[:200]})") from None
        index = {v: i for i, v in enumerate(classes)}
        try:
            return np.array([index[v.item() if hasattr(v, "item") else v] for v in lab], dtype=np.int64)
        except KeyError as exc:
            raise ModelError(f"{display_name(self.name)}: onnxruntime predicted label {exc} outside the class labels {classes}") from None


class OnnxTorchModel(OnnxModel):
    """A feed-forward ONNX graph with a float64 torch copy: gradient attacks; onnxruntime verifies."""

    def __init__(self, module: OnnxTorchModule, fidelity: float, **kw: Any) -> None:
        import torch

        super().__init__(**kw)
        self.module = module
        self.fidelity = fidelity
        self.torch_dtype = torch.float64

    def torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The converted graph's logits (pre-softmax scores for probability outputs), float64."""
        return self.module(x)


class OnnxTreeModel(OnnxModel):
    """An ONNX-ML TreeEnsembleClassifier: onnxruntime predictions plus the parsed `tree_ensemble()` (exact attacks)."""

    def __init__(self, ensemble: TreeEnsemble, **kw: Any) -> None:
        super().__init__(**kw)
        self._ensemble = ensemble

    def tree_ensemble(self) -> TreeEnsemble:
        """The parse, checked against onnxruntime at load time."""
        return self._ensemble


# ----------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------
def _float_tensor_type(vi: Any) -> int | None:
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is None or tt.elem_type not in (_FLOAT, _DOUBLE):
        return None
    return int(tt.elem_type)


def _label_session(proto: Any, graph: Any, nodes: list[Node], out_name: str, c: int, opts: Any) -> tuple[Any, Any, list[Any]] | None:
    """An onnxruntime session for the graph's predicted-label output with the class labels it uses, or None.

    ONNX-ML classifiers (LinearClassifier, TreeEnsembleClassifier, SVMClassifier) output a label beside their
    scores; at exact score ties their label is the library's decision, which the argmax of the scores may not be.
    """
    import onnx
    import onnxruntime as ort

    classes: list[Any] | None = None
    for n in nodes:
        for key in ("classlabels_ints", "classlabels_int64s", "classlabels_strings"):
            v = n.attrs.get(key)
            if v:
                classes = [x.decode() if isinstance(x, bytes) else int(x) if not isinstance(x, str) else x for x in v]
    if classes is None or len(classes) != c:
        return None
    label_outs = [v for v in graph.output if v.name != out_name and v.type.tensor_type.elem_type in (onnx.TensorProto.INT64,
                                                                                                      onnx.TensorProto.STRING)]
    if len(label_outs) != 1:
        return None
    pruned = onnx.ModelProto()
    pruned.CopyFrom(proto)
    del pruned.graph.output[:]
    pruned.graph.output.append(label_outs[0])
    try:
        sess = ort.InferenceSession(pruned.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - no label session: predict falls back to the argmax of the scores
        return None
    return sess, label_outs[0].name, classes


def _pick_output(graph: Any, nodes: list[Node]) -> str:
    """The name of the class-score tensor: a float graph output (names with "prob" first) or a ZipMap's input."""
    producer = {o: n for n in nodes for o in n.outputs}
    cands: list[str] = []
    for vi in graph.output:
        n = producer.get(vi.name)
        if n is not None and n.op == "ZipMap":
            cands.append(n.inputs[0])
        elif _float_tensor_type(vi) is not None:
            cands.append(vi.name)
    if not cands:
        raise ModelError("ONNX model has no float class-score output (an (n, n_classes) tensor or a ZipMap); export the probabilities or logits")
    return next((c for c in cands if "prob" in c.lower()), cands[0])


def _probe_inputs(d: int, rng: np.random.Generator, n: int = _N_PROBE) -> np.ndarray:
    """Random rows on several scales (the model's input scale is unknown)."""
    scales = np.repeat([0.1, 1.0, 3.0, 10.0], n // 4)[:, None]
    out: np.ndarray = rng.standard_normal((scales.shape[0], d)) * scales
    return out


def build_onnx_model(proto: Any, *, name: str, n_features: int | None = None, n_classes: int | None = None) -> Model:
    """The Model for a checked ONNX ModelProto (see the module docstring)."""
    onnx, ort = _import()
    from onnx import numpy_helper

    graph = proto.graph
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(f"{display_name(name)}: the ONNX model keeps weights in external files; save it as one self-contained .onnx file")
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes: list[Node] = []
    for nd in graph.node:
        node = Node(nd.op_type, nd.domain, tuple(nd.input), tuple(nd.output), _attrs(onnx, nd))
        if node.op == "Constant" and node.domain in ("", "ai.onnx"):
            a = node.attrs
            if "value" in a:
                consts[node.outputs[0]] = numpy_helper.to_array(a["value"])
            elif "value_float" in a or "value_floats" in a:
                consts[node.outputs[0]] = np.asarray(a.get("value_float", a.get("value_floats")), dtype=np.float32)
            elif "value_int" in a or "value_ints" in a:
                consts[node.outputs[0]] = np.asarray(a.get("value_int", a.get("value_ints")), dtype=np.int64)
            else:
                nodes.append(node)
            continue
        nodes.append(node)
    inputs = [vi for vi in graph.input if vi.name not in consts]
    who = display_name(name)
    if len(inputs) != 1:
        raise ModelError(f"{who}: the ONNX model has {len(inputs)} inputs; wrap a model with one (n, n_features) float input")
    inp = inputs[0]
    in_type = _float_tensor_type(inp)
    if in_type is None:
        raise ModelError(f"{who}: the ONNX model's input {inp.name!r} is not a float or double tensor")
    dims = list(inp.type.tensor_type.shape.dim)
    d_decl = int(dims[1].dim_value) if len(dims) == 2 and dims[1].HasField("dim_value") else None
    if d_decl is None and n_features is None:
        raise ModelError(f"{who}: the ONNX input {inp.name!r} has no static (n, n_features) shape; pass n_features=")
    if d_decl is not None and n_features is not None and int(n_features) != d_decl:
        raise ModelError(f"{who}: n_features={n_features} but the ONNX input takes {d_decl} features")
    d = check_width(d_decl if d_decl is not None else n_features, name)
    out_name = _pick_output(graph, nodes)
    # a session that computes only the class scores (labels and ZipMaps dropped)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(proto)
    del pruned.graph.output[:]
    elem = _DOUBLE if any(_float_tensor_type(v) == _DOUBLE for v in graph.output if v.name == out_name) else _FLOAT
    pruned.graph.output.append(onnx.helper.make_tensor_value_info(out_name, elem, None))
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(pruned.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
        raise ModelError(f"{who}: onnxruntime cannot run the model ({first_line(exc)[:200]})") from None
    rng = np.random.default_rng(0)
    X = _probe_inputs(d, rng)
    try:
        z = np.asarray(session.run([out_name], {inp.name: X.astype(np.float64 if in_type == _DOUBLE else np.float32)})[0], dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{who}: onnxruntime failed on a ({X.shape[0]}, {d}) input ({first_line(exc)[:200]}); check n_features") from None
    if z.ndim != 2 or z.shape[0] != X.shape[0] or z.shape[1] < 2:
        raise ModelError(f"{who}: the ONNX class-score output {out_name!r} has shape {z.shape}; need (n, n_classes >= 2)")
    c = int(z.shape[1])
    if n_classes is not None and int(n_classes) != c:
        raise ModelError(f"{who}: n_classes={n_classes} but the ONNX model outputs {c} class scores")
    finite = np.isfinite(z).all(axis=1)
    is_proba = bool(finite.any() and np.all(z[finite] >= -1e-6) and np.allclose(z[finite].sum(axis=1), 1.0, atol=1e-4))
    kw: dict[str, Any] = {"session": session, "input_name": inp.name, "input_type": in_type, "output_name": out_name,
                          "d": d, "c": c, "is_proba": is_proba, "name": name, "labels": _label_session(proto, graph, nodes, out_name, c, opts)}
    needed = _needed(nodes, out_name)
    base = OnnxModel(**kw, path_note="")
    # --- exact path: a TreeEnsembleClassifier on the input
    trees = [n for n in needed if n.op == "TreeEnsembleClassifier"]
    if trees:
        return _tree_model(base, trees, needed, in_type, kw, rng)
    # --- gradient path
    reasons = [r for r in (_unsupported(n, consts) for n in needed) if r]
    if reasons:
        return OnnxModel(**kw, path_note=f"black box: gradient path refused: {reasons[0]}; attacked through onnxruntime")
    extra: list[Node] = []
    logits_name, _ = _log_expr(needed, consts, out_name, extra) if is_proba else (out_name, False)
    module = OnnxTorchModule(needed, consts, inp.name, logits_name, extra)
    fid, why = _fidelity(module, base, rng)
    if why:
        return OnnxModel(**kw, path_note=f"black box: gradient path refused: {why}; attacked through onnxruntime")
    return OnnxTorchModel(module, fid, **kw, path_note=f"gradient path: float64 torch conversion of {len(needed)} ONNX nodes "
                          f"(max |p - p_onnxruntime| = {fid:.1e} on {X.shape[0]} random points)")


def _fidelity(module: OnnxTorchModule, base: OnnxModel, rng: np.random.Generator) -> tuple[float, str]:
    """(max |softmax(torch logits) - onnxruntime probabilities|, why the conversion is refused or "")."""
    import torch

    X = _probe_inputs(base.n_features, rng)
    try:
        with torch.no_grad():
            lg = module(torch.as_tensor(X, dtype=torch.float64))
    except Exception as exc:  # noqa: BLE001 - a graph the converter misreads
        return float("inf"), f"the torch conversion fails ({first_line(exc)[:160]})"
    if tuple(lg.shape) != (X.shape[0], base.n_classes):
        return float("inf"), f"the torch conversion returns shape {tuple(lg.shape)}"
    p = torch.softmax(lg, dim=1).numpy()
    ref = base.predict_proba(X)
    err = float(np.max(np.abs(p - ref)))
    if not np.isfinite(err) or err > FIDELITY_TOL:
        return err, f"the torch conversion differs from onnxruntime by {err:.1e} > {FIDELITY_TOL:g} in probability"
    return err, ""


def _tree_model(base: OnnxModel, trees: list[Node], needed: list[Node], in_type: int, kw: dict[str, Any],
                rng: np.random.Generator) -> Model:
    """The exact path for a TreeEnsembleClassifier graph, or a black box with the reason."""

    def refuse(why: str) -> Model:
        return OnnxModel(**kw, path_note=f"black box: exact tree path refused: {why}; attacked through onnxruntime")

    if len(trees) > 1:
        return refuse(f"{len(trees)} tree ensembles in the graph")
    t = trees[0]
    others = [n for n in needed if n is not t]
    scalers = [n for n in others if n.op == "Scaler"]
    odd = [n.op for n in others if n.op not in ("Identity", "Cast", "Scaler")]
    if odd or len(scalers) > 1:
        return refuse(f"ONNX op {(odd or ['Scaler'])[0]!r} around the tree ensemble")
    if in_type != _FLOAT:
        return refuse("double input: onnxruntime compares in float64, the parse in float32")
    ens = parse_tree_classifier(t.attrs, base.n_features)
    if isinstance(ens, str):
        return refuse(ens)
    if scalers:
        folded = fold_float32_scaler(ens, scalers[0].attrs)
        if isinstance(folded, str):
            return refuse(folded)
        ens = folded
    X = np.concatenate([threshold_probes(ens, rng), _probe_inputs(base.n_features, rng)])
    X = X.astype(np.float32).astype(np.float64)
    ref = base.predict(X)
    got = ens.predict(X)
    bad = ref != got
    if bad.any():
        raw = ens.raw(X[bad])
        gap = np.abs(raw[:, 0]) if raw.shape[1] == 1 else np.abs(np.diff(np.sort(raw, axis=1)[:, -2:], axis=1)[:, 0])
        vmax = max(float(np.max(np.abs(t.value))) for t in ens.trees) + float(np.max(np.abs(ens.bias)))
        at_ties = bool(np.all(gap <= (len(ens.trees) + 1) * vmax * 2.0**-22))
        why = " at score ties, which onnxruntime decides by its float32 summation" if at_ties else " (thresholds ±1 ulp and random)"
        return refuse(f"the parse disagrees with onnxruntime on {int(bad.sum())} of {X.shape[0]} probe points{why}")
    perr = float(np.max(np.abs(ens.predict_proba(X) - base.predict_proba(X))))
    if perr > 1e-5:
        return refuse(f"the parse's probabilities differ from onnxruntime by {perr:.1e}")
    via = " behind a float32 Scaler folded into raw-space thresholds" if scalers else ""
    return OnnxTreeModel(ens, **kw, path_note=f"exact path: {len(ens.trees)} trees parsed from TreeEnsembleClassifier{via} "
                         f"(agrees with onnxruntime on {X.shape[0]} probe points at and ±1 ulp of thresholds)")


def _check(onnx: Any, proto: Any, who: str) -> None:
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - ValidationError and protobuf errors
        raise ModelError(f"{who}: not a valid ONNX model ({first_line(exc)[:200]})") from None


def load_onnx(path: Path, name: str | None = None) -> Model:
    """A Model from an .onnx file (protobuf only; no code runs, external data is refused)."""
    onnx, _ = _import()
    who = repr(path.name)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - DecodeError and friends
        raise ModelError(f"{who}: not a readable ONNX file ({first_line(exc)[:200]})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"{who}: not a readable ONNX file (no graph); the file may be truncated")
    _check(onnx, proto, who)
    return build_onnx_model(proto, name=name or path.stem)


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for `onnx.ModelProto` objects."""
    onnx, _ = _import()
    nm = name or (obj.graph.name if obj.HasField("graph") and obj.graph.name else "onnx-model")
    _check(onnx, obj, display_name(nm))
    return build_onnx_model(obj, name=nm, n_features=n_features, n_classes=n_classes)


__all__ = ["FIDELITY_TOL", "GRADIENT_OPS", "OnnxModel", "OnnxTorchModel", "OnnxTorchModule", "OnnxTreeModel", "adapt",
           "build_onnx_model", "load_onnx", "parse_tree_classifier", "threshold_probes"]
