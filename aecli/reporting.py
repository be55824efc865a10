"""Report files: history.csv, errors.csv, metrics.json, PNG plots (matplotlib, Agg) and report.md/.html."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from aecli.atomic import atomic_path, write_json_atomic, write_text_atomic
from aecli.data.arrays import Timeline, time_text
from aecli.data.labels import label_name
from aecli.errors import RunError, clip
from aecli.time_anomalies import TimeAnomalies, ranges_of

HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "learning_rate", "seconds")


def write_history_csv(path: Path, rows: list[dict[str, float]]) -> None:
    # Losses first, then extra logged terms (a VAE's reconstruction_loss, kl_loss), then rate and time.
    present = list(dict.fromkeys(key for row in rows for key in row))
    losses = [key for key in ("epoch", "loss", "val_loss") if key in present]
    tail = [key for key in ("learning_rate", "seconds") if key in present]
    columns = losses + [key for key in present if key not in HISTORY_COLUMNS] + tail
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: f"{value:.8g}" for key, value in row.items()} for row in rows)
    write_text_atomic(path, buffer.getvalue())


def read_history_csv(path: Path) -> list[dict[str, float]]:
    """A run's history.csv; a damaged one is a RunError naming the file."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [
                {key: float(value) for key, value in row.items() if key is not None and value not in ("", None)}
                for row in csv.DictReader(handle)
            ]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as exc:
        raise RunError(f"{path}: unreadable training history ({clip(str(exc))})") from None
    if not rows or any("loss" not in row or "epoch" not in row for row in rows):
        raise RunError(f"{path}: damaged training history (no epochs, or rows without epoch and loss)")
    return rows


def read_error_column(path: Path, column: str) -> np.ndarray:
    """One score column of an errors.csv / train_errors.csv file (KeyError: no such column)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise KeyError(column)
            values = np.array([float(row[column]) for row in reader])
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as exc:
        raise RunError(f"{path}: unreadable per-sample errors ({clip(str(exc))})") from None
    if not len(values) or not np.isfinite(values).all():
        raise RunError(f"{path}: damaged per-sample errors (empty, or not finite numbers)")
    return values


def write_errors_csv(
    path: Path,
    errors: dict[str, np.ndarray],
    labels: np.ndarray | None,
    label_names: list[str] | None,
    flags: dict[str, np.ndarray] | None = None,
    origin: dict[str, np.ndarray] | None = None,
) -> None:
    """One row per sample: its index in the evaluated split, where it came from (`origin`:
    columns such as source_row and id), its label, each error measure and 0/1 flags."""
    names, flag_names, origin = list(errors), list(flags or {}), origin or {}
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # streamed: millions of rows for shard folders
        writer.writerow(["index", *origin, "label", *names, *flag_names])
        for index in range(len(next(iter(errors.values())))):
            label = "" if labels is None else label_name(labels[index], label_names)
            values = [f"{errors[name][index]:.8g}" for name in names]
            marks = [int(bool((flags or {})[name][index])) for name in flag_names]
            writer.writerow([index, *(column[index] for column in origin.values()), label, *values, *marks])


def write_metrics_json(path: Path, metrics: dict[str, Any]) -> None:
    write_json_atomic(path, _json_safe(metrics))


def _json_safe(value: Any) -> Any:
    """NaN and inf have no JSON spelling: they become null."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, works on headless machines
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as temp:
        fig.savefig(temp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)


def plot_loss_curves(history: list[dict[str, float]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["loss"] for row in history], marker="o", markersize=3, label="train loss")
    if any("val_loss" in row for row in history):
        ax.plot(
            epochs, [row.get("val_loss", np.nan) for row in history], marker="o", markersize=3, label="validation loss"
        )
    ax.set(xlabel="epoch", ylabel="loss", title="Training curve")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if all(row["loss"] > 0 for row in history):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


Series = list[tuple[str, list[float], list[float]]]  # (label, xs, ys) per curve


def plot_series(panels: list[tuple[str, Series]], xlabel: str, title: str, path: Path, log_scale: bool = True) -> None:
    """Labelled curves, one panel per (y-axis label, curves) side by side: values that do not
    share a meaning (a BCE and an MSE loss) never share an axis. Log y-axes when every value
    of a panel is positive."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
        for label, xs, ys in series:
            ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.4, label=label)
        if log_scale and all(y > 0 for _, _, ys in series for y in ys):
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def representative_indices(errors: np.ndarray, per_group: int) -> dict[str, np.ndarray]:
    """Indices of the best, most typical (around the median) and worst reconstructions."""
    order = np.argsort(errors, kind="stable")
    k = min(per_group, len(order))
    middle = max(0, len(order) // 2 - k // 2)
    return {"best": order[:k], "typical": order[middle : middle + k], "worst": order[::-1][:k]}


def plot_image_rows(rows: list[tuple[str, np.ndarray]], path: Path, column_titles: list[str] | None = None) -> None:
    """One row of images per (title, images[n, h, w, c]) pair, images in [0, 1]."""
    plt = _pyplot()
    n_cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.3 * n_cols + 1.2, 1.35 * len(rows)), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.axis("off")
                continue
            image = np.clip(images[c], 0, 1)
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
            if r == 0 and column_titles:
                ax.set_title(column_titles[c], fontsize=7)
        axes[r][0].set_ylabel(title, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    _save(fig, path)


def plot_feature_rows(rows: list[tuple[str, np.ndarray]], path: Path, titles: list[str], columns: int = 3) -> None:
    """Tabular samples, one panel each (titled), in a grid `columns` wide: every (name, values)
    row, e.g. the input and its reconstruction, drawn as a line over the feature index."""
    plt = _pyplot()
    n_cols = max(1, min(columns, len(titles)))
    n_rows = -(-len(titles) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 2.5 * n_rows), squeeze=False, sharey=True)
    for i, ax in enumerate(axes.flat):
        if i >= len(titles):
            ax.axis("off")
            continue
        for name, values in rows:
            flat = values[i].ravel()
            ax.plot(flat, marker="." if len(flat) <= 64 else None, linewidth=1, label=name)
        ax.set_title(titles[i], fontsize=8)
        ax.set_xlabel("step" if rows[0][1].ndim == 3 else "feature", fontsize=7)  # sequences: (n, steps, channels)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("scaled value", fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_reconstruction_grid(
    x: np.ndarray, x_hat: np.ndarray, errors: np.ndarray, is_image: bool, path: Path, per_group: int = 6
) -> None:
    """Originals above reconstructions for the best, typical and worst samples by error
    (tabular data: three panels per group, one group per row)."""
    groups = representative_indices(errors, per_group if is_image else min(per_group, 3))
    if is_image:
        rows: list[tuple[str, np.ndarray]] = []
        for name, index in groups.items():
            rows += [(f"{name}\noriginal", x[index]), (f"{name}\nreconstructed", x_hat[index])]
        plot_image_rows(rows, path)
        return
    index = np.concatenate(list(groups.values()))
    titles = [f"{name}: mse {errors[i]:.3g}" for name, chosen in groups.items() for i in chosen]
    columns = len(next(iter(groups.values())))
    plot_feature_rows([("original", x[index]), ("reconstructed", x_hat[index])], path, titles, columns)


def worst_residuals(
    x: np.ndarray, x_hat: np.ndarray, scores: np.ndarray, count: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """The `count` highest-scoring samples (highest first) and their squared residual per input
    element, shaped like a sample: where each reconstruction fails."""
    worst = np.argsort(-np.nan_to_num(scores, nan=np.inf), kind="stable")[:count]
    return worst, np.square(x_hat[worst].astype(np.float64) - x[worst].astype(np.float64))


def plot_residuals(
    x: np.ndarray, x_hat: np.ndarray, scores: np.ndarray, score_name: str, is_image: bool, path: Path, count: int = 6
) -> None:
    """Why the worst samples score high. Images: each worst sample, its reconstruction, and a
    heatmap of the squared residual per pixel (one colour scale for all). Tables and series: the
    squared residual of every feature (or time step) of each worst sample, as bars."""
    worst, residual = worst_residuals(x, x_hat, scores, count)
    titles = [f"{score_name} {scores[index]:.3g}" for index in worst]
    if is_image:
        fig = _residual_images(x[worst], x_hat[worst], residual.sum(axis=-1), titles)
    else:
        per_element = residual.reshape(len(worst), -1) if residual.ndim == 2 else residual.sum(axis=-1)
        fig = _residual_bars(
            per_element, [f"#{i}\n{t}" for i, t in zip(worst, titles, strict=True)], residual.ndim == 3
        )
    fig.suptitle(f"The {len(worst)} highest-scoring samples: squared residual per input element", fontsize=9)
    _save(fig, path)


def _residual_images(images: np.ndarray, rebuilt: np.ndarray, heat: np.ndarray, titles: list[str]) -> Any:
    plt = _pyplot()
    fig, axes = plt.subplots(3, len(images), figsize=(1.4 * len(images) + 1.2, 4.4), squeeze=False)
    top = float(heat.max()) or 1.0
    picture = None
    for c in range(len(images)):
        for r, image in enumerate((np.clip(images[c], 0, 1), np.clip(rebuilt[c], 0, 1))):
            axes[r][c].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
        picture = axes[2][c].imshow(heat[c], cmap="magma", vmin=0, vmax=top)
        axes[0][c].set_title(titles[c], fontsize=7)
        for r in range(3):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
    for r, name in enumerate(("sample", "reconstructed", "squared\nresidual")):
        axes[r][0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    if picture is not None:
        fig.colorbar(picture, ax=axes[2].tolist(), shrink=0.8)
    return fig


def plot_class_extremes(
    x: np.ndarray,
    x_hat: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    label_names: list[str] | None,
    score_name: str,
    path: Path,
    classes: int = 10,
) -> None:
    """Images with labels: per class (the first `classes`), its least and its most anomalous image,
    each with its score and squared residual per pixel (one colour scale for all): what a class's
    typical image looks like to the model, and what it flags. Each column is one stacked picture
    (four axes, not four per class: evaluate draws it for every labelled image set)."""
    plt = _pyplot()
    present = np.unique(labels)[:classes]
    heat = np.square(x_hat.astype(np.float64) - x.astype(np.float64)).sum(axis=-1)
    ranked = np.nan_to_num(scores, nan=np.inf)
    chosen = []
    for label in present:
        members = np.flatnonzero(labels == label)
        order = members[np.argsort(ranked[members], kind="stable")]
        chosen.append((order[0], order[-1]))
    height = x.shape[1]
    fig, axes = plt.subplots(1, 4, figsize=(5.6, 1.1 * len(present) + 0.9), squeeze=False)
    top = float(heat.max()) or 1.0
    titles = ("least anomalous", "its residual", "most anomalous", "its residual")
    for column, ax in enumerate(axes[0]):
        picked = [pair[column // 2] for pair in chosen]
        if column % 2 == 0:
            images = np.clip(x[picked], 0, 1)
            stacked = np.concatenate(list(images[..., 0] if images.shape[-1] == 1 else images))
            ax.imshow(stacked, cmap="gray", vmin=0, vmax=1)
            for row, index in enumerate(picked):
                ax.text(0, row * height, f"{score_name} {scores[index]:.3g}", fontsize=5, va="top", color="yellow")
        else:
            ax.imshow(np.concatenate(list(heat[picked])), cmap="magma", vmin=0, vmax=top)
        ax.set_title(titles[column], fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([(row + 0.5) * height for row in range(len(present))] if column == 0 else [])
    axes[0][0].set_yticklabels([label_name(label, label_names) for label in present], fontsize=7)
    fig.suptitle("Per class: the least and the most anomalous image, squared residual per pixel", fontsize=8)
    _save(fig, path)


def _residual_bars(per_element: np.ndarray, labels: list[str], steps: bool) -> Any:
    plt = _pyplot()
    rows = len(per_element)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 1.5 * rows + 0.6), squeeze=False, sharex=True)
    for row in range(rows):
        ax = axes[row][0]
        ax.bar(np.arange(per_element.shape[1]), per_element[row], width=1.0)
        ax.set_ylabel(labels[row], fontsize=7, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7)
    axes[-1][0].set_xlabel("time step" if steps else "feature", fontsize=8)
    return fig


def plot_error_histogram(
    scores: np.ndarray,
    score_name: str,
    path: Path,
    is_anomaly: np.ndarray | None = None,
    threshold: float | None = None,
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = _bin_edges(scores)
    if is_anomaly is not None and is_anomaly.any() and (~is_anomaly).any():
        ax.hist(scores[~is_anomaly], bins=bins, alpha=0.6, label=f"normal ({int((~is_anomaly).sum())})")
        ax.hist(scores[is_anomaly], bins=bins, alpha=0.6, label=f"anomaly ({int(is_anomaly.sum())})")
    else:
        ax.hist(scores, bins=bins, alpha=0.8, label=f"samples ({len(scores)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel=f"reconstruction error ({score_name})", ylabel="samples", title="Reconstruction errors")
    ax.legend()
    _save(fig, path)


def _bin_edges(scores: np.ndarray, bins: int = 50) -> np.ndarray:
    """50 equal bins over the finite scores. numpy's own edges fail when the range is below the
    floats' resolution at the scores' size (one row scoring 1e35, or equal scores): then the
    bins span a relative 0.1% around them."""
    finite = scores[np.isfinite(scores)]
    if not finite.size:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(finite.min()), float(finite.max())
    if high - low <= 1e-9 * max(abs(low), abs(high)) or high == low:
        pad = max(abs(low), abs(high)) * 1e-3 or 0.5
        low, high = low - pad, high + pad
    return np.linspace(low, high, bins + 1)


def plot_latent(
    points: np.ndarray, labels: np.ndarray | None, method: str, path: Path, label_names: list[str] | None = None
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7)
    else:
        cmap = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
        for i, label in enumerate(np.unique(labels)):
            chosen = labels == label
            ax.scatter(
                points[chosen, 0],
                points[chosen, 1],
                s=6,
                alpha=0.7,
                color=cmap(i % cmap.N),
                label=label_name(label, label_names),
            )
        ax.legend(markerscale=2, fontsize=7, loc="best", ncol=2)
    ax.set(title=f"Latent space ({method})", xlabel="dimension 1", ylabel="dimension 2")
    _save(fig, path)


def write_report(out_dir: Path, title: str, blocks: list[tuple[str, Any]]) -> tuple[Path, Path]:
    """report.md (images linked) and a self-contained report.html (images inlined as base64).

    `blocks` are ("heading", text), ("text", text), ("table", {name: value} or list of rows with a
    header row first) and ("image", (file name, caption)).
    """
    markdown = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for kind, content in blocks:
        if kind == "heading":
            markdown += [f"## {content}", ""]
            body.append(f"<h2>{html.escape(content)}</h2>")
        elif kind == "text":
            markdown += [content, ""]
            body.append(f"<p>{html.escape(content)}</p>")
        elif kind == "table":
            rows = [["", "value"], *[[k, v] for k, v in content.items()]] if isinstance(content, dict) else content
            cells = [[_cell(value) for value in row] for row in rows]
            markdown += ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
            markdown += ["| " + " | ".join(row) + " |" for row in cells[1:]] + [""]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
            rows_html = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells[1:]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>")
        elif kind == "image":
            name, caption = content
            markdown += [f"![{caption}]({name})", ""]
            encoded = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    page = HTML_PAGE.format(title=html.escape(title), body="\n".join(body))
    write_text_atomic(out_dir / "report.md", "\n".join(markdown))
    write_text_atomic(out_dir / "report.html", page)
    return out_dir / "report.md", out_dir / "report.html"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return "" if value is None else str(value)


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 1em 0 2em; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
{body}
</body></html>
"""


def write_rows_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A CSV with a header and one line per dict (missing keys empty)."""
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_step_scores_csv(
    path: Path, timeline: Timeline, scores: np.ndarray, flags: np.ndarray, labels: np.ndarray | None
) -> None:
    """points.csv: one row per time step of the scored stretch: its time, values, score and flag."""
    times = time_text(timeline.times, timeline.timed, timeline.zone)
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        label_column = ["label"] if labels is not None else []
        writer.writerow(["step", "time", *timeline.columns, "score", "flagged", *label_column])
        for step in range(len(times)):
            values = [f"{value:.8g}" for value in timeline.values[step]]
            score = "" if np.isnan(scores[step]) else f"{scores[step]:.8g}"
            label = [int(labels[step])] if labels is not None else []
            writer.writerow([timeline.offset + step, times[step], *values, score, int(flags[step]), *label])


def plot_anomalies_in_time(timeline: Timeline, found: TimeAnomalies, labels: np.ndarray | None, path: Path) -> None:
    """The series (each channel) with flagged ranges shaded red, labelled anomalies hatched,
    and below it the per-step score against the threshold."""
    plt = _pyplot()
    x = timeline.times if timeline.times.dtype.kind == "M" else np.arange(len(timeline.times)) + timeline.offset
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True, height_ratios=(3, 2))
    for channel, name in enumerate(timeline.columns[:8]):
        top.plot(x, timeline.values[:, channel], linewidth=0.8, label=name)
    spans: list[tuple[list[tuple[int, int]], dict[str, Any]]] = [
        (found.ranges, {"color": "tab:red", "alpha": 0.25, "label": "flagged"})
    ]
    if labels is not None:
        style = {"facecolor": "none", "edgecolor": "tab:green", "hatch": "//", "label": "labelled anomaly"}
        spans.append((ranges_of(labels), style))
    for ranges, style in spans:
        for number, (first, last) in enumerate(ranges):
            top.axvspan(x[first], x[last], **{**style, "label": style["label"] if number == 0 else None})
            bottom.axvspan(x[first], x[last], **{**style, "label": None})
    top.set_ylabel("value")
    top.legend(loc="upper left", fontsize="small")
    bottom.plot(x, found.scores, color="tab:blue", linewidth=0.8, label=f"score ({found.points} of covering windows)")
    threshold_label = f"threshold {found.threshold:.4g}"
    bottom.axhline(found.threshold, color="tab:red", linestyle="--", linewidth=1, label=threshold_label)
    bottom.set_ylabel("score")
    bottom.legend(loc="upper left", fontsize="small")
    top.set_title(f"{len(found.ranges)} flagged range(s), {int(found.flags.sum())} of {len(x)} steps")
    fig.autofmt_xdate()
    _save(fig, path)


def write_series_reconstruction(path: Path, timeline: Timeline, stitched: np.ndarray) -> None:
    """series.csv: each step's time, values and reconstruction (in the data's units)."""
    times = time_text(timeline.times, timeline.timed, timeline.zone)
    names = [f"{name}_reconstructed" for name in timeline.columns]
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["step", "time", *timeline.columns, *names])
        for step in range(len(times)):
            values = [f"{value:.8g}" for value in (*timeline.values[step], *stitched[step])]
            writer.writerow([timeline.offset + step, times[step], *values])


def plot_series_reconstruction(timeline: Timeline, stitched: np.ndarray, windows: int, path: Path) -> None:
    """A stretch of a series against its reconstruction (each step averaged over its windows),
    with the absolute error below."""
    plt = _pyplot()
    x = timeline.times if timeline.times.dtype.kind == "M" else np.arange(len(timeline.times)) + timeline.offset
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 5), sharex=True, height_ratios=(3, 1))
    for channel, name in enumerate(timeline.columns[:8]):
        line = top.plot(x, timeline.values[:, channel], linewidth=0.9, label=name)[0]
        top.plot(
            x,
            stitched[:, channel],
            linewidth=0.9,
            linestyle="--",
            color=line.get_color(),
            label=f"{name} reconstructed",
        )
        bottom.plot(
            x, np.abs(stitched[:, channel] - timeline.values[:, channel]), linewidth=0.8, color=line.get_color()
        )
    top.set_ylabel("value")
    top.legend(loc="upper left", fontsize="small")
    bottom.set_ylabel("|error|")
    top.set_title(f"{len(timeline.times)} steps, reconstructed from {windows} window(s) of {timeline.size}")
    fig.autofmt_xdate()
    _save(fig, path)
