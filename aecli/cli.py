"""The `aecli` command line: arguments, exit codes and what is printed; no ML logic.

Heavy modules (TensorFlow, Keras, scikit-learn, matplotlib) are imported inside the
commands that need them, so `aecli --help`, `validate` and `schema` answer instantly.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from aecli import __version__
from aecli.config import config_json_schema, config_to_yaml, load_config
from aecli.errors import AecliError, ConfigError, as_path_error, as_storage_error, clip
from aecli.interrupts import Terminated, interrupts_as_exceptions, raise_pending
from aecli.progress import PlainProgress, RichProgress

app = typer.Typer(
    name="aecli",
    help="Train, evaluate and use autoencoders described by a YAML file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
BackendOption = Annotated[
    str | None, typer.Option(help="Keras backend: tensorflow, jax or torch (default: the config's runtime.backend).")
]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force", help="Use the run's data files even if their content changed since training (see run.json)."
    ),
]
RunArgument = Annotated[Path, typer.Argument(help="A completed run directory.", show_default=False)]
ServedRunsArgument = Annotated[
    list[Path],
    typer.Argument(help="Completed runs to serve (the first answers /score ...).", metavar="RUN", show_default=False),
]
ServedNameOption = Annotated[
    list[str] | None,
    typer.Option(help="The name RUN is served under (default: its folder's name).", metavar="NAME=RUN"),
]
TextOption = Annotated[
    list[str] | None,
    typer.Option("--text", help="Text runs: a text to reconstruct (repeatable; INPUT may be text files too)."),
]
NoiseOption = Annotated[
    str | None,
    typer.Option(
        help="Corrupt the inputs first: gaussian:0.3, salt_pepper:0.1 or mask:0.2 (the denoising demo); for a "
        "sequence run word_deletion:0.6, word_mask:P, word_swap:P or none (default: the run's training noise)."
    ),
]
PairsOption = Annotated[
    Path | None,
    typer.Option(
        help="Text runs: sentence pairs with gold similarity scores (.tsv/.csv/.jsonl, STS layout): Spearman and "
        "Pearson of the embeddings' cosine, beside TF-IDF and LSA."
    ),
]
PairColumnsOption = Annotated[str, typer.Option(help="--pairs: the two text columns and the score column.")]
ScoreOption = Annotated[
    str | None,
    typer.Option("--score", help="mse, mae, bce, dssim (images), knn or combined (default: the run's anomaly score)."),
]
InsteadThresholdOption = Annotated[
    str | None,
    typer.Option(help="Instead of the run's calibrated threshold: max, percentile:Q, mean_std:K, fpr:F or a number."),
]
ThresholdOption = Annotated[
    str | None,
    typer.Option(
        help="max, percentile:95 or mean_std:1 (of the training errors), fpr:0.01 (of the validation rows), "
        "contamination:0.1, best_f1 (on the evaluated labels), or a number (default: the run's calibrated "
        "threshold, thresholds.json)."
    ),
]
AnomalyWindowsOption = Annotated[
    Path | None,
    typer.Option(help="Series runs: labelled anomalous windows, NAB's JSON layout {file: [[start, end], ...]}."),
]
PointsOption = Annotated[
    str | None,
    typer.Option(
        help="Series runs: a step's score from the windows covering it: mean, max or all (default: the run's)."
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optimizer.name=sgd (repeatable)."),
]


class _PipeSafeConsole(Console):
    """A reader that stops reading (`aecli train ... | head`) must not stop the training."""

    def on_broken_pipe(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        self.quiet = True


def _console() -> Console:
    """Rich output on stdout; pipes and logs get a wide fixed width so tables are not squeezed."""
    probe = Console()
    return _PipeSafeConsole(highlight=False, soft_wrap=True, width=None if probe.is_terminal else 160)


def reports_errors(command: F) -> F:
    """The one place user errors become `error: <message>` on stderr and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AecliError as exc:
            _fail(exc)
        except OSError as exc:  # a full disk can surface from any write, deep inside Keras too
            problem = as_storage_error(exc) or as_path_error(exc)
            if problem is None:
                raise
            _fail(problem)

    return wrapper  # type: ignore[return-value]


def _fail(exc: AecliError) -> NoReturn:
    typer.echo(f"error: {clip(str(exc), MAX_MESSAGE_CHARS)}", err=True)
    raise typer.Exit(exc.exit_code) from None


MAX_MESSAGE_CHARS = 1000  # an error is one readable line, whatever value it quotes


def _exit_interrupted(interrupt: KeyboardInterrupt, message: str) -> NoReturn:
    """Ctrl-C exits 130, SIGTERM 143 (128 + the signal), after saying what was kept."""
    typer.echo(message, err=True)
    raise typer.Exit(143 if isinstance(interrupt, Terminated) else 130) from None


T = TypeVar("T")


def _interruptible(call: Callable[[], T], interrupted: str) -> T:
    """`call()` with Ctrl-C and SIGTERM turned into an exit that prints `interrupted`."""
    try:
        with interrupts_as_exceptions():
            outcome = call()
            raise_pending()  # an interrupt native code swallowed: the command still ends as interrupted
            return outcome
    except KeyboardInterrupt as interrupt:
        _exit_interrupted(interrupt, interrupted)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"aecli {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Train, evaluate and use autoencoders described by a YAML file."""


@app.command()
@reports_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="Experiment YAML file.", show_default=False)] = None,
    overrides: SetOption = None,
    runs_dir: Annotated[Path, typer.Option(help="Folder that receives the run directory.")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Run name (default: the config file's name).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain epoch lines instead of a live bar.")] = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run directory to its configured epochs (no CONFIG needed)."),
    ] = None,
    backend: BackendOption = None,
) -> None:
    """Train an autoencoder and write a new run directory (its path is the last line printed)."""
    if (config is None) == (resume is None):
        raise ConfigError("give a CONFIG to train, or --resume RUN_DIR to continue a run (not both)")
    if resume is not None and (overrides or backend):
        raise ConfigError("--set cannot change a run being resumed: it continues with its saved config.yaml")
    console = _console()
    reporter = RichProgress(console) if console.is_terminal and not quiet else PlainProgress(console)
    started_dirs: list[Path] = [] if resume is None else [resume]
    done: tuple[Path, dict[str, Any]] | None = None
    with interrupts_as_exceptions():
        try:
            if resume is not None:
                done = _resume_training(console, resume, reporter)
            elif config is not None:
                backend_override = [f"runtime.backend={backend}"] if backend else []
                run = (config, [*(overrides or []), *backend_override], runs_dir, name or config.stem)
                done = _train_new(console, *run, reporter, started_dirs.append)
        except KeyboardInterrupt as interrupt:
            _exit_interrupted(
                interrupt,
                f"interrupted: run kept at {started_dirs[0]} (status interrupted); continue it with "
                f"aecli train --resume {started_dirs[0]}" + (" on every worker" if os.environ.get("TF_CONFIG") else "")
                if started_dirs
                else "interrupted before a run directory was created",
            )
    if done is None:
        return
    run_dir, metrics = done
    _print_training_summary(console, metrics)
    for note in metrics.get("data_notes", []):
        console.print(f"note: {note}", soft_wrap=True)
    console.print(f"model:  {run_dir / 'model.keras'} (+ encoder.keras, decoder.keras)")
    console.print(f"report: {run_dir / 'metrics.json'} (per sample: errors.csv, per epoch: history.csv)")
    typer.echo(str(run_dir))


def _train_new(
    console: Console,
    config: Path,
    overrides: list[str],
    runs_dir: Path,
    name: str,
    reporter: Any,
    on_run_dir: Callable[[Path], None],
) -> tuple[Path, dict[str, Any]] | None:
    """Train a new run; None on a worker that does not write the run."""
    from aecli.commands.train import train_run

    settings = load_config(config, overrides)
    console.print(
        f"training {settings.model.kind} autoencoder on {settings.data.source} "
        f"({settings.optimizer.name}, {settings.loss.name}, {_length(settings.training)})"
    )
    command = shlex.join(["aecli", *sys.argv[1:]])
    outcome = train_run(settings, runs_dir, name, command, reporter=reporter, on_run_dir=on_run_dir)
    if not outcome.written:
        console.print(_worker_finished(outcome.reading))
        return None
    return outcome.run_dir, outcome.metrics


def _resume_training(console: Console, run_dir: Path, reporter: Any) -> tuple[Path, dict[str, Any]] | None:
    """Continue a run; None when there was nothing to do or this worker does not write the run."""
    from aecli.commands.train import resume_run

    resumed = resume_run(run_dir, reporter)
    if resumed.metrics is None:
        console.print(f"run {run_dir} has already completed: nothing to resume")
        typer.echo(str(run_dir))
        return None
    console.print(f"resumed after epoch {resumed.from_epoch}")
    if not resumed.written:
        console.print(_worker_finished(resumed.reading))
        return None
    return resumed.run_dir, resumed.metrics


def _worker_finished(reading: dict[str, int] | None) -> str:
    """What a non-chief worker says at the end: who writes the run, and what it read itself."""
    line = "worker finished: the chief worker writes the run directory"
    if reading is None:
        return line
    return (
        f"{line}; this worker read {reading['files']} of {reading['files_in_folder']} shard files "
        f"({reading['rows']:,} rows, {reading['bytes']:,} bytes)"
    )


def _length(training: Any) -> str:
    steps = training.steps
    return f"{steps} steps" if steps is not None else f"{training.epochs} epochs"


def _print_training_summary(console: Console, metrics: dict[str, Any]) -> None:
    training = metrics["training"]
    table = Table(title="test-set reconstruction", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics["reconstruction"].items():
        table.add_row(key, f"{value:.5g}")
    measure = "xent" if "xent" in metrics["reconstruction"] else "mse"
    table.add_row(f"p95 error ({measure})", f"{metrics['error_quantiles']['p95']:.5g}")
    table.add_row("samples", str(metrics["n_samples"]))
    table.add_row("epochs run (best)", f"{training['epochs_run']} ({training['best_epoch']})")
    table.add_row("parameters", f"{training['parameters']:,}")
    table.add_row(
        "training time", f"{training['wall_seconds']:.1f} s ({training['samples_per_second']:,.0f} samples/s)"
    )
    errors = metrics.get("train_errors", {})
    if "default_threshold_value" in errors:
        rate = errors.get("default_threshold_false_positive_rate")
        expected = "" if rate is None else f", flags {rate:.1%} of them"
        table.add_row(
            f"threshold ({errors['default_threshold']}, {errors['score']})",
            f"{errors['default_threshold_value']:.5g}",
        )
        table.add_row("threshold from", f"{errors.get('default_threshold_from', 'training split')}{expected}")
    console.print(table)


@app.command()
@reports_errors
def validate(config: ConfigArg, overrides: SetOption = None) -> None:
    """Check a config (and its data's shape) and print the resolved YAML and the model's layers."""
    from aecli.commands.validate import validate_experiment

    checked = validate_experiment(config, overrides or [])
    console = _console()
    console.print(config_to_yaml(checked.config), end="", markup=False)
    table = Table(title=f"{checked.config.model.kind} autoencoder for input {checked.input_shape}")
    for column in ("part", "layer", "type", "output shape", "activation"):
        table.add_column(column, no_wrap=True)
    table.add_column("params", justify="right")
    for spec in checked.plan:
        table.add_row(
            spec.part, spec.name, spec.kind, str(spec.output_shape), spec.activation or "", f"{spec.parameters:,}"
        )
    console.print(table)
    console.print(f"total parameters: {checked.parameters:,}")
    checked.check_fits_memory()
    console.print("config is valid")


def _parse_labels(text: str | None, option: str) -> list[int | str] | None:
    """Comma-separated label values as written in the data: integers stay integers, names stay names."""
    if text is None:
        return None
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise ConfigError(f"{option}: expected at least one label, e.g. 0,1 or cat,dog; got {text!r}")
    return [int(value) if value.lstrip("-").isdigit() else value for value in values]


def _parse_int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers such as 0,1, got {text!r}") from None
    if not values:
        raise ConfigError(f"{option}: expected at least one integer, got {text!r}")
    return values


BaselinesOption = Annotated[
    bool,
    typer.Option(
        help="With labelled anomalies, also fit IsolationForest and PCA (as many components as the code) on the "
        "run's training rows and report their AUROC/AUPRC beside the autoencoder's."
    ),
]


@app.command()
@reports_errors
def evaluate(
    run_dir: RunArgument,
    data: Annotated[
        str | None,
        typer.Option(
            help="Evaluate every row of this source instead of the run's test split (same syntax as data.source)."
        ),
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", "-s", help="data.KEY=VALUE for --data.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <run>/eval-<timestamp>).")] = None,
    normal_classes: Annotated[
        str | None,
        typer.Option(
            help="Labels that are normal, as written in the data (e.g. 0,1 or cat); every other label is an anomaly "
            "(default: the run's data.classes)."
        ),
    ] = None,
    anomaly_data: Annotated[
        str | None, typer.Option(help="A source whose every sample is an anomaly (the evaluated data is normal).")
    ] = None,
    score: ScoreOption = None,
    threshold: ThresholdOption = None,
    anomaly_windows: AnomalyWindowsOption = None,
    points: PointsOption = None,
    tsne: Annotated[bool, typer.Option("--tsne", help="Project the latent space with t-SNE instead of PCA.")] = False,
    pairs: PairsOption = None,
    pair_columns: PairColumnsOption = "sentence1,sentence2,score",
    baselines: BaselinesOption = True,
    force: ForceOption = False,
    backend: BackendOption = None,
) -> None:
    """Metrics, latent-space quality, anomaly scores, plots and a report for a trained run."""
    from aecli.commands.evaluate import EvaluateRequest, evaluate_run

    request = EvaluateRequest(
        run_dir=run_dir,
        data=data,
        data_overrides=overrides or [],
        out=out,
        normal_classes=_parse_labels(normal_classes, "--normal-classes"),
        anomaly_data=anomaly_data,
        score=score,
        threshold=threshold,
        anomaly_windows=anomaly_windows,
        points=points,
        tsne=tsne,
        backend=backend,
        force=force,
        pairs=pairs,
        pair_columns=_pair_columns(pair_columns),
        baselines=baselines,
    )
    outcome = _interruptible(lambda: evaluate_run(request), "interrupted: no evaluation folder written")
    console = _console()
    _print_evaluation_summary(console, outcome.metrics)
    console.print(f"report: {outcome.report_html} (plots and metrics.json beside it)", soft_wrap=True)
    typer.echo(str(outcome.out_dir))


def _print_text_reconstruction(console: Console, rows: list[dict[str, Any]], shown: int = 20) -> None:
    """Input, its noised version and the decoding side by side (or a bag's likeliest words)."""
    table = Table(
        title=f"{len(rows)} text(s) reconstructed" + (f", the first {shown} shown" if len(rows) > shown else "")
    )
    columns = [name for name in ("input", "noised", "decoded", "top_words") if name in rows[0]]
    if "noised" in columns and not any(row["noised"] for row in rows):
        columns.remove("noised")
    for name in columns:
        table.add_column(name, overflow="fold")
    table.add_column("accuracy" if "decoded" in columns else "word recall", justify="right")
    for row in rows[:shown]:
        table.add_row(*(str(row[name]) for name in columns), f"{row['accuracy']:.2f}")
    console.print(table)


def _print_text_summary(console: Console, metrics: dict[str, Any]) -> None:
    """Reconstruction, then one row per method (the autoencoder, TF-IDF, LSA) for each measure."""
    table = Table(title=f"evaluation on {metrics['data']} ({metrics['n_samples']} texts)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics["reconstruction"].items():
        table.add_row(key, f"{value:.5g}")
    console.print(table)
    sections = {
        "latent": ("embeddings against labels", ("kmeans_nmi", "kmeans_ari", "knn_accuracy")),
        "pairs": ("sentence pairs: cosine against gold", ("spearman", "pearson")),
        "anomaly": ("anomaly detection", ("auroc", "auprc")),
    }
    for key, (title, columns) in sections.items():
        methods = {name: row for name, row in metrics.get(key, {}).items() if isinstance(row, dict)}
        if not methods:
            continue
        table = Table(title=title)
        table.add_column("method")
        for column in columns:
            table.add_column(column, justify="right")
        for name, row in methods.items():
            table.add_row(name, *("n/a" if row.get(c) is None else f"{row[c]:.4f}" for c in columns))
        console.print(table)


def _pair_columns(text: str) -> tuple[str, str, str]:
    names = [name.strip() for name in text.split(",")]
    if len(names) != 3 or not all(names):
        raise ConfigError(f"--pair-columns {text!r}: expected three column names: TEXT1,TEXT2,SCORE")
    return names[0], names[1], names[2]


@app.command()
@reports_errors
def threshold(
    run_dir: RunArgument,
    method: Annotated[
        str,
        typer.Option(
            help="max, percentile:Q, mean_std:K or contamination:F (of the training errors), fpr:F (flags a share F "
            "of held-out normal data), best_f1 (needs labels), value:V or a number.",
            show_default=False,
        ),
    ],
    score: ScoreOption = None,
    normal_data: Annotated[
        str | None, typer.Option(help="fpr: normal rows to measure it on (default: the run's validation split).")
    ] = None,
    normal_classes: Annotated[
        str | None, typer.Option(help="best_f1: labels of the test split that are normal (e.g. 0,1).")
    ] = None,
    anomaly_data: Annotated[
        str | None, typer.Option(help="best_f1: a source whose rows are all anomalies (the test split is normal).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="data.KEY=VALUE for those sources.")
    ] = None,
) -> None:
    """Choose a run's anomaly threshold again from its stored errors (no retraining): it becomes
    the threshold evaluate and every flag use; earlier ones stay in thresholds.json."""
    from aecli.commands.threshold import ThresholdRequest, set_threshold

    labels = _parse_labels(normal_classes, "--normal-classes")
    request = ThresholdRequest(
        run_dir=run_dir,
        method=method,
        score=score,
        normal_data=normal_data,
        normal_classes=None if labels is None else [str(label) for label in labels],
        anomaly_data=anomaly_data,
        data_overrides=overrides or [],
        command=shlex.join(["aecli", *sys.argv[1:]]),
    )
    outcome = set_threshold(request)
    chosen = outcome.threshold
    table = Table(title=f"threshold {chosen.method} on {chosen.score}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("threshold", f"{chosen.value:.6g}")
    table.add_row("computed from", chosen.computed_from)
    rate = chosen.expected_false_positive_rate
    table.add_row("expected false-positive rate", "n/a (no held-out normal data)" if rate is None else f"{rate:.2%}")
    for source, (flagged, rows) in outcome.flagged.items():
        table.add_row(f"flags in {source}", f"{flagged:,} of {rows:,}")
    if outcome.previous is not None:
        table.add_row("replaces", f"{outcome.previous['method']} = {outcome.previous['value']:.6g} (kept as previous)")
    _console().print(table)
    typer.echo(str(run_dir / "thresholds.json"))


@app.command()
@reports_errors
def score(
    run_dir: RunArgument,
    source: Annotated[
        str,
        typer.Argument(
            help="Data to score: a CSV, JSON lines, .npy or any source the run reads; - reads CSV or JSON lines "
            "from stdin.",
            show_default=False,
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="A new CSV file for the results (default: stdout).")] = None,
    batch_size: Annotated[
        int, typer.Option(help="Rows per model call (the default gives the bits serve and evaluate give).")
    ] = 256,
    top_k: Annotated[int, typer.Option(help="Input elements listed per row, largest squared residual first.")] = 3,
    score_name: ScoreOption = None,
    threshold: InsteadThresholdOption = None,
    id_column: Annotated[str | None, typer.Option(help="A CSV/JSON column that names each row.")] = None,
    fail_on_anomaly: Annotated[
        int | None,
        typer.Option(
            help="Exit with this code (1-125) when any row is flagged; 5 or above keeps it apart from aecli's "
            "own error codes.",
            show_default=False,
        ),
    ] = None,
    backend: BackendOption = None,
) -> None:
    """Score new data in bounded memory: per row the error, the flag at the run's threshold and the
    input elements that contributed most (stdout, or --out)."""
    from aecli.commands.score import ScoreRequest, score_input

    if fail_on_anomaly is not None and not 1 <= fail_on_anomaly <= 125:
        raise ConfigError(f"--fail-on-anomaly {fail_on_anomaly}: expected an exit code from 1 to 125")
    request = ScoreRequest(run_dir, source, out, batch_size, top_k, score_name, threshold, id_column, backend=backend)
    outcome = _writing_rows(
        lambda: score_input(request, sys.stdin, sys.stdout),
        "interrupted: " + ("nothing written" if out else "rows so far were written to stdout"),
    )
    typer.echo(
        f"scored {outcome.rows:,} rows: {outcome.flagged:,} flagged ({outcome.score} > {outcome.threshold:.6g}, "
        f"{outcome.method})" + (f"; results in {out}" if out else ""),
        err=True,
    )
    if fail_on_anomaly is not None and outcome.flagged:
        raise typer.Exit(fail_on_anomaly)


def _writing_rows(call: Callable[[], T], interrupted: str) -> T:
    """`_interruptible` for a command that writes rows to stdout: when its reader stops (`| head`),
    there is nothing more to say."""
    try:
        return _interruptible(call, interrupted)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


@app.command()
@reports_errors
def monitor(
    run_dir: RunArgument,
    source: Annotated[
        str,
        typer.Argument(
            help="A series CSV with the run's columns (header first), or - for stdin, e.g. fed by tail -f.",
            show_default=False,
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="A new file for the results (default: stdout).")] = None,
    output_format: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    state: Annotated[
        Path | None,
        typer.Option(
            help="A file that keeps the stream's state (its last window, the likelihood's history): read when it "
            "exists, written when monitor stops, so that a restart continues where it stopped.",
            show_default=False,
        ),
    ] = None,
    threshold: InsteadThresholdOption = None,
    backend: BackendOption = None,
) -> None:
    """Score a live series row by row as it arrives, from the rows up to each only: per row its
    time, values, score and flag, written at once; bad rows are reported on stderr and skipped."""
    from aecli.commands.monitor import MonitorRequest, monitor_stream

    request = MonitorRequest(run_dir, source, out, output_format, threshold, backend, state)
    outcome = _writing_rows(
        lambda: monitor_stream(request, sys.stdin.buffer, sys.stdout, sys.stderr),
        "stopped: every row read so far was scored and written",
    )
    typer.echo(
        f"monitored {outcome.rows:,} rows: {outcome.flagged:,} flagged (score > {outcome.threshold:.6g}, "
        f"{outcome.method}); {outcome.malformed:,} malformed line(s) skipped" + (f"; results in {out}" if out else ""),
        err=True,
    )


def _print_evaluation_summary(console: Console, metrics: dict[str, Any]) -> None:
    if metrics.get("modality") == "text":
        _print_text_summary(console, metrics)
        return
    table = Table(title=f"evaluation on {metrics['data']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("samples", str(metrics["n_samples"]))
    for key, value in metrics["reconstruction"].items():
        table.add_row(key, f"{value:.5g}")
    for key in ("kmeans_nmi", "kmeans_ari", "silhouette", "knn_accuracy"):
        if key in metrics.get("latent", {}):
            table.add_row(f"latent {key}", f"{metrics['latent'][key]:.4f}")
    anomaly = metrics.get("anomaly")
    if anomaly:
        for key in ("auroc", "auprc"):
            table.add_row(key, "n/a" if anomaly[key] is None else f"{anomaly[key]:.4f}")
        table.add_row(f"threshold ({anomaly['threshold_spec']})", f"{anomaly['threshold']:.5g}")
        table.add_row(
            "precision / recall / f1", f"{anomaly['precision']:.3f} / {anomaly['recall']:.3f} / {anomaly['f1']:.3f}"
        )
        table.add_row(
            "flagged", f"{anomaly['n_flagged']} of {metrics['n_samples']} ({anomaly['n_anomalies']} anomalies)"
        )
        for name, row in anomaly.get("baselines", {}).items():
            if isinstance(row, dict):
                table.add_row(f"baseline {name} auroc / auprc", f"{row['auroc']:.4f} / {row['auprc']:.4f}")
            else:
                table.add_row("baselines", f"skipped: {row}")
    in_time = metrics.get("anomalies_in_time")
    if in_time:
        table.add_row(f"threshold ({in_time['threshold_spec']}, {in_time['score']})", f"{in_time['threshold']:.5g}")
        table.add_row("flagged steps", f"{in_time['flagged_steps']} of {in_time['steps']}")
        for entry in in_time["ranges"][:5]:
            table.add_row("flagged range", f"{entry['start']} to {entry['end']} (peak {entry['peak_score']:.4g})")
        if len(in_time["ranges"]) > 5:
            table.add_row("flagged ranges", f"{len(in_time['ranges'])} in all (anomalies.csv)")
        detection = in_time.get("detection")
        if detection:
            f1 = f"{detection['point_precision']:.3f} / {detection['point_recall']:.3f} / {detection['point_f1']:.3f}"
            table.add_row("point precision / recall / f1", f1)
            table.add_row(
                "labelled windows detected", f"{detection['windows_detected']} of {detection['labelled_windows']}"
            )
            table.add_row("flagged ranges outside them", str(detection["ranges_outside_windows"]))
        nab = in_time.get("nab")
        if nab:
            standard = nab["standard"]
            table.add_row(
                "NAB score (standard)", f"{standard['at_threshold']:.1f} ({standard['best']:.1f} at the best threshold)"
            )
    console.print(table)


@app.command()
@reports_errors
def reconstruct(
    run_dir: RunArgument,
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Image files (PNG/JPG...) or data files (IDX, .npz, .npy, .csv); for a text run, text files (.txt, "
            ".csv, .tsv, .jsonl).",
            show_default=False,
        ),
    ] = None,
    indices: Annotated[str | None, typer.Option(help="Indices of the run's test split, e.g. 0,5,9.")] = None,
    text: TextOption = None,
    time_range: Annotated[
        str | None,
        typer.Option(
            "--range",
            help="Series runs: START,END of the stretch to reconstruct, times (or steps when untimed), from INPUT "
            "or the run's own series.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <run>/reconstruct-<timestamp>).")] = None,
    noise: NoiseOption = None,
    save_latent: Annotated[
        bool, typer.Option("--save-latent", help="Also write the latent codes (latent.npy).")
    ] = False,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the noise.")] = 0,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="data.KEY=VALUE: how to read INPUT data files (default: as the run did)."),
    ] = None,
    force: ForceOption = False,
    backend: BackendOption = None,
) -> None:
    """Reconstruct given inputs (and denoise them with --noise); writes images, a grid and a CSV (for texts:
    the decoded sentences or likeliest words, and a CSV)."""
    from aecli.commands.reconstruct import ReconstructRequest
    from aecli.commands.reconstruct import reconstruct as reconstruct_inputs

    request = ReconstructRequest(
        run_dir=run_dir,
        time_range=time_range,
        inputs=inputs or [],
        indices=_parse_int_list(indices, "--indices"),
        out=out,
        noise=noise,
        save_latent=save_latent,
        seed=seed,
        backend=backend,
        data_overrides=overrides or [],
        force=force,
        texts=text or [],
    )
    outcome = _interruptible(lambda: reconstruct_inputs(request), "interrupted: no reconstruction folder written")
    for note in outcome.notes:
        typer.echo(f"note: {note}", err=True)
    _print_reconstruction(_console(), outcome)
    typer.echo(str(outcome.out_dir))


def _print_reconstruction(console: Console, outcome: Any) -> None:
    if outcome.texts is not None:
        _print_text_reconstruction(console, outcome.texts)
        console.print(f"table: {outcome.out_dir / 'reconstructions.csv'}", soft_wrap=True)
        return
    if outcome.steps is not None:  # a stretch of a series
        console.print(
            f"reconstructed {outcome.steps} steps from {outcome.n_inputs} windows: mean mse {outcome.mean_mse:.5g}"
        )
        console.print(f"plot: {outcome.out_dir / 'reconstructions.png'}, values: series.csv", soft_wrap=True)
        return
    console.print(f"reconstructed {outcome.n_inputs} input(s): mean mse {outcome.mean_mse:.5g}")
    if outcome.psnr_noisy is not None and outcome.psnr_reconstructed is not None:
        console.print(
            f"denoising: PSNR {outcome.psnr_noisy:.2f} dB (noisy) -> {outcome.psnr_reconstructed:.2f} dB "
            f"(reconstructed), against the clean inputs"
        )
    console.print(f"grid: {outcome.out_dir / 'reconstructions.png'}, table: reconstructions.csv", soft_wrap=True)


@app.command()
@reports_errors
def embed(
    run_dir: RunArgument,
    input: Annotated[
        str,
        typer.Argument(
            help="Data to encode, read the way the run read its data (a series file: its windows).", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="A new .npy (codes only) or .csv (ids, labels, codes) file (default: <run>/embeddings-<time>.csv)."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="data.KEY=VALUE: how to read INPUT.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples encoded per call.")] = 4096,
    backend: BackendOption = None,
) -> None:
    """The latent code of every sample of INPUT, one row per sample in input order."""
    from aecli.commands.embed import EmbedRequest
    from aecli.commands.embed import embed as embed_input

    def progress(rows: int) -> None:
        if rows // batch_size % 25 == 0:  # every 25 chunks: a long input shows it is moving
            typer.echo(f"  {rows:,} texts encoded", err=True)

    request = EmbedRequest(run_dir, input, out, overrides or [], batch_size, backend, progress)
    outcome = _interruptible(lambda: embed_input(request), "interrupted: no embeddings written")
    _console().print(f"encoded {outcome.rows:,} sample(s) into {outcome.dimensions} dimensions", soft_wrap=True)
    typer.echo(str(outcome.out))


@app.command()
@reports_errors
def export(
    run_dir: RunArgument,
    format: Annotated[
        str, typer.Option("--format", "-f", help="savedmodel (TensorFlow), onnx or litert (TensorFlow Lite).")
    ] = "savedmodel",
    out: Annotated[Path | None, typer.Option(help="A new folder (default: <run>/export-<format>).")] = None,
    score_name: ScoreOption = None,
    threshold: InsteadThresholdOption = None,
) -> None:
    """One standalone graph from raw rows to reconstruction, score, anomaly flag and embedding,
    with the run's scaling and threshold inside (and in metadata.json beside it)."""
    from aecli.commands.export import ExportRequest, export_run

    request = ExportRequest(run_dir, format, out, score_name, threshold)
    outcome = _interruptible(lambda: export_run(request), "interrupted: nothing exported")
    chosen = outcome.metadata["threshold"]
    _console().print(
        f"exported {outcome.metadata['model_kind']} model as {format}: input {outcome.metadata['input']['shape']} "
        f"(raw values), threshold {chosen['value']:.6g} on {chosen['score']}, method {chosen['method']}",
        soft_wrap=True,
    )
    typer.echo(str(outcome.model_file))


@app.command()
@reports_errors
def serve(
    run_dirs: ServedRunsArgument,
    name: ServedNameOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one, announced on start).")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Rows per model call, gathered across concurrent requests.")] = 256,
    max_wait_ms: Annotated[float, typer.Option(help="How long a model call waits for more rows.")] = 5.0,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body accepted (413 beyond it).")] = 10.0,
    score_name: ScoreOption = None,
    threshold: InsteadThresholdOption = None,
    access_log: Annotated[bool, typer.Option(help="One JSON line per request on stderr.")] = False,
    backend: BackendOption = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="API keys, one per line (else $AECLI_API_KEY): Authorization: Bearer KEY.")
    ] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM), with --ssl-keyfile.")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    insecure: Annotated[bool, typer.Option(help="Listen beyond loopback without API keys and TLS.")] = False,
    max_concurrent: Annotated[int, typer.Option(help="Requests in flight (503 + Retry-After beyond).")] = 64,
    max_queued_rows: Annotated[
        int, typer.Option(help="Rows waiting for a model call, per model (503 + Retry-After beyond).")
    ] = 65_536,
    timeout_keep_alive: Annotated[int, typer.Option(help="Seconds an idle connection is kept.")] = 5,
    timeout_request: Annotated[float, typer.Option(help="Seconds a request may take to arrive whole.")] = 30.0,
) -> None:
    """An HTTP scoring service: POST /score, /embed, /reconstruct (JSON or CSV rows), GET /health,
    /health/ready, /metadata and /metrics (Prometheus); with several runs, each also at
    /models/NAME/score (and /embed, /reconstruct, /metadata), GET /models lists them. Ctrl-C or
    SIGTERM stops it after the requests in flight."""
    try:
        from aecli.commands.serve import ServeRequest, named_runs
        from aecli.commands.serve import serve as run_service
    except ImportError as exc:  # (fastapi, uvicorn and prometheus_client come with the deploy extra)
        raise ConfigError(f"aecli serve needs {exc.name}: pip install 'aecli[deploy]'") from None
    runs = named_runs(run_dirs, name or [])
    request = ServeRequest(
        runs, host, port, max_batch, max_wait_ms, max_request_mb, score_name, threshold, backend, access_log
    )
    request.api_key_file, request.insecure = api_key_file, insecure
    request.ssl_certfile, request.ssl_keyfile = ssl_certfile, ssl_keyfile
    request.max_concurrent, request.max_queued_rows = max_concurrent, max_queued_rows
    request.timeout_keep_alive, request.timeout_request = timeout_keep_alive, timeout_request
    console = _console()
    served = ", ".join(f"{name}={run}" for name, run in runs.items()) if len(runs) > 1 else str(run_dirs[0])

    def announce(url: str, warning: str | None, keys: int) -> None:
        routes = "POST /score /embed /reconstruct, GET /health /metadata /metrics" + (
            ", /models/NAME/..." if len(runs) > 1 else ""
        )
        console.print(f"serving {served} on {url} ({routes}{f', {keys} API key(s)' if keys else ''})")
        if warning:
            console.print(f"note: {warning}")

    answered = run_service(request, announce)
    console.print(f"stopped after {answered:,} request(s)")


@app.command()
@reports_errors
def compare(
    config: ConfigArg,
    vary: Annotated[
        list[str] | None,
        typer.Option("--vary", "-v", help="KEY=V1,V2,... (repeatable): the grid is the product of every --vary."),
    ] = None,
    overrides: SetOption = None,
    repeats: Annotated[int, typer.Option(help="Seeds per cell (mean ± std in the tables).")] = 1,
    runs_dir: Annotated[Path, typer.Option(help="Folder that receives the sweep folder.")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Sweep name (default: the config file's name).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Finish an interrupted sweep folder (same options).")] = None,
    log_scale: Annotated[bool, typer.Option("--log-scale/--linear", help="Y axis of the curve plots.")] = True,
    backend: BackendOption = None,
) -> None:
    """Train a grid of variations (optimizers, losses, ...) and compare them side by side."""
    from aecli.commands.compare import CompareRequest, column_titles, format_value, run_comparison

    console = _console()
    request = CompareRequest(
        config=config,
        vary=vary or [],
        overrides=[*(overrides or []), *([f"runtime.backend={backend}"] if backend else [])],
        repeats=repeats,
        runs_dir=runs_dir,
        name=name,
        resume=resume,
        log_scale=log_scale,
    )
    try:
        live = (lambda: RichProgress(console, print_epochs=False)) if console.is_terminal else None
        with interrupts_as_exceptions():
            outcome = run_comparison(request, reporter_factory=live, say=console.print)
    except KeyboardInterrupt as interrupt:
        _exit_interrupted(
            interrupt,
            "interrupted: finished cells are kept; run the same command with --resume SWEEP_DIR "
            "(the compare-* folder) to train the rest",
        )
    columns = column_titles(outcome.rows)
    table = Table(title=f"comparison (ranked by {columns['test_mse']}, the metric every loss shares)")
    for key in outcome.varied:
        table.add_column(key)
    for title in columns.values():
        table.add_column(title, justify="right")
    for row in sorted(outcome.rows, key=lambda r: (r["test_mse"] is None, r["test_mse"] or 0)):
        style = "bold green" if row["group"] == outcome.best else ("red" if "diverged" in row["status"] else None)
        table.add_row(*[str(row[key]) for key in outcome.varied], *[format_value(row, c) for c in columns], style=style)
    console.print(table)
    sweep = outcome.sweep_dir
    if outcome.best is None:  # no cell completed: nothing was plotted, and the command failed
        typer.echo(f"error: no cell completed (each one's error is above); tables: {sweep / 'comparison.md'}", err=True)
        raise typer.Exit(2)
    console.print(f"tables: {sweep / 'comparison.md'}, comparison.csv; curves: curves.png, curves_time.png")
    typer.echo(str(sweep))


@app.command()
@reports_errors
def prepare(
    source: Annotated[str, typer.Argument(help="Any data source (same syntax as data.source).", show_default=False)],
    out_dir: Annotated[Path, typer.Argument(help="New folder to write the shards into.", show_default=False)],
    shard_size: Annotated[
        int | None, typer.Option(help="Rows per shard file (default 50,000).", show_default=False)
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            help="Files per split instead of --shard-size: a multiple of a cluster's worker count lets "
            "each worker read only its own files.",
            show_default=False,
        ),
    ] = None,
    encoding: Annotated[str, typer.Option("--format", help="tfrecord or npy.")] = "tfrecord",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="data.KEY=VALUE: labels_path, label_column, limit.")
    ] = None,
) -> None:
    """Write a data source as shards that training streams (data.source: OUT_DIR), for data
    larger than memory."""
    from aecli.commands.prepare import prepare_data_config, prepare_shards

    data = prepare_data_config(source, overrides or [])
    console = _console()
    outcome = _interruptible(
        lambda: prepare_shards(data, out_dir, shard_size, encoding, say=console.print, shards=shards),
        f"interrupted: nothing written to {out_dir}",
    )
    console.print(
        f"wrote {outcome.shards} {encoding} shard(s), {outcome.bytes / 2**20:,.1f} MiB; "
        f"train on them with data.source: {outcome.out_dir}",
        soft_wrap=True,
    )
    typer.echo(str(outcome.out_dir))


@app.command()
def schema() -> None:
    """Print the config's JSON Schema (for editor completion and inline errors)."""
    typer.echo(json.dumps(config_json_schema(), indent=2))


def main() -> None:
    """The `aecli` entry point: usage errors (an unknown option, a missing argument) get the same
    one-line `error: ...` and exit code 2 as every other bad input, instead of click's box."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # click's UsageError, BadParameter... (Typer vendors click)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {clip(exc.format_message(), MAX_MESSAGE_CHARS)}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
