"""The shared training loop: seeding, DDP, schedule, progress/ETA, training checkpoints, resume.

An *objective* is an ``nn.Module`` whose ``forward(**batch)`` returns ``(loss, metrics)``
(``metrics``: name -> scalar tensor, for logs). It may carry state between steps (the temporal
module's recurrent state in sequence training) through ``carry_state()`` / ``load_carry_state()``.
A *batch stream* has ``next(rng, gen) -> dict[str, Tensor]`` and JSON ``state_dict()`` /
``load_state_dict()``.

**Determinism.** Before step ``s`` every random source is re-seeded from ``(seed, rank, s)``: the
global torch RNG (dropout), a ``torch.Generator`` and a numpy ``Generator`` handed to the batch
stream (sampling, masking, augmentation). A run is therefore a function of the seed, and a run
resumed at step ``s`` continues exactly as the uninterrupted run (same weights, bit for bit, on the
same machine and thread count).

**Training checkpoint** (``OUT/train/``, written every ``checkpoint_every`` steps and at the end;
swapped in as a whole directory so a crash never leaves a half-written one):

- ``weights.safetensors``: the objective's ``state_dict`` (model + decoders/projectors);
- ``optimizer.pt``: ``torch.save`` of the optimizer state, loaded with ``weights_only=True``;
- ``state.json``: next step, world size, config JSON; ``rank<r>.json``: that rank's batch-stream
  state; ``rank<r>_carry.safetensors``: that rank's carried tensors.

**DDP.** Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is ``gloo`` on CPU and ``nccl``
on GPU; the objective is wrapped in ``DistributedDataParallel`` (gradients are averaged during
``backward``), each rank draws its own batches (the rank enters every seed), and rank 0 writes
logs, history and checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as torch_dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from rtsleep.data.preprocessing import PreprocessSpec
from rtsleep.models import SleepNet, save_model

log = logging.getLogger(__name__)

TRAIN_DIR = "train"
HISTORY_FILE = "history.jsonl"


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping; defaults sized for 2 CPU cores."""

    steps: int = 400
    #: Per process: epochs (or windows) per SSL step, lanes per sequence step.
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    #: Cosine decay from ``lr`` to ``lr * min_lr_ratio`` after warm-up.
    min_lr_ratio: float = 0.05
    grad_clip: float = 2.0
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 100
    #: torch intra-op threads (0 = leave torch's choice).
    threads: int = 0
    #: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    device: str = "auto"
    progress: bool = True
    #: Build the next batch in a background thread while the current step runs (for GPUs; on a
    #: 2-core CPU it only competes with the step). Results are identical either way.
    prefetch: bool = False
    #: Mixed precision of the forward pass: ``"none"`` or ``"bf16"`` (``torch.autocast``; meant
    #: for GPUs, no gradient scaler needed; the exported model is float32 either way).
    amp: str = "none"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("lr must be > 0 and min_lr_ratio in [0, 1]")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {self.amp!r}")


class BatchStream(Protocol):
    """Where :func:`train_loop` gets batches from."""

    def next(self, rng: np.random.Generator, gen: torch.Generator) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.enabled:
            torch_dist.barrier()


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        return torch.device(f"cuda:{local_rank}")
    if pref != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {pref!r}")
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local)
    if world > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed derived from ``(seed, rank, step)`` (numpy SeedSequence mixing)."""
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine down to ``min_lr_ratio``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cos = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos


@contextlib.contextmanager
def seeded(seed: int, threads: int = 0) -> Iterator[None]:
    """Seed torch, ask for deterministic kernels and optionally set the thread count for the
    duration of a run; the previous thread count and determinism flags are restored after."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def format_eta(seconds: float) -> str:
    """``3725.0 -> "1:02:05"``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class LoopResult:
    """What a finished :func:`train_loop` returns."""

    steps: int
    history: list[dict[str, float]]
    #: Step the run started from (> 0 after a resume).
    resumed_from: int
    #: With an evaluator: the objective's weights (CPU) at the best validation score, the number
    #: of steps done at that point, and the validation metrics there.
    best_state: dict[str, Tensor] | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] | None = None

    @property
    def final_loss(self) -> float | None:
        """The training loss of the last step (None before any step)."""
        losses = [r["loss"] for r in self.history if "loss" in r]
        return losses[-1] if losses else None


Evaluator = Callable[[nn.Module], dict[str, float]]
"""``evaluate(objective) -> metrics`` on held-out data (the objective is in eval mode)."""


@dataclass
class _Best:
    score: float = float("-inf")
    step: int | None = None
    metrics: dict[str, float] | None = None
    state: dict[str, Tensor] | None = None


# ------------------------------------------------------------------------ checkpoints


def _clone_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _carry(objective: nn.Module) -> dict[str, Tensor]:
    fn = getattr(objective, "carry_state", None)
    return dict(fn()) if fn is not None else {}


def save_training_checkpoint(
    out_dir: Path,
    step: int,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: BatchStream,
    dist: DistInfo,
    config_json: str,
    best: _Best | None = None,
    stream_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``OUT/train`` for resuming at ``step`` (all ranks call this).

    ``stream_state``: the batch stream's state after the batch of step ``step - 1`` (when a
    prefetcher has already moved the stream on); default ``stream.state_dict()``.
    """
    final = out_dir / TRAIN_DIR
    tmp = out_dir / f".{TRAIN_DIR}.new"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    r = dist.rank
    data_state = stream.state_dict() if stream_state is None else stream_state
    (tmp / f"rank{r}.json").write_text(json.dumps(data_state))
    carry = _carry(objective)
    save_file(_clone_tensors(carry), str(tmp / f"rank{r}_carry.safetensors"))
    if dist.is_main:
        save_file(
            _clone_tensors(objective.state_dict()),
            str(tmp / "weights.safetensors"),
            metadata={"step": str(step)},
        )
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        state: dict[str, Any] = {
            "step": step, "world_size": dist.world_size, "config": config_json
        }
        if best is not None and best.state is not None:
            save_file(_clone_tensors(best.state), str(tmp / "best.safetensors"))
            state["best"] = {"score": best.score, "step": best.step, "metrics": best.metrics}
        (tmp / "state.json").write_text(json.dumps(state, sort_keys=True))
    dist.barrier()
    if dist.is_main:
        old = out_dir / f".{TRAIN_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def earlier_run(out_dir: Path) -> str:
    """What of an earlier run ``out_dir`` holds (its training checkpoint, exported model or
    non-empty history), as a short phrase; empty when none. A new run there would overwrite
    it, so :func:`train_loop` refuses one without ``resume``."""
    found = [name for name in (TRAIN_DIR + "/", MODEL_FILE) if (out_dir / name).exists()]
    history = out_dir / HISTORY_FILE
    if history.is_file() and history.stat().st_size > 0:
        found.append(HISTORY_FILE)
    return ", ".join(found)


def refuse_earlier_run(out_dir: Path, resume: bool) -> None:
    """``ValueError`` when a new run (not ``resume``) would overwrite an earlier one in
    ``out_dir`` (:func:`earlier_run`). The training commands call it before reading any data,
    :func:`train_loop` again before the first step."""
    earlier = "" if resume else earlier_run(Path(out_dir))
    if earlier:
        raise ValueError(f"{out_dir}: holds an earlier run ({earlier}); continue it with "
                         "--resume or give a new --out")


def _recover_interrupted_save(out_dir: Path, dist: DistInfo) -> None:
    """A process that died between the two renames of :func:`save_training_checkpoint` left
    its last complete checkpoint as ``.train.old`` and no ``train``: put it back."""
    final, old = out_dir / TRAIN_DIR, out_dir / f".{TRAIN_DIR}.old"
    if dist.is_main and not final.exists() and (old / "state.json").exists():
        old.rename(final)
        log.warning("%s: restored the last training checkpoint from %s (the run that wrote it "
                    "stopped while saving)", final, old.name)
    dist.barrier()


def load_training_checkpoint(
    out_dir: Path,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: BatchStream,
    dist: DistInfo,
    config_json: str,
    best: _Best | None = None,
) -> int:
    """Restore ``OUT/train`` into the objective, optimizer and stream; returns the next step.

    ``ValueError`` when the checkpoint was made with another config or world size.
    """
    ckpt = out_dir / TRAIN_DIR
    try:
        return _load_training_checkpoint(ckpt, objective, optimizer, stream, dist, config_json,
                                         best)
    except (OSError, RuntimeError, KeyError, json.JSONDecodeError, SafetensorError) as err:
        raise ValueError(f"{ckpt}: unreadable training checkpoint ({type(err).__name__}: "
                         f"{err}); remove it to start afresh") from None


def _load_training_checkpoint(
    ckpt: Path,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: BatchStream,
    dist: DistInfo,
    config_json: str,
    best: _Best | None,
) -> int:
    state = json.loads((ckpt / "state.json").read_text())
    if state["world_size"] != dist.world_size:
        raise ValueError(
            f"{ckpt}: saved with {state['world_size']} processes, resuming with {dist.world_size}"
        )
    if state["config"] != config_json:
        raise ValueError(f"{ckpt}: saved with a different config; resume with the same one")
    weights = load_file(str(ckpt / "weights.safetensors"), device="cpu")
    objective.load_state_dict(weights, strict=True)
    opt_state = torch.load(ckpt / "optimizer.pt", map_location=dist.device, weights_only=True)
    optimizer.load_state_dict(opt_state)
    stream.load_state_dict(json.loads((ckpt / f"rank{dist.rank}.json").read_text()))
    carry = load_file(str(ckpt / f"rank{dist.rank}_carry.safetensors"), device=str(dist.device))
    loader = getattr(objective, "load_carry_state", None)
    if loader is not None:
        loader(carry)
    if best is not None and "best" in state:
        best.score = float(state["best"]["score"])
        best.step = state["best"]["step"]
        best.metrics = state["best"]["metrics"]
        best.state = load_file(str(ckpt / "best.safetensors"), device="cpu")
    return int(state["step"])


# ------------------------------------------------------------------------------ loop


def _read_history(path: Path, before: int) -> list[dict[str, float]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] < before]


def _mean_across_ranks(values: dict[str, float], dist: DistInfo) -> dict[str, float]:
    if not dist.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.device.type == "cuda":
        t = t.to(dist.device)
    torch_dist.all_reduce(t)
    return {k: float(v) / dist.world_size for k, v in zip(keys, t.tolist(), strict=True)}


class _Batches:
    """Batches of consecutive steps, optionally built one step ahead in a background thread.

    Each batch comes with the stream state right after it was drawn, for checkpoints. Batch
    ``s`` depends only on the stream state and the seeds of step ``s``, so prefetching does not
    change any result.
    """

    def __init__(self, stream: BatchStream, cfg: LoopConfig, rank: int) -> None:
        self.stream = stream
        self.cfg = cfg
        self.rank = rank
        self._pool = ThreadPoolExecutor(1) if cfg.prefetch else None
        self._pending: tuple[int, Future[tuple[dict[str, Tensor], dict[str, Any]]]] | None = None

    def _make(self, step: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        seed = step_seed(self.cfg.seed, self.rank, step)
        gen = torch.Generator().manual_seed(seed)
        batch = self.stream.next(np.random.default_rng(seed), gen)
        return batch, copy.deepcopy(self.stream.state_dict())

    def get(self, step: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The batch of ``step`` and the stream state after it."""
        if self._pool is None:
            return self._make(step)
        if self._pending is not None and self._pending[0] == step:
            result = self._pending[1].result()
        else:
            result = self._pool.submit(self._make, step).result()
        self._pending = None
        if step + 1 < self.cfg.steps:
            self._pending = (step + 1, self._pool.submit(self._make, step + 1))
        return result

    def close(self) -> None:
        """Stop the background thread (waits for a batch in progress)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


StepHook = Callable[[int, nn.Module, Tensor], None]
"""Called after ``backward`` (gradients already averaged across ranks) and before the
optimizer step: ``hook(step, objective, loss)``."""


def train_loop(
    objective: nn.Module,
    stream: BatchStream,
    cfg: LoopConfig,
    out_dir: Path,
    dist: DistInfo,
    *,
    param_groups: Sequence[tuple[Sequence[nn.Parameter], float]] | None = None,
    resume: bool = False,
    config_json: str = "",
    hooks: Sequence[StepHook] = (),
    desc: str = "train",
    evaluator: Evaluator | None = None,
    eval_every: int = 0,
    select_key: str = "",
) -> LoopResult:
    """Train ``objective`` for ``cfg.steps`` steps (see the module doc).

    Args:
        objective: the module to train (moved to ``dist.device``).
        stream: the batch stream of this rank.
        cfg: loop settings.
        out_dir: run folder (``history.jsonl`` and ``train/`` go there).
        dist: from :func:`init_distributed`.
        param_groups: ``(params, lr_scale)`` pairs; default: every trainable parameter at 1.
        resume: continue from ``out_dir/train`` when it exists.
        config_json: the run's config; a resume must use the same one.
        hooks: :data:`StepHook` callables.
        desc: progress-bar label.
        evaluator: optional validation (every rank runs it on the same data, so no rank waits);
            run every ``eval_every`` steps and at the end, its metrics go to the history with a
            ``val_`` prefix, and the weights with the highest ``metrics[select_key]`` are kept
            (and saved with the training checkpoint) in ``LoopResult.best_state``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objective.to(dist.device)
    if param_groups is None:
        param_groups = [([p for p in objective.parameters() if p.requires_grad], 1.0)]
    groups: list[dict[str, Any]] = [
        {"params": list(ps), "lr": cfg.lr * scale, "lr_scale": scale}
        for ps, scale in param_groups
        if len(list(ps)) > 0 and scale > 0
    ]
    if not groups:
        raise ValueError("nothing to train: no trainable parameter")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    best = _Best() if evaluator is not None else None
    if evaluator is not None and (eval_every < 1 or not select_key):
        raise ValueError("an evaluator needs eval_every >= 1 and a select_key")
    _recover_interrupted_save(out_dir, dist)
    if resume and (out_dir / TRAIN_DIR / "state.json").exists():
        start = load_training_checkpoint(
            out_dir, objective, optimizer, stream, dist, config_json, best
        )
        log.info("resumed %s from step %d", out_dir / TRAIN_DIR, start)
    elif resume:
        log.warning("%s: no training checkpoint to resume from; starting at step 0",
                    out_dir / TRAIN_DIR)
    else:
        refuse_earlier_run(out_dir, resume)
    history_path = out_dir / HISTORY_FILE
    history = _read_history(history_path, start)
    if dist.is_main:
        history_path.write_text("".join(json.dumps(r) + "\n" for r in history))
    model: nn.Module = objective
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(
            objective,
            device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    model.train()
    run = _Run(
        objective=objective,
        model=model,
        optimizer=optimizer,
        stream=stream,
        cfg=cfg,
        out_dir=out_dir,
        dist=dist,
        history=history,
        hooks=list(hooks),
        desc=desc,
        evaluator=evaluator,
        eval_every=eval_every,
        select_key=select_key,
        best=best,
        config_json=config_json,
    )
    return run.run(start)


MODEL_FILE = "model.safetensors"
"""File name of a run's exported model in ``OUT``."""


def export_model(
    net: SleepNet,
    out: Path,
    preprocess: PreprocessSpec,
    card: dict[str, Any],
    config: dict[str, Any],
    dist: DistInfo,
) -> Path:
    """The end of a training run: rank 0 writes ``OUT/model.safetensors`` (``save_model``, ``net``
    in eval mode on the CPU, with ``card``) and ``OUT/config.json`` (``config``); every rank then
    waits at the barrier. Returns the model's path."""
    path = out / MODEL_FILE
    if dist.is_main:
        net.eval()
        save_model(net.cpu(), path, preprocess, card=card)
        (out / "config.json").write_text(json.dumps(config, indent=2))
        log.info("wrote %s", path)
    dist.barrier()
    return path


@dataclass
class _Run:
    """The state of one :func:`train_loop` call while it steps."""

    objective: nn.Module
    #: ``objective`` itself, or its DDP wrapper.
    model: nn.Module
    optimizer: torch.optim.Optimizer
    stream: BatchStream
    cfg: LoopConfig
    out_dir: Path
    dist: DistInfo
    history: list[dict[str, float]]
    hooks: list[StepHook]
    desc: str
    evaluator: Evaluator | None
    eval_every: int
    select_key: str
    best: _Best | None
    config_json: str

    def run(self, start: int) -> LoopResult:
        """Steps ``start .. cfg.steps - 1``, with logging, validation and checkpoints."""
        cfg = self.cfg
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc=self.desc,
            # not into a log file: without a terminal the bar's carriage returns glue the log
            # lines onto it; the ETA log line every log_every steps gives the progress there
            disable=not (cfg.progress and self.dist.is_main and sys.stderr.isatty()),
            dynamic_ncols=True,
        )
        batches = _Batches(self.stream, cfg, self.dist.rank)
        t0 = time.perf_counter()
        try:
            for step in range(start, cfg.steps):
                values, stream_state = self._step(step, batches)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    self._log(done, values, (time.perf_counter() - t0) / (done - start))
                if self.evaluator is not None and (
                    done % self.eval_every == 0 or done == cfg.steps
                ):
                    self._validate(done)
                if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                    save_training_checkpoint(
                        self.out_dir, done, self.objective, self.optimizer, self.stream,
                        self.dist, self.config_json, self.best, stream_state,
                    )
        finally:
            batches.close()
            bar.close()
        best = self.best
        return LoopResult(
            steps=cfg.steps,
            history=self.history,
            resumed_from=start,
            best_state=best.state if best else None,
            best_step=best.step if best else None,
            best_metrics=best.metrics if best else None,
        )

    def _step(self, step: int, batches: _Batches) -> tuple[dict[str, float], dict[str, Any]]:
        """One optimisation step; returns the logged values and the stream state after it."""
        cfg, dist = self.cfg, self.dist
        torch.manual_seed(step_seed(cfg.seed, dist.rank, step))
        cpu_batch, stream_state = batches.get(step)
        batch = {k: v.to(dist.device) for k, v in cpu_batch.items()}
        factor = lr_factor(step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * g["lr_scale"] * factor
        with torch.autocast(
            device_type=dist.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"
        ):
            loss, metrics = self.model(**batch)
        loss = loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for hook in self.hooks:
            hook(step, self.objective, loss)
        grad_norm = float("nan")
        if cfg.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        self.optimizer.step()
        values = {"loss": float(loss.detach())}
        values.update({k: float(v.detach()) for k, v in metrics.items()})
        values = _mean_across_ranks(values, dist)
        row: dict[str, float] = {"step": step, "lr": cfg.lr * factor, **values}
        if math.isfinite(grad_norm):
            row["grad_norm"] = grad_norm
        self._append(row)
        return values, stream_state

    def _append(self, row: dict[str, float]) -> None:
        self.history.append(row)
        if self.dist.is_main:
            with (self.out_dir / HISTORY_FILE).open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    def _log(self, done: int, values: dict[str, float], per_step: float) -> None:
        if not self.dist.is_main:
            return
        cfg = self.cfg
        extra = " ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "loss")
        log.info(
            "%s step %d/%d loss %.4f %s lr %.3g | %.2f s/step, ETA %s",
            self.desc, done, cfg.steps, values["loss"], extra,
            cfg.lr * lr_factor(done - 1, cfg), per_step,
            format_eta(per_step * (cfg.steps - done)),
        )

    def _validate(self, done: int) -> None:
        """Run the evaluator after ``done`` steps, log it, keep the best weights."""
        if self.evaluator is None or self.best is None:
            return
        self.objective.eval()
        with torch.no_grad():
            metrics = self.evaluator(self.objective)
        self.model.train()
        if self.select_key not in metrics:
            raise ValueError(
                f"evaluator returned no {self.select_key!r} (has {sorted(metrics)})"
            )
        self._append({"step": done - 1, **{f"val_{k}": v for k, v in metrics.items()}})
        if self.dist.is_main:
            log.info(
                "validation after %d steps: %s", done,
                " ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
            )
        score, best = metrics[self.select_key], self.best
        if math.isfinite(score) and score > best.score:
            best.score, best.step, best.metrics = score, done, dict(metrics)
            best.state = _clone_tensors(self.objective.state_dict())
