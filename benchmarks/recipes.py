"""What to ship after a sweep: which retraining recipe generalises to slices nobody selected on?

    python -m benchmarks.recipes [--params sweep-best|JSON] [--epochs 50] [--seeds 3] [--holdout 15]
                                 [--augmentations off,on] [--out FILE.json]

Judged on ``--holdout`` slices held out from the train split by this script (never the test
split); the rest of train and the val split are what a user tunes on. One configuration
(default: the best of the 30-trial real-data sweep, docs/RESULTS.md) is shipped four ways,
each a ``--seeds`` ensemble (mean probabilities), as ``best --evaluate`` builds it:

- ``val``: each seed trained on the tuning slices, checkpoint at its best val epoch (the
  recipe ``best --evaluate`` used before);
- ``refit``: each seed then retrained on tuning + val slices for that seed's best epoch count,
  last epoch kept (every labelled slice in the shipped model);
- ``val+aug`` and ``refit+aug``: the same with the newer augmentations switched on at
  moderate strengths (``AUG``): translation, elastic deformation, low-resolution simulation,
  blur and noise, with wider rotation and gamma.

Prints and writes per recipe the held-out Dice of the ensemble and of each seed. Results are
written after every recipe, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from benchmarks.selection import SWEEP_BEST
from data import load_dataset
from sweep.nn.metrics import dice_scores
from sweep.nn.postprocess import predict_probs
from sweep.search.space import configs_from_params
from sweep.training.train import DeviceSplit, fit_final, fit_folds, load_model, resolve_device, use_bf16

# Moderate strengths of the augmentations the field uses (nnU-Net's 2-D set): ~5 % shifts,
# 3 px elastic folds, up to 1.5x coarser acquisitions, sigma <= 0.5 px blur, noise at 5 % of the
# slice's spread; rotation and gamma as wide as the best trials asked for.
AUG = {"aug_translate": 0.05, "aug_elastic": 3.0, "aug_lowres": 0.5, "aug_blur": 0.5, "aug_noise": 0.05,
       "aug_rotate": 20.0, "aug_gamma": 0.5}


def ship(params: dict, epochs: int, seeds: int, tune, val, holdout, device) -> dict:
    """Train each seed on the tuning slices (the ``val`` recipe), then refit it on tuning + val
    for its best epoch count (``refit``); score both ensembles on the held-out slices."""
    model_cfg, train_cfg = configs_from_params(params, epochs)
    bf16 = use_bf16(device)
    everything = DeviceSplit(torch.cat([tune.images, val.images]), torch.cat([tune.masks, val.masks]))
    probs = {"val": [], "refit": []}
    best_epochs, start = [], time.perf_counter()
    for seed in range(seeds):
        plain = fit_folds(model_cfg, train_cfg, [(tune, val)], seed=seed)
        best_epochs.append(plain.best_epoch)
        refit = fit_final(model_cfg, replace(train_cfg, epochs=plain.best_epoch), everything, seed=seed)
        for name, state in (("val", plain.state_dict), ("refit", refit)):
            probs[name].append(predict_probs(load_model(model_cfg, state, device), holdout.images, bf16).cpu())
    truth = holdout.masks.cpu()
    return {name: {"holdout": {k: round(v, 4) for k, v in dice_scores(torch.stack(p).mean(0).argmax(1), truth).items()},
                   "holdout_dice_fg_per_seed": [round(dice_scores(x.argmax(1), truth)["dice_fg"], 4) for x in p],
                   "best_epochs": best_epochs}
            for name, p in probs.items()} | {"seconds": round(time.perf_counter() - start)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cmri"))
    parser.add_argument("--params", default="sweep-best", help="'sweep-best' or a JSON object of params")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--holdout", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="which train slices are held out")
    parser.add_argument("--augmentations", default="off,on", help="without and/or with AUG")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="recipes.json")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    data = load_dataset(args.data)
    params = dict(SWEEP_BEST) if args.params == "sweep-best" else json.loads(args.params)
    order = np.random.default_rng(args.seed).permutation(len(data.train))
    hold, tune_idx = np.sort(order[: args.holdout]), np.sort(order[args.holdout:])
    split = lambda idx: DeviceSplit.from_arrays(data.train.images[idx], data.train.masks[idx], device)  # noqa: E731
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
    out = {"data": data.describe(), "params": params, "epochs": args.epochs, "seeds": args.seeds,
           "holdout": [data.train.names[i] for i in hold], "device": str(device), "recipes": {}}
    for aug in args.augmentations.split(","):
        res = ship({**params, **AUG} if aug == "on" else params, args.epochs, args.seeds, split(tune_idx), val,
                   split(hold), device)
        for name in ("val", "refit"):
            key = name + ("+aug" if aug == "on" else "")
            out["recipes"][key] = res[name]
            r = res[name]
            print(f"{key:10s} held-out dice_fg {r['holdout']['dice_fg']:.4f} (seeds {r['holdout_dice_fg_per_seed']}, "
                  f"best epochs {r['best_epochs']}; {res['seconds']} s for both)", file=sys.stderr, flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
