"""``rtsleep-train evaluate``: score a model on a labelled folder and write a report.

``--task apnea --dataset apnea-ecg``: the ECG apnea model per minute (both variants; the
non-causal one is the headline), see :func:`offline.apnea_eval.evaluate_apnea_ecg`.
``--task stage`` (the default): the stage model offline and streaming, see
:func:`offline.stage_eval.evaluate_stage`.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from rtsleep.data.errors import DataError
from rtsleep.data.readers import DATASETS
from rtsleep.data.recording import EPOCH_S


class Task(enum.StrEnum):
    stage = "stage"
    apnea = "apnea"


def _evaluate_apnea(dataset: str, data: Path, model: Path | None, out: Path) -> dict[str, Any]:
    from offline.apnea_eval import evaluate_apnea_ecg

    if dataset != "apnea-ecg":
        raise typer.BadParameter(f"--task apnea supports --dataset apnea-ecg, not {dataset!r}")
    report = evaluate_apnea_ecg(data, out, model)
    for name, res in report["variants"].items():
        p = res["pooled"]
        typer.echo(
            f"{name:>9}: accuracy {p['accuracy']:.4f}  sensitivity {_fmt(p['sensitivity'])}  "
            f"specificity {_fmt(p['specificity'])}  AUPRC {_fmt(p['auprc'])}  "
            f"AHI-class agreement {res['ahi_class_agreement']:.3f}  ({p['n_minutes']} minutes, "
            f"{len(res['recordings'])} recordings)"
        )
    typer.echo(f"report: {out / 'report.json'}")
    _exit_on_failures(report)
    return report


def _exit_on_failures(report: dict[str, Any]) -> None:
    """Name the recordings that could not be read on stderr and exit 1; the others were
    scored and reported, and the exit status tells a script."""
    failed = report.get("failed") or []
    if failed:
        total = len(failed) + len(report["recordings"])
        typer.echo(f"{len(failed)} of {total} recordings could not be read (not scored):",
                   err=True)
        for f in failed:
            typer.echo(f"  {f['error']}", err=True)
        raise typer.Exit(1)


def _evaluate_stage(dataset: str, data: Path, model: Path | None, out: Path,
                    wake_margin_epochs: int | None = None) -> dict[str, Any]:
    from offline.stage_eval import evaluate_stage

    report = evaluate_stage(dataset, data, model, out, wake_margin_epochs)
    for mode in ("offline", "streaming"):
        p = report["modes"][mode]["pooled"]
        typer.echo(
            f"{mode:>9}: accuracy {p['accuracy']:.4f}  macro-F1 {p['macro_f1']:.4f}  "
            f"kappa {p['kappa']:.4f}  ({p['n_epochs']} epochs, "
            f"{len(report['recordings'])} recordings)"
        )
    same = "identical" if report["streaming_matches_offline"] else "DIFFERENT"
    typer.echo(f"streaming vs offline: {same} (max |dp| {report['max_abs_prob_diff']:.2e})")
    typer.echo(f"report: {out / 'report.json'}")
    _exit_on_failures(report)
    return report


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


#: task -> function(dataset, data, model, out) printing metrics and writing out/report.json.
TASKS: dict[str, Callable[[str, Path, Path | None, Path], dict[str, Any]]] = {
    Task.apnea: _evaluate_apnea,
    Task.stage: _evaluate_stage,
}


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the offline CLI."""

    @app.command("evaluate")
    def evaluate(
        dataset: Annotated[str, typer.Option(help=(
            "Dataset layout: a reader (" + ", ".join(DATASETS) + "), or sleep-edf-features "
            "(the Sleep-EDF feature files); a store folder is read as a store."))],
        data: Annotated[Path, typer.Option(help="Folder with the labelled recordings.")],
        out: Annotated[Path, typer.Option(help="Report folder (report.json + PNG figures).")],
        task: Annotated[Task, typer.Option(help="What to evaluate.")] = Task.stage,
        model: Annotated[
            Path | None, typer.Option(help="Model file; default: the shipped model.")
        ] = None,
        wake_margin_min: Annotated[float | None, typer.Option(
            help="Stage task: score only the expert sleep period plus this many minutes of "
                 "wake on each side (30: the Sleep-EDF convention); the model still streams "
                 "the whole recording. Default: every labelled epoch.")] = None,
    ) -> None:
        """Evaluate a model on DATA and write OUT/report.json."""
        fn = TASKS.get(task)
        if wake_margin_min is not None:
            if task != Task.stage or not wake_margin_min >= 0:
                typer.echo(f"evaluate: --wake-margin-min {wake_margin_min:g} needs --task stage "
                           "and a value >= 0", err=True)
                raise typer.Exit(2)
            fn = functools.partial(_evaluate_stage,
                                   wake_margin_epochs=int(round(wake_margin_min * 60 / EPOCH_S)))
        if fn is None:
            typer.echo(
                f"evaluate --task {task.value}: not available in this build "
                "(no evaluator registered for it)",
                err=True,
            )
            raise typer.Exit(2)
        try:
            fn(dataset, data, model, out)
        except DataError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
