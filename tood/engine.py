"""Training and evaluation loops.

The caller observes a run through two callbacks and never needs to reach inside:
``log(metrics, step)`` gets per-epoch averages (step = epochs completed), and
``on_epoch_end(EpochEnd)`` gets the epoch's metrics and checkpoint path (the
orchestration layer reports them to Ray Tune / MLflow). ``tood`` itself imports
neither.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tood.build import build_criterion, build_model, resolve_device
from tood.checkpoint import load_checkpoint, model_state, rng_state, save_checkpoint, set_rng_state
from tood.config import Config, to_dict
from tood.data.loaders import build_loader
from tood.evaluate import evaluate
from tood.model.pretrain import ensure_pretrained_backbone

LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; the message names epoch, iteration and term."""


@dataclass
class EpochEnd:
    epoch: int  # epochs completed (1-based)
    metrics: dict[str, float]
    checkpoint: Path | None


@dataclass
class TrainResult:
    metrics: dict[str, float]  # final evaluation
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(cfg: Config, epoch: int, iteration: int, fraction: float = 0.0) -> float:
    """lr at a global ``iteration``, ``fraction`` of the way through (0-based) ``epoch``.

    Linear scaling rule: ``lr * batch / base_batch`` (the paper's 0.01 is for 16
    images); linear warm-up over ``warmup_iters`` from ``warmup_ratio``; then, per
    ``lr_schedule``: ``step`` multiplies by ``lr_gamma`` at each epoch in ``lr_steps``
    (epoch counts, as mmdet's ``step=[8, 11]``); ``linear`` decays to zero at the end of
    training and ``cosine`` follows half a cosine to zero (the budget-aware schedules of
    Li, Yumer and Ramanan, ICLR 2020), both per iteration and ignoring ``lr_steps``.
    """
    t = cfg.train
    lr = t.lr * t.batch_size / t.base_batch_size
    progress = min(1.0, (epoch + fraction) / t.epochs)
    if t.lr_schedule == "linear":
        lr *= 1.0 - progress
    elif t.lr_schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        lr *= t.lr_gamma ** sum(epoch >= s for s in t.lr_steps)
    if iteration < t.warmup_iters:
        lr *= t.warmup_ratio + (1 - t.warmup_ratio) * iteration / t.warmup_iters
    return lr


def build_optimizer(cfg: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW (decoupled weight decay), per ``train.optimizer``."""
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, betas=(t.momentum, 0.999), weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _check_finite(loss_terms: dict[str, torch.Tensor], epoch: int, iteration: int) -> None:
    for name, value in loss_terms.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(
                f"epoch {epoch + 1}, iteration {iteration}: loss term '{name}' is {value.item()} "
                "(try a lower train.lr, train.grad_clip, or train.amp=bf16 instead of fp16)"
            )


@dataclass
class _Setup:
    """What one training holds: the model (DDP-wrapped when distributed), its trainable
    parameters, criterion, optimizer and AMP scaler, the device and this process's rank."""

    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    criterion: Any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    rank: int
    world: int
    distributed: bool

    @property
    def bare_model(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)


def _set_up(cfg: Config, progress: bool) -> _Setup:
    """Device, seeds, model, criterion, optimizer and scaler, in the order that keeps a run
    repeatable (the seed is set before the model's weights are drawn)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    ensure_pretrained_backbone(cfg, progress=progress and rank == 0)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    criterion = build_criterion(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.train.amp == "fp16")
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return _Setup(model, params, criterion, optimizer, scaler, device, rank, world, distributed)


def _restore(s: _Setup, resume_from: Path | None) -> tuple[int, int, list[dict[str, float]]]:
    """(start epoch, global iteration, history) of ``resume_from``, its weights, optimizer,
    scaler and RNG state loaded into ``s``; (0, 0, []) without a checkpoint."""
    if resume_from is None:
        return 0, 0, []
    state = load_checkpoint(resume_from)
    s.bare_model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["epoch"], state["iteration"], state["history"]


def _step(s: _Setup, cfg: Config, batch: Any, epoch: int, iteration: int, fraction: float = 0.0) -> dict[str, torch.Tensor]:
    """One optimisation step on ``batch``, ``fraction`` of the way through ``epoch``; returns the detached loss terms."""
    lr = learning_rate(cfg, epoch, iteration, fraction)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    batch = batch.to(s.device)
    with _autocast(s.device, cfg.train.amp):
        outputs = s.model(batch.images)
    losses = s.criterion(outputs, batch.gt_boxes, batch.gt_labels, batch.gt_mask, epoch)
    terms = {"loss_total": losses.total.detach(), **losses.terms}
    _check_finite(terms, epoch, iteration)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(losses.total).backward()
    if cfg.train.grad_clip:
        s.scaler.unscale_(s.optimizer)
        torch.nn.utils.clip_grad_norm_(s.params, cfg.train.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    return terms


def _train_epoch(s: _Setup, cfg: Config, loader: Any, epoch: int, iteration: int, progress: bool) -> tuple[dict[str, float], int]:
    """One epoch; returns its mean loss terms, lr, epoch and wall time, and the global iteration after it."""
    loader.set_epoch(epoch)
    s.model.train()
    sums: dict[str, float] = {}
    n_iter = len(loader) if cfg.train.max_iters_per_epoch is None else min(len(loader), cfg.train.max_iters_per_epoch)
    bar = tqdm(total=n_iter, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress or s.rank != 0, leave=False)
    t0, n_images, lr = time.perf_counter(), 0, learning_rate(cfg, epoch, iteration)
    for i, batch in enumerate(loader):
        if i >= n_iter:
            break
        lr = learning_rate(cfg, epoch, iteration, i / n_iter)
        terms = _step(s, cfg, batch, epoch, iteration, i / n_iter)
        iteration += 1
        n_images += batch.images.shape[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.set_postfix(loss=f"{float(terms['loss_total']):.3f}", lr=f"{lr:.2e}", img_s=f"{n_images / (time.perf_counter() - t0):.1f}")
        bar.update()
    bar.close()
    metrics = {k: v / max(n_iter, 1) for k, v in sums.items()}
    metrics.update(lr=lr, epoch=epoch + 1, epoch_time_s=time.perf_counter() - t0)
    return metrics, iteration


def _checkpoint_state(s: _Setup, cfg: Config, epoch: int, iteration: int, history: list, class_names: list[str],
                      extra_state: dict[str, Any] | None) -> dict[str, Any]:
    return {"model": model_state(s.model), "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
            "epoch": epoch + 1, "iteration": iteration, "history": history, "rng": rng_state(), "config": to_dict(cfg),
            "class_names": class_names, "extra": extra_state or {}}


def train(
    cfg: Config,
    work_dir: str | Path,
    *,
    resume: bool | str | Path = False,
    log: LogFn | None = None,
    on_epoch_end: Callable[[EpochEnd], None] | None = None,
    extra_state: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg`` in ``work_dir`` (checkpoints in ``work_dir/last.pt``).

    Args:
        resume: False, True (``work_dir/last.pt`` if present) or a checkpoint path.
        extra_state: small dict stored in every checkpoint (e.g. a tracking run id).
    Under an initialised ``torch.distributed`` process group the model is wrapped in
    DistributedDataParallel, data are sharded, and rank 0 evaluates and checkpoints.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    s = _set_up(cfg, progress)
    ckpt_path = work_dir / "last.pt"
    resume_from = (ckpt_path if ckpt_path.exists() else None) if resume is True else (Path(resume) if resume else None)
    start_epoch, iteration, history = _restore(s, resume_from)
    train_loader = build_loader(cfg, train=True, rank=s.rank, world=s.world)
    val_loader = build_loader(cfg, train=False) if s.rank == 0 else None
    final: dict[str, float] = history[-1] if history else {}
    for epoch in range(start_epoch, cfg.train.epochs):
        metrics, iteration = _train_epoch(s, cfg, train_loader, epoch, iteration, progress)
        last = epoch + 1 == cfg.train.epochs
        if s.rank == 0:
            if last or (epoch + 1) % cfg.train.eval_every == 0:
                t_eval = time.perf_counter()
                ev = evaluate(s.bare_model, val_loader, cfg, s.device, progress=progress)
                metrics.update({"epoch_AP": ev["AP"]} if not last else {**ev, "epoch_AP": ev["AP"]})
                metrics["eval_time_s"] = time.perf_counter() - t_eval  # apart from epoch_time_s (training)
            history.append(metrics)
            saved = save_checkpoint(ckpt_path, _checkpoint_state(s, cfg, epoch, iteration, history,
                                                                 train_loader.dataset.class_names, extra_state))
            if log is not None:
                log({k: float(v) for k, v in metrics.items() if k != "epoch"}, epoch + 1)
            if on_epoch_end is not None:
                on_epoch_end(EpochEnd(epoch=epoch + 1, metrics=metrics, checkpoint=saved))
        final = metrics
        if s.distributed:
            dist.barrier()
    return TrainResult(metrics=final, history=history, checkpoint=ckpt_path if ckpt_path.exists() else None)


def time_iterations(cfg: Config, iterations: int) -> tuple[float, int]:
    """(seconds per training iteration, iterations per epoch) of ``cfg`` on this machine: one
    untimed warm-up step, then the mean of ``iterations`` steps (``tood-ablate doctor``)."""
    s = _set_up(cfg, progress=False)
    loader = build_loader(cfg, train=True)
    loader.set_epoch(0)
    s.model.train()
    per_epoch = len(loader) if cfg.train.max_iters_per_epoch is None else min(len(loader), cfg.train.max_iters_per_epoch)
    batches = iter(loader)
    _step(s, cfg, next(batches), 0, 0)
    t0, done = time.perf_counter(), 0
    for i, batch in zip(range(iterations), batches):
        _step(s, cfg, batch, 0, i + 1)
        done += 1
    return (time.perf_counter() - t0) / max(done, 1), per_epoch
