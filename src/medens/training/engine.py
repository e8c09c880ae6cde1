"""The training engine: ``fit`` is what every caller (CLI, pipeline, studies) uses.

One run trains one (model, loss) pair on a :class:`~medens.data.types.SplitData` and writes a
model artifact directory (docs/architecture.md section 5.3). Device is chosen automatically (CUDA, then CPU);
on CUDA it uses mixed precision (bf16 where supported, else fp16 with a grad scaler),
channels_last, pinned memory and DataLoader workers. Optimisers: Adam, AdamW, SGD with
Nesterov momentum; ReduceLROnPlateau, cosine decay with linear warm-up or one-cycle (per step);
gradient-norm clipping; an exponential moving average of the weights evaluated beside the raw
ones; a minimum number of optimiser steps for small datasets; early stopping; the best epoch is
the one with the lowest validation loss (Pasupa et al., study 2) or the highest named validation
metric. A checkpoint is written atomically after every epoch, and ``resume=True`` continues from
it bit for bit. With ``checkpoint_store`` (:mod:`medens.training.checkpoints`) the checkpoint is
also published to an ArtifactStore (local folder or S3/MinIO) as training runs, and a resumed run
whose output folder holds none (a retried pod's) downloads it from there and continues alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medens import metrics as metric_defs
from medens.config import ComponentSpec, TrainingSpec
from medens.data.decode import PREPROCESSING
from medens.data.drift import intensity_reference
from medens.data.transforms import InputSpec
from medens.data.types import Split, SplitData, pixel_counts
from medens.models.artifact import (
    MANIFEST,
    WEIGHTS,
    apply_temperature,
    model_probs,
    read_manifest,
    save_state_dict,
    tta_flips,
    write_manifest,
)
from medens.storage.atomic import atomic_write_bytes
from medens.training.batches import DeviceTransform, make_loader
from medens.training.checkpoints import StoreCheckpoints
from medens.training.collapse import collapse_entry
from medens.training.device import Precision, select_device, select_precision
from medens.training.optim import build_optimizer, build_scheduler, ema_model, parameter_groups, set_encoder_frozen
from medens.training.predictions import Predictions, logits_to_probs
from medens.training.progress import Display, EpochLines, choose_display

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "mcc", "balanced_accuracy")
SEGMENTATION_METRICS = ("dice",)


@dataclass
class FitResult:
    """Where the artifact is and how training went."""

    path: Path
    best_epoch: int
    history: list[dict]
    val_metrics: dict
    precision: str
    collapse: dict | None = None
    """classification: :func:`medens.training.collapse.collapse_entry` of the validation predictions"""


def _component(c: ComponentSpec | str | dict) -> ComponentSpec:
    return c if isinstance(c, ComponentSpec) else ComponentSpec.model_validate(c)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- losses with trainer-side class weights


class ClassWeightedLoss(nn.Module):
    """Weights each sample's loss by its class weight: ``sum_i w_{y_i} l_i / sum_i w_{y_i}``
    (the convention of class-weighted cross-entropy), for any loss with ``reduction='none'``."""

    def __init__(self, loss: nn.Module, weights: torch.Tensor) -> None:
        super().__init__()
        self.loss = loss
        self.register_buffer("weights", weights.float())

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = self.loss(logits, target)
        if per.shape != target.shape[:1]:
            raise ValueError(f"class weights need a per-sample loss of shape {tuple(target.shape[:1])}, "
                             f"got {tuple(per.shape)}")
        w = self.weights[target]
        return (per * w).sum() / w.sum()


def build_loss(loss: ComponentSpec, task: str, class_counts: list[int], class_weights: str) -> nn.Module:
    """The loss of a run, with the training spec's class weights applied by the trainer."""
    from medens import losses

    params = dict(loss.params)
    if class_weights == "none":
        return losses.build(loss.name, class_counts=class_counts, task=task, **params)
    if task != "classification":
        raise ValueError("training.class_weights applies to classification; segmentation losses weight classes "
                         "through their own parameters")
    from medens.data.imbalance import balanced_class_weights, effective_number_weights

    w = balanced_class_weights(class_counts) if class_weights == "balanced" else effective_number_weights(class_counts)
    params["reduction"] = "none"
    inner = losses.build(loss.name, class_counts=class_counts, task=task, **params)
    return ClassWeightedLoss(inner, torch.as_tensor(w, dtype=torch.float32))


# ---------------------------------------------------------------- validation metrics


def quick_metrics(task: str, probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The few validation metrics the engine monitors, from :mod:`medens.metrics` (the definitions
    ranking, selection, the gate and the report use; full evaluation lives in medens.evaluation).

    Classification: accuracy, balanced accuracy, macro-F1 and MCC of the argmax predictions.
    Segmentation: Dice, the mean over foreground classes per image averaged over images.
    """
    k = probs.shape[1]
    pred = probs.argmax(1)
    if task == "classification":
        cm = metric_defs.confusion_matrix(target, pred, n_classes=k)
        return {name: float(getattr(metric_defs, name)(cm))
                for name in ("accuracy", "balanced_accuracy", "macro_f1", "mcc")}
    return {"dice": float(metric_defs.dice(target, pred, n_classes=k).mean())}


# ---------------------------------------------------------------- the loop


DEFAULT_MONITOR = {"classification": "mcc", "segmentation": "dice"}


def resolve_monitor(monitor: str, task: str) -> tuple[str, str]:
    """The monitored quantity (``auto`` resolved for the task) and its direction (``min``/``max``)."""
    allowed = ("auto", "val_loss", *(CLASSIFICATION_METRICS if task == "classification" else SEGMENTATION_METRICS))
    if monitor not in allowed:
        raise ValueError(f"training.monitor {monitor!r} is not one of {', '.join(allowed)}")
    monitor = DEFAULT_MONITOR[task] if monitor == "auto" else monitor
    return monitor, "min" if monitor == "val_loss" else "max"


def _rng_state(generators: dict[str, torch.Generator]) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _publish_checkpoint(store: StoreCheckpoints, out: Path, epoch: int) -> None:
    # The log travels with the checkpoint: a resumed run's train_log.jsonl then holds every epoch.
    # An unreachable store (after the store's own retries) costs this epoch's copy, not the run.
    try:
        store.publish(out, epoch, (CHECKPOINT, LOG))
    except OSError as e:
        warnings.warn(f"could not publish the epoch {epoch} checkpoint to {store.uri}: {e}; training goes on "
                      "and tries again after the next epoch", RuntimeWarning, stacklevel=2)


@dataclass
class _Run:
    """One fit's state. Setup fills the first group (fixed for the run); the second is how
    training stands, what each epoch's checkpoint saves and a resume restores."""

    spec: TrainingSpec
    model_spec: ComponentSpec
    loss_spec: ComponentSpec
    data: SplitData
    train_split: Split
    train_on: str
    out: Path
    seed: int
    member: str
    """what the progress bar and the epoch lines call this run"""
    monitor: str
    mode: str
    precision: Precision
    autocast_kw: dict | None
    """``torch.autocast`` arguments on the AMP path (:func:`medens.training.device.select_precision`), else None"""
    input_spec: InputSpec
    arch_kwargs: dict
    counts: list[int]
    net: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    gens: dict[str, torch.Generator]
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    transform: DeviceTransform
    steps_per_epoch: int
    n_epochs: int
    scheduler: Any
    per_step: bool
    ema: torch.optim.swa_utils.AveragedModel | None

    history: list[dict] = field(default_factory=list)
    best_value: float = math.nan
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    start_epoch: int = 1

    @property
    def task(self) -> str:
        return self.data.task


@dataclass
class _Trained:
    """One epoch's training pass."""

    t0: float
    seconds: float
    loss: float
    seen: int
    frozen: bool


def fit(
    model: ComponentSpec | str | dict,
    loss: ComponentSpec | str | dict,
    data: SplitData,
    training: TrainingSpec | None = None,
    out_dir: str | os.PathLike = "model",
    *,
    seed: int | None = None,
    resume: bool = False,
    normalize: str = "unit",
    train_on: str = "train",
    progress: bool | None = None,
    extra_manifest: dict | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    checkpoint_store: StoreCheckpoints | None = None,
) -> FitResult:
    """Train one (model, loss) pair and write its artifact directory.

    The steps: set the run up (:func:`_setup_run`), continue from a checkpoint
    (:func:`_resume`), train epoch after epoch (:func:`_train_epochs`: a training pass, the
    validation with its EMA contest, the best epoch, the checkpoint), then write the artifact
    (:func:`_finish`: best weights, calibrated validation predictions, manifest last).

    Args:
        model: model registry name and params (``ComponentSpec``, name or mapping).
        loss: loss registry name and params.
        data: the splits; ``val`` chooses the best epoch, ``test`` is not touched.
        training: optimiser, schedule, stopping, class weights, sampler, device, precision.
        out_dir: the artifact directory (created).
        seed: random seed (default ``training.seed`` or 0).
        resume: continue from ``out_dir/checkpoint.pt`` if present; a finished artifact is returned as is.
        normalize: ``unit`` or ``zscore`` intensity normalisation fitted on the training split.
        train_on: ``train`` or the name of an extra training split (``train_crops`` for the
            study 3 sampling method).
        progress: ``None`` (default): a progress bar when stderr is a terminal, else one line
            per epoch on stderr (:mod:`medens.training.progress`); ``True``: the bar;
            ``False``: neither.
        extra_manifest: more keys for ``model.json`` (its ``member_id`` names the run in the progress output).
        on_epoch_end: called with each epoch's log row after its checkpoint is written
            (for example to report metrics to a pipeline UI).
        init_state: initial weights loaded into the new model (``strict=False``) before
            training, e.g. the frozen members of a fusion model; unknown keys raise.
        checkpoint_store: where the checkpoint is also published (at its configured frequency)
            as training runs; with ``resume`` and no checkpoint in ``out_dir``, the newest one
            there is downloaded (checksums verified; a damaged one raises ``ValueError`` naming
            the file) and training continues from it. Deleted when the artifact is complete.

    Returns:
        A :class:`FitResult`.
    """
    model_spec, loss_spec = _component(model), _component(loss)
    spec = training or TrainingSpec()
    seed = spec.seed if spec.seed is not None else (seed if seed is not None else 0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / MANIFEST).is_file():
        m = read_manifest(out)
        return FitResult(out, m["best_epoch"], m["history"], m["val_metrics"], m.get("precision", ""),
                         _collapse_of(m))
    if resume and checkpoint_store is not None and not (out / CHECKPOINT).is_file():
        checkpoint_store.restore(out)  # a retried pod's empty output folder: continue from the store's
    member = (extra_manifest or {}).get("member_id") or f"{model_spec.name}/{loss_spec.name}"
    run = _setup_run(model_spec, loss_spec, data, spec, out, seed=seed, normalize=normalize, train_on=train_on,
                     init_state=init_state, member=str(member))
    if resume and (out / CHECKPOINT).is_file():
        _resume(run)
    if run.start_epoch == 1:
        (out / LOG).unlink(missing_ok=True)
    epoch, stopped_early = _train_epochs(run, display=choose_display(progress), checkpoint_store=checkpoint_store,
                                         on_epoch_end=on_epoch_end)
    return _finish(run, stopped_early=stopped_early and epoch < run.n_epochs, extra_manifest=extra_manifest,
                   checkpoint_store=checkpoint_store)


def _training_split(data: SplitData, train_on: str) -> Split:
    split = data.train if train_on == "train" else data.extras.get(train_on)
    if split is None or len(split) == 0:
        raise ValueError(f"training split {train_on!r} is missing or empty")
    if len(data.val) == 0:
        raise ValueError("fit needs a non-empty validation split to choose the best epoch")
    return split


def _build_net(model_spec: ComponentSpec, task: str, input_spec: InputSpec, num_classes: int, precision: Precision,
               init_state: dict[str, torch.Tensor] | None) -> tuple[nn.Module, dict[str, Any]]:
    """The model on the run's device (channels_last where the precision says) and its architecture kwargs."""
    from medens.models import build as build_model
    from medens.models import check_input_size

    arch_kwargs = {"in_channels": input_spec.channels, "num_classes": num_classes, **model_spec.params}
    net = build_model(model_spec.name, task=task, **arch_kwargs)
    check_input_size(net, input_spec.size)
    if init_state is not None:
        result = net.load_state_dict(init_state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"init_state has keys the model does not: {', '.join(result.unexpected_keys[:5])}")
    net.to(precision.device)
    if precision.channels_last:
        net.to(memory_format=torch.channels_last)
    return net, arch_kwargs


def _loaders(data: SplitData, train_split: Split, spec: TrainingSpec, precision: Precision,
             generator: torch.Generator) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """The shuffled (or class-balanced) training loader and the sequential validation loader."""
    sample_w = None
    if spec.sampler == "balanced":
        if data.task != "classification":
            raise ValueError("training.sampler 'balanced' applies to classification")
        from medens.data.imbalance import sample_weights

        sample_w = sample_weights(train_split.labels, data.num_classes)
    train_loader = make_loader(train_split, data.task, spec.batch_size, shuffle=True, precision=precision,
                               generator=generator, sample_weights=sample_w)
    val_loader = make_loader(data.val, data.task, max(spec.batch_size, 64), shuffle=False, precision=precision)
    return train_loader, val_loader


def _setup_run(model_spec: ComponentSpec, loss_spec: ComponentSpec, data: SplitData, spec: TrainingSpec, out: Path,
               *, seed: int, normalize: str, train_on: str, init_state: dict[str, torch.Tensor] | None,
               member: str) -> _Run:
    """Seed, choose device and precision, build model, loss, optimiser, loaders, schedule and EMA.
    The order is the random number generators' order: changing it changes every run."""
    task = data.task
    monitor, mode = resolve_monitor(spec.monitor, task)
    train_split = _training_split(data, train_on)
    seed_everything(seed)
    precision = select_precision(select_device(spec.device), amp=spec.amp, num_workers=spec.num_workers)
    input_spec = InputSpec.fit(train_split.images, normalize)
    k = data.num_classes
    net, arch_kwargs = _build_net(model_spec, task, input_spec, k, precision, init_state)
    counts = (np.bincount(train_split.labels, minlength=k) if task == "classification"
              else pixel_counts(train_split.masks, k)).tolist()
    criterion = build_loss(loss_spec, task, counts, spec.class_weights).to(precision.device)
    optimizer = build_optimizer(parameter_groups(net, spec), spec)
    # loss scaling only for fp16 (CUDA's choice without bf16): bf16 has float32's exponent range
    scaler = torch.amp.GradScaler(precision.device.type) if precision.use_scaler else None
    gens = {"sampler": torch.Generator().manual_seed(seed), "augment": torch.Generator().manual_seed(seed + 1)}
    train_loader, val_loader = _loaders(data, train_split, spec, precision, gens["sampler"])
    transform = DeviceTransform(input_spec, precision, augment=spec.augment, flips=spec.flips, task=task)
    steps_per_epoch = len(train_loader)
    # a small dataset has few steps an epoch: train for at least min_steps optimiser steps
    n_epochs = max(spec.epochs, math.ceil(spec.min_steps / max(1, steps_per_epoch)))
    scheduler, per_step = build_scheduler(optimizer, spec, mode, steps_per_epoch, n_epochs)
    return _Run(
        spec=spec, model_spec=model_spec, loss_spec=loss_spec, data=data, train_split=train_split, train_on=train_on,
        out=out, seed=seed, member=member, monitor=monitor, mode=mode, precision=precision,
        autocast_kw=({"device_type": precision.device.type, "dtype": precision.autocast_dtype}
                     if precision.autocast_dtype is not None else None),
        input_spec=input_spec, arch_kwargs=arch_kwargs, counts=counts, net=net, criterion=criterion,
        optimizer=optimizer, scaler=scaler, gens=gens, train_loader=train_loader, val_loader=val_loader,
        transform=transform, steps_per_epoch=steps_per_epoch, n_epochs=n_epochs, scheduler=scheduler, per_step=per_step,
        ema=ema_model(net, spec.ema_decay) if spec.ema_decay else None,
        best_value=math.inf if mode == "min" else -math.inf,
    )


def _resume(run: _Run) -> None:
    """Continue from ``checkpoint.pt``: weights, optimiser, schedule, scaler, EMA, history and the
    random number generators, so the run goes on bit for bit as if never stopped."""
    ck = torch.load(run.out / CHECKPOINT, map_location=run.precision.device, weights_only=False)
    run.net.load_state_dict(ck["model"])
    run.optimizer.load_state_dict(ck["optimizer"])
    if run.scheduler is not None and ck.get("scheduler") is not None:
        run.scheduler.load_state_dict(ck["scheduler"])
    if run.scaler is not None and ck.get("scaler") is not None:
        run.scaler.load_state_dict(ck["scaler"])
    if run.ema is not None and ck.get("ema") is not None:
        run.ema.load_state_dict(ck["ema"])
    run.history, run.best_value, run.best_epoch = ck["history"], ck["best_value"], ck["best_epoch"]
    run.best_state, run.bad_epochs, run.start_epoch = ck["best_state"], ck["bad_epochs"], ck["epoch"] + 1
    _set_rng_state(ck["rng"], run.gens)


def _train_epochs(run: _Run, *, display: Display, checkpoint_store: StoreCheckpoints | None,
                  on_epoch_end: Callable[[dict], None] | None) -> tuple[int, bool]:
    """Every epoch left: train, validate (EMA contest), keep the best, checkpoint, report.
    Returns the last epoch entered and whether the patience ran out."""
    spec = run.spec
    lines = EpochLines(run.member, run.n_epochs, run.monitor) if display == "lines" else None
    stopped_early = (bool(run.history) and run.bad_epochs >= (spec.patience or math.inf)
                     and len(run.history) * run.steps_per_epoch >= spec.min_steps)
    epoch = run.start_epoch - 1
    for epoch in range(run.start_epoch, run.n_epochs + 1):
        if stopped_early:
            break
        trained = _train_epoch(run, epoch, bar=display == "bar")
        val_loss, metrics, source = _validate_epoch(run)
        row = {"epoch": epoch, "train_loss": trained.loss, "val_loss": val_loss,
               **{f"val_{m}": v for m, v in metrics.items()},
               **({"weights": "ema" if source is not run.net else "raw"} if run.ema is not None else {}),
               **({"encoder_frozen": trained.frozen} if spec.freeze_encoder_epochs else {}),
               "lr": run.optimizer.param_groups[-1]["lr"],  # the head's when the encoder has its own
               "train_seconds": trained.seconds,
               "train_images_per_s": trained.seen / trained.seconds if trained.seconds else 0.0,
               "seconds": time.perf_counter() - trained.t0}
        _record_epoch(run, row, val_loss if run.monitor == "val_loss" else metrics[run.monitor], source)
        stopped_early = (spec.patience is not None and run.bad_epochs >= spec.patience
                         and epoch * run.steps_per_epoch >= spec.min_steps)
        _checkpoint(run, epoch)
        if checkpoint_store is not None and checkpoint_store.due(epoch):
            _publish_checkpoint(checkpoint_store, run.out, epoch)
        if lines is not None:
            lines(row)
        if on_epoch_end is not None:
            on_epoch_end(row)
    return epoch, stopped_early


def _train_epoch(run: _Run, epoch: int, *, bar: bool) -> _Trained:
    """One pass over the training loader (with a progress bar when ``bar``)."""
    from tqdm.auto import tqdm

    spec, net = run.spec, run.net
    if hasattr(run.criterion, "set_epoch"):
        run.criterion.set_epoch(epoch - 1)  # the loss library counts epochs from 0
    net.train()
    frozen = epoch <= spec.freeze_encoder_epochs
    if spec.freeze_encoder_epochs:
        set_encoder_frozen(net, frozen)
    t0 = time.perf_counter()
    total, seen = 0.0, 0
    batches = tqdm(run.train_loader, desc=f"{run.member} epoch {epoch}/{run.n_epochs}", leave=False,
                   disable=not bar)
    for images, targets in batches:
        x, y = run.transform(images, targets, augment=True, generator=run.gens["augment"])
        value = _train_step(run, x, y, epoch)
        total += value.item() * len(x)
        seen += len(x)
        batches.set_postfix(loss=f"{total / seen:.4f}")
    train_time = time.perf_counter() - t0
    return _Trained(t0=t0, seconds=train_time, loss=total / max(seen, 1), seen=seen, frozen=frozen)


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
    """One optimiser step. On the AMP path (``run.autocast_kw``: bf16 on CPU or CUDA, fp16 on
    CUDA) the forward pass runs under ``torch.autocast`` and the loss in float32; with fp16 the
    grad scaler scales the loss and unscales the gradients before clipping."""
    net, optimizer, spec, scaler = run.net, run.optimizer, run.spec, run.scaler
    optimizer.zero_grad(set_to_none=True)
    if run.autocast_kw:
        with torch.autocast(**run.autocast_kw):
            logits = net(x)
        value = run.criterion(logits.float(), y)
    else:
        value = run.criterion(net(x), y)
    if not torch.isfinite(value):
        raise FloatingPointError(f"loss became {value.item()} at epoch {epoch}; lower training.lr")
    if scaler is not None:
        scaler.scale(value).backward()
        if spec.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), spec.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        value.backward()
        if spec.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), spec.grad_clip)
        optimizer.step()
    if run.ema is not None:
        run.ema.update_parameters(net)
    if run.per_step:
        run.scheduler.step()
    return value


def _validate_epoch(run: _Run) -> tuple[float, dict[str, float], nn.Module]:
    """Validation loss and metrics, and the weights they belong to: with an EMA the averaged
    weights compete with the raw ones every epoch and win when their monitored value is better."""
    val_loss, probs, target = _evaluate(run.net, run.val_loader, run.transform, run.criterion, run.autocast_kw)
    metrics = quick_metrics(run.task, probs, target)
    if run.ema is None:
        return val_loss, metrics, run.net
    e_loss, e_probs, e_target = _evaluate(run.ema.module, run.val_loader, run.transform, run.criterion,
                                          run.autocast_kw)
    e_metrics = quick_metrics(run.task, e_probs, e_target)
    raw_v, ema_v = (val_loss, e_loss) if run.monitor == "val_loss" else (metrics[run.monitor], e_metrics[run.monitor])
    if (ema_v < raw_v) if run.mode == "min" else (ema_v > raw_v):
        return e_loss, e_metrics, run.ema.module
    return val_loss, metrics, run.net


def _record_epoch(run: _Run, row: dict, current: float, source: nn.Module) -> None:
    """Keep the epoch's row, its weights when ``current`` (the monitored value) is the best so far,
    step an epoch-wise schedule and append the row to ``train_log.jsonl``."""
    run.history.append(row)
    improved = current < run.best_value if run.mode == "min" else current > run.best_value
    if improved:
        run.best_value, run.best_epoch, run.bad_epochs = current, row["epoch"], 0
        run.best_state = {k: v.detach().to("cpu", copy=True) for k, v in source.state_dict().items()}
    else:
        run.bad_epochs += 1
    if run.scheduler is not None and not run.per_step:
        run.scheduler.step(current)
    with (run.out / LOG).open("a") as f:
        f.write(json.dumps(row) + "\n")


def _checkpoint(run: _Run, epoch: int) -> None:
    """Everything :func:`_resume` needs, written atomically."""
    _save_checkpoint(run.out / CHECKPOINT, {
        "epoch": epoch, "model": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "history": run.history, "best_value": run.best_value, "best_epoch": run.best_epoch,
        "best_state": run.best_state, "bad_epochs": run.bad_epochs, "rng": _rng_state(run.gens),
    })


def _calibrate(run: _Run, probs: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, dict | None]:
    """Temperature scaling fitted on the validation predictions (classification with
    ``training.calibrate``): the calibrated probabilities, the temperature and its record."""
    if not (run.spec.calibrate and run.task == "classification"):
        return probs, 1.0, None
    from medens.training.calibration import TemperatureScaling

    ts = TemperatureScaling().fit(probs, target)
    return apply_temperature(torch.from_numpy(probs), ts.temperature).numpy(), ts.temperature, ts.to_dict()


def _finish(run: _Run, *, stopped_early: bool, extra_manifest: dict | None,
            checkpoint_store: StoreCheckpoints | None) -> FitResult:
    """The artifact: best weights, validation predictions, manifest last (then the checkpoint goes)."""
    spec, task, data, out = run.spec, run.task, run.data, run.out
    run.net.load_state_dict(run.best_state)
    save_state_dict(out / WEIGHTS, run.best_state)
    flips = tta_flips(spec.tta, spec.flips)
    _, probs, target = _evaluate(run.net, run.val_loader, run.transform, run.criterion, run.autocast_kw,
                                 flips=flips, task=task)
    probs, temperature, calibration = _calibrate(run, probs, target)
    inference = {"tta": spec.tta, "tta_flips": [list(d) for d in flips], "temperature": temperature}
    val_metrics = {"val_loss": run.history[run.best_epoch - 1]["val_loss"], **quick_metrics(task, probs, target)}
    collapse = collapse_entry(probs, target, data.class_names) if task == "classification" else None
    preds = Predictions(probs=probs.astype(np.float16 if task == "segmentation" else np.float32), ids=data.val.ids,
                        labels=data.val.labels, masks=data.val.masks, class_names=data.class_names)
    preds.save(out / "predictions" / "val.npz")
    manifest = _manifest(run, stopped_early=stopped_early, val_metrics=val_metrics, collapse=collapse,
                         inference=inference, calibration=calibration, extra=extra_manifest)
    (out / CHECKPOINT).unlink(missing_ok=True)
    write_manifest(out, manifest)
    if checkpoint_store is not None:
        checkpoint_store.clear()
    return FitResult(out, run.best_epoch, run.history, val_metrics, run.precision.describe(), collapse)


def _manifest(run: _Run, *, stopped_early: bool, val_metrics: dict, collapse: dict | None, inference: dict,
              calibration: dict | None, extra: dict | None) -> dict[str, Any]:
    """``model.json``: what :func:`medens.models.artifact.load_artifact` needs, and how training went."""
    data = run.data
    return {
        "kind": "model",
        "task": run.task,
        "architecture": {"name": run.model_spec.name, "kwargs": run.arch_kwargs},
        **({"pretrained": run.net.pretrained} if getattr(run.net, "pretrained", None) else {}),  # file and sha256
        "loss": {"name": run.loss_spec.name, "params": run.loss_spec.params},
        "class_names": data.class_names,
        "class_counts": run.counts,
        "input": run.input_spec.to_dict(),
        "preprocessing": {**PREPROCESSING, "dicom_window": data.info.get("dicom_window"),
                          "bit_depth": int(data.info.get("bit_depth", 8))},
        "reference": intensity_reference(run.train_split.images),
        "training": run.spec.model_dump(mode="json"),
        "seed": run.seed,
        "train_on": run.train_on,
        "history": run.history,
        "best_epoch": run.best_epoch,
        "stopped_early": stopped_early,
        "steps_per_epoch": run.steps_per_epoch,
        "monitor": run.monitor,
        "val_metrics": val_metrics,
        **(collapse or {}),  # collapsed: true (with collapsed_class) when every validation image gets one class
        "inference": inference,
        **({"calibration": calibration} if calibration else {}),
        "precision": run.precision.describe(),  # device, autocast dtype (off, bfloat16, float16), scaler
        **(extra or {}),
    }


def _collapse_of(manifest: dict) -> dict | None:
    """The collapse entry a ``model.json`` records (``None`` for segmentation or older artifacts)."""
    if "collapsed" not in manifest:
        return None
    return {k: manifest[k] for k in ("collapsed", "predicted_classes", "collapsed_class") if k in manifest}


@torch.no_grad()
def _evaluate(net: nn.Module, loader, transform: DeviceTransform, criterion: nn.Module,
              autocast_kw: dict | None, *, flips: tuple[tuple[int, ...], ...] = (),
              task: str = "classification") -> tuple[float, np.ndarray, np.ndarray]:
    """Validation loss (identity view) and probabilities (averaged over the ``flips`` views)."""
    net.eval()
    total, n, probs, targets = 0.0, 0, [], []
    for images, t in loader:
        x, y = transform(images, t)
        with torch.autocast(**autocast_kw) if autocast_kw else contextlib.nullcontext():
            logits = net(x)
        logits = logits.float()
        total += criterion(logits, y).item() * len(x)
        p = logits_to_probs(logits)
        if flips:
            with torch.autocast(**autocast_kw) if autocast_kw else contextlib.nullcontext():
                p = model_probs(net, x, task=task, flips=flips)
        n += len(x)
        probs.append(p.float().cpu())
        targets.append(t)
    return total / max(n, 1), torch.cat(probs).numpy(), torch.cat(targets).numpy()


def predict_split(path: str | os.PathLike, split: Split, *, batch_size: int = 256,
                  device: str | torch.device | None = None) -> Predictions:
    """Predictions of the artifact at ``path`` on ``split`` (preprocessing from the artifact)."""
    from medens.data.filearray import iter_rows
    from medens.data.transforms import preprocess
    from medens.models.artifact import load_artifact
    from medens.training.predictions import predict_probs

    dev = select_device("auto") if device is None else torch.device(device)
    loaded = load_artifact(path, map_location=dev)
    chunks = [predict_probs(loaded, preprocess(rows, loaded.input_spec), batch_size=batch_size, device=dev)
              for rows in iter_rows(split.images, 8 * 2**20)]  # bounded memory when the images are on disk
    probs = (np.concatenate(chunks) if chunks else
             predict_probs(loaded, preprocess(np.asarray(split.images), loaded.input_spec), device=dev))
    return Predictions(probs=probs, ids=list(split.ids), labels=split.labels, masks=split.masks,
                       class_names=loaded.class_names)


def describe_run(result: FitResult) -> dict[str, Any]:
    """A compact summary of a run (for the CLI and logs)."""
    return {"artifact": str(result.path), "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            **{k: round(v, 4) for k, v in result.val_metrics.items()}, "precision": result.precision,
            **(result.collapse or {})}
