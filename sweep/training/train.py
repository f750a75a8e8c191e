"""Training one SegNet: a few plain functions (one epoch, evaluate, the schedule, fit).

The whole dataset lives on the training device as tensors; augmentation runs there too, and the
loop never synchronises with the host inside an epoch (losses accumulate on the device).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from model import SegNetConfig
from sweep.core.records import VAL_DICE_FG
from sweep.training.augment import augment
from sweep.search.config import RESUME_SECONDS, TrainConfig
from sweep.training.losses import class_weights, segmentation_loss
from sweep.nn import threads
from sweep.nn.metrics import dice_counts, dice_from_counts

# Device, precision and inference live in sweep.nn.runtime (inference needs no trainer); the trainer's
# callers may keep reading them here.
from sweep.nn.runtime import (  # noqa: F401
    EVAL_BATCH,
    DeviceSplit,
    Fold,
    autocast,
    build_model,
    cpu_has_bf16,
    load_model,
    normalize,
    predict_logits,
    resolve_device,
    to_cpu,
    use_bf16,
)

WARMUP_FRACTION = 0.05  # of all steps, for the "cosine" schedule (at least one epoch's steps)


@dataclass
class FitResult:
    best_value: float  # best val dice_fg over the epochs
    best_epoch: int  # 1-based
    best_scores: dict[str, float]  # per-class val Dice at the best epoch
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch
    state_dicts: list[dict] = field(default_factory=list)  # weights of the best epoch per fold, on the CPU
    fold_scores: list[dict[str, float]] = field(default_factory=list)  # per-fold Dice at the best epoch
    seconds: float = 0.0

    @property
    def state_dict(self) -> dict | None:
        """The (first) fold's weights at the best epoch: the model of a plain train/val fit."""
        return self.state_dicts[0] if self.state_dicts else None

    @property
    def epochs_run(self) -> int:
        return len(self.history)


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def lr_factor(step: int, total_steps: int, schedule: str, warmup_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown schedule {schedule!r}")


def slices_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    """How many slices one epoch trains on: ``cfg.epoch_slices``, or every train slice once."""
    return cfg.epoch_slices or n_train


def epoch_batches(n: int, count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``count`` slice indices in batches of ``batch_size``: permutations of ``0..n-1`` one after
    another, cut at ``count``, so every slice is drawn once before any is drawn twice.

    Each permutation is drawn when the previous one runs out, so memory stays that of one
    permutation however many slices an epoch draws.
    """
    device = generator.device
    order, used = torch.randperm(n, device=device, generator=generator), 0
    for start in range(0, count, batch_size):
        need, parts = min(batch_size, count - start), []
        while need:
            if used == n:
                order, used = torch.randperm(n, device=device, generator=generator), 0
            take = min(need, n - used)
            parts.append(order[used : used + take])
            used, need = used + take, need - take
        yield parts[0] if len(parts) == 1 else torch.cat(parts)



def random_patches(images: torch.Tensor, masks: torch.Tensor, size: int, generator: torch.Generator):
    """A random ``size`` x ``size`` crop of each slice (its own offset each), images and masks alike."""
    n, _, height, width = images.shape
    if size <= 0 or (size >= height and size >= width):
        return images, masks
    size_h, size_w = min(size, height), min(size, width)
    device = images.device
    top = torch.randint(0, height - size_h + 1, (n, 1), device=device, generator=generator)
    left = torch.randint(0, width - size_w + 1, (n, 1), device=device, generator=generator)
    rows = (top + torch.arange(size_h, device=device))[:, :, None]  # (n, size_h, 1)
    cols = (left + torch.arange(size_w, device=device))[:, None, :]  # (n, 1, size_w)
    batch = torch.arange(n, device=device)[:, None, None]
    return images[batch, 0, rows, cols].unsqueeze(1), masks[batch, rows, cols]


def train_epoch(model, optimizer, scheduler, split: DeviceSplit, cfg: TrainConfig, weights, generator, bf16,
                on_step: Callable[[int], None] | None = None):
    """One epoch (``slices_per_epoch`` shuffled train slices); returns the mean loss as a device tensor.

    ``on_step(steps_done)`` is called after each optimiser step with a plain count: no host sync.
    """
    model.train()
    device = split.images.device
    count = slices_per_epoch(len(split), cfg)
    total = torch.zeros((), device=device)
    n_batches = 0
    for idx in epoch_batches(len(split), count, cfg.batch_size, generator):
        done = threads.timed("train")  # the thread count is chosen by timing steps (sweep.nn.threads)
        x, y = random_patches(split.images[idx], split.masks[idx], cfg.patch, generator)
        x, y = augment(x, y, cfg, generator)
        x = normalize(x).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            logits = model(x)
        loss = segmentation_loss(logits, y, weights, cfg.dice_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach()
        n_batches += 1
        done(len(idx))
        if on_step is not None:
            on_step(n_batches)
    return total / max(n_batches, 1)


@torch.inference_mode()
def evaluate(model, split: DeviceSplit, bf16: bool) -> dict[str, float]:
    """Dice per class, ``dice_fg``, ``dice_mean4`` and mean cross-entropy over a whole split."""
    logits = predict_logits(model, split.images, bf16)
    scores = dice_from_counts(dice_counts(logits.argmax(1), split.masks, logits.shape[1]))
    scores["loss"] = float(F.cross_entropy(logits, split.masks))
    return scores


def fit(
    model_cfg: SegNetConfig,
    train_cfg: TrainConfig,
    train: DeviceSplit,
    val: DeviceSplit,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    keep_state: bool = True,
    bf16: bool | None = None,
) -> FitResult:
    """Train from scratch for ``train_cfg.epochs`` epochs, evaluating the whole val split each epoch.

    The best epoch by val ``dice_fg`` is kept (its weights when ``keep_state``). ``on_epoch(epoch,
    record)`` is called after every epoch and may raise (e.g. to prune) to stop training.
    ``bf16`` forces or forbids bf16 autocast (default: where the device runs it fast).
    Raises DivergedError when the training loss stops being finite.
    """
    return fit_folds(model_cfg, train_cfg, [(train, val)], seed=seed, on_epoch=on_epoch, keep_state=keep_state, bf16=bf16)


def fit_folds(
    model_cfg: SegNetConfig,
    train_cfg: TrainConfig,
    folds: list[Fold],
    *,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    keep_state: bool = True,
    bf16: bool | None = None,
    resume: dict | None = None,
    on_resume_point: Callable[[dict], None] | None = None,
    resume_every: float = RESUME_SECONDS,
    val_slices: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Train one model per fold, in lockstep: every epoch trains each fold's model once more.

    After each epoch every model is evaluated on its own held-out split and the record holds
    the mean over folds (``val_dice_fg`` is the mean fold ``dice_fg``), so ``on_epoch`` can
    prune on the running cross-validated score from the first epoch on. The best epoch is the
    one with the best mean; ``state_dicts`` holds every fold's weights at that epoch and
    ``fold_scores`` each fold's Dice there. With one fold this is plain training with a
    val split (``fit``).

    ``on_resume_point(point)`` receives a resume point (``resume_point``) at the end of an
    epoch, before ``on_epoch``, at most every ``resume_every`` seconds. Given such a point as
    ``resume`` (same configs, folds and ``seed``), training continues with the next epoch and
    ends exactly as an uninterrupted run would (on the CPU; CUDA kernels may not be
    deterministic).

    ``val_slices`` > 0 bounds the per-epoch evaluation on large data: each epoch scores a fixed
    subset of that many held-out slices (``val_subset``; the history keeps its figures); then the best
    epoch's weights are scored on the whole held-out split: ``best_value``, ``best_scores``, ``fold_scores``.

    ``on_step(done, steps)``: after each optimiser step, the epoch's steps so far and in all (folds
    together), plain integers: life inside a long epoch at no host sync.
    """
    device = folds[0][0].images.device
    generator, bf16 = _start(device, seed, bf16)
    runs = [_FoldRun(model_cfg, train_cfg, train, device) for train, _ in folds]
    watched = [(train, val_subset(held, val_slices)) for train, held in folds]
    result = FitResult(best_value=-math.inf, best_epoch=0, best_scores={})
    if resume is not None:
        _restore(resume, runs, generator, result)
    last_point = time.perf_counter()
    start = last_point - result.seconds
    for epoch in range(result.epochs_run + 1, train_cfg.epochs + 1):
        record, fold_scores = _run_epoch(runs, watched, train_cfg, generator, bf16, epoch, on_step)
        result.history.append(record)
        if record[VAL_DICE_FG] > result.best_value:
            _keep_best(result, record, fold_scores, runs if keep_state else None)
        result.seconds = time.perf_counter() - start
        if on_resume_point is not None and time.perf_counter() - last_point >= resume_every:
            on_resume_point(resume_point(runs, generator, result))
            last_point = time.perf_counter()
        if on_epoch is not None:
            on_epoch(epoch, record)
    if keep_state:
        _score_on_whole(result, model_cfg, folds, watched, bf16)
    return result


def _start(device: torch.device, seed: int, bf16: bool | None) -> tuple[torch.Generator, bool]:
    """Seed torch's global RNG (weight init, dropout) and make the training generator (shuffling,
    patches, augmentation), both from ``seed``; and settle bf16 (None: where the device runs it fast)."""
    torch.manual_seed(seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator, use_bf16(device) if bf16 is None else bf16


def val_subset(split: DeviceSplit, count: int) -> DeviceSplit:
    """``count`` slices evenly spaced through ``split`` (every patient and level of a volume split
    ordered by case and slice), the same for every trial; the whole split when ``count`` is 0 or more."""
    if count <= 0 or count >= len(split):
        return split
    idx = torch.as_tensor(np.linspace(0, len(split) - 1, count).round().astype(np.int64), device=split.images.device)
    return DeviceSplit(split.images[idx], split.masks[idx])


def _score_on_whole(result: FitResult, model_cfg: SegNetConfig, folds: list[Fold], watched: list[Fold], bf16: bool) -> None:
    """Where the epochs scored a subset (``watched``), score the kept best-epoch weights on every
    fold's whole held-out split."""
    if not result.state_dicts or all(len(w[1]) == len(f[1]) for w, f in zip(watched, folds)):
        return
    device = folds[0][1].images.device
    result.fold_scores = []
    for state, (_, held) in zip(result.state_dicts, folds):
        scores = evaluate(load_model(model_cfg, state, device), held, bf16)
        result.fold_scores.append({k: v for k, v in scores.items() if k.startswith("dice_")})
    result.best_scores = {k: float(np.mean([s[k] for s in result.fold_scores])) for k in result.fold_scores[0]}
    result.best_value = result.best_scores["dice_fg"]


def fit_final(
    model_cfg: SegNetConfig,
    train_cfg: TrainConfig,
    train: DeviceSplit,
    *,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    bf16: bool | None = None,
) -> dict:
    """Train on all of ``train`` for exactly ``train_cfg.epochs`` epochs, nothing held out, and
    return the last epoch's weights (on the CPU): the refit on every labelled slice, with an
    epoch count chosen beforehand where slices were held out."""
    device = train.images.device
    generator, bf16 = _start(device, seed, bf16)
    run = _FoldRun(model_cfg, train_cfg, train, device)
    for epoch in range(1, train_cfg.epochs + 1):
        loss = run.epoch(train, train_cfg, generator, bf16, epoch)
        if on_epoch is not None:
            on_epoch(epoch, {"epoch": epoch, "train_loss": loss})
    return to_cpu(run.model.state_dict())


def _run_epoch(runs, folds: list[Fold], cfg: TrainConfig, generator, bf16: bool, epoch: int, on_step=None):
    """One more epoch of every fold's model; the record of the epoch (means over folds) and each fold's scores."""
    losses, fold_scores = [], []
    steps, done = sum(run.steps_per_epoch for run in runs), 0
    for run, (train, held_out) in zip(runs, folds):
        hook = None if on_step is None else (lambda n, before=done: on_step(before + n, steps))
        losses.append(run.epoch(train, cfg, generator, bf16, epoch, hook))
        done += run.steps_per_epoch
        fold_scores.append(evaluate(run.model, held_out, bf16))
    scores = {key: float(np.mean([s[key] for s in fold_scores])) for key in fold_scores[0]}
    record = {"epoch": epoch, "train_loss": float(np.mean(losses)), **{f"val_{k}": v for k, v in scores.items()}}
    return record, fold_scores


def _keep_best(result: FitResult, record: dict, fold_scores: list[dict], runs) -> None:
    """Make ``record``'s epoch the best so far (with every fold's weights, on the CPU, unless ``runs`` is None)."""
    result.best_value, result.best_epoch = record[VAL_DICE_FG], record["epoch"]
    result.best_scores = {k[len("val_"):]: v for k, v in record.items() if k.startswith("val_dice_")}
    result.fold_scores = [{k: v for k, v in s.items() if k.startswith("dice_")} for s in fold_scores]
    if runs is not None:
        result.state_dicts = [to_cpu(run.model.state_dict()) for run in runs]


def resume_point(runs, generator: torch.Generator, result: FitResult) -> dict:
    """Everything needed to continue training after ``result``'s last epoch: a CPU copy, safe to keep.

    Every fold's model, optimiser and schedule, torch's global RNG (dropout draws from it) and
    the training generator (shuffling, augmentation), and the best-so-far and history.
    """
    device = generator.device
    return {
        "epoch": result.epochs_run,
        "folds": [
            to_cpu({"model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(), "scheduler": r.scheduler.state_dict()})
            for r in runs
        ],
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "generator": generator.get_state(),
        "best": {
            "value": result.best_value,
            "epoch": result.best_epoch,
            "scores": dict(result.best_scores),
            "fold_scores": [dict(s) for s in result.fold_scores],
            "state_dicts": list(result.state_dicts),  # already CPU copies, replaced and never changed in place
        },
        "history": [dict(r) for r in result.history],
        "seconds": result.seconds,
    }


def _restore(point: dict, runs, generator: torch.Generator, result: FitResult) -> None:
    """Put the models, optimisers, schedules, RNGs and the result back where ``point`` left them."""
    if len(point["folds"]) != len(runs):
        raise ValueError(f"resume point has {len(point['folds'])} folds, this fit {len(runs)}")
    for run, saved in zip(runs, point["folds"]):
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(point["torch_rng"])
    if point["cuda_rng"] is not None and generator.device.type == "cuda":
        torch.cuda.set_rng_state(point["cuda_rng"], generator.device)
    generator.set_state(point["generator"])
    best = point["best"]
    result.best_value, result.best_epoch = best["value"], best["epoch"]
    result.best_scores, result.fold_scores = dict(best["scores"]), [dict(s) for s in best["fold_scores"]]
    result.state_dicts = list(best["state_dicts"])
    result.history = [dict(r) for r in point["history"]]
    result.seconds = point["seconds"]


class _FoldRun:
    """A model with its optimiser, schedule and class weights, for one training split."""

    def __init__(self, model_cfg: SegNetConfig, train_cfg: TrainConfig, train: DeviceSplit, device: torch.device) -> None:
        self.model = build_model(model_cfg, device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        self.steps_per_epoch = math.ceil(slices_per_epoch(len(train), train_cfg) / train_cfg.batch_size)
        total_steps = self.steps_per_epoch * train_cfg.epochs
        warmup = max(self.steps_per_epoch, int(WARMUP_FRACTION * total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps, train_cfg.schedule, warmup)
        )
        self.weights = class_weights(train.masks, train_cfg.class_weight_power) if train_cfg.class_weight_power else None

    def epoch(self, train: DeviceSplit, cfg: TrainConfig, generator: torch.Generator, bf16: bool, number: int,
              on_step: Callable[[int], None] | None = None) -> float:
        """Train one more epoch; its mean loss. Raises DivergedError when the loss stops being finite."""
        loss = float(train_epoch(self.model, self.optimizer, self.scheduler, train, cfg, self.weights, generator, bf16,
                                 on_step))
        if not math.isfinite(loss):
            raise DivergedError(f"training loss became {loss} in epoch {number}")
        return loss
