"""`rba reproduce grokking`: does GrokAlign accelerate grokking? (seed paper arXiv 2605.08464)

The seed paper's repository compares, per task, a weight-decay baseline with GrokAlign, whose loss
is task + λ(E‖J_x‖_F + E‖b_x‖²) (J_x the input Jacobian of the logits, b_x = f(x) − J_x x), and
reports how many runs grok, the mean/std/median grokking epoch, the baseline/GrokAlign ratios of
mean epochs and of optimisation time, and Welch t-tests (its `summarize_results.py`). This module
re-runs that protocol for the paper's sparse-parity and modular-addition tasks with the suite's own
pieces: `build_module` for the networks, `GrokAlignMLP`'s training objective (`grokalign_loss`) for the loss, and
`metrics.alignment` for the Jacobian metrics along training.

Protocol choices where the paper leaves room, fixed here before any result was seen:
- Sparse parity inputs are {0, 1} bits and the label is the parity (sum mod 2) of the first
  three bits, as in the reference `SparseParityDataset`;
  `encoding="pm1"` maps bit b to 1 − 2b (label 1 iff the product of the parity coordinates is −1).
- The modular-addition batch size is min(32, ceil(n_train/2)) as in the reference data loader,
  and AdamW uses betas (0.9, 0.99) and eps 1e-25 there too (the reference `get_optimizer`).
- Epoch e is evaluated after e epochs of training (epoch 0 = initialisation) on the schedule of
  `is_eval_epoch`; the cap epoch is always evaluated. A run stops at the first evaluated epoch
  where train and test accuracy both exceed the task's thresholds (strict >), or at the cap.
- "Time" is the wall-clock time of the training steps only (no evaluation, no metrics), summed
  to the grokking epoch; the process CPU time of the same steps is recorded too, because the
  machine may be shared. The reference script sums its cumulative timer over all logged epochs;
  this is not repeated here.
- For a given seed both conditions see the same data split, initial weights and batch order;
  only GrokAlign draws Hutchinson probes (from its own generator).
- Runs that do not grok are excluded from the epoch/time means (the count is shown), and a
  censored view sets them to the cap (a lower bound), compared with a Mann–Whitney U test.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..jsonable import jsonable
from ..metrics.alignment import alignment_from_jacobians
from ..metrics.stats import mannwhitney_p, welch_p
from ..models.constraints import is_int
from ..models.grokalign import grokalign_loss, jacobians
from ..models.mlp import build_module, torch_dtype

log = logging.getLogger(__name__)

CONDITIONS = ("baseline", "grokalign")
METRIC_NAMES = ("normal_alignment", "centroid_alignment", "effective_rank")
FULL_SEEDS = 10
DEFAULT_SEEDS = 5
_LABELS = {"baseline": "Baseline (weight decay)", "grokalign": "GrokAlign"}
_COLORS = {"baseline": "tab:blue", "grokalign": "tab:red"}


# --- evaluation schedule and the grokking rule ---------------------------------------------------
def is_eval_epoch(epoch: int) -> bool:
    """The reference logging schedule: every epoch below 100, every 10 below 1k, every 100 below 10k, then every 1000."""
    return epoch < 100 or (epoch < 1_000 and epoch % 10 == 0) or (epoch < 10_000 and epoch % 100 == 0) or epoch % 1_000 == 0


def eval_schedule(max_epochs: int) -> list[int]:
    """Evaluated epochs 0..max_epochs (the schedule of `is_eval_epoch`, plus the cap itself)."""
    if not is_int(max_epochs) or max_epochs < 0:
        raise ConfigError(f"max_epochs must be an integer >= 0, got {max_epochs!r}")
    epochs = [e for e in range(int(max_epochs) + 1) if is_eval_epoch(e)]
    if epochs[-1] != max_epochs:
        epochs.append(int(max_epochs))
    return epochs


def grokking_epoch(epochs: Sequence[int], train_acc: Sequence[float], test_acc: Sequence[float],
                   train_threshold: float, test_threshold: float) -> int | None:
    """First evaluated epoch with train accuracy > train_threshold and test accuracy > test_threshold (None: never)."""
    if not (len(epochs) == len(train_acc) == len(test_acc)):
        raise ConfigError(f"epochs, train_acc and test_acc must have equal lengths, got {len(epochs)}, {len(train_acc)}, {len(test_acc)}")
    for e, tr, te in zip(epochs, train_acc, test_acc, strict=True):
        if tr > train_threshold and te > test_threshold:
            return int(e)
    return None


# --- tasks --------------------------------------------------------------------------------------
def sparse_parity_data(n_samples: int, n_parity: int, n_noise: int, train_fraction: float, encoding: str,
                       seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unique random bit vectors (parity bits first, then noise bits), label = parity of the first n_parity bits.

    Returns (X_train, y_train, X_test, y_test); the first int(train_fraction·n) of a random
    permutation train. encoding "binary" keeps {0, 1}; "pm1" maps bit b to 1 − 2b.
    """
    d = n_parity + n_noise
    if n_samples > 2**d:
        raise ConfigError(f"sparse parity: {n_samples} unique vectors requested but only 2^{d} exist; lower n_samples")
    if encoding not in ("binary", "pm1"):
        raise ConfigError(f"sparse parity: encoding must be 'binary' or 'pm1', got {encoding!r}")
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    seen: set[bytes] = set()
    while len(rows) < n_samples:
        for r in rng.integers(0, 2, size=(n_samples, d), dtype=np.int8):
            key = r.tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(r)
                if len(rows) == n_samples:
                    break
    bits = np.stack(rows).astype(np.int64)
    y = bits[:, :n_parity].sum(axis=1) % 2
    X = bits.astype(np.float64) if encoding == "binary" else (1 - 2 * bits).astype(np.float64)
    perm = rng.permutation(n_samples)
    n_train = int(train_fraction * n_samples)
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


def modular_addition_data(modulus: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (a, b) mod p as concatenated one-hots (2p features), label (a + b) mod p, random train split."""
    p = int(modulus)
    grid_a, grid_b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = grid_a.ravel(), grid_b.ravel()
    X = np.zeros((p * p, 2 * p))
    X[np.arange(p * p), a] = 1.0
    X[np.arange(p * p), p + b] = 1.0
    y = (a + b) % p
    perm = np.random.default_rng(seed).permutation(p * p)
    n_train = int(train_fraction * p * p)
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


@dataclass(frozen=True)
class GrokTask:
    """One grokking task of the seed paper: data, network, optimiser, λ, grokking thresholds, epoch caps."""

    name: str
    title: str
    hidden: tuple[int, ...]
    activation: str
    bias: bool
    dtype: str
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    adam_eps: float
    batch_size: int | None  # None: full batch; else min(batch_size, ceil(n_train/2)) (reference loader)
    lam: float
    train_threshold: float
    test_threshold: float
    paper_max_epochs: int  # the paper's epoch cap (`full=True`)
    default_max_epochs: int
    train_fraction: float
    n_samples: int = 2000
    n_parity: int = 3
    n_noise: int = 40
    encoding: str = "binary"
    modulus: int = 61
    metric_points: int = 256  # training points (the first of the shuffled train split) for the Jacobian metrics

    def make_data(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(X_train, y_train, X_test, y_test) for this task, drawn with `seed`."""
        if self.name == "modular_addition":
            return modular_addition_data(self.modulus, self.train_fraction, seed)
        return sparse_parity_data(self.n_samples, self.n_parity, self.n_noise, self.train_fraction, self.encoding, seed)

    def batch_for(self, n_train: int) -> int:
        """The batch size used for n_train training points."""
        if self.batch_size is None:
            return n_train
        return max(1, min(int(self.batch_size), math.ceil(n_train / 2)))

    def n_classes(self) -> int:
        return self.modulus if self.name == "modular_addition" else 2


# Default caps are the reduced ones that keep the default command within its time budget (see
# `run_grokking`); `full=True` uses paper_max_epochs.
TASKS: dict[str, GrokTask] = {
    "sparse_parity": GrokTask(
        name="sparse_parity", title="Sparse parity (3 parity + 40 noise bits)", hidden=(200, 200), activation="relu",
        bias=True, dtype="float32", lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), adam_eps=1e-25, batch_size=None,
        lam=0.1, train_threshold=0.99, test_threshold=0.90, paper_max_epochs=20_000, default_max_epochs=5_000,
        train_fraction=0.5,
    ),
    "modular_addition": GrokTask(
        name="modular_addition", title="Modular addition mod 61", hidden=(256,), activation="quadratic", bias=False,
        dtype="float64", lr=1e-3, weight_decay=1.0, betas=(0.9, 0.99), adam_eps=1e-25, batch_size=32, lam=0.01,
        train_threshold=0.99, test_threshold=0.99, paper_max_epochs=1_000, default_max_epochs=1_000, train_fraction=0.3,
        metric_points=128,
    ),
}


def _run_seeds(task: str, seed: int) -> list[int]:
    """Four independent seeds (data, init, batch order, probes) for one (task, seed); shared by both conditions."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(task.encode())])
    return [int(s) for s in ss.generate_state(4, dtype=np.uint64) & np.uint64((1 << 63) - 1)]


# --- Jacobian metrics along training ---------------------------------------------------------------
def jacobian_alignment_summary(module: Any, x: torch.Tensor) -> dict[str, float]:
    """Means over the points x of normal alignment |cos(v₁, x)|, centroid alignment cos(J_xᵀ1, x) and effective rank (Σσ)²/Σσ².

    v₁ is the top right singular vector of J_x; the per-point values are `metrics.alignment`'s.
    Points where these two are undefined (J_x = 0 or not finite) are left out of their means; the
    centroid mean is over every point (NaN if a Jacobian is not finite).
    """
    J = jacobians(module, x).detach().to(torch.float64).numpy()
    frame = alignment_from_jacobians(J, x.detach().to(torch.float64).numpy())

    def defined_mean(col: str) -> float:
        v = frame[col].to_numpy()
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else math.nan

    return {"normal_alignment": defined_mean("normal_alignment"),
            "centroid_alignment": float(frame["centroid_alignment"].to_numpy().mean()) if len(frame) else math.nan,
            "effective_rank": defined_mean("effective_rank")}


# --- one training run ------------------------------------------------------------------------------
class GrokRun:
    """One (task, condition, seed) training run that can be advanced, stopped at grokking and resumed."""

    def __init__(self, task: GrokTask, condition: str, seed: int, track_metrics: bool = False):
        if condition not in CONDITIONS:
            raise ConfigError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
        self.task, self.condition, self.seed = task, condition, int(seed)
        s_data, s_init, s_batch, s_probe = _run_seeds(task.name, seed)
        Xtr, ytr, Xte, yte = task.make_data(s_data)
        tdt = torch_dtype(task.dtype)
        self.xtr, self.ytr = torch.as_tensor(Xtr, dtype=tdt), torch.as_tensor(ytr, dtype=torch.int64)
        self.xte, self.yte = torch.as_tensor(Xte, dtype=tdt), torch.as_tensor(yte, dtype=torch.int64)
        self.module = build_module(Xtr.shape[1], task.n_classes(), task.hidden, task.activation, task.bias, task.dtype,
                                   1.0, torch.Generator().manual_seed(s_init))
        self.opt = torch.optim.AdamW(self.module.parameters(), lr=task.lr, betas=task.betas, eps=task.adam_eps,
                                     weight_decay=task.weight_decay)
        self.g_batch = torch.Generator().manual_seed(s_batch)
        self.g_probe = torch.Generator().manual_seed(s_probe)
        lam = float(task.lam) if condition == "grokalign" else 0.0
        # GrokAlign's objective is `grokalign_loss` (GrokAlignMLP's: cross-entropy + λ(E‖J_x‖_F + E‖b_x‖²)); the baseline plain cross-entropy
        self.lam: float | None = lam if lam > 0 else None  # None: the baseline
        self.batch = task.batch_for(self.xtr.shape[0])
        self.track_metrics = track_metrics
        self.metric_x = self.xtr[:task.metric_points]
        self.epoch = 0
        self.opt_time = 0.0
        self.cpu_time = 0.0
        self.grokking_epoch: int | None = None
        self.time_to_grok: float | None = None
        self.cpu_to_grok: float | None = None
        self.diverged = False
        keys = ["epoch", "train_acc", "test_acc", "train_loss", "test_loss", "opt_time"]
        self.trace: dict[str, list[float]] = {k: [] for k in keys + (list(METRIC_NAMES) if track_metrics else [])}

    @property
    def grokked(self) -> bool:
        return self.grokking_epoch is not None

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (GrokAlign draws its Hutchinson probes from `g_probe`)."""
        if self.lam is None:
            return torch.nn.functional.cross_entropy(self.module(xb), yb)
        loss, _ = grokalign_loss(self.module, xb, yb, self.g_probe, lam=self.lam, offset=True, loss="ce")
        return loss

    def train_epoch(self) -> None:
        """One epoch of AdamW steps (timed: wall and CPU)."""
        t0, c0 = time.perf_counter(), time.process_time()
        n = self.xtr.shape[0]
        self.module.train()
        if self.batch >= n:
            batches = [(self.xtr, self.ytr)]
        else:
            order = torch.randperm(n, generator=self.g_batch)
            batches = [(self.xtr[order[s:s + self.batch]], self.ytr[order[s:s + self.batch]]) for s in range(0, n, self.batch)]
        finite = True
        for xb, yb in batches:
            loss = self._loss(xb, yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            finite = finite and bool(torch.isfinite(loss.detach()))
        self.opt_time += time.perf_counter() - t0
        self.cpu_time += time.process_time() - c0
        self.epoch += 1
        if not finite:
            self.diverged = True
            log.warning("%s/%s seed %d: loss not finite at epoch %d; run stopped", self.task.name, self.condition, self.seed, self.epoch)

    def evaluate(self) -> None:
        """Accuracy/loss on train and test at the current epoch, the grokking check, and metrics if tracked."""
        if self.trace["epoch"] and self.trace["epoch"][-1] == self.epoch:
            return
        F = torch.nn.functional
        self.module.eval()
        with torch.no_grad():
            ztr, zte = self.module(self.xtr), self.module(self.xte)
            tr_acc = float((ztr.argmax(1) == self.ytr).double().mean())
            te_acc = float((zte.argmax(1) == self.yte).double().mean())
            tr_loss, te_loss = float(F.cross_entropy(ztr, self.ytr)), float(F.cross_entropy(zte, self.yte))
        for k, v in zip(("epoch", "train_acc", "test_acc", "train_loss", "test_loss", "opt_time"),
                        (self.epoch, tr_acc, te_acc, tr_loss, te_loss, self.opt_time), strict=True):
            self.trace[k].append(v)
        if not self.grokked and tr_acc > self.task.train_threshold and te_acc > self.task.test_threshold:
            self.grokking_epoch, self.time_to_grok, self.cpu_to_grok = self.epoch, self.opt_time, self.cpu_time
        if self.track_metrics:
            for k, v in jacobian_alignment_summary(self.module, self.metric_x).items():
                self.trace[k].append(v)

    def advance(self, until: int, stop_on_grok: bool = True) -> None:
        """Train and evaluate on the schedule up to epoch `until`, stopping early once grokked if asked."""
        while True:
            if is_eval_epoch(self.epoch) or self.epoch == until:
                self.evaluate()
            if (stop_on_grok and self.grokked) or self.epoch >= until or self.diverged:
                return
            self.train_epoch()

    def record(self, cap: int) -> dict[str, Any]:
        """The run's scalar outcome (grokking epoch/time, or the censored values at the cap)."""
        return {
            "task": self.task.name, "condition": self.condition, "seed": self.seed, "grokked": self.grokked,
            "grokking_epoch": self.grokking_epoch, "time_to_grok_s": self.time_to_grok, "cpu_to_grok_s": self.cpu_to_grok,
            "cap": int(cap), "stop_epoch": int(self.epoch), "opt_time_s": self.opt_time, "cpu_time_s": self.cpu_time,
            "seconds_per_epoch": self.opt_time / self.epoch if self.epoch else None,
            "final_train_acc": self.trace["train_acc"][-1] if self.trace["train_acc"] else None,
            "final_test_acc": self.trace["test_acc"][-1] if self.trace["test_acc"] else None,
            "diverged": self.diverged,
        }


# --- statistics ------------------------------------------------------------------------------------
def _mean(v: Sequence[float]) -> float:
    return float(np.mean(v)) if len(v) else math.nan


def _std(v: Sequence[float]) -> float:
    return float(np.std(v, ddof=1)) if len(v) >= 2 else math.nan


def _median(v: Sequence[float]) -> float:
    return float(np.median(v)) if len(v) else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if math.isfinite(num) and math.isfinite(den) and den > 0 else math.nan


def summarize_condition(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Runs, grokked count and epoch/time statistics over grokked runs, plus the censored view (ungrokked at the cap)."""
    g = [r for r in records if r["grokked"]]
    ep = [float(r["grokking_epoch"]) for r in g]
    tm = [float(r["time_to_grok_s"]) for r in g]
    cpu = [float(r["cpu_to_grok_s"]) for r in g]
    cens_ep = [float(r["grokking_epoch"]) if r["grokked"] else float(r["cap"]) for r in records]
    cens_tm = [float(r["time_to_grok_s"]) if r["grokked"] else float(r["opt_time_s"]) for r in records]
    spe = [r["seconds_per_epoch"] for r in records if r["seconds_per_epoch"] is not None]
    return {
        "runs": len(records), "grokked": len(g), "not_grokked": len(records) - len(g),
        "mean_epoch": _mean(ep), "std_epoch": _std(ep), "median_epoch": _median(ep),
        "mean_time_s": _mean(tm), "std_time_s": _std(tm), "median_time_s": _median(tm), "mean_cpu_time_s": _mean(cpu),
        "censored_mean_epoch": _mean(cens_ep), "censored_median_epoch": _median(cens_ep), "censored_mean_time_s": _mean(cens_tm),
        "mean_seconds_per_epoch": _mean(spe),
        "epochs": ep, "times_s": tm, "cpu_times_s": cpu, "censored_epochs": cens_ep, "censored_times_s": cens_tm,
    }


def compare(base: Mapping[str, Any], ga: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """Baseline/GrokAlign ratios (>1: GrokAlign faster), Welch p-values, the censored view and a verdict."""
    p_ep, why_ep = welch_p(base["epochs"], ga["epochs"])
    p_tm, why_tm = welch_p(base["times_s"], ga["times_s"])
    p_cpu, why_cpu = welch_p(base["cpu_times_s"], ga["cpu_times_s"])
    p_cep, why_cep = welch_p(base["censored_epochs"], ga["censored_epochs"])
    p_mw, why_mw = mannwhitney_p(base["censored_epochs"], ga["censored_epochs"])
    p_mwt, why_mwt = mannwhitney_p(base["censored_times_s"], ga["censored_times_s"])
    out = {
        "epoch_ratio": _ratio(base["mean_epoch"], ga["mean_epoch"]),
        "time_ratio": _ratio(base["mean_time_s"], ga["mean_time_s"]),
        "cpu_time_ratio": _ratio(base["mean_cpu_time_s"], ga["mean_cpu_time_s"]),
        "p_welch_epochs": p_ep, "p_welch_epochs_reason": why_ep,
        "p_welch_time": p_tm, "p_welch_time_reason": why_tm,
        "p_welch_cpu_time": p_cpu, "p_welch_cpu_time_reason": why_cpu,
        "censored_epoch_ratio": _ratio(base["censored_mean_epoch"], ga["censored_mean_epoch"]),
        "censored_time_ratio": _ratio(base["censored_mean_time_s"], ga["censored_mean_time_s"]),
        "p_welch_epochs_censored": p_cep, "p_welch_epochs_censored_reason": why_cep,
        "p_mannwhitney_epochs_censored": p_mw, "p_mannwhitney_epochs_censored_reason": why_mw,
        "p_mannwhitney_time_censored": p_mwt, "p_mannwhitney_time_censored_reason": why_mwt,
        "per_epoch_cost_ratio": _ratio(ga["mean_seconds_per_epoch"], base["mean_seconds_per_epoch"]),
    }
    out["verdict"] = _verdict(base, ga, out, cap)
    return out


def _fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def _verdict(base: Mapping[str, Any], ga: Mapping[str, Any], c: Mapping[str, Any], cap: int) -> str:
    """Plain-language answer, using the Welch test when every run grokked and the censored U test otherwise."""
    nb, ng, n_b, n_g = base["grokked"], ga["grokked"], base["runs"], ga["runs"]
    if ng == 0 and nb == 0:
        return f"Undecided: neither condition grokked within {cap} epochs (0/{n_b} and 0/{n_g} runs)."
    if ng == 0:
        return f"No: GrokAlign grokked in 0/{n_g} runs within {cap} epochs, the baseline in {nb}/{n_b}."
    all_grokked = nb == n_b and ng == n_g
    if all_grokked:
        r, p, test = c["epoch_ratio"], c["p_welch_epochs"], "Welch t-test"
        what = f"mean grokking epoch {base['mean_epoch']:.0f} (baseline) vs {ga['mean_epoch']:.0f} (GrokAlign), ratio {r:.2f}"
    else:
        r, p, test = c["censored_epoch_ratio"], c["p_mannwhitney_epochs_censored"], "Mann–Whitney U on epochs censored at the cap"
        what = (f"grokked runs {nb}/{n_b} (baseline) vs {ng}/{n_g} (GrokAlign) within {cap} epochs; censored mean epoch "
                f"{base['censored_mean_epoch']:.0f} vs {ga['censored_mean_epoch']:.0f}, ratio {'≥ ' if nb < n_b else ''}{r:.2f}")
    sig = math.isfinite(p) and p < 0.05
    if r > 1 and sig:
        head = "Yes: GrokAlign grokked in fewer epochs"
    elif r > 1:
        head = "Not shown: GrokAlign grokked in fewer epochs on average, but the difference is not significant at 5%"
    elif r < 1 and sig:
        head = "No: GrokAlign grokked in significantly more epochs"
    else:
        head = "No: GrokAlign did not grok in fewer epochs"
    tr = c["time_ratio"] if all_grokked else c["censored_time_ratio"]
    tp = c["p_welch_time"] if all_grokked else c["p_mannwhitney_time_censored"]
    time_part = (f"In optimisation wall time the ratio is {tr:.2f} (p = {_fmt_p(tp)}); one GrokAlign epoch costs "
                 f"{c['per_epoch_cost_ratio']:.1f}× a baseline epoch.")
    return f"{head} ({what}; {test} p = {_fmt_p(p)}). {time_part}"


# --- plots -----------------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(task: GrokTask, runs: Mapping[str, GrokRun], path: Path) -> Path:
    """Accuracy, normal alignment, centroid alignment and effective rank along training (one seed, both conditions)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    panels = [("accuracy", "accuracy (solid test, dashed train)"), ("normal_alignment", "normal alignment |cos(v₁, x)|"),
              ("centroid_alignment", "centroid alignment cos(Jᵀ1, x)"), ("effective_rank", "effective rank (Σσ)²/Σσ²")]
    for ax, (key, label) in zip(axes.ravel(), panels, strict=True):  # 2 × 2 axes, 4 panels
        for cond, run in runs.items():
            ep, col = run.trace["epoch"], _COLORS.get(cond)
            if key == "accuracy":
                ax.plot(ep, run.trace["test_acc"], color=col, label=_LABELS.get(cond, cond))
                ax.plot(ep, run.trace["train_acc"], color=col, ls="--", lw=1)
            else:
                ax.plot(ep, run.trace[key], color=col, label=_LABELS.get(cond, cond))
            if run.grokked:
                ax.axvline(run.grokking_epoch, color=col, ls=":", lw=1)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    seed = next(iter(runs.values())).seed
    n_pts = next(iter(runs.values())).metric_x.shape[0]
    fig.suptitle(f"{task.title}: seed {seed}, mean over {n_pts} training points (dotted: grokking epoch)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(task: GrokTask, runs: Sequence[GrokRun], path: Path) -> Path:
    """Test-accuracy curves of every run, coloured by condition, with the grokking threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    shown: set[str] = set()
    for run in runs:
        col = _COLORS.get(run.condition)
        label = None if run.condition in shown else _LABELS.get(run.condition, run.condition)
        shown.add(run.condition)
        ax.plot(run.trace["epoch"], run.trace["test_acc"], color=col, alpha=0.7, lw=1.2, label=label)
    ax.axhline(task.test_threshold, color="gray", ls="--", lw=1, label=f"test threshold {task.test_threshold:.0%}")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{task.title}: test accuracy, all seeds\n(runs stop once grokked; the metrics seed runs on to the later stop epoch)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the driver ------------------------------------------------------------------------------------
def resolve_tasks(tasks: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None) -> list[GrokTask]:
    """The GrokTask objects for the names, with per-task field overrides (e.g. {"modular_addition": {"modulus": 13}})."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    out = []
    fields = {f.name for f in dataclasses.fields(GrokTask)}
    for name in tasks:
        if name not in TASKS:
            raise ConfigError(f"unknown grokking task {name!r}; choose from {', '.join(TASKS)}")
        extra = dict((overrides or {}).get(name, {}))
        bad = sorted(set(extra) - fields)
        if bad:
            raise ConfigError(f"{name}: unknown task setting(s) {', '.join(bad)}; valid: {', '.join(sorted(fields))}")
        if "hidden" in extra:
            extra["hidden"] = tuple(int(h) for h in extra["hidden"])
        task = dataclasses.replace(TASKS[name], **extra)
        if task.name == "modular_addition" and "modulus" in extra and "title" not in extra:
            task = dataclasses.replace(task, title=f"Modular addition mod {task.modulus}")
        out.append(task)
    return out


def _cap_for(task: GrokTask, max_epochs: int | Mapping[str, int] | None, full: bool) -> int:
    if isinstance(max_epochs, Mapping):
        cap = max_epochs.get(task.name)
    else:
        cap = max_epochs
    if cap is None:
        cap = task.paper_max_epochs if full else task.default_max_epochs
    if not is_int(cap) or cap < 1:
        raise ConfigError(f"max_epochs for {task.name} must be a positive integer, got {cap!r}")
    return int(cap)


def run_grokking(
    tasks: Sequence[str] = ("sparse_parity", "modular_addition"),
    seeds: int | None = None,
    max_epochs: int | Mapping[str, int] | None = None,
    full: bool = False,
    out_dir: str | os.PathLike = "reports",
    conditions: Sequence[str] = CONDITIONS,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    metrics_seed: int = 0,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Train baseline and GrokAlign on each task for `seeds` seeds, summarise, plot, and write the report.

    seeds None → 5 (default) or 10 (full=True); max_epochs None → the task's reduced default cap
    (or the paper's cap with full=True), an int for every task, or a {task: cap} mapping. Seed
    `metrics_seed` also records the Jacobian metrics; its runs continue past grokking up to the
    later stop epoch of the two conditions so both curves cover the same range. `threads` sets
    torch's intra-op threads for the duration (None: leave as is). Writes
    reproduction_grokking.{md,json} and the plots to out_dir and returns the summary dict.
    """
    n_seeds = (FULL_SEEDS if full else DEFAULT_SEEDS) if seeds is None else seeds
    if not is_int(n_seeds) or n_seeds < 1:
        raise ConfigError(f"seeds must be a positive integer, got {seeds!r}")
    if isinstance(conditions, str):
        conditions = (conditions,)
    for c in conditions:
        if c not in CONDITIONS:
            raise ConfigError(f"unknown condition {c!r}; choose from {', '.join(CONDITIONS)}")
    task_objs = resolve_tasks(tasks, overrides)
    caps = {t.name: _cap_for(t, max_epochs, full) for t in task_objs}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    try:
        summary: dict[str, Any] = {
            "claim": "GrokAlign accelerates grokking (seed paper arXiv 2605.08464)",
            "full": bool(full), "seeds": int(n_seeds), "conditions": list(conditions),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch_version": torch.__version__, "tasks": {},
        }
        for task in task_objs:
            summary["tasks"][task.name] = _run_task(task, caps[task.name], int(n_seeds), list(conditions), int(metrics_seed), out)
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)
    summary["elapsed_s"] = time.perf_counter() - t_start
    summary["report"] = str(out / "reproduction_grokking.md")
    (out / "reproduction_grokking.json").write_text(json.dumps(jsonable(summary, finite=True), indent=1, allow_nan=False))
    (out / "reproduction_grokking.md").write_text(render_report(summary))
    log.info("grokking reproduction finished in %.0f s; report at %s", summary["elapsed_s"], summary["report"])
    return summary


def _run_task(task: GrokTask, cap: int, n_seeds: int, conditions: list[str], metrics_seed: int, out: Path) -> dict[str, Any]:
    """All runs of one task, its statistics and plots."""
    t0 = time.perf_counter()
    runs: list[GrokRun] = []
    metric_runs: dict[str, GrokRun] = {}
    for seed in range(n_seeds):
        for cond in conditions:
            run = GrokRun(task, cond, seed, track_metrics=(seed == metrics_seed))
            run.advance(cap, stop_on_grok=True)
            log.info("%s/%s seed %d: %s at epoch %s (%.1f s)", task.name, cond, seed,
                     "grokked" if run.grokked else "not grokked", run.grokking_epoch, run.opt_time)
            runs.append(run)
            if seed == metrics_seed:
                metric_runs[cond] = run
    records = [r.record(cap) for r in runs]  # outcomes are fixed before any metric run is extended
    if metric_runs:
        horizon = max(r.epoch for r in metric_runs.values())
        for r in metric_runs.values():
            if not r.diverged:
                r.advance(horizon, stop_on_grok=False)
    stats = {c: summarize_condition([r for r in records if r["condition"] == c]) for c in conditions}
    comparison = compare(stats["baseline"], stats["grokalign"], cap) if {"baseline", "grokalign"} <= set(conditions) else None
    plots = {}
    if metric_runs:
        plots["metrics"] = plot_metrics(task, metric_runs, out / f"grokking_metrics_{task.name}.png").name
    plots["accuracy"] = plot_accuracy(task, runs, out / f"grokking_accuracy_{task.name}.png").name
    settings = task_settings(task, cap, n_seeds)
    return {
        "title": task.title, "cap": cap, "paper_cap": task.paper_max_epochs, "settings": settings, "conditions": stats, "comparison": comparison,
        "runs": records, "plots": plots, "elapsed_s": time.perf_counter() - t0,
        "metrics_trace": {c: {k: r.trace[k] for k in ("epoch", "train_acc", "test_acc", *METRIC_NAMES)} for c, r in metric_runs.items()},
        "metrics_seed": metrics_seed if metric_runs else None,
    }


def task_settings(task: GrokTask, cap: int, n_seeds: int) -> dict[str, Any]:
    """Every setting of one task as a flat mapping (for the report's settings table)."""
    if task.name == "sparse_parity":
        data = (f"{task.n_samples} unique random bit vectors ({task.n_parity} parity + {task.n_noise} noise bits, "
                f"{'{0,1}' if task.encoding == 'binary' else '±1 (1−2b)'}); label = parity of the first {task.n_parity} bits")
        model = f"MLP {task.n_parity + task.n_noise}→{'→'.join(map(str, task.hidden))}→2, {task.activation}, bias={task.bias}"
        k = 2
    else:
        data = f"all {task.modulus}² pairs (a, b), concatenated one-hots ({2 * task.modulus} features); label (a+b) mod {task.modulus}"
        model = f"{2 * task.modulus}→{'→'.join(map(str, task.hidden))}→{task.modulus}, {task.activation} activation, bias={task.bias}"
        k = task.modulus
    n_train = int(task.train_fraction * (task.n_samples if task.name == "sparse_parity" else task.modulus**2))
    return {
        "model": model, "init": "U(±1/√fan_in) (torch Linear default), scale 1",
        "data": data, "train split": f"{task.train_fraction:.0%} random ({n_train} train points)",
        "optimiser": f"AdamW, betas {task.betas}, eps {task.adam_eps:g}", "lr": task.lr, "weight decay": task.weight_decay,
        "batch": "full batch" if task.batch_size is None else f"{task.batch_for(n_train)} (min({task.batch_size}, ceil(n/2))), reshuffled every epoch",
        "loss / dtype": f"cross-entropy, {task.dtype}",
        "GrokAlign loss": f"CE + λ(E‖J_x‖_F + E‖b_x‖²), λ = {task.lam:g}; one normalised Gaussian Hutchinson probe per sample, J_x x by forward-mode jvp",
        "grokked when": f"train acc > {task.train_threshold:.0%} and test acc > {task.test_threshold:.0%}",
        "max epochs (cap)": f"{cap}" + ("" if cap == task.paper_max_epochs else f" (paper: {task.paper_max_epochs}; reduced)"),
        "seeds per condition": n_seeds, "classes": k,
        "evaluation schedule": "every epoch < 100, every 10 < 1k, every 100 < 10k, every 1000 after; cap always evaluated",
        "metrics": f"Jacobian metrics (mean over the first {min(task.metric_points, n_train)} training points), one seed, same schedule",
    }


# --- report ----------------------------------------------------------------------------------------
def _num(v: Any, fmt: str = "{:.0f}", missing: str = "—") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return missing
    return fmt.format(v)


def render_report(summary: Mapping[str, Any]) -> str:
    """The Markdown section of the reproduction (settings, summary table, ratios with p-values, verdict, plots)."""
    L: list[str] = ["## Reproduction: does GrokAlign accelerate grokking?", ""]
    caps = ", ".join(
        f"{t['title']}: {t['cap']}" + (" (the paper's)" if t["cap"] == t["paper_cap"] else f" (reduced from the paper's {t['paper_cap']})")
        for t in summary["tasks"].values()
    )
    L.append("Claim under test: adding the GrokAlign penalty λ(E‖J_x‖_F + E‖b_x‖²) to the task loss makes networks grok "
             "in fewer epochs than weight decay alone (seed paper arXiv 2605.08464; its sparse-parity and modular-addition tasks). "
             f"{summary['seeds']} seeds per condition; epoch caps: {caps}; "
             f"torch {summary['torch_version']}, {summary['threads']} torch thread(s) on a {summary['cpu_count']}-core machine "
             f"(shared with other work); total run time {summary['elapsed_s']:.0f} s.")
    L.append("")
    tasks = summary["tasks"]
    # settings
    L += ["### Settings", ""]
    names = list(tasks)
    L.append("| Setting | " + " | ".join(tasks[n]["title"] for n in names) + " |")
    L.append("|---|" + "---|" * len(names))
    keys = list(next(iter(tasks.values()))["settings"]) if tasks else []
    for k in keys:
        L.append(f"| {k} | " + " | ".join(str(tasks[n]["settings"].get(k, "")) for n in names) + " |")
    L += ["", "Both conditions use the same data split, initial weights and batch order for a given seed; "
          "time = wall-clock time of the training steps only (no evaluation), summed to the grokking epoch.", ""]
    # summary table
    L += ["### Summary", "",
          "Epoch and time statistics are over the runs that grokked (std with ddof = 1); runs that did not grok within the cap "
          "are counted in *not grokked* and excluded there. The censored columns set them to the cap (a lower bound).", "",
          "| Task | Condition | Runs | Grokked | Not grokked | Mean epoch | Std | Median | Mean time (s) | Std time (s) | "
          "s / epoch | Censored mean epoch | Censored mean time (s) |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for cond, s in tasks[n]["conditions"].items():
            ng = "not grokked" if s["grokked"] == 0 else None
            L.append(f"| {tasks[n]['title']} | {_LABELS.get(cond, cond)} | {s['runs']} | {s['grokked']} | {s['not_grokked']} | "
                     f"{_num(s['mean_epoch'], missing=ng or '—')} | {_num(s['std_epoch'], missing='n/a (<2 grokked)')} | "
                     f"{_num(s['median_epoch'], missing=ng or '—')} | {_num(s['mean_time_s'], '{:.2f}', ng or '—')} | "
                     f"{_num(s['std_time_s'], '{:.2f}', 'n/a (<2 grokked)')} | {_num(s['mean_seconds_per_epoch'], '{:.4f}')} | "
                     f"{'≥ ' if s['not_grokked'] else ''}{_num(s['censored_mean_epoch'])} | "
                     f"{'≥ ' if s['not_grokked'] else ''}{_num(s['censored_mean_time_s'], '{:.2f}')} |")
    L.append("")
    # comparisons
    L += ["### Speed-up of GrokAlign over the baseline", "",
          "Ratios are baseline / GrokAlign (> 1 means GrokAlign grokked sooner), with the direction kept (the reference script "
          "reports max(r, 1/r)). p-values are two-sided: Welch t-tests (`scipy.stats.ttest_ind(equal_var=False)`) on the grokked "
          "runs, and on the censored values a Welch test and a Mann–Whitney U test (valid with a common censoring point).", "",
          "| Task | Epoch ratio | p (Welch, epochs) | Time ratio | p (Welch, time) | CPU-time ratio | p (Welch, CPU time) | "
          "Cost per epoch GA/base | Censored epoch ratio | p (Welch, censored) | p (Mann–Whitney, censored) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for n in names:
        c = tasks[n]["comparison"]
        if c is None:
            continue

        def pv(key: str, c: Mapping[str, Any] = c, n: str = n) -> str:  # bound: this iteration's task
            v = c[key]
            if v is not None and math.isfinite(v):
                return _fmt_p(v)
            why = c.get(key + "_reason") or "undefined"
            notes.append(f"{tasks[n]['title']}, {key}: NaN — {why}.")
            return "NaN*"

        cens_mark = "≥ " if tasks[n]["conditions"]["baseline"]["not_grokked"] and not tasks[n]["conditions"]["grokalign"]["not_grokked"] else ""
        L.append(f"| {tasks[n]['title']} | {_num(c['epoch_ratio'], '{:.2f}', 'n/a')} | {pv('p_welch_epochs')} | "
                 f"{_num(c['time_ratio'], '{:.2f}', 'n/a')} | {pv('p_welch_time')} | {_num(c['cpu_time_ratio'], '{:.2f}', 'n/a')} | {pv('p_welch_cpu_time')} | "
                 f"{_num(c['per_epoch_cost_ratio'], '{:.1f}', 'n/a')} | {cens_mark}{_num(c['censored_epoch_ratio'], '{:.2f}', 'n/a')} | "
                 f"{pv('p_welch_epochs_censored')} | {pv('p_mannwhitney_epochs_censored')} |")
    L.append("")
    if notes:
        L += ["\\* " + " ".join(notes), ""]
    # verdict
    L += ["### Did GrokAlign accelerate grokking here?", ""]
    for n in names:
        c = tasks[n]["comparison"]
        L.append(f"- **{tasks[n]['title']}** (cap {tasks[n]['cap']} epochs): " + (c["verdict"] if c else "no comparison (one condition only)."))
    L.append("")
    L.append("The verdict uses the Welch test on epochs when every run grokked, and otherwise the Mann–Whitney test on epochs "
             "censored at the cap; both were fixed before the runs. With reduced caps, a baseline that did not grok may still "
             "grok later, so a censored ratio is a lower bound on the speed-up in epochs.")
    L.append("")
    L += ["### Notes on the protocol", "",
          "- Grokking epochs are quantised by the evaluation schedule: a run that first meets the thresholds between two "
          "evaluations is credited with the next evaluated epoch (up to 9 epochs late below 1k, 99 below 10k, 999 after). "
          "This is the reference protocol; it can only inflate the epochs of the slower condition when it groks later.",
          "- Sparse-parity inputs are {0, 1} bits with the label = parity of the first three bits, as in the reference "
          "`SparseParityDataset`; `encoding=\"pm1\"` is available for ±1 inputs.",
          "- AdamW uses betas (0.9, 0.99) and eps 1e-25 for both tasks, and the modular-addition batch is "
          "min(32, ceil(n_train/2)), both as in the reference `get_optimizer` and data loader.",
          "- Time is measured per run as the wall-clock time of the training steps to the grokking epoch (CPU time of the "
          "same steps alongside). The reference `summarize_results.py` sums its cumulative timer over all logged epochs, "
          "which over-weights slow runs; that is not repeated. On a shared machine wall times are noisy; epochs are not.",
          "- For each seed both conditions share the data split, initial weights and batch order, so differences come from "
          "the penalty only. The runs of the metrics seed continue past grokking up to the later of the two stop epochs "
          "(their grokking epoch and time are fixed when first reached).",
          ""]
    # per-seed table
    L += ["### Per-seed grokking epochs", "", "| Task | Seed | " + " | ".join(_LABELS.get(c, c) for c in summary["conditions"]) + " |",
          "|---|---|" + "---|" * len(summary["conditions"])]
    for n in names:
        by = {(r["seed"], r["condition"]): r for r in tasks[n]["runs"]}
        for seed in sorted({r["seed"] for r in tasks[n]["runs"]}):
            cells = []
            for cond in summary["conditions"]:
                r = by.get((seed, cond))
                if r is None:
                    cells.append("")
                elif r["grokked"]:
                    cells.append(f"{r['grokking_epoch']} ({r['time_to_grok_s']:.1f} s)")
                else:
                    cells.append(f"not grokked by {r['cap']} (test {r['final_test_acc']:.3f}){' diverged' if r['diverged'] else ''}")
            L.append(f"| {tasks[n]['title']} | {seed} | " + " | ".join(cells) + " |")
    L.append("")
    # plots
    L += ["### Plots", ""]
    for n in names:
        p = tasks[n]["plots"]
        if "metrics" in p:
            L.append(f"- {tasks[n]['title']}: [Jacobian metrics and accuracy along training, seed {tasks[n]['metrics_seed']}]({p['metrics']})"
                     " — normal alignment, centroid alignment and effective rank of J_x (mean over a fixed subset of training points).")
        L.append(f"- {tasks[n]['title']}: [test accuracy of every run]({p['accuracy']})")
    L.append("")
    for n in names:
        p = tasks[n]["plots"]
        if "metrics" in p:
            L.append(f"![{tasks[n]['title']} metrics]({p['metrics']})")
            L.append("")
    return "\n".join(L)


__all__ = [
    "CONDITIONS",
    "TASKS",
    "GrokRun",
    "GrokTask",
    "compare",
    "eval_schedule",
    "grokking_epoch",
    "is_eval_epoch",
    "jacobian_alignment_summary",
    "modular_addition_data",
    "plot_accuracy",
    "plot_metrics",
    "render_report",
    "resolve_tasks",
    "run_grokking",
    "sparse_parity_data",
    "summarize_condition",
    "task_settings",
]
