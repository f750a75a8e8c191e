"""Held-out Dice per volume against compute, for one configuration on real volumes.

    python -m benchmarks.acdc_curve --data ../shared/data/acdc --params acdc --epochs 60 \
        --epoch-slices 500 --patch 128 --every 5 --out docs/measurements/acdc_curve.json

Trains one configuration (a preset, a JSON file or a JSON object, as ``run --enqueue`` takes)
on the train patients less ``best --evaluate``'s estimate hold-out (``--holdout``, the same
patients), exactly as the trainer trains a trial (``--epoch-slices``, ``--patch``), and every
``--every`` epochs scores the held-out train patients as ``best --evaluate``'s estimate does:
each volume stacked back onto its source grid and scored against its label file, mean
foreground Dice per volume at ED, ES and over both. The test patients (``testing/``) are never
read for labels. Neither training nor any selection sees the held-out patients, so the curve
is what one model of this configuration reaches on unseen hearts after that much training.

``--with-val`` trains on val too, as ``best --evaluate``'s estimate refit does (train + val less the
held-out patients, the last epoch's weights; the per-epoch val figure is then on slices it trained
on). Each point also scores the held-out patients with rotation TTA and per-slice largest-component
cleaning, the post-processing the shipped masks get where it raises val Dice.

Each point records the epoch, the train slices seen, the wall seconds of training so far (the
scoring excluded) and the figures; the JSON is rewritten after every point.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from data import load_dataset
from sweep.shipping.evaluate import volume_estimate
from sweep.training.folds import estimate_holdout
from sweep.nn.postprocess import Probs, predict_probs
from sweep.training.run import parse_enqueue
from sweep.search.space import configs_from_params
from sweep.training.train import DeviceSplit, fit_folds, load_model, resolve_device, use_bf16

NO_POSTPROCESSING = {"tta": False, "largest_component": False}
POSTPROCESSED = {"tta": True, "largest_component": True}


def by_orientation(data, cases: list[dict]) -> dict:
    """Mean foreground Dice of the volumes stored with more rows than columns (ACDC's 256 x 216 ones,
    whose hearts lie mirrored against the others') and of the rest."""
    out = {}
    for name, tall in (("rows_gt_columns", True), ("rows_le_columns", False)):
        values = [c["dice_fg"] for c in cases if (data.volumes[c["case"]].shape[0] > data.volumes[c["case"]].shape[1]) == tall]
        if values:
            out[name] = {"n": len(values), "dice_fg": round(float(np.mean(values)), 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "acdc"))
    p.add_argument("--params", default="acdc", help="a preset, a JSON file or a JSON object (as run --enqueue)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--epoch-slices", type=int, default=500)
    p.add_argument("--val-slices", type=int, default=100)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--every", type=int, default=5, help="score the held-out patients every this many epochs")
    p.add_argument("--holdout", type=float, default=0.2, help="share of train patients held out (as best --evaluate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--with-val", action="store_true", help="train on val too, as the estimate's refit does")
    p.add_argument("--out", default=None, help="JSON file for the curve")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    data = load_dataset(args.data)
    held = estimate_holdout(data, args.holdout)
    rest = np.setdiff1d(np.arange(len(data.train)), held)
    train_images, train_masks = data.train.images[rest], data.train.masks[rest]
    if args.with_val:
        train_images = np.concatenate([train_images, data.val.images])
        train_masks = np.concatenate([train_masks, data.val.masks])
    train = DeviceSplit.from_arrays(train_images, train_masks, device)
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
    hold_images = torch.as_tensor(data.train.images[held], device=device).unsqueeze(1)
    params = parse_enqueue(args.params, args.epochs)
    model_cfg, train_cfg = configs_from_params(params, args.epochs)
    train_cfg = replace(train_cfg, epoch_slices=args.epoch_slices, patch=args.patch)
    bf16 = use_bf16(device)

    result = {
        "command": "python -m benchmarks.acdc_curve " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": data.describe(), "params": params, "epochs": args.epochs, "epoch_slices": args.epoch_slices,
        "patch": args.patch, "val_slices": args.val_slices, "held_out_patients": sorted(set(np.asarray(data.train.groups)[held])),
        "train_slices": len(train_images), "with_val": args.with_val, "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                                              f"torch {torch.__version__}, {device}",
        "points": [],
    }
    scoring = [0.0]  # seconds spent scoring, kept out of the training time

    def on_point(point: dict) -> None:
        epoch = point["epoch"]
        if epoch % args.every and epoch != args.epochs:
            return
        start = time.perf_counter()
        model = load_model(model_cfg, point["folds"][0]["model"], device)
        probs = Probs(predict_probs(model, hold_images, bf16, False).cpu(), predict_probs(model, hold_images, bf16, True).cpu())
        figures = volume_estimate(data, held, probs, NO_POSTPROCESSING)
        post = volume_estimate(data, held, probs, POSTPROCESSED)
        record = point["history"][-1]
        result["points"].append({
            "epoch": epoch, "slices_seen": epoch * (args.epoch_slices or len(train_images)),
            "train_seconds": round(point["seconds"] - scoring[0], 1), "val_dice_fg_subset": round(record["val_dice_fg"], 4),
            "held_out_dice_fg": figures["dice_fg"], "held_out_dice_fg_ci95": figures["dice_fg_ci95"],
            "held_out_n_volumes": figures["n_volumes"], "held_out_postprocessed_dice_fg": post["dice_fg"],
            "held_out_postprocessed_dice_fg_ci95": post["dice_fg_ci95"], "held_out_by_orientation": by_orientation(data, figures["cases"]),
        })
        scoring[0] += time.perf_counter() - start
        print(json.dumps(result["points"][-1]), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    fit_folds(model_cfg, train_cfg, [(train, val)], seed=args.seed, keep_state=False, on_resume_point=on_point,
              resume_every=0.0, val_slices=args.val_slices)
    return result


if __name__ == "__main__":
    main()
