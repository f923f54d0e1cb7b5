"""The plots of an instance, as PNG files in EXPERIMENT_FOLDER/plots/ (results_to_excel.py shows them on its plots
sheet): its learning curves, a panel per metric with a colour per fold, and its test confusion matrix summed over
folds; and of a search, Optuna's optimisation history and parameter importances (its search sheet). A plot is
redrawn only when its result file (or journal, or this program) is newer than the PNG.
"""
import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from collect import metric_label, summed_confusion
from layout import Layout
from utility_functions import atomic_write_bytes

PLOT_DPI, PLOT_HEIGHT_INCHES = 150, 3.6  # every figure is this high, so that all show at the same scale
# history curves drawn per task type, loss first; those a fold lacks are left out, the learning rate unless it moved
CURVE_METRICS = {"classification": ("loss", "accuracy", "balanced_accuracy", "learning_rate"),
                 "regression": ("loss", "rmse", "mae", "learning_rate")}
FOLD_COLORS = colormaps["tab10"].colors  # one per fold, in turn


def curve(fold, key):
    """One history curve of a fold (None values as NaN), or [] when the fold has none."""
    return [np.nan if value is None else value for value in fold["history"].get(key) or []]


def curve_metrics(instance):
    """The panels of an instance's learning curves: CURVE_METRICS that its folds recorded (for training or
    validation), the learning rate only where it changed during a fold."""
    return [metric for metric in CURVE_METRICS[instance.task_type]
            if any(curve(f, metric) or curve(f, f"val_{metric}") for f in instance.folds)
            and (metric != "learning_rate" or any(len(set(curve(f, metric))) > 1 for f in instance.folds))]


def learning_curves_figure(instance):
    """A figure of the learning curves (train solid, validation dashed, a colour per fold, dot at the best epoch)."""
    metrics = curve_metrics(instance)
    if not metrics:
        return None
    figure = Figure(figsize=(4.6 * len(metrics) + 1.4, PLOT_HEIGHT_INCHES), layout="constrained")
    for axes, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
        for fold, color in zip(instance.folds, FOLD_COLORS * len(instance.folds)):
            validation, best = curve(fold, f"val_{metric}"), fold.get("best_epoch") or 0
            for values, style in ((curve(fold, metric), "-"), (validation, "--")):
                if values:
                    axes.plot(range(1, len(values) + 1), values, color=color, linewidth=1.4, linestyle=style)
            if validation and 1 <= best <= len(validation):
                axes.plot([best], [validation[best - 1]], "o", color=color, markersize=5)
        axes.set_title(metric_label(metric))
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=color) for _, color in zip(instance.folds, FOLD_COLORS * len(instance.folds))]
    handles += [Line2D([], [], color="black", linestyle=style, marker=marker)
                for style, marker in (("-", ""), ("--", ""), ("", "o"))]
    labels = [f"fold {fold['fold']}" for fold in instance.folds] + ["train", "validation", "best epoch"]
    figure.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    figure.suptitle(f"Instance {instance.id}: learning curves ({instance.status})", fontsize=11)
    return figure


def confusion_figure(instance):
    """A figure of the summed test confusion matrix: a heat map of row percentages with counts (None if none)."""
    matrix, summed, labels, shares = summed_confusion(instance)
    if matrix is None:
        return None
    figure = Figure(figsize=(PLOT_HEIGHT_INCHES * 1.3, PLOT_HEIGHT_INCHES), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.nan_to_num(shares) * 100, cmap="Greens", vmin=0, vmax=100)
    for (row, col), count in np.ndenumerate(matrix):
        share = shares[row, col]
        axes.text(col, row, f"{count:.0f}" if np.isnan(share) else f"{count:.0f}\n{share:.0%}", ha="center",
                  va="center", fontsize=max(3.5, min(8.0, 44 / len(labels))),  # smaller text for more classes
                  color="white" if not np.isnan(share) and share > 0.6 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.set_xlabel("predicted", fontsize=8)
    axes.set_ylabel("true", fontsize=8)
    colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
    colorbar.set_label("% of true class", fontsize=7)
    colorbar.ax.tick_params(labelsize=7)
    axes.set_title(f"Instance {instance.id}: test, {summed} folds summed", fontsize=9)
    return figure


def make_plots(experiment_folder, instance):
    """[learning curves path or None, confusion path or None]: the instance's plots, drawn when out of date; a plot
    left from an earlier run of the instance that now has nothing to draw is removed."""
    plots = []
    for kind, painter in (("learning_curves", learning_curves_figure), ("confusion", confusion_figure)):
        path = Layout(experiment_folder, instance.dataset, instance.experiment).plot(instance.id, kind)
        with contextlib.suppress(OSError):
            if path.stat().st_mtime_ns > max(instance.source.stat().st_mtime_ns, Path(__file__).stat().st_mtime_ns):
                plots.append(path)
                continue
        figure, png = painter(instance), io.BytesIO()
        plots.append(None if figure is None else path)
        if figure is None:
            path.unlink(missing_ok=True)
        else:
            figure.savefig(png, format="png", dpi=PLOT_DPI)
            atomic_write_bytes(path, png.getvalue())
    return plots


def search_plots(experiment_folder, search_key):
    """[optimisation history path or None, parameter importances path or None] of a search: Optuna's own figures
    (optuna.visualization.matplotlib) of its journal, drawn when the journal is newer than the PNG. None where
    Optuna is missing or cannot draw it (importances need two complete trials, a repeat counting as one)."""
    paths = Layout(experiment_folder, None, None).search(search_key)
    try:
        import optuna
        from matplotlib import pyplot
        from search import load_study
    except ImportError:
        return [None, None]
    drawn, study = [], None
    for path, painter in ((paths.history_plot, optuna.visualization.matplotlib.plot_optimization_history),
                          (paths.importance_plot, optuna.visualization.matplotlib.plot_param_importances)):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime_ns > max(paths.journal.stat().st_mtime_ns, Path(__file__).stat().st_mtime_ns):
                drawn.append(path)
                continue
        try:
            study = study or load_study(paths)
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # its notes on a study without complete trials
            with warnings.catch_warnings(), rc_context():  # rc_context: optuna sets pyplot's style for the process
                warnings.simplefilter("ignore")  # optuna marks its matplotlib figures experimental
                axes = painter(study)
            figure, png = axes.figure, io.BytesIO()
            figure.set_size_inches(6.4, PLOT_HEIGHT_INCHES)
            figure.tight_layout()
            figure.savefig(png, format="png", dpi=PLOT_DPI)
            pyplot.close(figure)
            atomic_write_bytes(path, png.getvalue())
            drawn.append(path)
        except Exception:  # noqa: BLE001  (a view: a figure Optuna cannot draw is left out, never a failed sheet)
            path.unlink(missing_ok=True)
            drawn.append(None)
    return drawn
