"""Does bf16 autocast train SegNet as well as float32? Same configs, same seeds, both precisions.

    python -m benchmarks.precision [--seeds 3] [--epochs 50] [--data PATH]

bf16 is kept as the default on CPUs with AMX or AVX512-BF16 (and on GPUs) only if its best val dice_fg is
within seed noise of float32's. Prints one JSON object: per precision, the val dice_fg of each
seed, their mean and std, and seconds per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from data import load_dataset
from sweep.search.presets import preset
from sweep.search.space import configs_from_params
from sweep.training.train import DeviceSplit, fit, resolve_device

# A configuration of the kind the sweep favours on this data (small widths, Dice+CE, cosine, augmentation).
PARAMS = preset("small", depth=4, base_width=16, convs_shallow=2, convs_deep=2, batch_size=4,
                         aug_rotate=10.0, aug_scale=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cmri"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_dataset(args.data)
    train = DeviceSplit.from_arrays(data.train.images, data.train.masks, device)
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
    model_cfg, train_cfg = configs_from_params(PARAMS, args.epochs)
    out = {"data": data.describe(), "device": str(device), "epochs": args.epochs, "params": PARAMS}
    for name, bf16 in (("bf16", True), ("fp32", False)):
        values, seconds = [], []
        for seed in range(args.seeds):
            start = time.perf_counter()
            values.append(fit(model_cfg, train_cfg, train, val, seed=seed, bf16=bf16, keep_state=False).best_value)
            seconds.append(time.perf_counter() - start)
            print(f"{name} seed {seed}: val dice_fg {values[-1]:.4f} in {seconds[-1]:.0f} s", file=sys.stderr)
        out[name] = {
            "val_dice_fg": [round(v, 4) for v in values],
            "mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "seconds_per_run": round(statistics.median(seconds), 1),
        }
    out["difference"] = round(out["bf16"]["mean"] - out["fp32"]["mean"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
