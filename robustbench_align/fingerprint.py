"""Content fingerprints: what makes a model or a data file the same one.

A run's key and the fit cache use these instead of names and paths, so two different models never
share a row and a changed file is never mistaken for the old one.

- `file_digest`: SHA-256 of a file's bytes, or of a directory tree (relative names and bytes).
- `object_digest`: SHA-256 of an in-memory object's state, walked through the pickle protocol's
  `__getstate__` (numpy arrays and torch tensors by dtype, shape and bytes; functions by their code,
  defaults and closure), without calling the object's own attribute hooks. Parts that expose no
  state are marked, so the caller knows the digest is partial.
- `model_fingerprint`: a model's identity: its file digest when it was loaded from a file, else the
  digest of its state, completed, when partial, by its outputs on fixed probe points.
"""
from __future__ import annotations

import hashlib
import os
import stat
import types
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_ATTR = "source_sha256_"  # set by models.persistence.load_model on models read from a file
_MAX_DEPTH = 60
_MAX_NODES = 2_000_000


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a regular file's bytes, or of every regular file under a directory (sorted by relative name)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p).as_posix()).encode() + b"\0")
            h.update(_digest_of(f).encode())
        return h.hexdigest()
    return _digest_of(p)


def _digest_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def stat_key(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(size, mtime_ns, inode) of `path`: to tell whether a file changed while it was being read."""
    s = os.stat(path)
    return (s.st_size, s.st_mtime_ns, s.st_ino) if stat.S_ISREG(s.st_mode) else (0, s.st_mtime_ns, s.st_ino)


class _Walker:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # objects whose id is in `seen` stay alive, so ids are not reused
        self.nodes = 0
        self.complete = True

    def put(self, tag: str, data: bytes = b"") -> None:
        self.h.update(tag.encode() + b"\x1f" + len(data).to_bytes(8, "little") + data)

    def opaque(self, obj: Any) -> None:
        self.complete = False
        self.put("opaque", _type_name(obj).encode())

    def walk(self, obj: Any, depth: int = 0) -> None:
        self.nodes += 1
        if depth > _MAX_DEPTH or self.nodes > _MAX_NODES:
            self.opaque(obj)
            return
        if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
            self.put(type(obj).__name__, obj if isinstance(obj, bytes) else repr(obj).encode())
            return
        if isinstance(obj, (bytearray, memoryview)):
            self.put("bytes", bytes(obj))
            return
        if id(obj) in self.seen:  # a shared or cyclic reference
            self.put("ref", str(self.seen[id(obj)]).encode())
            return
        self.seen[id(obj)] = len(self.seen)
        self.keep.append(obj)
        if isinstance(obj, np.ndarray):
            self._array(obj, depth)
        elif isinstance(obj, np.generic):
            self.put("np:" + obj.dtype.str, obj.tobytes())
        elif _is_tensor(obj):
            self._tensor(obj)
        elif isinstance(obj, (list, tuple)):
            self.put(type(obj).__name__, str(len(obj)).encode())
            for v in obj:
                self.walk(v, depth + 1)
        elif isinstance(obj, dict):
            self._mapping(obj, depth)
        elif isinstance(obj, (set, frozenset)):
            self.put("set", str(len(obj)).encode())
            for d in sorted(_sub_digest(v) for v in obj):
                self.put("item", d.encode())
        elif isinstance(obj, (types.FunctionType, types.LambdaType)):
            self._function(obj, depth)
        elif isinstance(obj, types.MethodType):
            self.put("method", obj.__func__.__qualname__.encode())
            self.walk(obj.__func__, depth + 1)
            self.walk(obj.__self__, depth + 1)
        elif isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType)):
            self.put("name", _qualified(obj).encode())
        elif isinstance(obj, types.CodeType):
            self._code(obj, depth)
        else:
            self._instance(obj, depth)

    def _array(self, a: np.ndarray, depth: int) -> None:
        self.put("ndarray", f"{a.dtype.str}{a.shape}".encode())
        if a.dtype.hasobject:
            for v in a.ravel().tolist():
                self.walk(v, depth + 1)
        else:
            self.put("data", np.ascontiguousarray(a).tobytes())

    def _tensor(self, t: Any) -> None:
        t = t.detach().cpu().contiguous()
        self.put("tensor", f"{t.dtype}{tuple(t.shape)}".encode())
        flat = t.reshape(-1)
        import torch

        self.put("data", flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")

    def _mapping(self, d: dict[Any, Any], depth: int) -> None:
        self.put("dict", str(len(d)).encode())
        items = [(_sub_digest(k), k, v) for k, v in list(d.items())]
        for kd, _, v in sorted(items, key=lambda kv: kv[0]):
            self.put("key", kd.encode())
            self.walk(v, depth + 1)

    def _function(self, f: types.FunctionType, depth: int) -> None:
        self.put("function", _qualified(f).encode())
        self._code(f.__code__, depth)
        self.walk(f.__defaults__, depth + 1)
        self.walk(f.__kwdefaults__, depth + 1)
        for cell in f.__closure__ or ():
            try:
                self.walk(cell.cell_contents, depth + 1)
            except ValueError:  # an empty cell
                self.put("empty-cell")

    def _code(self, c: types.CodeType, depth: int) -> None:
        self.put("code", c.co_code)
        self.put("names", repr((c.co_names, c.co_varnames)).encode())
        for const in c.co_consts:
            self.walk(const, depth + 1)

    def _instance(self, obj: Any, depth: int) -> None:
        cls = type(obj)
        self.put("object", _qualified(cls).encode())
        getstate = getattr(cls, "__getstate__", None)  # looked up on the class: an instance's __getattr__ never runs
        try:
            state = getstate(obj) if getstate is not None else vars(obj)
        except Exception:  # noqa: BLE001 - an object that will not give its state
            self.opaque(obj)
            return
        if state is None:  # no __dict__ and no slots: nothing to tell instances apart
            self.opaque(obj)
            return
        if state is obj:
            self.opaque(obj)
            return
        self.walk(state, depth + 1)


def _is_tensor(obj: Any) -> bool:
    mod = type(obj).__module__
    if not mod.startswith("torch"):
        return False
    import torch

    return isinstance(obj, torch.Tensor)


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', type(obj).__name__))}"


def _type_name(obj: Any) -> str:
    return _qualified(type(obj))


def _sub_digest(obj: Any) -> str:
    w = _Walker()
    w.walk(obj)
    return w.h.hexdigest()


def object_digest(obj: Any) -> tuple[str, bool]:
    """(SHA-256 hex of `obj`'s state, whether every part of it exposed its state)."""
    w = _Walker()
    w.walk(obj)
    return w.h.hexdigest(), w.complete


def probe_digest(model: Any, n_features: int, seed: int = 20_261) -> str:
    """SHA-256 of a model's class probabilities (rounded to 1e-6) on fixed probe points of `n_features` columns."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.standard_normal((96, n_features)), 3.0 * rng.standard_normal((32, n_features))])
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    return hashlib.sha256(np.round(p, 6).tobytes() + str(p.shape).encode()).hexdigest()


def model_fingerprint(original: Any, model: Any) -> str:
    """The identity of a user model: `original` is what the user gave, `model` its wrapped Model.

    A model read from a file is its file digest; an in-memory object is the digest of its state,
    plus its outputs on probe points when part of the state was not visible.
    """
    for obj in (original, model):
        try:
            src = vars(obj).get(SOURCE_ATTR)
        except Exception:  # noqa: BLE001 - no __dict__, or a hostile one
            src = None
        if isinstance(src, str):
            return "file:" + src[:32]
    digest, complete = object_digest(original)
    if complete:
        return "state:" + digest[:32]
    return "state+probe:" + hashlib.sha256((digest + probe_digest(model, int(model.n_features))).encode()).hexdigest()[:32]


__all__ = ["file_digest", "model_fingerprint", "object_digest", "probe_digest", "stat_key"]
