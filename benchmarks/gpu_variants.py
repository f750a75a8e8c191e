"""Which settings train SegNet fastest: precision and cuDNN autotuning on a GPU; the optimiser's
implementation and ``torch.compile`` on either.

The trainer chooses bf16 autocast only where it measured faster (CPUs with bf16 units: 1.2-1.9x;
not GPUs: float32 with TF32 was 1.3x faster on an H100), channels_last always, and torch's default
AdamW. This script times each setting in one process, alternating the order between repeats, with
the naive float32 loop beside them::

    python -m benchmarks.gpu_variants --data ../shared/data/cmri [--epochs 15] [--variants ...] [--json]

Figures are seconds per epoch (train + val), the median over the timed epochs of each repeat,
then over repeats; ``first_epoch_s`` is the first epoch alone (where ``torch.compile`` compiles).
Default variants: on a GPU the precision and autotuning ones, on a CPU the trainer against a
fused or foreach AdamW and a compiled model (``--device cpu``). ``batch20`` and ``batch40`` train
with 2x and 4x the trainer benchmark's batch of 10: an epoch then does the same convolution work
in a quarter of the steps, so what they save is per-step overhead. ``fused_bn_relu`` runs each
BatchNorm + ReLU pair as one compiled kernel, the fusion that the small shape's profile points to.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.bench import ARCHS, CMRI, PROFILES, TRAINER_CFG, device_splits, ours_fit, prepare_data
from benchmarks.naive import naive_fit
from sweep.training import train as trainer
from sweep.training.train import resolve_device


@dataclass(frozen=True)
class Variant:
    bf16: bool | None = None  # None: the trainer's own choice for the device
    autotune: bool = False  # torch.backends.cudnn.benchmark
    adamw: tuple[tuple[str, bool], ...] = ()  # AdamW keyword arguments: fused / foreach
    compile: bool = False  # torch.compile the model (inductor)
    batch_size: int | None = None  # None: the trainer benchmark's 10
    fuse_bn_relu: bool = False  # each BatchNorm + ReLU pair as one compiled kernel (inductor)


VARIANTS = {
    "trainer": Variant(),
    "bf16": Variant(bf16=True),
    "fp32": Variant(bf16=False),
    "bf16_autotune": Variant(bf16=True, autotune=True),
    "fp32_autotune": Variant(bf16=False, autotune=True),
    "fused_adamw": Variant(adamw=(("fused", True),)),
    "foreach_adamw": Variant(adamw=(("foreach", True),)),
    "compile": Variant(compile=True),
    "batch20": Variant(batch_size=20),
    "batch40": Variant(batch_size=40),
    "fused_bn_relu": Variant(fuse_bn_relu=True),
}
DEFAULT_VARIANTS = {"cuda": "bf16,fp32,bf16_autotune,fp32_autotune", "cpu": "trainer,fused_adamw,foreach_adamw,compile"}


def _bn_relu(x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float):
    return torch.nn.functional.relu(
        torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))


class FusedBNReLU(torch.nn.Module):
    """A BatchNorm2d followed by ReLU, run as one compiled function: inductor fuses the
    normalisation, the affine and the ReLU into one pass over the activation, and their backward
    into another. It is compiled once per activation shape (a network has up to 2 x depth of them),
    so dynamo's recompile limit is raised to let every shape have its own kernel."""

    kernel = None

    def __init__(self, bn: torch.nn.BatchNorm2d):
        super().__init__()
        self.bn = bn
        if FusedBNReLU.kernel is None:
            FusedBNReLU.kernel = torch.compile(_bn_relu, dynamic=False)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    def forward(self, x):
        bn = self.bn
        if bn.training:
            bn.num_batches_tracked.add_(1)
        return FusedBNReLU.kernel(x, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                  bn.training, bn.momentum, bn.eps)


def fuse_bn_relu(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``Sequential``'s BatchNorm2d + ReLU pair replaced by ``FusedBNReLU``."""
    for module in model.modules():
        if isinstance(module, torch.nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                if isinstance(module._modules[a], torch.nn.BatchNorm2d) and isinstance(module._modules[b], torch.nn.ReLU):
                    module._modules[a] = FusedBNReLU(module._modules[a])
                    module._modules[b] = torch.nn.Identity()
    return model


@contextlib.contextmanager
def applied(v: Variant):
    """The trainer with ``v``'s settings, restored afterwards."""
    adamw, build = torch.optim.AdamW, trainer.build_model
    torch.backends.cudnn.benchmark = v.autotune
    if v.adamw:
        torch.optim.AdamW = functools.partial(adamw, **dict(v.adamw))
    if v.compile:
        trainer.build_model = lambda cfg, device: torch.compile(build(cfg, device))
    if v.fuse_bn_relu:
        trainer.build_model = lambda cfg, device: fuse_bn_relu(build(cfg, device))
    try:
        yield
    finally:
        torch.optim.AdamW, trainer.build_model = adamw, build
        torch.backends.cudnn.benchmark = False


def time_variant(name: str, arch: str, train, val, epochs: int, warmup: int, seed: int) -> tuple[float, float]:
    """Median seconds per timed epoch, and the first epoch's seconds."""
    v = VARIANTS[name]
    with applied(v):
        records = ours_fit(ARCHS[arch], train, val, warmup + epochs, seed=seed, bf16=v.bf16, batch_size=v.batch_size)
    return statistics.median(r["seconds"] for r in records[warmup:]), records[0]["seconds"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(CMRI) if CMRI.is_dir() else "phantom")
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=15, help="timed epochs per run (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed epochs first (default %(default)s)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--archs", default="small,vgg16")
    p.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} (default: by device)")
    p.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                   help="time the naive float32 loop beside the variants (default: yes)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(args.data, PROFILES["full"], Path(tmp))
        train, val = device_splits(data, device)
        variants = (args.variants or DEFAULT_VARIANTS.get(device.type, DEFAULT_VARIANTS["cpu"])).split(",")
        out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "data": data.description,
               "epochs": args.epochs, "epoch_s": {}, "first_epoch_s": {}}
        for arch in args.archs.split(","):
            times = {name: [] for name in [*variants, *(["naive"] if args.naive else [])]}
            first = {name: [] for name in times}
            for r in range(args.repeats):
                names = list(times) if r % 2 == 0 else list(reversed(times))
                for name in names:
                    if name == "naive":
                        torch.backends.cudnn.benchmark = False
                        hist = naive_fit(ARCHS[arch], data.folder, epochs=args.warmup + args.epochs,
                                         device=device, seed=r, batch_size=TRAINER_CFG.batch_size)
                        times[name].append(statistics.median(h["seconds"] for h in hist[args.warmup:]))
                        first[name].append(hist[0]["seconds"])
                    else:
                        epoch_s, first_s = time_variant(name, arch, train, val, args.epochs, args.warmup, r)
                        times[name].append(epoch_s)
                        first[name].append(first_s)
                    print(f"{arch} repeat {r + 1}: {name} {times[name][-1]:.4f} s/epoch", file=sys.stderr, flush=True)
            out["epoch_s"][arch] = {name: statistics.median(v) for name, v in times.items()}
            out["first_epoch_s"][arch] = {name: statistics.median(v) for name, v in first.items()}
    print(json.dumps(out, indent=1) if args.json else "\n".join(
        f"{arch:6s} " + "  ".join(f"{k} {v:.4f}" for k, v in res.items()) for arch, res in out["epoch_s"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
