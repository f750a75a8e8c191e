#!/usr/bin/env python
"""Benchmark of segnet-sweep against the way the original coursework trained.

    python -m benchmarks.bench [--quick|--smoke] [--json] [--only NAME,...] [--data PATH|phantom]
                               [--device auto|cpu|cuda|cuda:K] [--workers W[,W...]]
                               [--postgres URL] [--threads N]

Sections (``--only``; all but ``peak`` run by default), each run side by side and repeated in
one script run, figures are medians over the repeats:

- ``trainer``: seconds per epoch (train + the per-epoch validation) of ``sweep.training.train.fit`` versus
  a NAIVE trainer written below the way the coursework trained (a DataLoader re-reading the PNGs
  every epoch, float32, softmax then ``nn.CrossEntropyLoss`` on the softmax output, ``.item()``
  every step, Adam 1e-3, batch 10), for SegNet-VGG16 and a small SegNet. Target >= 2x.
- ``sweep``: trials/hour of ``sweep.training.run.run`` versus a plain single-process Optuna loop over the
  naive trainer, on the same 8 enqueued configurations without pruning. Reported, no longer a
  target: what a sweep gains is judged by time to quality (below).
- ``overhead``: storage + sampler + pruner milliseconds per trial with a dummy objective, at
  100 and 1,000 trials (--quick: 100 and 300), SQLite and PostgreSQL, and as a percentage of a
  typical trial. Target < 1 % at 100 trials.
- ``memory``: resident memory of one worker process over 20 short trials (a fresh process, so
  the other sections do not set its high-water mark). Target: growth trial 5 -> 20 < 10 %.
- ``peak``: the device's ceiling, measured in the same run as the trainer: the matmul rate (bf16
  and fp32) and, for each architecture, its own distinct convolution shapes on one training batch,
  each timed alone (forward + backward, channels_last, the trainer's precision) and weighted by
  how often it runs. An architecture's ceiling is the best of the three; the trainer's achieved
  TFLOP/s over it is ``trainer_peak_fraction_{arch}`` (targets: VGG16 >= 0.8, small >= 0.6).

Every run also copies ``time_to_quality_gain`` and ``time_to_quality_speedup`` from the last
summary of benchmarks/time_to_quality.py (the file in $SEGNET_BENCH_TIME_TO_QUALITY, else
benchmarks/results/time_to_quality.json, else the committed record
docs/measurements/time_to_quality-60min.json; null while that run is incomplete) and checks them
against their targets.

Human progress goes to stderr; ``--json`` prints one JSON object on stdout. See
docs/PERFORMANCE.md for the method and the recorded figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np
import optuna
import torch
from PIL import Image
from torch import nn

from benchmarks.naive import mask_path, naive_fit, split_images, sync
from data import load_dataset, make_phantom_dataset, write_mask
from model import SegNet, SegNetConfig
from sweep.core import study as st
from sweep.training.objective import Objective
from sweep.search.config import DEFAULT_EPOCHS
from sweep.search.options import RunOptions
from sweep.search.presets import preset
from sweep.core.progress import Progress, StopAfterFailures
from sweep.core.records import FINISHED, compact_history
from sweep.training.run import run
from sweep.search.space import suggest
from sweep.search.strategies import make_pruner, make_sampler
from sweep.training.train import DeviceSplit, TrainConfig, autocast, fit, resolve_device, use_bf16

CMRI = ROOT.parent / "shared" / "data" / "cmri"  # the real data, where this checkout has it
SECTIONS = ("trainer", "sweep", "overhead", "memory", "peak")
DEFAULT_SECTIONS = ("trainer", "sweep", "overhead", "memory")
N_CLASSES = 4

ARCHS = {
    "vgg16": SegNetConfig(depth=5, base_width=64, convs_per_stage=(2, 2, 3, 3, 3), kernel_size=3),
    "small": SegNetConfig(depth=4, base_width=16, convs_per_stage=(2, 2, 2, 2), kernel_size=3),
}
# Our trainer set up as the coursework trained: AdamW with no decay is Adam.
TRAINER_CFG = TrainConfig(lr=1e-3, weight_decay=0.0, batch_size=10, schedule="constant", dice_weight=0.0)

# Eight fixed, plausible small-to-medium configurations of the search space (sweep/search/space.py),
# cheapest first (smoke runs take a prefix), as overrides of the small preset. The naive loop trains
# each with its architecture, lr and batch size only (it has no Dice loss, schedule or augmentation:
# that only favours it).
SWEEP_CONFIGS = [
    preset("small", class_weight_power=0.0),
    preset("small", class_weight_power=0.0, lr=0.001, depth=4, convs_shallow=2, convs_deep=2,
                    batch_size=10, dice_weight=0.0, schedule='constant', aug_rotate=0.0, aug_scale=0.0,
                    aug_gamma=0.0),
    preset("small", class_weight_power=0.0, lr=0.002, depth=4, base_width=16, convs_shallow=2,
                    convs_deep=2, batch_size=10, dice_weight=0.3, aug_rotate=10.0, aug_scale=0.1,
                    aug_gamma=0.2),
    preset("small", lr=0.0005, base_width=16, convs_shallow=2, convs_deep=3, kernel_size=5,
                    schedule='constant', aug_scale=0.0, aug_gamma=0.0),
    preset("small", class_weight_power=0.0, lr=0.001, depth=5, base_width=16, convs_shallow=2,
                    convs_deep=3, batch_size=10, dice_weight=0.0, aug_rotate=0.0, aug_scale=0.1,
                    aug_gamma=0.0),
    preset("small", class_weight_power=0.0, dropout=0.2, lr=0.004, depth=4, convs_shallow=3, convs_deep=2,
                    kernel_size=5, batch_size=8, dice_weight=0.7, aug_rotate=15.0, aug_scale=0.15,
                    aug_gamma=0.3),
    preset("small", class_weight_power=0.0, lr=0.0015, base_width=32, convs_deep=2, batch_size=8,
                    dice_weight=0.2, schedule='constant', aug_rotate=8.0),
    preset("small", class_weight_power=0.5, dropout=0.1, lr=0.0008, depth=4, base_width=32,
                    convs_shallow=2, convs_deep=2, dice_weight=0.4, aug_rotate=10.0, aug_scale=0.1,
                    aug_gamma=0.2),
]
# The memory section's small configuration (SWEEP_CONFIGS[2] with no augmentation: the same work every trial).
MEMORY_PARAMS = {**SWEEP_CONFIGS[2], "aug_rotate": 0.0, "aug_scale": 0.0, "aug_gamma": 0.0}

CUDA_EPOCH_FACTOR = 10  # trainer section on a GPU: this many times the profile's timed epochs
OVERHEAD_EPOCHS = 5  # intermediate values the dummy objective reports (steps), as a short trial of ours
# Typical trial when the sweep section did not run: a 50-epoch trial of the median SWEEP_CONFIGS
# configuration on the 60 cmri slices, at about 0.5 s per epoch on 2 CPU cores (estimated on a busy
# machine; run the sweep section to measure instead).
DEFAULT_TYPICAL_TRIAL_S = 25.0
# Where time_to_quality.py writes its summary (benchmarks/results/ is git-ignored); this
# environment variable points bench.py at another file. Without either, the committed record of
# the last 60-minute run (docs/PERFORMANCE.md, section 7) is read, so that a fresh clone reports it.
TIME_TO_QUALITY_JSON = ROOT / "benchmarks" / "results" / "time_to_quality.json"
TIME_TO_QUALITY_RECORD = ROOT / "docs" / "measurements" / "time_to_quality-60min.json"
TIME_TO_QUALITY_ENV = "SEGNET_BENCH_TIME_TO_QUALITY"
TARGETS = {  # key: (comparison, bound). sweep_speedup is reported, no longer a target.
    "trainer_speedup_small": (">=", 2.0),
    "trainer_speedup_vgg16": (">=", 2.0),
    "trainer_peak_fraction_small": (">=", 0.6),
    "trainer_peak_fraction_vgg16": (">=", 0.8),
    "time_to_quality_gain": (">=", 0.03),
    "time_to_quality_speedup": (">=", 2.5),
    "overhead_pct_100_sqlite": ("<", 1.0),
    "overhead_pct_100_postgres": ("<", 1.0),
    "rss_growth_pct_5_to_20": ("<", 10.0),
}


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark profile (``--smoke``, ``--quick`` or the full default)."""

    name: str
    repeats: int  # side-by-side repetitions of the trainer and sweep comparisons
    archs: tuple[str, ...]  # trainer comparison architectures
    warmup_epochs: int  # trainer: untimed epochs first (allocator, oneDNN kernel choice)
    timed_epochs: dict  # trainer: timed epochs per architecture
    max_train: int | None  # slices of each split used (None: all)
    max_val: int | None
    sweep_configs: int  # how many of SWEEP_CONFIGS
    sweep_epochs: int
    sweep_repeats: int
    overhead_sizes: tuple[int, int]  # ms/trial reported at these trial counts (small, large) of a study
    overhead_studies: tuple[int, int]  # studies of the small size run besides those of the large size
    memory_trials: int
    memory_epochs: int
    matmul_n: dict  # peak section: matrix size per device type
    conv_probe_s: float  # peak section: minimum seconds timing each distinct conv shape (0: one run)


PROFILES = {
    "smoke": Settings(
        name="smoke", repeats=1, archs=("small",), warmup_epochs=0, timed_epochs={"small": 1},
        max_train=10, max_val=4, sweep_configs=2, sweep_epochs=1, sweep_repeats=1,
        overhead_sizes=(5, 10), overhead_studies=(0, 1), memory_trials=20, memory_epochs=1,
        matmul_n={"cpu": 256, "cuda": 1024}, conv_probe_s=0.0,
    ),
    "quick": Settings(
        name="quick", repeats=3, archs=("small", "vgg16"), warmup_epochs=1, timed_epochs={"small": 2, "vgg16": 1},
        max_train=None, max_val=None, sweep_configs=8, sweep_epochs=3, sweep_repeats=2,
        overhead_sizes=(100, 300), overhead_studies=(1, 1), memory_trials=20, memory_epochs=1,
        matmul_n={"cpu": 2048, "cuda": 8192}, conv_probe_s=0.3,
    ),
    "full": Settings(
        name="full", repeats=3, archs=("small", "vgg16"), warmup_epochs=1, timed_epochs={"small": 3, "vgg16": 2},
        max_train=None, max_val=None, sweep_configs=8, sweep_epochs=10, sweep_repeats=2,
        overhead_sizes=(100, 1000), overhead_studies=(2, 1), memory_trials=20, memory_epochs=2,
        matmul_n={"cpu": 2048, "cuda": 8192}, conv_probe_s=1.0,
    ),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------------
# Data: one folder in the coursework layout that both sides read (PNG files)
# --------------------------------------------------------------------------------------------


@dataclass
class BenchData:
    folder: Path  # coursework layout: train/ and val/, each image/NAME.png and mask/NAME_mask.png
    description: str
    synthetic: bool
    n_train: int
    n_val: int
    size: tuple[int, int]


def prepare_data(source: str, settings: Settings, tmp: Path) -> BenchData:
    """The benchmark's data folder: ``source`` itself, a linked subset of it, or phantom PNGs in ``tmp``."""
    limits = {"train": settings.max_train, "val": settings.max_val}
    if source == "phantom":
        dataset = make_phantom_dataset()
        folder = tmp / "phantom"
        for name, split in (("train", dataset.train), ("val", dataset.val)):
            count = limits[name] or len(split)
            for image, mask, stem in list(zip(split.images, split.masks, split.names))[:count]:
                (folder / name / "image").mkdir(parents=True, exist_ok=True)
                pixels = np.round(image * 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / name / "image" / f"{stem}.png")
                write_mask(folder / name / "mask" / f"{stem}_mask.png", mask)
        described, synthetic = "phantom (synthetic, seed 0) written as PNGs", True
    else:
        root = Path(source).expanduser().resolve()
        if not ((root / "train" / "image").is_dir() and (root / "val" / "image").is_dir()):
            raise SystemExit(f"--data {source}: expected 'phantom' or a folder with train/ and val/ (coursework layout)")
        folder, described, synthetic = root, str(root), False
        if any(limits.values()):
            # A subset without copying the data: links to the first slices of each split.
            folder = tmp / "subset"
            for name in ("train", "val"):
                for image in split_images(root / name)[: limits[name] or None]:
                    for src, dst in ((image, folder / name / "image" / image.name),
                                     (mask_path(root / name, image), folder / name / "mask" / f"{image.stem}_mask.png")):
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        dst.symlink_to(src)
            described = f"{root} (first {limits['train']} train / {limits['val']} val slices)"
    n_train, n_val = len(split_images(folder / "train")), len(split_images(folder / "val"))
    with Image.open(split_images(folder / "train")[0]) as first:
        size = (first.height, first.width)
    description = f"{described}: {n_train} train / {n_val} val, {size[0]}x{size[1]}"
    return BenchData(folder, description, synthetic, n_train, n_val, size)


def device_splits(data: BenchData, device: torch.device) -> tuple[DeviceSplit, DeviceSplit]:
    dataset = load_dataset(data.folder)
    return (
        DeviceSplit.from_arrays(dataset.train.images, dataset.train.masks, device),
        DeviceSplit.from_arrays(dataset.val.images, dataset.val.masks, device),
    )


# --------------------------------------------------------------------------------------------
# Section 1: trainer epoch time
# --------------------------------------------------------------------------------------------


def ours_fit(model_cfg: SegNetConfig, train: DeviceSplit, val: DeviceSplit, epochs: int, seed: int = 0,
             bf16: bool | None = None, batch_size: int | None = None) -> list[dict]:
    """``sweep.training.train.fit`` with one record per epoch (its seconds: train + val, as fit runs them).

    ``batch_size`` overrides the trainer's 10 (``gpu_variants.py``'s batch variants)."""
    device = train.images.device
    records = []
    sync(device)
    last = time.perf_counter()

    def on_epoch(epoch: int, record: dict) -> None:
        nonlocal last
        sync(device)
        now = time.perf_counter()
        records.append({"epoch": epoch, "seconds": now - last, "train_loss": record["train_loss"],
                        "val_dice_fg": record["val_dice_fg"]})
        last = now

    cfg = replace(TRAINER_CFG, epochs=epochs, batch_size=batch_size or TRAINER_CFG.batch_size)
    fit(model_cfg, cfg, train, val, seed=seed, on_epoch=on_epoch, bf16=bf16)
    return records


def conv_flops(model_cfg: SegNetConfig, size: tuple[int, int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of every convolution in one forward pass of one slice."""
    return sum(count * shape.forward_flops() for shape, count in conv_shapes(model_cfg, size, batch=1).items())


def section_trainer(b: Bench) -> dict:
    s, device, data = b.settings, b.device, b.data
    start = time.perf_counter()
    train, val = device_splits(data, device)
    load_s = time.perf_counter() - start
    out = {"data_load_s_ours": load_s, "bf16_ours": use_bf16(device), "archs": {}}
    for arch in s.archs:
        cfg = ARCHS[arch]
        warmup, timed = s.warmup_epochs, s.timed_epochs[arch]
        if device.type == "cuda":  # an epoch is ~0.1 s on an H100: time enough to rise above launch jitter
            warmup, timed = max(warmup, 3), timed * CUDA_EPOCH_FACTOR
        epochs = warmup + timed
        flops = conv_flops(cfg, data.size)
        # Train: forward + backward (input and weight gradients) ~ 3x forward; val: forward only.
        epoch_flops = 3 * flops * data.n_train + flops * data.n_val
        per_repeat = {"ours": [], "naive": []}
        for r in range(s.repeats):
            order = ("naive", "ours") if r % 2 == 0 else ("ours", "naive")
            for side in order:
                log(f"trainer {arch}: repeat {r + 1}/{s.repeats}, {side}, {epochs} epochs")
                if side == "ours":
                    history = ours_fit(cfg, train, val, epochs, seed=r)
                else:
                    history = naive_fit(cfg, data.folder, epochs=epochs, device=device, seed=r)
                timed = [h["seconds"] for h in history[warmup:]]
                per_repeat[side].append({"epoch_s": timed, "median_epoch_s": statistics.median(timed),
                                         "final_train_loss": history[-1]["train_loss"],
                                         "final_val_dice_fg": history[-1]["val_dice_fg"]})
                log(f"  {side}: {statistics.median(timed):.2f} s/epoch")
        res = {"forward_gflop_per_slice": flops / 1e9, "epoch_tflop": epoch_flops / 1e12, "repeats": per_repeat}
        for side in ("ours", "naive"):
            epoch_s = median(r["median_epoch_s"] for r in per_repeat[side])
            res[f"epoch_s_{side}"] = epoch_s
            res[f"images_per_s_{side}"] = data.n_train / epoch_s
            res[f"tflops_{side}"] = epoch_flops / epoch_s / 1e12
        res["speedup"] = res["epoch_s_naive"] / res["epoch_s_ours"]
        log(f"trainer {arch}: ours {res['epoch_s_ours']:.2f} s/epoch, naive {res['epoch_s_naive']:.2f} s/epoch, "
            f"speedup {res['speedup']:.2f}x")
        out["archs"][arch] = res
    return out


# --------------------------------------------------------------------------------------------
# Section 2: sweep throughput
# --------------------------------------------------------------------------------------------


def _trial_seconds(trials) -> list[float]:
    return [(t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials if t.datetime_complete is not None and t.datetime_start is not None]


def ours_sweep(data: BenchData, configs: list[dict], epochs: int, workers: int, device: str, tmp: Path) -> dict:
    """``sweep.training.run.run`` on a fresh SQLite study holding the enqueued configurations.

    With W workers a study may finish up to W - 1 trials beyond its target (docs/FORMATS.md); those
    extra trials are queued too, from the most expensive configuration down (so they cannot
    flatter the trials/hour), instead of leaving them to the sampler's draw.
    """
    folder = tmp / f"ours-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    url, name = f"sqlite:///{folder / 'studies.db'}", "bench-sweep"
    study = optuna.create_study(storage=st.make_storage(url), study_name=name, direction="maximize")
    extra = [configs[-1 - i % len(configs)] for i in range(workers - 1)]
    for params in configs + extra:
        study.enqueue_trial(params)
    opts = RunOptions(trials=len(configs), epochs=epochs, data=str(data.folder), storage=url, study=name,
                      pruner="none", device=device, workers=workers, progress=False)
    start = time.perf_counter()
    summary = run(opts)
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    return {"wall_s": wall, "finished": len(finished), "trials_per_hour": len(finished) / wall * 3600,
            "trial_s": _trial_seconds(finished), "states": summary["states"],
            "best_value": max((t.value for t in finished if t.value is not None), default=None)}


def naive_sweep(data: BenchData, configs: list[dict], epochs: int, device: torch.device) -> dict:
    """A plain single-process Optuna loop (in-memory storage) over the naive trainer."""
    start = time.perf_counter()
    study = optuna.create_study(direction="maximize")
    for params in configs:
        study.enqueue_trial(params)

    def objective(trial: optuna.Trial) -> float:
        model_cfg, train_cfg = suggest(trial, epochs)

        def on_epoch(epoch: int, record: dict) -> None:
            trial.report(record["val_dice_fg"], epoch)

        history = naive_fit(model_cfg, data.folder, epochs=epochs, device=device, lr=train_cfg.lr,
                            batch_size=train_cfg.batch_size, seed=trial.number, on_epoch=on_epoch)
        return max(h["val_dice_fg"] for h in history)

    study.optimize(objective, n_trials=len(configs))
    wall = time.perf_counter() - start
    finished = [t for t in study.trials if t.state in FINISHED]
    return {"wall_s": wall, "finished": len(finished), "trials_per_hour": len(finished) / wall * 3600,
            "trial_s": _trial_seconds(finished), "best_value": study.best_value}


def section_sweep(b: Bench) -> dict:
    s = b.settings
    configs = SWEEP_CONFIGS[: s.sweep_configs]
    runs = {"naive": []} | {f"ours_w{w}": [] for w in b.workers}
    for r in range(s.sweep_repeats):
        sides = list(runs) if r % 2 == 0 else list(reversed(runs))
        for side in sides:
            log(f"sweep: repeat {r + 1}/{s.sweep_repeats}, {side}, {len(configs)} trials x {s.sweep_epochs} epochs")
            if side == "naive":
                res = naive_sweep(b.data, configs, s.sweep_epochs, b.device)
            else:
                res = ours_sweep(b.data, configs, s.sweep_epochs, int(side[len("ours_w"):]), str(b.device), b.tmp)
            log(f"  {side}: {res['wall_s']:.1f} s, {res['trials_per_hour']:.0f} trials/h")
            runs[side].append(res)
    out = {"configs": configs, "epochs": s.sweep_epochs, "workers": list(b.workers), "runs": runs}
    out["trials_per_hour_naive"] = median(x["trials_per_hour"] for x in runs["naive"])
    for w in b.workers:
        tph = median(x["trials_per_hour"] for x in runs[f"ours_w{w}"])
        out[f"trials_per_hour_ours_w{w}"] = tph
        out[f"speedup_w{w}"] = tph / out["trials_per_hour_naive"]
        out[f"median_trial_s_ours_w{w}"] = median(t for x in runs[f"ours_w{w}"] for t in x["trial_s"])
        out[f"median_epoch_s_ours_w{w}"] = out[f"median_trial_s_ours_w{w}"] / s.sweep_epochs
    first = b.workers[0]
    out["speedup"] = out[f"speedup_w{first}"]
    out["median_trial_s_ours"] = out[f"median_trial_s_ours_w{first}"]
    out["median_epoch_s_ours"] = out[f"median_epoch_s_ours_w{first}"]
    out["median_trial_s_naive"] = median(t for x in runs["naive"] for t in x["trial_s"])
    # Per configuration (trial i ran configs[i] on both sides): naive trial seconds / ours. The
    # sweep's ratio cannot exceed what the trainer gains on these configurations.
    out["trial_ratio_per_config"] = [
        median(x["trial_s"][i] for x in runs["naive"]) / median(x["trial_s"][i] for x in runs[f"ours_w{first}"])
        for i in range(len(configs))
    ] if first == 1 else None
    log(f"sweep: speedup {out['speedup']:.2f}x with {first} worker(s)")
    return out


# --------------------------------------------------------------------------------------------
# Section 3: storage and sampler overhead per trial
# --------------------------------------------------------------------------------------------


class TimedSampler(optuna.samplers.BaseSampler):
    """Delegates to a sampler and adds up the seconds spent in it."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner
        self.seconds = 0.0

    def _timed(self, name: str, *args):
        start = time.perf_counter()
        try:
            return getattr(self.inner, name)(*args)
        finally:
            self.seconds += time.perf_counter() - start

    def infer_relative_search_space(self, study, trial):
        return self._timed("infer_relative_search_space", study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._timed("sample_relative", study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._timed("sample_independent", study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        return self._timed("before_trial", study, trial)

    def after_trial(self, study, trial, state, values):
        return self._timed("after_trial", study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def dummy_objective(trial: optuna.Trial) -> float:
    """Samples the real search space, reports OVERHEAD_EPOCHS values and sets the user attributes
    our objective sets, but trains nothing: a trial of pure storage, sampler and pruner work."""
    model_cfg, train_cfg = suggest(trial, OVERHEAD_EPOCHS)
    trial.set_user_attr("epoch_budget", OVERHEAD_EPOCHS)
    trial.set_user_attr("n_params", 123_456)
    trial.set_user_attr("device", "cpu")
    trial.set_user_attr("worker", "bench:0")
    quality = 0.9 - 0.08 * abs(math.log10(train_cfg.lr) + 2.7) - 0.1 * model_cfg.dropout - 0.02 * abs(model_cfg.depth - 4)
    history = []
    for epoch in range(1, OVERHEAD_EPOCHS + 1):
        value = quality * (1 - math.exp(-epoch)) + 0.005 * math.sin(trial.number + epoch)
        history.append({"epoch": epoch, "train_loss": 1 - value, "val_loss": 1 - value, "val_dice_bg": 0.99,
                        "val_dice_rv": value, "val_dice_myo": value, "val_dice_lv": value, "val_dice_fg": value})
        trial.report(value, epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_at_epoch", epoch)
            _set_summary(trial, history)
            raise optuna.TrialPruned()
    _set_summary(trial, history)
    return max(h["val_dice_fg"] for h in history)


def _set_summary(trial: optuna.Trial, history: list[dict]) -> None:
    best = max(history, key=lambda h: h["val_dice_fg"])
    summary = {"best_epoch": best["epoch"], "epochs_run": len(history), "seconds": 0.01,
               **{k[len("val_"):]: round(v, 5) for k, v in best.items() if k.startswith("val_dice_")},
               "history": compact_history(history)}
    for key, value in summary.items():
        trial.set_user_attr(key, value)


def overhead_run(url: str, n_trials: int, seed: int = 0) -> dict:
    """One study of ``n_trials`` dummy trials through our storage, sampler, pruner and callbacks."""
    name = f"bench-overhead-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    storage = st.make_storage(url)
    sampler = TimedSampler(make_sampler("tpe", seed))
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=make_pruner("median", OVERHEAD_EPOCHS))
    ends: list[float] = []
    gc_seconds = [0.0, 0.0]  # total, start of the running collection

    def gc_timer(phase: str, info: dict) -> None:
        if phase == "start":
            gc_seconds[1] = time.perf_counter()
        else:
            gc_seconds[0] += time.perf_counter() - gc_seconds[1]

    gc.callbacks.append(gc_timer)
    gc.freeze()  # as sweep.training.run.optimize does before its trials: the collector then skips the imports' objects
    try:
        progress = Progress(study, n_trials, enabled=False)
        start = time.perf_counter()
        study.optimize(
            dummy_objective,
            n_trials=n_trials,
            catch=(Exception,),
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED), progress, StopAfterFailures(),
                       lambda study, trial: ends.append(time.perf_counter())],
            gc_after_trial=True,
        )
        progress.close()
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
    finally:
        gc.callbacks.remove(gc_timer)
        optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()
    return {"study": name, "total_s": ends[-1] - start, "ends_s": [e - start for e in ends], "sampler_s": sampler.seconds,
            "gc_s": gc_seconds[0], "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL")}


def postgres_url(args) -> tuple[str | None, str]:
    url = args.postgres or os.environ.get("SEGNET_TEST_POSTGRES_URL")
    if not url:
        return None, "no --postgres URL and SEGNET_TEST_POSTGRES_URL unset"
    try:
        st.check_storage_url(url)
    except Exception as err:  # noqa: BLE001 - unreachable means skipped, not a crash
        return None, f"unreachable: {err}"
    return url, url


def section_overhead(b: Bench) -> dict:
    s = b.settings
    small, large = s.overhead_sizes
    backends = {"sqlite": f"sqlite:///{b.tmp / 'overhead.db'}"}
    pg, note = postgres_url(b.args)
    if pg:
        backends["postgres"] = pg
    else:
        log(f"overhead: PostgreSQL skipped ({note})")
    sweep = b.raw.get("sweep") or {}
    typical = sweep.get("median_trial_s_ours")
    source = f"median trial of our tool in the sweep section ({sweep.get('epochs')} epochs)"
    if typical is None:
        typical, source = DEFAULT_TYPICAL_TRIAL_S, "DEFAULT_TYPICAL_TRIAL_S constant (sweep section not run)"
    # A sweep's trials run the default epoch budget, not the sweep section's few epochs: the
    # same overhead against such a trial (per-epoch time of the sweep section x the budget).
    budget = DEFAULT_EPOCHS
    budget_trial = sweep["median_epoch_s_ours"] * budget if sweep else DEFAULT_TYPICAL_TRIAL_S
    out = {"sizes": [small, large], "typical_trial_s": typical, "typical_trial_source": source,
           "budget_epochs": budget, "budget_trial_s": budget_trial,
           "postgres": None if pg is None else "measured", "postgres_note": note, "backends": {}}
    for backend, url in backends.items():
        # The small-size figure is the median over every study (the large ones' first trials
        # included); the large-size figure over the large studies.
        sizes = [large] * s.overhead_studies[1] + [small] * s.overhead_studies[0]
        runs = []
        for r, n_trials in enumerate(sizes):
            log(f"overhead {backend}: study {r + 1}/{len(sizes)}, {n_trials} dummy trials")
            runs.append(overhead_run(url, n_trials, seed=r))
        res = {"runs": runs}
        for n in (small, large):
            ms = median(x["ends_s"][n - 1] / n * 1000 for x in runs if len(x["ends_s"]) >= n)
            res[f"ms_per_trial_{n}"] = ms
            res[f"pct_{n}"] = ms / 1000 / typical * 100
            res[f"pct_{n}_{budget}ep"] = ms / 1000 / budget_trial * 100
        big = [x for x in runs if len(x["ends_s"]) >= large]
        tail = max(1, large // 10)  # the cost of one more trial once the study is this large
        res[f"ms_per_trial_last10pct_{large}"] = median(
            (x["ends_s"][-1] - x["ends_s"][-tail - 1]) / tail * 1000 for x in big)
        # Where the time goes: the TPE sampler, garbage collection (sweep.training.run collects after every
        # trial), and the rest (storage round trips, pruner, Optuna's bookkeeping, callbacks).
        res[f"sampler_ms_per_trial_{large}"] = median(x["sampler_s"] / large * 1000 for x in big)
        res[f"gc_ms_per_trial_{large}"] = median(x["gc_s"] / large * 1000 for x in big)
        log(f"overhead {backend}: {res[f'ms_per_trial_{small}']:.1f} ms/trial at {small}, "
            f"{res[f'ms_per_trial_{large}']:.1f} ms/trial at {large} "
            f"({res[f'pct_{small}']:.3f} % of a {typical:.1f} s trial)")
        out["backends"][backend] = res
    return out


# --------------------------------------------------------------------------------------------
# Section 4: memory of one worker process
# --------------------------------------------------------------------------------------------


def proc_status_mb(field: str) -> float:
    """A ``kB`` field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_in_process(data: BenchData, device: torch.device, trials: int, epochs: int, tmp: Path) -> dict:
    """``trials`` trials of MEMORY_PARAMS through our Objective on an SQLite study; RSS after each."""
    train, val = device_splits(data, device)
    url = f"sqlite:///{tmp / 'memory.db'}"
    study = optuna.create_study(storage=st.make_storage(url), study_name="bench-memory", direction="maximize",
                                sampler=make_sampler("tpe", 0), pruner=make_pruner("none", epochs))
    for _ in range(trials):
        study.enqueue_trial(MEMORY_PARAMS)
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp / "memory-artifacts"))
    (tmp / "memory-artifacts").mkdir(exist_ok=True)
    objective = Objective([(train, val)], epochs, seed=0, artifact_store=store)
    rss_before = proc_status_mb("VmRSS")
    rss = []
    study.optimize(objective, n_trials=trials, catch=(Exception,), gc_after_trial=True,
                   callbacks=[lambda study, trial: rss.append(proc_status_mb("VmRSS"))])
    out = {"trials": trials, "epochs": epochs, "rss_before_mb": rss_before, "rss_mb": rss,
           "peak_rss_mb": proc_status_mb("VmHWM"),
           "states": [t.state.name for t in study.get_trials(deepcopy=False)]}
    if len(rss) >= 20:
        out["rss_growth_pct_5_to_20"] = (rss[19] - rss[4]) / rss[4] * 100
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def section_memory(b: Bench) -> dict:
    if b.args.in_process:
        log(f"memory: {b.settings.memory_trials} trials x {b.settings.memory_epochs} epochs in this process")
        return memory_in_process(b.data, b.device, b.settings.memory_trials, b.settings.memory_epochs, b.tmp)
    # A fresh process: the other sections must not set its peak or leave their garbage in it.
    cmd = [sys.executable, "-m", "benchmarks.bench", "--only", "memory", "--in-process", "--json",
           "--profile", b.settings.name, "--data", str(b.data.folder), "--device", str(b.device)]
    if b.args.threads:
        cmd += ["--threads", str(b.args.threads)]
    log("memory: in a fresh process: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child process exited with {proc.returncode}")
    child = json.loads(proc.stdout)
    if "memory" not in child["raw"]:
        raise RuntimeError(f"memory child process failed: {child.get('errors')}")
    return child["raw"]["memory"]


# --------------------------------------------------------------------------------------------
# Section 5: the device's ceiling: matmul peak and the network's own convolutions
# --------------------------------------------------------------------------------------------


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, min_seconds: float) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    bm = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.matmul(a, bm)
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        for _ in range(5):
            torch.matmul(a, bm)
        iters += 5
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return 2 * n**3 * iters / elapsed / 1e12


@dataclass(frozen=True)
class ConvShape:
    """One ``nn.Conv2d`` as a model runs it on a training batch: its layer settings and input size."""

    batch: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    height: int  # input
    width: int
    out_height: int
    out_width: int

    def forward_flops(self) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward pass over the batch."""
        kh, kw = self.kernel_size
        out_numel = self.batch * self.out_channels * self.out_height * self.out_width
        return 2 * out_numel * (self.in_channels // self.groups) * kh * kw

    def layer(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, groups=self.groups, bias=self.bias)


def conv_shapes(model_cfg: SegNetConfig, size: tuple[int, int], batch: int) -> dict[ConvShape, int]:
    """The distinct Conv2d shapes of one training batch of ``model_cfg``, each with how often it runs.

    Forward hooks on one slice: a conv's per-slice shape does not depend on the batch, so each
    shape simply carries ``batch``.
    """
    model = SegNet.from_config(model_cfg).eval()
    counts: dict[ConvShape, int] = {}

    def hook(module: nn.Conv2d, inputs, output) -> None:
        shape = ConvShape(batch, module.in_channels, module.out_channels, tuple(module.kernel_size),
                          tuple(module.stride), module.padding if isinstance(module.padding, str)
                          else tuple(module.padding), tuple(module.dilation), module.groups,
                          module.bias is not None, *inputs[0].shape[2:], *output.shape[2:])
        counts[shape] = counts.get(shape, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, model_cfg.in_channels, *size))
    for h in handles:
        h.remove()
    return counts


def conv_seconds(shape: ConvShape, device: torch.device, bf16: bool, min_seconds: float) -> float:
    """Seconds per forward + backward (input and weight gradients) of one conv alone, channels_last,
    under the trainer's autocast; one untimed run first, then repeated for at least ``min_seconds``."""
    conv = shape.layer().to(device).to(memory_format=torch.channels_last)
    x = torch.randn(shape.batch, shape.in_channels, shape.height, shape.width, device=device)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = None

    def step() -> None:
        nonlocal grad
        x.grad, conv.weight.grad = None, None  # as zero_grad(set_to_none=True) in the trainer
        with autocast(device, bf16):
            out = conv(x)
        if grad is None:
            grad = torch.randn_like(out)
        out.backward(grad)

    step()
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        step()
        iters += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / iters


def conv_probe(model_cfg: SegNetConfig, size: tuple[int, int], device: torch.device, bf16: bool,
               min_seconds: float) -> dict:
    """Achieved TFLOP/s of the model's own convolutions on one training batch: each distinct shape
    timed alone and weighted by how often it runs (sum of training FLOPs / sum of seconds)."""
    shapes, total_flops, total_s = [], 0, 0.0
    for shape, count in conv_shapes(model_cfg, size, TRAINER_CFG.batch_size).items():
        seconds = conv_seconds(shape, device, bf16, min_seconds)
        flops = 3 * shape.forward_flops()  # training: forward + input and weight gradients
        total_flops += count * flops
        total_s += count * seconds
        shapes.append({"shape": asdict(shape), "count": count, "train_gflop": flops / 1e9,
                       "ms": seconds * 1000, "tflops": flops / seconds / 1e12})
    return {"bf16": bf16, "batch": TRAINER_CFG.batch_size, "size": list(size), "distinct": len(shapes),
            "train_tflop_per_batch": total_flops / 1e12, "seconds_per_batch": total_s,
            "tflops": total_flops / total_s / 1e12, "shapes": shapes}


def section_peak(b: Bench) -> dict:
    n = b.settings.matmul_n["cuda" if b.device.type == "cuda" else "cpu"]
    min_s = 0.2 if b.settings.name == "smoke" else 2.0
    out = {"n": n, "conv_probe": {}}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        log(f"peak: {name} matmul {n}^3 on {b.device}")
        out[f"tflops_{name}"] = matmul_tflops(b.device, dtype, n, min_s)
        log(f"  {out[f'tflops_{name}']:.2f} TFLOP/s")
    bf16 = use_bf16(b.device)  # the trainer's precision on this device
    for arch, cfg in ARCHS.items():
        log(f"peak: {arch} convolutions alone, {'bf16' if bf16 else 'fp32'}, channels_last, "
            f"batch {TRAINER_CFG.batch_size}, >= {b.settings.conv_probe_s:g} s per shape")
        probe = conv_probe(cfg, b.data.size, b.device, bf16, b.settings.conv_probe_s)
        out["conv_probe"][arch] = probe
        out[f"ceiling_tflops_{arch}"] = max(out["tflops_bf16"], out["tflops_fp32"], probe["tflops"])
        log(f"  {probe['distinct']} distinct shapes: {probe['tflops']:.2f} TFLOP/s; "
            f"ceiling {out[f'ceiling_tflops_{arch}']:.2f} TFLOP/s")
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    settings: Settings
    device: torch.device
    data: BenchData
    tmp: Path
    workers: tuple[int, ...]
    raw: dict


SECTION_FUNCS = {"trainer": section_trainer, "sweep": section_sweep, "overhead": section_overhead,
                 "memory": section_memory, "peak": section_peak}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "bf16": use_bf16(device),  # what our trainer uses on this device (the naive side is float32)
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_figures(raw: dict) -> dict:
    """The peak section's matmul rates, conv probes and ceilings, and the trainer's achieved TFLOP/s
    (ours) as a fraction of its architecture's ceiling when both sections ran."""
    peak = raw.get("peak")
    if not peak:
        return {}
    out = {"peak_matmul_tflops_bf16": peak["tflops_bf16"], "peak_matmul_tflops_fp32": peak["tflops_fp32"]}
    for arch, probe in peak["conv_probe"].items():
        out[f"conv_probe_tflops_{arch}"] = probe["tflops"]
        out[f"ceiling_tflops_{arch}"] = peak[f"ceiling_tflops_{arch}"]
    for arch, res in (raw.get("trainer") or {}).get("archs", {}).items():
        if f"ceiling_tflops_{arch}" in out:
            out[f"trainer_peak_fraction_{arch}"] = res["tflops_ours"] / out[f"ceiling_tflops_{arch}"]
    return out


def time_to_quality_figures(path: Path | str | None = None) -> dict:
    """``time_to_quality_gain`` and ``time_to_quality_speedup`` from time_to_quality.py's last summary.

    ``path`` defaults to $SEGNET_BENCH_TIME_TO_QUALITY, else TIME_TO_QUALITY_JSON where it exists,
    else the committed TIME_TO_QUALITY_RECORD; the figures are None when there is no such file, or
    when the run it holds has not yet shipped both approaches at the full budget.
    ``time_to_quality_source`` says which file, of how many minutes and when (the file's ``date``,
    else the machine's, else its modification time).
    """
    if path is None:
        path = os.environ.get(TIME_TO_QUALITY_ENV) or (
            TIME_TO_QUALITY_JSON if TIME_TO_QUALITY_JSON.is_file() else TIME_TO_QUALITY_RECORD)
    path = Path(path)
    keys = ("time_to_quality_gain", "time_to_quality_speedup")
    out: dict = dict.fromkeys(keys) | {"time_to_quality_source": None}
    if not path.is_file():
        return out
    try:
        summary = json.loads(path.read_text())
        error = None if isinstance(summary, dict) else "not a JSON object"
    except (OSError, ValueError) as err:
        error = f"{type(err).__name__}: {err}"
    if error:
        log(f"time to quality: cannot read {path}: {error}")
        out["time_to_quality_source"] = {"path": str(path), "error": error}
        return out
    for key in keys:
        value = summary.get(key)
        out[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    modified = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))
    machine = summary.get("machine") if isinstance(summary.get("machine"), dict) else {}
    out["time_to_quality_source"] = {"path": str(path), "minutes": summary.get("minutes"),
                                     "date": summary.get("date") or machine.get("date") or modified,
                                     "machine": summary.get("machine")}
    return out


def check_targets(out: dict) -> dict:
    """Each target of TARGETS whose figure was measured, and whether it is met."""
    return {
        key: {"target": f"{op} {bound}", "met": (out[key] >= bound) if op == ">=" else (out[key] < bound)}
        for key, (op, bound) in TARGETS.items() if out.get(key) is not None
    }


def summarize(raw: dict, settings: Settings, time_to_quality_json: Path | str | None = None) -> dict:
    """The flat headline figures, from the sections' raw results and time_to_quality.py's summary."""
    out: dict = {"trainer_speedup_small": None, "trainer_speedup_vgg16": None, "sweep_speedup": None,
                 "trainer_peak_fraction_small": None, "trainer_peak_fraction_vgg16": None,
                 "rss_growth_pct_5_to_20": None, "peak_rss_mb": None}
    for arch, res in (raw.get("trainer") or {}).get("archs", {}).items():
        out[f"trainer_speedup_{arch}"] = res["speedup"]
        for side in ("ours", "naive"):
            out[f"trainer_images_per_s_{arch}_{side}"] = res[f"images_per_s_{side}"]
            out[f"trainer_epoch_s_{arch}_{side}"] = res[f"epoch_s_{side}"]
            out[f"trainer_tflops_{arch}_{side}"] = res[f"tflops_{side}"]
    if sweep := raw.get("sweep"):
        out["sweep_speedup"] = sweep["speedup"]
        out["sweep_workers"] = sweep["workers"][0]
        out["sweep_trials_per_hour_ours"] = sweep[f"trials_per_hour_ours_w{sweep['workers'][0]}"]
        out["sweep_trials_per_hour_naive"] = sweep["trials_per_hour_naive"]
        out["sweep_median_trial_s_ours"] = sweep["median_trial_s_ours"]
        out["sweep_trial_ratio_per_config"] = sweep.get("trial_ratio_per_config")
        for w in sweep["workers"][1:]:
            out[f"sweep_speedup_w{w}"] = sweep[f"speedup_w{w}"]
    if overhead := raw.get("overhead"):
        # Keys carry the trial counts actually run (--quick: 100 and 300, never labelled 1000).
        for backend, res in overhead["backends"].items():
            for n in overhead["sizes"]:
                out[f"overhead_ms_per_trial_{n}_{backend}"] = res[f"ms_per_trial_{n}"]
                out[f"overhead_pct_{n}_{backend}"] = res[f"pct_{n}"]
                budget = overhead["budget_epochs"]
                out[f"overhead_pct_{n}_{backend}_{budget}ep"] = res[f"pct_{n}_{budget}ep"]
        out["overhead_typical_trial_s"] = overhead["typical_trial_s"]
        out["overhead_budget_trial_s"] = overhead["budget_trial_s"]
    if memory := raw.get("memory"):
        out["rss_growth_pct_5_to_20"] = memory.get("rss_growth_pct_5_to_20")
        out["peak_rss_mb"] = memory["peak_rss_mb"]
    out.update(peak_figures(raw))
    out.update(time_to_quality_figures(time_to_quality_json))
    out["targets"] = check_targets(out)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="profile",
                      help="reduced sizes: under 10 minutes on 2 quiet CPU cores")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="profile",
                      help="minimal sizes and one repeat, for tests; figures are meaningless")
    size.add_argument("--profile", choices=tuple(PROFILES), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated sections of {', '.join(SECTIONS)} (default: %(default)s)")
    p.add_argument("--data", default=str(CMRI) if CMRI.is_dir() else "phantom",
                   help="coursework-layout folder or 'phantom' (default: the real cmri data if present: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default %(default)s)")
    p.add_argument("--workers", default=None,
                   help="worker processes of our sweep, comma-separated to compare several "
                        f"(default: sweep.training.run's default, {RunOptions().workers})")
    p.add_argument("--postgres", default=None,
                   help="PostgreSQL URL for the overhead section (default: $SEGNET_TEST_POSTGRES_URL; else skipped)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own; 1 with --smoke)")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # memory child
    args = p.parse_args(argv)
    args.profile = args.profile or "full"
    args.sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown or not args.sections:
        p.error(f"--only: unknown section(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}")
    try:
        args.worker_counts = (RunOptions().workers,) if args.workers is None else tuple(
            int(w) for w in args.workers.split(","))
    except ValueError:
        p.error(f"--workers: expected positive integers separated by commas, got {args.workers!r}")
    if any(w < 1 for w in args.worker_counts):
        p.error(f"--workers: expected positive integers, got {args.workers!r}")
    return args


def human_summary(result: dict) -> str:
    lines = [f"segnet-sweep benchmark ({result['settings']['name']}) on {result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores, {result['machine']['device']}, bf16 {result['machine']['bf16']}",
             f"data: {result['data']}"]
    for key, value in result.items():
        if value is None or isinstance(value, (bool, str, list, dict)) or key == "total_s":
            continue
        target = result["targets"].get(key)
        mark = "" if target is None else f"   (target {target['target']}: {'met' if target['met'] else 'NOT met'})"
        lines.append(f"  {key:45s} {value:12.4g}{mark}" if isinstance(value, float) else f"  {key:45s} {value}{mark}")
    for section, err in result.get("errors", {}).items():
        lines.append(f"  section {section} FAILED: {err}")
    lines.append(f"({result['total_s']:.0f} s; every figure and the raw timings: --json)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = PROFILES[args.profile]
    threads = args.threads or (1 if settings.name == "smoke" else None)
    if threads:
        torch.set_num_threads(threads)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as err:
        print(f"bench.py: {err}", file=sys.stderr)
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    info = machine(device)
    if info["loadavg_start"] and info["loadavg_start"][0] > 0.5 and not args.in_process:
        log(f"warning: load average {info['loadavg_start'][0]:.2f} at start: the machine is not quiet, timings suffer")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segnet-bench-") as tmp:
        data = prepare_data(args.data, settings, Path(tmp))
        log(f"profile {settings.name}, device {device}, data {data.description}")
        bench = Bench(args, settings, device, data, Path(tmp), args.worker_counts, raw={})
        errors = {}
        for name in SECTIONS:
            if name not in args.sections:
                continue
            log(f"== {name}")
            section_start = time.perf_counter()
            try:
                bench.raw[name] = SECTION_FUNCS[name](bench)
                bench.raw[name]["section_s"] = time.perf_counter() - section_start
            except Exception as err:  # noqa: BLE001 - report it, run the other sections
                traceback.print_exc(file=sys.stderr)
                errors[name] = f"{type(err).__name__}: {err}"
            log(f"== {name} took {time.perf_counter() - section_start:.1f} s")
    result = summarize(bench.raw, settings)
    info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result.update({"machine": info, "data": data.description, "synthetic_data": data.synthetic,
                   "settings": asdict(settings), "sections": args.sections,
                   "total_s": time.perf_counter() - started, "errors": errors, "raw": bench.raw})
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(human_summary(result))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
