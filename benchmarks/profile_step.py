"""Where a training epoch's time goes, by operator family: convolutions against everything else.

    python -m benchmarks.profile_step [--arch small|vgg16] [--epochs 2] [--threads N] [--json]

Trains the benchmark's configuration (``benchmarks/bench.py``'s ``ARCHS`` and ``TRAINER_CFG``) on
60 phantom slices with the trainer's own epoch (``sweep.training.train.train_epoch``: augmentation off,
bf16 where the CPU has it, channels_last), one untimed epoch first, then profiles ``--epochs``
epochs with ``torch.profiler`` and sums the operators' self time into families. The convolution
share bounds what the trainer can reach against its own convolutions' rate; the rest is the
per-step overhead (BatchNorm, ReLU, pooling and unpooling, dtype casts, loss, optimiser).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench import ARCHS, TRAINER_CFG
from data import make_phantom
from sweep.training.train import DeviceSplit, _FoldRun, train_epoch, use_bf16

FAMILIES = {  # family: substrings of aten operator names, first match wins
    "convolution": ("convolution",),
    "batch_norm": ("batch_norm",),
    "relu": ("threshold", "clamp_min", "relu"),
    "pool_unpool": ("max_pool", "max_unpool"),
    "casts_copies": ("copy_", "_to_copy", "to_dense", "contiguous"),
    "optimizer": ("addcdiv", "lerp", "sqrt", "_foreach", "adamw", "_fused"),
    "loss": ("softmax", "nll_loss", "cross_entropy"),
}


def family(name: str) -> str:
    for fam, keys in FAMILIES.items():
        if any(k in name for k in keys):
            return fam
    return "other"


def shares(arch: str, epochs: int) -> dict:
    cpu = torch.device("cpu")
    images, masks = make_phantom(60, seed=0, size=96)
    split = DeviceSplit.from_arrays(images, masks, cpu)
    run = _FoldRun(ARCHS[arch], TRAINER_CFG, split, cpu)
    generator = torch.Generator().manual_seed(0)
    bf16 = use_bf16(cpu)

    def epoch() -> None:
        train_epoch(run.model, run.optimizer, run.scheduler, split, TRAINER_CFG, run.weights, generator, bf16)

    epoch()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(epochs):
            epoch()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("Optimizer"):
            fam = family(event.key.lower())
            totals[fam] = totals.get(fam, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values())
    return {"arch": arch, "bf16": bf16, "threads": torch.get_num_threads(), "epochs": epochs,
            "seconds_per_epoch": round(whole / 1e6 / epochs, 4),
            "shares": {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=tuple(ARCHS), default="small")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = shares(args.arch, args.epochs)
    print(json.dumps(out, indent=1) if args.json else "\n".join(
        [f"{out['arch']}: {out['seconds_per_epoch']} s/epoch of operator self time ({out['threads']} threads)"]
        + [f"  {k:14s} {v:6.1%}" for k, v in out["shares"].items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
