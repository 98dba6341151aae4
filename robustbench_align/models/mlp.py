"""Multilayer perceptron classifier in torch, as an sklearn-style estimator satisfying the Model contract.

The network is a plain `nn.Sequential` of `Linear` layers and activations mapping (n, d) inputs to
(n, c) logits, so gradient attacks and Jacobian metrics can differentiate it exactly through
`torch_logits`. Training is deterministic given `random_state`: initialisation, batch order and any
validation split draw from local generators and never touch (or read) the global torch RNG.

Design choices (documented here on purpose):
- Initialisation is torch's default `Linear` rule (weights and biases uniform on
  ±1/sqrt(fan_in)); `init_scale` multiplies every parameter afterwards, as in the
  large-initialisation grokking experiments (e.g. every weight ×8 at init).
- `loss='mse'` is the mean over all entries of (logits − one-hot)², torch's `mse_loss` default.
- `weight_decay` is decoupled for AdamW and an L2 term folded into the gradient for Adam/SGD.
- With `early_stopping=True` the validation task loss is monitored every epoch and the weights of
  the best epoch are restored after `patience` epochs without improvement (validation rows come
  from `fit(X_val=, y_val=)` or a stratified `validation_fraction` split drawn with the seed).
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from ..errors import DataError, ModelError, first_line
from .base import FittedModel, argmax_rows, check_features, check_training_data, softmax_rows
from .constraints import AnyOf, Boolean, Check, Constraint, Integer, Options, Real, is_int, optional
from .dtypes import DTYPES, torch_dtype

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
META_FILE = "mlp.json"
ACTIVATIONS = ("relu", "tanh", "gelu", "quadratic")
OPTIMIZERS = ("adamw", "adam", "sgd")
LOSSES = ("ce", "mse")


def task_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """The task loss of one batch: cross-entropy ("ce") or squared error against the one-hot labels ("mse")."""
    F = torch.nn.functional
    if loss == "ce":
        return F.cross_entropy(logits, y)
    if loss == "mse":
        return F.mse_loss(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))
    raise ModelError(f"loss must be {' or '.join(repr(x) for x in LOSSES)}, got {loss!r}")


class Square(nn.Module):
    """Elementwise x ↦ x², the 'quadratic' activation of the bias-free mod-add networks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "gelu":
        return nn.GELU()
    return Square()


def build_module(
    n_features: int,
    n_classes: int,
    hidden: Sequence[int],
    activation: str = "relu",
    bias: bool = True,
    dtype: str = "float32",
    init_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """An `nn.Sequential` MLP d → hidden… → c, initialised from `generator` (None: zero weights).

    Layers are created uninitialised (so the global RNG is neither used nor advanced) and then
    filled with torch's default Linear rule U(±1/sqrt(fan_in)) scaled by `init_scale`.
    """
    tdt = torch_dtype(dtype)
    widths = [int(n_features), *[int(h) for h in hidden], int(n_classes)]
    layers: list[Any] = []
    for i in range(len(widths) - 1):
        lin = nn.utils.skip_init(nn.Linear, widths[i], widths[i + 1], bias=bias, dtype=tdt)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            if generator is None:
                for p in lin.parameters():
                    p.zero_()
            else:
                bound = 1.0 / math.sqrt(widths[i])
                lin.weight.uniform_(-bound, bound, generator=generator).mul_(init_scale)
                if bias:
                    lin.bias.uniform_(-bound, bound, generator=generator).mul_(init_scale)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


def _seeds(random_state: Any, n: int) -> list[int]:
    """`n` independent 63-bit seeds derived from random_state (fresh entropy when None)."""
    ss = np.random.SeedSequence(None if random_state is None else int(random_state))
    st = ss.generate_state(2 * n, dtype=np.uint32).astype(np.uint64)
    return [int(((st[2 * i] << np.uint64(31)) ^ st[2 * i + 1]) & np.uint64((1 << 63) - 1)) for i in range(n)]


def _is_hidden(v: Any) -> bool:
    """One positive width or a list/tuple of them (an empty list: no hidden layer)."""
    widths = [v] if is_int(v) else v
    return isinstance(widths, (list, tuple)) and all(is_int(h) and h >= 1 for h in widths)


class MLP(BaseEstimator, FittedModel):  # type: ignore[misc]  # sklearn is untyped
    """Fully connected classifier trained by minibatch gradient descent on cross-entropy or MSE.

    Capabilities: `predict_proba`, `predict`, `decision_function` (logits) and the differentiable
    `torch_logits(x)`. Fit with `fit(X, y)` or `fit(X, y, X_val, y_val)`; labels are 0..K-1.
    """

    _fitted_attr = "module_"

    name = "mlp"

    _param_constraints: ClassVar[dict[str, Constraint]] = {
        "hidden": Check(_is_hidden, text="a list of positive layer widths, e.g. [200, 200]"),
        "activation": Options(*ACTIVATIONS),
        "bias": Boolean(),
        "init_scale": Real(0, closed="neither"),
        "optimizer": Options(*OPTIMIZERS),
        "lr": Real(0, closed="neither"),
        "weight_decay": Real(0),
        "momentum": Real(0, 1, closed="left"),
        "epochs": Integer(low=1),
        "batch_size": AnyOf(Integer(low=1), Options(None), text="a positive integer or None (full batch)"),
        "loss": Options(*LOSSES, text="'ce' (cross-entropy) or 'mse' (vs one-hot)"),
        "dtype": Options(*DTYPES),
        "early_stopping": Boolean(),
        "validation_fraction": Real(0, 1, closed="neither"),
        "patience": Integer(low=1),
        "random_state": optional(Integer()),
    }

    def __init__(
        self,
        hidden: Sequence[int] = (200, 200),
        activation: str = "relu",
        bias: bool = True,
        init_scale: float = 1.0,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        epochs: int = 100,
        batch_size: int | None = 128,
        loss: str = "ce",
        dtype: str = "float32",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        patience: int = 20,
        random_state: int | None = 0,
    ):
        self.hidden = hidden
        self.activation = activation
        self.bias = bias
        self.init_scale = init_scale
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.epochs = epochs
        self.batch_size = batch_size
        self.loss = loss
        self.dtype = dtype
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    # --- hyperparameter validation ----------------------------------------------------------
    def _hidden_widths(self) -> list[int]:
        """The hidden layer widths as ints (`hidden` may be one int or a list; checked by _check_params)."""
        hidden: Any = self.hidden
        return [int(hidden)] if is_int(hidden) else [int(h) for h in hidden]

    # --- fitting ------------------------------------------------------------------------------
    def _make_optimizer(self, params: list[Any]) -> Any:
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=float(self.lr), weight_decay=float(self.weight_decay), foreach=True)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=float(self.lr), weight_decay=float(self.weight_decay), foreach=True)
        return torch.optim.SGD(params, lr=float(self.lr), momentum=float(self.momentum), weight_decay=float(self.weight_decay), foreach=True)

    def _task_loss(self, logits: Any, yb: Any) -> Any:
        return task_loss(logits, yb, self.loss)

    def _batch_loss(self, module: Any, xb: Any, yb: Any, probe: Any) -> tuple[Any, dict[str, float]]:
        """Training objective on one batch and its named terms (floats) for `history_`.

        `probe` is a local torch.Generator for any randomness the objective needs (unused here).
        """
        loss = self._task_loss(module(xb), yb)
        return loss, {"task": float(loss.detach())}

    def _validation_split(self, X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
        from sklearn.model_selection import train_test_split

        n = X.shape[0]
        n_val = math.ceil(self.validation_fraction * n)
        if n_val < 1 or n - n_val < 2:
            raise DataError(f"{type(self).__name__}: {n} rows are too few for a validation split; pass X_val/y_val or disable early_stopping")
        _, counts = np.unique(y, return_counts=True)
        strat = y if counts.min() >= 2 and n_val >= counts.size and n - n_val >= counts.size else None
        Xtr, Xva, ytr, yva = train_test_split(X, y, test_size=n_val, random_state=seed % (2**32), stratify=strat)
        return Xtr, ytr, Xva, yva

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> MLP:
        """Train the network on (X, y); optional (X_val, y_val) are monitored (and used for early stopping)."""
        self._check_params()
        hidden = self._hidden_widths()
        who = type(self).__name__
        X, y, k = check_training_data(X, y, f"{who}.fit")
        if (X_val is None) != (y_val is None):
            raise DataError(f"{who}.fit: pass both X_val and y_val, or neither")
        s_init, s_batch, s_probe, s_split = _seeds(self.random_state, 4)
        if X_val is not None:
            Xva = check_features(X_val, X.shape[1], who=f"{who}.fit(X_val)")
            try:
                yf = np.asarray(y_val, dtype=np.float64)
            except (TypeError, ValueError):
                yf = np.array([np.nan])
            if yf.ndim != 1 or yf.shape[0] != Xva.shape[0] or yf.size == 0:
                raise DataError(f"{who}.fit: y_val must be 1-D with {Xva.shape[0]} labels, got shape {yf.shape}")
            if not np.all(np.isfinite(yf)) or np.any(yf != np.round(yf)) or yf.min() < 0 or yf.max() >= k:
                raise DataError(f"{who}.fit: y_val must hold integer labels in 0..{k - 1}, like y")
            yva = yf.astype(np.int64)
            Xtr, ytr = X, y
        elif self.early_stopping:
            Xtr, ytr, Xva, yva = self._validation_split(X, y, s_split)
        else:
            Xtr, ytr, Xva, yva = X, y, None, None

        tdt = torch_dtype(self.dtype)
        g_init = torch.Generator().manual_seed(s_init)
        g_batch = torch.Generator().manual_seed(s_batch)
        g_probe = torch.Generator().manual_seed(s_probe)
        module = build_module(X.shape[1], k, hidden, self.activation, bool(self.bias), self.dtype, float(self.init_scale), g_init)
        opt = self._make_optimizer(list(module.parameters()))
        xt = torch.as_tensor(Xtr, dtype=tdt)
        yt = torch.as_tensor(ytr, dtype=torch.int64)
        xv = torch.as_tensor(Xva, dtype=tdt) if Xva is not None else None
        yv = torch.as_tensor(yva, dtype=torch.int64) if yva is not None else None
        n = xt.shape[0]
        bs = n if self.batch_size is None else min(int(self.batch_size), n)

        history: dict[str, list[float]] = {"loss": []}
        best_val, best_epoch, best_state, stale = math.inf, -1, None, 0
        module.train()
        for epoch in range(int(self.epochs)):
            order = torch.randperm(n, generator=g_batch) if bs < n else None
            sums: dict[str, float] = {}
            total = 0.0
            for s in range(0, n, bs):
                idx = order[s : s + bs] if order is not None else None
                xb = xt[idx] if idx is not None else xt
                yb = yt[idx] if idx is not None else yt
                loss, terms = self._batch_loss(module, xb, yb, g_probe)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                w = xb.shape[0] / n
                total += float(loss.detach()) * w
                for key, val in terms.items():
                    sums[key] = sums.get(key, 0.0) + val * w
            if not math.isfinite(total):
                raise ModelError(
                    f"{who}.fit: training diverged at epoch {epoch} (loss {total}); lower lr or init_scale, or use dtype='float64'"
                )
            history["loss"].append(total)
            for key, val in sums.items():
                history.setdefault(key, []).append(val)
            if xv is not None:
                with torch.no_grad():
                    zv = module(xv)
                    vloss = float(self._task_loss(zv, yv))
                    vacc = float((zv.argmax(1) == yv).to(torch.float64).mean())
                history.setdefault("val_loss", []).append(vloss)
                history.setdefault("val_acc", []).append(vacc)
                if self.early_stopping:
                    if vloss < best_val:
                        best_val, best_epoch, stale = vloss, epoch, 0
                        best_state = {kk: vv.detach().clone() for kk, vv in module.state_dict().items()}
                    else:
                        stale += 1
                        if stale >= int(self.patience):
                            log.info("%s: early stop at epoch %d (best epoch %d)", who, epoch, best_epoch)
                            break
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)

        self.module_ = module
        self.n_features_in_ = int(X.shape[1])
        self.n_classes_ = int(k)
        self.classes_ = np.arange(k)
        self.history_ = history
        self.n_epochs_ = len(history["loss"])
        self.best_epoch_ = int(best_epoch) if best_state is not None else self.n_epochs_ - 1
        self.torch_dtype = tdt
        return self

    # --- Model contract -------------------------------------------------------------------------
    def torch_logits(self, x: Any) -> Any:
        """Differentiable logits (n, n_classes) of torch input x, computed in the model dtype."""
        self._require_fitted()
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ModelError(f"{self.name}: torch_logits expects shape (n, {self.n_features}), got {tuple(x.shape)}")
        return self.module_(x.to(self.torch_dtype))

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits as float64 numpy, shape (n, n_classes)."""
        X = self._check_X(X)
        with torch.no_grad():
            z = self.torch_logits(torch.as_tensor(X, dtype=self.torch_dtype))
        logits: np.ndarray = z.double().numpy()
        return logits

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the logits, float64, rows summing to 1."""
        return softmax_rows(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        """Argmax of the logits, ties to the lowest class index."""
        return argmax_rows(self.decision_function(X))

    # --- persistence hooks ------------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        """Write `weights.pt` (a plain dict of tensors) and `mlp.json` (shapes, history); no pickle of objects."""
        self._require_fitted()
        directory = Path(directory)
        state = {k: v.detach().clone().contiguous() for k, v in self.module_.state_dict().items()}
        torch.save(state, directory / WEIGHTS_FILE)
        meta = {
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "dtype": self.dtype,
            "n_epochs": int(self.n_epochs_),
            "best_epoch": int(self.best_epoch_),
            "history": self.history_,
        }
        (directory / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def _load_state(cls, directory: Path, params: dict[str, Any]) -> MLP:
        """Rebuild a fitted estimator from `cls(**params)` and the saved weights (weights_only=True)."""
        directory = Path(directory)
        wpath, mpath = directory / WEIGHTS_FILE, directory / META_FILE
        for needed in (wpath, mpath):
            if not needed.exists():
                raise ModelError(f"{str(directory)!r}: {needed.name} is missing; re-save the model")
        try:
            est = cls(**params)
        except TypeError as exc:
            raise ModelError(f"{mpath}: parameters do not match {cls.__name__} ({exc})") from None
        est._check_params()
        hidden = est._hidden_widths()
        try:
            meta = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{mpath}: not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ModelError(f"{mpath}: expected a JSON object")
        d: Any = meta.get("n_features")
        k: Any = meta.get("n_classes")
        if not (is_int(d) and d >= 1 and is_int(k) and k >= 2):
            raise ModelError(f"{mpath}: n_features/n_classes missing or invalid; re-save the model")
        state = torch.load(wpath, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelError(f"{wpath}: expected a dict of tensors; the file is not an MLP state")
        module = build_module(d, k, hidden, est.activation, bool(est.bias), est.dtype, 1.0, None)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{wpath}: weights do not fit the saved architecture ({first_line(exc, with_type=False)})") from None
        if not all(torch.isfinite(p).all() for p in module.parameters()):
            raise ModelError(f"{wpath}: weights contain NaN or inf; the file is corrupted")
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        est.module_ = module
        est.n_features_in_ = int(d)
        est.n_classes_ = int(k)
        est.classes_ = np.arange(k)
        hist = meta.get("history")
        est.history_ = hist if isinstance(hist, dict) else {}
        est.n_epochs_ = int(meta.get("n_epochs", len(est.history_.get("loss", []))))
        est.best_epoch_ = int(meta.get("best_epoch", est.n_epochs_ - 1))
        est.torch_dtype = torch_dtype(est.dtype)
        return est


__all__ = ["ACTIVATIONS", "DTYPES", "LOSSES", "MLP", "OPTIMIZERS", "Square", "build_module", "task_loss", "torch_dtype"]
