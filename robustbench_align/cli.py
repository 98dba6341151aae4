"""The `rba` command line: run the benchmark plan, evaluate a new model, render leaderboards, correlate.

Every expected failure is printed as one line on stderr with exit code 2; a run stopped by Ctrl-C or
SIGTERM exits 130 / 143 and says how many cells were stored. Messages are printed with control
characters escaped, whatever names they quote.
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
    """Rows as a rich table; every cell shown with control characters escaped and rich markup inert."""
    from rich.markup import escape
    from rich.table import Table

    from .reports.export import visible

    if not rows:
        _console().print("(nothing)")
        return
    t = Table(title=None if title is None else escape(visible(title)), show_lines=False)
    for c in rows[0]:
        t.add_column(escape(visible(str(c))))
    for r in rows:
        t.add_row(*[("" if v is None else escape(visible(str(v)))) for v in r.values()])
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
    """Write every leaderboard report of the store into directory `out`; their paths by format.

    A store without successful runs still gets its reports, saying so and why the runs failed. A
    directory that cannot be written raises OutputError (one line naming it; exit 2).
    """
    from .reports.export import prepare_output_dir, write_reports
    from .reports.tables import leaderboard_from_frames, overall_ranking
    from .runner.store import Store

    with Store(store, readonly=True) as st:
        runs, points = st.runs(), st.points()
    hint = "pass --out a writable directory"
    prepare_output_dir(out, hint)  # before the (bootstrapped) board is computed
    board = leaderboard_from_frames(runs, points)
    overall = overall_ranking(board)
    return write_reports(board, out, overall, hint=hint, points=points, runs=runs)


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
    chunk: int | None = typer.Option(None, "--chunk", help="Points per chunk job: larger samples run, store and resume by chunk (default 500; 0 = off)."),
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
    if chunk is not None:
        plan.chunk_points = chunk
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
        except Exception as exc:  # noqa: BLE001 - importing runs the module's code: any failure is one line
            raise ModelError(f"cannot import {target!r} ({type(exc).__name__}: {exc})") from None
        try:
            if _is_factory(obj):
                obj = obj()
        except Exception as exc:  # noqa: BLE001 - user code: any failure becomes one line
            raise ModelError(f"{target!r}: calling the factory raised {type(exc).__name__}: {first_line(exc, with_type=False)}") from None
        from .models.base import wrap

        try:
            return wrap(obj, name=attr), False
        except RBAError:
            raise
        except Exception as exc:  # noqa: BLE001 - an object whose attribute hooks raise is refused in one line
            raise ModelError(f"{target!r} cannot be used as a model ({type(exc).__name__}: {first_line(exc, with_type=False)}); "
                             "give a torch module, an estimator with predict_proba, or a predict_proba callable") from None
    raise ModelError(
        f"cannot load model {target!r}: give a registry name ({', '.join(list_models())}), a model file (.json, .txt, .cbm, "
        ".onnx, .skops), a saved model directory, or module:attr returning a torch module or estimator"
    )


@app.command()
def evaluate(
    target: str = typer.Argument(..., help="Registry name, model file (.json, .txt, .cbm, .onnx, .skops), saved model dir, "
                                 "or module:attr (imports and runs that module: trusted code only)."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name (see `rba datasets`)."),
    name: str | None = typer.Option(None, "--name", help="Name shown in the leaderboard."),
    config: Path | None = typer.Option(None, "--config", help="Plan file whose threats/points/seeds to use."),
    store: str = typer.Option(DEFAULT_STORE, "--store"),
    out: str = typer.Option(DEFAULT_OUT, "--out"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow loading a pickle file (executes code)."),
    certify: str | None = typer.Option(None, "--certify", help=_CERTIFY_HELP),
    points: int | None = typer.Option(None, "--points", help="Test points to evaluate (0 = every test point; default: the plan's)."),
    chunk: int | None = typer.Option(None, "--chunk", help="Points per chunk: larger samples run, store and resume by chunk (default 500; 0 = off)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another run on the same store instead of refusing."),
    replace: bool = typer.Option(False, "--replace", help="Let --name drop the stored runs of a different model of that name."),
) -> None:
    """Evaluate a new model under the plan's threat models and rank it in the same leaderboard.

    A model is identified by its content (file bytes, or the object's state), so two different
    models never share results: a --name that is a registry model or holds another model's results
    is refused, a name taken from the file is extended with the model's fingerprint. Runs already
    stored for this model, data and settings are reused. A module:attr target imports that module
    and runs its code (and calls a factory): give only code you trust.
    """
    from .runner.api import evaluate as _evaluate
    from .runner.config import load_plan

    plan = load_plan(config)
    if certify is not None:
        plan.certify = certify
    if points is not None:
        plan.points = points
    if chunk is not None:
        plan.chunk_points = chunk
    plan.validate()
    obj, is_registry = _load_target(target, trust_pickle)
    frames = []
    for seed in plan.seeds:
        frames.append(_evaluate(obj, dataset, threats=plan.threats, points=plan.points, seed=seed, name=None if is_registry else name,
                                replace=replace and not is_registry,
                                store=store, attack_time_limit=plan.attack_time_limit, dataset_params=plan.dataset_params.get(dataset),
                                certify=plan.certify, chunk_points=plan.chunk_points, wait=wait, progress=not _state["quiet"],
                                model_params=plan.model_params.get(target) if is_registry else None, attack_effort=plan.attack_effort))
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
    """Print (or write) the leaderboard from the store.

    On stdout every control character of a name (escape sequences, carriage returns, ...) is shown
    as an escape (`\\x1b`); `--output` gets the format's exact text (created with its directory,
    replaced atomically). A board without rows says why (no runs, every run failed, none selected).
    """
    from .errors import ConfigError
    from .reports.export import FORMATS, prepare_output_file, render, terminal_safe, write_text_atomic
    from .reports.tables import leaderboard_from_frames, overall_ranking
    from .runner.store import Store

    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    with Store(store, readonly=True) as st:
        runs, points = st.runs(), st.points()
    hint = "pass -o a writable file path"
    if output is not None:
        prepare_output_file(output, hint)  # before the (bootstrapped) board is computed
    board = leaderboard_from_frames(runs, points, dataset=dataset, threat=threat)
    for col, want in (("dataset", dataset), ("threat", threat)):
        if want is not None and col in runs:
            runs = runs[runs[col] == want]  # the runs the selection covers, for the note of an empty board
    kw: dict[str, Any] = {"runs": runs}
    if fmt == "html":
        kw["points"] = points
    text = render(board, fmt, overall_ranking(board), **kw)
    if output is not None:
        write_text_atomic(output, text, hint)
    else:
        sys.stdout.write(terminal_safe(text))


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
    from .reports.export import prepare_output_file, terminal_safe
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
    prepare_output_file(plot, "pass --plot a writable file path")  # before the tests are computed
    prepare_output_file(forest, "pass --forest a writable file path")
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
    sys.stdout.write(terminal_safe(str(res)) + "\n")  # stratum names come from the store
    from .errors import OutputError
    from .reports.forest import forest_plot
    from .reports.plots import scatter_plot

    try:
        scatter_plot(pts, x, y, res, plot, hue="model")
    except OSError as exc:
        raise OutputError(f"cannot write {str(plot)!r}: {first_line(exc, with_type=False)}; pass --plot a writable file path") from None
    try:
        drawn = forest_plot(res, forest)
    except OSError as exc:
        raise OutputError(f"cannot write {str(forest)!r}: {first_line(exc, with_type=False)}; pass --forest a writable file path") from None
    if not _state["quiet"]:
        shown = f"plot: {plot}" + (f"\nforest: {forest}" if drawn is not None else "\nforest: (no computable stratum, not written)")
        _console().print(terminal_safe(shown), markup=False, highlight=False)


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
    """Run the benchmark suite (needs a source checkout: the `benchmarks/` folder beside the package); exits with its exit code."""
    import subprocess

    from .errors import ConfigError

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__main__.py").exists():
        raise ConfigError("the benchmarks live in the source repository; run `rba bench` from a git checkout")
    cmd = [sys.executable, "-m", "benchmarks"] + (["--quick"] if quick else [])
    rc = subprocess.call(cmd, cwd=root)  # noqa: S603 - fixed argv: this interpreter, `-m benchmarks`, optional --quick
    raise typer.Exit(128 - rc if rc < 0 else rc)  # the suite's exit code; killed by signal N: 128 + N, as a shell reports it


def _safe(line: str) -> str:
    """One message line with its control characters (escape sequences, carriage returns) shown as escapes."""
    from .reports.export import visible

    return visible(line)


def main() -> None:
    """Entry point: run the app and exit with its exit code.

    RBAError (and bad-parameter errors) become one line on stderr, exit 2. A run stopped by SIGINT or
    SIGTERM (errors.Interrupted) prints `rba: interrupted; N cells stored, rerun to resume` and exits
    128 + the signal (130, 143); any other KeyboardInterrupt or Abort prints `rba: interrupted` and
    exits the same way. SIGTERM raises errors.Terminated in this process, so it unwinds like Ctrl-C
    (signals that were ignored when rba started stay ignored).
    """
    import signal
    import threading

    from .errors import Interrupted, Terminated

    received: list[int] = []
    unraisable_hook = sys.unraisablehook

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        # Objects freed while the run unwinds (e.g. a half-built XGBoost DMatrix) may fail in __del__;
        # Python would print that as a traceback after our one line. The run is ending: say nothing.
        sys.unraisablehook = lambda unraisable: None
        if signum == signal.SIGTERM:
            raise Terminated
        raise KeyboardInterrupt

    saved: dict[int, Any] = {}
    in_main_thread = threading.current_thread() is threading.main_thread()  # elsewhere the signals stay as they are
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if in_main_thread and signal.getsignal(sig) is default:
            saved[sig] = signal.signal(sig, interrupt)

    def code(signum: int | None = None) -> int:
        return 128 + int(signum or (received[-1] if received else signal.SIGINT))

    def run() -> None:
        try:
            rc = app(standalone_mode=False)
        except Interrupted as exc:
            sys.stderr.write(f"rba: {_safe(first_line(exc, with_type=False))}\n")
            sys.exit(code(exc.signum))
        except RBAError as exc:
            sys.stderr.write(f"rba: error: {_safe(first_line(exc, with_type=False))}\n")
            sys.exit(2)
        except (typer.Exit, SystemExit) as exc:
            sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
        except KeyboardInterrupt as exc:
            sys.stderr.write("rba: interrupted\n")
            sys.exit(code(getattr(exc, "signum", None)))
        except Exception as exc:  # usage errors of the (vendored) click layer
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
                sys.stderr.write(f"rba: error: {_safe(exc.format_message().splitlines()[0])}\n")
                sys.exit(2)
            if type(exc).__name__ == "Abort":
                sys.stderr.write("rba: interrupted\n")
                sys.exit(code())
            raise
        if rc == 130 and received:  # typer turns a KeyboardInterrupt outside a run into exit code 130
            sys.stderr.write("rba: interrupted\n")
            sys.exit(code())
        sys.exit(rc if isinstance(rc, int) else 0)  # a command's typer.Exit(code) comes back as the return value

    try:
        run()
    finally:  # an in-process caller gets its handlers back
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        sys.unraisablehook = unraisable_hook


if __name__ == "__main__":  # pragma: no cover
    main()
