"""``rtsleep-train pretrain | finetune | probe``: the command-line face of the training API.

Each command loads a config (``--config`` = a TOML file or a preset name from
``offline/configs/``, e.g. ``neuronet-paper``), applies the command-line overrides, and calls
:func:`offline.pretrain.run.pretrain` or :func:`offline.finetune.finetune`. All of them run the same
way under ``torchrun --nproc_per_node N -m offline.cli ...`` (DDP). Bad input prints one line
naming the file and the problem and exits with code 1.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Annotated

import typer
from safetensors import SafetensorError

from offline.config import load_config
from offline.data import TASKS
from offline.finetune import FinetuneConfig, finetune
from offline.pretrain.run import METHODS, PretrainConfig, pretrain
from offline.train_loop import LoopConfig, shutdown_distributed

log = logging.getLogger(__name__)

ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="TOML file or preset name (offline/configs/).")
]
StoreOpt = Annotated[Path, typer.Option("--store", help="Parquet store folder or file.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run folder (model, history, checkpoint).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Override loop.steps.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override loop.seed.")]
InitOpt = Annotated[str | None, typer.Option("--init", help="Checkpoint to start from.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue OUT/train if present.")]

RUN_ERRORS = (ValueError, OSError, SafetensorError)
"""What a run reports as one line: bad input and config (``ValueError``, ``DataError``) and
file-system trouble, a full disk included (``OSError``; safetensors reports it as its own
error)."""


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _with_overrides(loop: LoopConfig, steps: int | None, seed: int | None) -> LoopConfig:
    """``loop`` with ``--steps`` and ``--seed`` applied where given."""
    if steps is not None:
        loop = dataclasses.replace(loop, steps=steps)
    if seed is not None:
        loop = dataclasses.replace(loop, seed=seed)
    return loop


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def pretrain_command(
    store: StoreOpt,
    out: OutOpt,
    method: Annotated[str, typer.Option("--method", help=f"One of {', '.join(METHODS)}.")],
    config: ConfigOpt = None,
    init: InitOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Self-supervised pretraining of the epoch encoder on every epoch of a store."""
    try:
        cfg = load_config(PretrainConfig, config)
        loop = _with_overrides(cfg.loop, steps, seed)
        cfg = dataclasses.replace(cfg, method=method, loop=loop, init=init or cfg.init)
        path = pretrain(cfg, store, out, resume=resume)
    except RUN_ERRORS as err:
        _fail(err)
    finally:
        shutdown_distributed()
    typer.echo(str(path))


def _downstream(
    mode: str,
    store: Path,
    out: Path,
    task: str,
    config: str | None,
    init: str | None,
    label_fraction: float | None,
    lookahead: int | None,
    subjects: str | None,
    exclude_subjects: str | None,
    steps: int | None,
    seed: int | None,
    resume: bool,
    val_fraction: float | None = None,
) -> None:
    try:
        cfg = load_config(FinetuneConfig, config)
        loop, data, select = _with_overrides(cfg.loop, steps, seed), cfg.data, cfg.select
        if label_fraction is not None:
            data = dataclasses.replace(data, label_fraction=label_fraction)
        if subjects:
            select = dataclasses.replace(select, subjects=_split(subjects))
        if exclude_subjects:
            select = dataclasses.replace(select, exclude_subjects=_split(exclude_subjects))
        if val_fraction is not None:
            cfg = dataclasses.replace(cfg, val_fraction=val_fraction)
        cfg = dataclasses.replace(
            cfg,
            task=task,
            init=init or cfg.init,
            lookahead_epochs=cfg.lookahead_epochs if lookahead is None else lookahead,
            loop=loop,
            data=data,
            select=select,
        )
        path = finetune(cfg, store, out, mode=mode, resume=resume)
    except RUN_ERRORS as err:
        _fail(err)
    finally:
        shutdown_distributed()
    typer.echo(str(path))


TaskOpt = Annotated[
    str,
    typer.Option(
        "--task", help=f"One of {', '.join(TASKS)}, several joined by '+', or 'all'."
    ),
]
FractionOpt = Annotated[
    float | None,
    typer.Option("--label-fraction", help="Fraction of training subjects whose labels are used."),
]
LookaheadOpt = Annotated[
    int | None, typer.Option("--lookahead", help="Output delay in epochs (model default if unset).")
]
SubjectsOpt = Annotated[
    str | None, typer.Option("--subjects", help="Comma-separated subjects to train on.")
]
ExcludeOpt = Annotated[
    str | None, typer.Option("--exclude-subjects", help="Comma-separated subjects to leave out.")
]
ValOpt = Annotated[
    float | None,
    typer.Option("--val-fraction", help="Subjects held out to select the exported weights."),
]


def finetune_command(
    store: StoreOpt,
    out: OutOpt,
    task: TaskOpt = "stage",
    config: ConfigOpt = None,
    init: InitOpt = None,
    label_fraction: FractionOpt = None,
    lookahead: LookaheadOpt = None,
    subjects: SubjectsOpt = None,
    exclude_subjects: ExcludeOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    resume: ResumeOpt = False,
    val_fraction: ValOpt = None,
) -> None:
    """Fine-tune the whole model on long sequences (state carried, as the daemon runs)."""
    _downstream("finetune", store, out, task, config, init, label_fraction, lookahead, subjects,
                exclude_subjects, steps, seed, resume, val_fraction)


def probe_command(
    store: StoreOpt,
    out: OutOpt,
    init: Annotated[str, typer.Option("--init", help="Pretrained checkpoint (frozen encoder).")],
    task: TaskOpt = "stage",
    config: ConfigOpt = None,
    label_fraction: FractionOpt = None,
    lookahead: LookaheadOpt = None,
    subjects: SubjectsOpt = None,
    exclude_subjects: ExcludeOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = None,
    resume: ResumeOpt = False,
    val_fraction: ValOpt = None,
) -> None:
    """Linear probe: frozen pretrained encoder, identity temporal module, linear heads."""
    _downstream("probe", store, out, task, config, init, label_fraction, lookahead, subjects,
                exclude_subjects, steps, seed, resume, val_fraction)


def register(app: typer.Typer) -> None:
    """Add ``pretrain``, ``finetune`` and ``probe`` to ``app``."""
    app.command("pretrain")(pretrain_command)
    app.command("finetune")(finetune_command)
    app.command("probe")(probe_command)
