"""Which numeric settings train SegNet fastest on a GPU: bf16 autocast or float32 (TF32), cuDNN autotuning.

The trainer chooses bf16 autocast wherever the device supports it and channels_last always; on a
CPU with bf16 units that measured 1.2-1.9x faster than float32 (``sweep.train.cpu_has_bf16``).
On a GPU the networks of this task are small (96 x 96 slices, batches of 2-32), so per-kernel
launch cost may outweigh arithmetic; this script times each setting in one process, alternating
the order, and the naive float32 loop beside them::

    python benchmarks/gpu_variants.py --data ../shared/data/cmri [--epochs 15] [--json]

Figures are seconds per epoch (train + val), the median over the timed epochs of each repeat,
then over repeats. It runs on the CPU too (``--device cpu``), where the bf16 choice is the
trainer's own measurement already.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.bench import ARCHS, CMRI, PROFILES, TRAINER_CFG, device_splits, ours_fit, prepare_data  # noqa: E402
from benchmarks.naive import naive_fit  # noqa: E402
from sweep.train import resolve_device  # noqa: E402

VARIANTS = {  # name: (bf16 autocast, cudnn.benchmark)
    "bf16": (True, False),
    "fp32": (False, False),
    "bf16_autotune": (True, True),
    "fp32_autotune": (False, True),
}


def time_variant(name: str, arch: str, train, val, epochs: int, warmup: int, seed: int) -> float:
    bf16, autotune = VARIANTS[name]
    torch.backends.cudnn.benchmark = autotune
    records = ours_fit(ARCHS[arch], train, val, warmup + epochs, seed=seed, bf16=bf16)
    return statistics.median(r["seconds"] for r in records[warmup:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_variants.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(CMRI) if CMRI.is_dir() else "phantom")
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=15, help="timed epochs per run (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed epochs first (default %(default)s)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--archs", default="small,vgg16")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(args.data, PROFILES["full"], Path(tmp))
        train, val = device_splits(data, device)
        out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "data": data.description, "epochs": args.epochs, "epoch_s": {}}
        for arch in args.archs.split(","):
            times = {name: [] for name in [*VARIANTS, "naive"]}
            for r in range(args.repeats):
                names = list(times) if r % 2 == 0 else list(reversed(times))
                for name in names:
                    if name == "naive":
                        torch.backends.cudnn.benchmark = False
                        hist = naive_fit(ARCHS[arch], data.folder, epochs=args.warmup + args.epochs,
                                         device=device, seed=r, batch_size=TRAINER_CFG.batch_size)
                        times[name].append(statistics.median(h["seconds"] for h in hist[args.warmup:]))
                    else:
                        times[name].append(time_variant(name, arch, train, val, args.epochs, args.warmup, r))
                    print(f"{arch} repeat {r + 1}: {name} {times[name][-1]:.4f} s/epoch", file=sys.stderr, flush=True)
            out["epoch_s"][arch] = {name: statistics.median(v) for name, v in times.items()}
    print(json.dumps(out, indent=1) if args.json else "\n".join(
        f"{arch:6s} " + "  ".join(f"{k} {v:.4f}" for k, v in res.items()) for arch, res in out["epoch_s"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
