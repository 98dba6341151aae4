"""The `rba` command line: run the benchmark plan, evaluate a new model, render leaderboards, correlate.

Every expected failure is printed as one line on stderr with exit code 2.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from .errors import RBAError, first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Adversarial robustness and Jacobian alignment of tabular classifiers.")
reproduce_app = typer.Typer(no_args_is_help=True, help="Reproduce the seed paper's experiments with this suite's machinery.")
app.add_typer(reproduce_app, name="reproduce")

DEFAULT_STORE = "reports/results.sqlite"
DEFAULT_CACHE = ".rba/cache"
DEFAULT_OUT = "reports"

_state = {"quiet": False}


def _console() -> Any:
    import shutil

    from rich.console import Console

    return Console(width=max(shutil.get_terminal_size((160, 40)).columns, 120))


def _setup_logging(quiet: bool) -> None:
    _state["quiet"] = quiet
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.callback()
def _main(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summaries.")) -> None:
    _setup_logging(quiet)


def _table(rows: Sequence[Mapping[Any, Any]], title: str | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    if not rows:
        _console().print("(nothing)")
        return
    t = Table(title=title, show_lines=False)
    for c in rows[0]:
        t.add_column(escape(str(c)))
    for r in rows:
        t.add_row(*[("" if v is None else escape(str(v))) for v in r.values()])
    _console().print(t)


@app.command()
def models() -> None:
    """List the registry's models with their model cards."""
    from .models.registry import describe_models

    rows = [{"name": r["name"], "family": r["family"], "params": ", ".join(f"{k}={v}" for k, v in r["params"].items()),
             "summary": r["summary"]} for r in describe_models()]
    _table(rows, "models")


@app.command()
def datasets() -> None:
    """List the offline datasets (plus uci121:<name>, csv:<path>, parquet:<path>)."""
    from .data import registry as dreg

    if hasattr(dreg, "describe_datasets"):
        rows = [dict(r) for r in dreg.describe_datasets()]
    else:
        rows = [{"name": n} for n in dreg.list_datasets()]
    _table(rows, "datasets")
    if not _state["quiet"]:
        _console().print("Also: uci121:<name> (directory in RBA_UCI121_DIR), csv:<path>, parquet:<path> (target column via the config)")


def _write_all_reports(store: str, out: str) -> dict[str, Path]:
    from .reports.export import write_reports
    from .reports.tables import leaderboard_from_frames, overall_ranking
    from .runner.store import Store

    with Store(store, readonly=True) as st:
        runs, points = st.runs(), st.points()
    board = leaderboard_from_frames(runs, points)
    overall = overall_ranking(board)
    return write_reports(board, out, overall, points=points, runs=runs)


_CERTIFY_HELP = ("Lower bounds per point: auto (default: the strongest certifier the model allows), none, "
                 "or one of crown, alpha-crown, ibp, milp, kernel.")


@app.command()
def run(
    config: Path | None = typer.Option(None, "--config", help="TOML plan file (keys: models, datasets, threats, seeds, points, ...)."),
    workers: int = typer.Option(0, "--workers", help="Local worker processes (0 = one per usable CPU core, at most 8)."),
    dask: str | None = typer.Option(None, "--dask", help="Address of an existing Dask scheduler, e.g. tcp://host:8786."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: 2 datasets, 10 points."),
    full: bool = typer.Option(False, "--full", help="Every test point, full-effort attacks."),
    certify: str | None = typer.Option(None, "--certify", help=_CERTIFY_HELP),
    store: str = typer.Option(DEFAULT_STORE, "--store", help="SQLite result store."),
    cache: str = typer.Option(DEFAULT_CACHE, "--cache", help="Directory of cached fitted models."),
    out: str = typer.Option(DEFAULT_OUT, "--out", help="Directory for the leaderboard files."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Recompute runs that failed before."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another run on the same store instead of refusing."),
) -> None:
    """Run the benchmark plan (finished cells are reused) and write the leaderboard reports."""
    from .errors import ConfigError
    from .runner.api import run_plan
    from .runner.config import load_plan

    if dask and workers not in (0, 1):
        raise ConfigError("use either --workers or --dask, not both")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0 = one per usable CPU core), got {workers}")
    plan = load_plan(config, quick=quick, full=full)
    if workers == 0:
        from .runner.executors import usable_cores

        workers = 1 if dask else usable_cores()
    if certify is not None:
        plan.certify = certify
        plan.validate()
    summary = run_plan(plan, store, cache_dir=cache, workers=workers, dask_address=dask, retry_failed=retry_failed,
                       progress=not _state["quiet"], wait=wait)
    files = _write_all_reports(store, out)
    if not _state["quiet"]:
        _console().print(
            f"{summary['jobs']} cells computed, {summary['skipped']} reused, {summary['runs_failed']} failed runs, "
            f"{summary['seconds']:.1f} s; reports: {', '.join(str(p) for p in files.values())}"
        )


def _is_factory(obj: Any) -> bool:
    """A plain function callable without arguments (`module:make_model`): called for the model it returns.

    Any other callable (a class, a predict_proba function taking X, a callable instance) is the model itself.
    """
    import inspect
    import types

    if not isinstance(obj, types.FunctionType) or hasattr(obj, "predict_proba") or hasattr(obj, "forward"):
        return False
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: not treated as a factory
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def _load_target(target: str, trust_pickle: bool) -> tuple[Any, bool]:
    """A registry name (returns (name, True)) or a loaded Model (returns (model, False))."""
    from .errors import ModelError
    from .models.registry import list_models

    if target in list_models():
        return target, True
    p = Path(target)
    if p.exists():
        from .models.persistence import load_model

        return load_model(p, trust_pickle=trust_pickle), False
    if ":" in target and not p.suffix:
        import importlib

        mod, _, attr = target.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"cannot import {target!r} ({type(exc).__name__}: {exc})") from None
        if _is_factory(obj):
            obj = obj()
        from .models.base import wrap

        return wrap(obj, name=attr), False
    raise ModelError(
        f"cannot load model {target!r}: give a registry name ({', '.join(list_models())}), a model file (.json, .txt, .cbm, "
        ".onnx, .skops), a saved model directory, or module:attr returning a torch module or estimator"
    )


@app.command()
def evaluate(
    target: str = typer.Argument(..., help="Registry name, model file (.json, .txt, .cbm, .onnx, .skops), saved model dir, or module:attr."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name (see `rba datasets`)."),
    name: str | None = typer.Option(None, "--name", help="Name shown in the leaderboard."),
    config: Path | None = typer.Option(None, "--config", help="Plan file whose threats/points/seeds to use."),
    store: str = typer.Option(DEFAULT_STORE, "--store"),
    out: str = typer.Option(DEFAULT_OUT, "--out"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading a pickle file (executes code)."),
    certify: str | None = typer.Option(None, "--certify", help=_CERTIFY_HELP),
) -> None:
    """Evaluate a new model under the plan's threat models and rank it in the same leaderboard."""
    from .runner.api import evaluate as _evaluate
    from .runner.config import load_plan

    plan = load_plan(config)
    if certify is not None:
        plan.certify = certify
        plan.validate()
    obj, is_registry = _load_target(target, trust_pickle)
    frames = []
    for seed in plan.seeds:
        shown_name = name or (None if is_registry else getattr(obj, "name", None) or Path(target).stem)
        frames.append(_evaluate(obj, dataset, threats=plan.threats, points=plan.points, seed=seed, name=shown_name,
                                store=store, attack_time_limit=plan.attack_time_limit, dataset_params=plan.dataset_params.get(dataset),
                                certify=plan.certify))
    files = _write_all_reports(store, out)
    from .reports.export import display_frame
    from .reports.tables import leaderboard

    board = leaderboard(store, dataset=dataset)
    shown = display_frame(board[[c for c in board.columns if c not in ("attacks", "flags", "fit_time", "eval_time", "seeds")]])
    _table(shown.to_dict("records"), f"leaderboard: {dataset}")
    if not _state["quiet"]:
        _console().print(f"reports: {', '.join(str(p) for p in files.values())}")


@app.command("leaderboard")
def leaderboard_cmd(
    fmt: str = typer.Option("md", "--format", "-f", help="md, html, latex, csv or json."),
    store: str = typer.Option(DEFAULT_STORE, "--store"),
    dataset: str | None = typer.Option(None, "--dataset"),
    threat: str | None = typer.Option(None, "--threat"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print (or write) the leaderboard from the store."""
    from .reports.export import render
    from .reports.tables import leaderboard, overall_ranking
    from .runner.store import Store

    board = leaderboard(store, dataset=dataset, threat=threat)
    kw: dict[str, Any] = {}
    if fmt == "html":
        with Store(store, readonly=True) as st:
            kw = {"points": st.points(), "runs": st.runs()}
    text = render(board, fmt, overall_ranking(board), **kw)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


@app.command()
def correlate(
    x: str = typer.Option("normal_alignment", "--x", help="Point metric on the x axis."),
    y: str = typer.Option("radius", "--y", help="Robustness measure (radius, r_lin, ...)."),
    threat: str = typer.Option("linf", "--threat"),
    by: list[str] | None = typer.Option(None, "--by", help="Stratum column(s), repeatable or comma-separated (default model,dataset; 'none': no strata)."),
    confounder: list[str] | None = typer.Option(
        None, "--confounder", help="Partial correlations given these columns, repeatable (default logit_margin, jacobian_norm, x_norm "
                                   "where present; 'none' disables)."),
    p_adjust: str = typer.Option("holm", "--p-adjust", help="Per-stratum p-value adjustment: holm, bh (Benjamini–Hochberg) or none."),
    aggregate: bool = typer.Option(False, "--aggregate", help="Correlate (model, dataset) means instead of points (no strata unless --by)."),
    store: str = typer.Option(DEFAULT_STORE, "--store"),
    plot: Path = typer.Option(Path("reports/correlation.png"), "--plot", help="Where to write the scatter plot."),
    forest: Path = typer.Option(Path("reports/correlation_forest.png"), "--forest", help="Where to write the per-stratum forest plot."),
) -> None:
    """Test whether Jacobian alignment predicts robustness within model × dataset strata, beyond the confounders.

    Prints the naive correlation over all points, one row per stratum (Holm-adjusted p), the pooled
    within-stratum effect (random-effects estimate, interval, I², stratified permutation p) and the
    partial correlations given the confounders; writes a scatter and a forest plot.
    """
    from .errors import ConfigError
    from .metrics.stats import DEFAULT_CONFOUNDERS, DEFAULT_STRATA
    from .metrics.stats import correlate as _correlate
    from .runner.store import Store

    def names(values: list[str] | None, default: Sequence[str]) -> tuple[str, ...]:
        items = [v.strip() for raw in (values or []) for v in raw.split(",") if v.strip()]
        if not values:
            return tuple(default)
        if any(v.lower() == "none" for v in items):
            if len(items) > 1:
                raise ConfigError(f"'none' cannot be combined with other columns, got {', '.join(items)}")
            return ()
        return tuple(dict.fromkeys(items))

    if p_adjust not in ("holm", "bh", "none"):
        raise ConfigError(f"--p-adjust must be holm, bh or none, got {p_adjust!r}")
    strata = names(by, () if aggregate else DEFAULT_STRATA)
    confounders = names(confounder, DEFAULT_CONFOUNDERS) if confounder else None  # None: the defaults that are present
    with Store(store, readonly=True) as st:
        pts = st.points()
    pts = pts[(pts["threat"] == threat) & (pts["correct"] == 1)]
    numeric = ", ".join(c for c in pts.columns if pts[c].dtype.kind == "f")
    for col in (x, y):
        if col not in pts.columns:
            raise ConfigError(f"unknown column {col!r}; choose from {numeric}")
    for col in (*strata, *(confounders or ())):
        if col not in pts.columns:
            what = "stratum" if col in strata else "confounder"
            raise ConfigError(f"unknown {what} column {col!r}; choose from {', '.join(map(str, pts.columns))}")
    pts = pts[pts[x].notna() & pts[y].notna() & (pts[y] < float("inf"))]
    if pts.empty:
        raise ConfigError(f"no points with both {x} and {y} under threat {threat!r}; run models with gradients (mlp, rfm, ...) first")
    kw: dict[str, Any] = {"x": x, "y": y, "by": strata, "confounders": confounders, "p_adjust": p_adjust}
    if aggregate:
        kw["aggregate"] = ["model", "dataset"]
    res = _correlate(pts, **kw)
    sys.stdout.write(str(res) + "\n")
    from .reports.forest import forest_plot
    from .reports.plots import scatter_plot

    scatter_plot(pts, x, y, res, plot, hue="model")
    drawn = forest_plot(res, forest)
    if not _state["quiet"]:
        _console().print(f"plot: {plot}" + (f"\nforest: {forest}" if drawn is not None else "\nforest: (no computable stratum, not written)"))


@reproduce_app.command("rfam")
def reproduce_rfam(
    seeds: int = typer.Option(4, "--seeds", help="Folds/seeds per dataset."),
    dataset: list[str] | None = typer.Option(None, "--dataset", help="Restrict to these datasets (repeatable)."),
    uci_dir: str | None = typer.Option(None, "--uci-dir", help="UCI-121 collection directory (default: $RBA_UCI121_DIR)."),
    points: int = typer.Option(100, "--points", help="Test points per seed (0 = all)."),
    full: bool = typer.Option(False, "--full", help="All test points, full-effort strong attack."),
    out: str = typer.Option(DEFAULT_OUT, "--out"),
) -> None:
    """RFM (alpha=1) vs RFAM (alpha=0): accuracy, alignment, ASR under paper PGD and the strong ensemble."""
    from .reproduce.rfam import run_rfam

    run_rfam(dataset or None, seeds, uci_dir=uci_dir, n_points=points, full=full, out_dir=out)
    from .reproduce.report import write_index

    write_index(out)
    if not _state["quiet"]:
        _console().print(f"report: {Path(out) / 'reproduction_rfam.md'}")


@reproduce_app.command("grokalign-tabular")
def reproduce_grokalign_tabular(
    seeds: int = typer.Option(4, "--seeds"),
    dataset: list[str] | None = typer.Option(None, "--dataset"),
    points: int = typer.Option(100, "--points"),
    full: bool = typer.Option(False, "--full"),
    out: str = typer.Option(DEFAULT_OUT, "--out"),
) -> None:
    """GrokAlign-MLP vs MLP robustness on the tabular datasets, with the same paired tests (no paper numbers exist)."""
    from .reproduce.rfam import run_rfam

    run_rfam(dataset or None, seeds, n_points=points, full=full, out_dir=out, arms=("mlp", "mlp-grokalign"),
             prefix="reproduction_grokalign_tabular")
    from .reproduce.report import write_index

    write_index(out)
    if not _state["quiet"]:
        _console().print(f"report: {Path(out) / 'reproduction_grokalign_tabular.md'}")


@reproduce_app.command("grokking")
def reproduce_grokking(
    seeds: int | None = typer.Option(None, "--seeds", help="Seeds per condition (default 5; --full: 10)."),
    task: list[str] | None = typer.Option(None, "--task", help="sparse_parity and/or modular_addition."),
    full: bool = typer.Option(False, "--full", help="The full protocol: epoch caps 20000 (sparse parity) and 1000 (modular addition), 10 seeds."),
    out: str = typer.Option(DEFAULT_OUT, "--out"),
) -> None:
    """Baseline vs GrokAlign: grokking epochs and wall time, Welch tests, Jacobian metrics along training."""
    from .reproduce.grokking import run_grokking

    kw: dict[str, Any] = {"full": full, "out_dir": out}
    if task:
        kw["tasks"] = tuple(task)
    if seeds is not None:
        kw["seeds"] = seeds
    run_grokking(**kw)
    from .reproduce.report import write_index

    write_index(out)
    if not _state["quiet"]:
        _console().print(f"report: {Path(out) / 'reproduction_grokking.md'}")


@app.command()
def bench(quick: bool = typer.Option(False, "--quick", help="Smaller sizes; finishes in a few minutes.")) -> None:
    """Run the benchmark suite (needs a source checkout: the `benchmarks/` folder beside the package)."""
    import subprocess

    from .errors import ConfigError

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__main__.py").exists():
        raise ConfigError("the benchmarks live in the source repository; run `rba bench` from a git checkout")
    cmd = [sys.executable, "-m", "benchmarks"] + (["--quick"] if quick else [])
    raise typer.Exit(subprocess.call(cmd, cwd=root))  # noqa: S603 - fixed argv: this interpreter, `-m benchmarks`, optional --quick


def main() -> None:
    """Entry point: run the app; RBAError (and bad-parameter errors) become one line on stderr, exit 2."""
    try:
        app(standalone_mode=False)
    except RBAError as exc:
        sys.stderr.write(f"rba: error: {first_line(exc, with_type=False)}\n")
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except KeyboardInterrupt:
        sys.stderr.write("rba: interrupted\n")
        sys.exit(130)
    except Exception as exc:  # usage errors of the (vendored) click layer
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            sys.stderr.write(f"rba: error: {exc.format_message().splitlines()[0]}\n")
            sys.exit(2)
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
