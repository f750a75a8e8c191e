"""Which selection generalises: the best on 12 val slices, or the best by K-fold cross-validation?

    python -m benchmarks.selection [--candidates 10] [--epochs 30] [--cv 4] [--holdout 15] [--out FILE.json]

Judged on slices held out from the train split by this script (never on the test split):

1. ``--holdout`` train slices are set aside (seeded); the rest of train and the val split are
   what a user would tune on.
2. Every candidate configuration is trained two ways:
   - plain: on the remaining train slices, checkpoint at its best val epoch, as ``python -m
     sweep run`` does. Its val ``dice_fg`` is what val selection ranks by; the same model
     is then scored on the held-out slices (what ``best --evaluate`` would ship, one seed);
   - cross-validated: ``--cv`` folds over remaining train + val in lockstep, as
     ``python -m sweep run --cv K`` does. Its mean fold ``dice_fg`` is what CV ranks by; the
     fold models' ensemble is scored on the held-out slices (what ``best --evaluate`` ships
     for a CV study, one seed).
3. Each selection rule picks its best candidate; the held-out Dice of the pick is the verdict.
   Both rules pick from the same candidates, so the difference is the rule's, not the
   sampler's luck; the rank correlations show how well each score predicts held-out Dice.

Candidates: the best configuration of the 30-trial real-data sweep in docs/RESULTS.md,
``--candidates - 2`` configurations drawn from the search space at random (seeded), and the
original coursework configuration (last: the most expensive). Results are written after every
candidate, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
from data import fold_indices, load_dataset
from sweep.nn.metrics import dice_scores
from sweep.nn.postprocess import predict_probs
from sweep.search.presets import ORIGINAL, preset
from sweep.search.space import configs_from_params, suggest
from sweep.training.train import DeviceSplit, fit_folds, load_model, resolve_device, use_bf16

# The best trial of the 30-trial real-data sweep (docs/RESULTS.md, trial 23), rounded.
SWEEP_BEST = preset("small", base_width=64, convs_deep=2, kernel_size=5, dropout=0.42, lr=0.00054,
                             weight_decay=2.1e-05, batch_size=4, schedule='constant', dice_weight=0.09,
                             class_weight_power=0.54, aug_rotate=10.0, aug_gamma=0.32)


def random_candidates(n: int, seed: int, epochs: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        suggest(trial, epochs)
        out.append(trial.params)
        study.tell(trial, 0.0)
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def split(images, masks, idx, device) -> DeviceSplit:
    return DeviceSplit.from_arrays(images[idx], masks[idx], device)


def evaluate_candidate(params, epochs, k, data, holdout_idx, tune_idx, device, seed) -> dict:
    model_cfg, train_cfg = configs_from_params(params, epochs)
    bf16 = use_bf16(device)
    train_images, train_masks = data.train.images, data.train.masks
    holdout = split(train_images, train_masks, holdout_idx, device)
    truth = torch.as_tensor(train_masks[holdout_idx])
    out: dict = {"params": params}

    start = time.perf_counter()  # plain: train on the tuning part of train, select the epoch on val
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
    plain = fit_folds(model_cfg, train_cfg, [(split(train_images, train_masks, tune_idx, device), val)], seed=seed)
    model = load_model(model_cfg, plain.state_dict, device)
    pred = predict_probs(model, holdout.images, bf16).argmax(1).cpu()
    out["plain"] = {"val_dice_fg": plain.best_value, "best_epoch": plain.best_epoch,
                    "holdout": dice_scores(pred, truth), "seconds": time.perf_counter() - start}

    start = time.perf_counter()  # cross-validated: folds over the tuning part of train + val
    images = np.concatenate([train_images[tune_idx], data.val.images])
    masks = np.concatenate([train_masks[tune_idx], data.val.masks])
    folds = []
    for held in fold_indices(len(images), k, 0):
        rest = np.setdiff1d(np.arange(len(images)), held)
        folds.append((split(images, masks, rest, device), split(images, masks, held, device)))
    cv = fit_folds(model_cfg, train_cfg, folds, seed=seed)
    probs = sum(predict_probs(load_model(model_cfg, s, device), holdout.images, bf16).cpu() for s in cv.state_dicts)
    out["cv"] = {"cv_dice_fg": cv.best_value, "best_epoch": cv.best_epoch,
                 "fold_dice_fg": [f["dice_fg"] for f in cv.fold_scores],
                 "holdout": dice_scores(probs.argmax(1), truth), "seconds": time.perf_counter() - start}
    return out


def seed_ensemble_holdout(params, epochs, seeds, data, holdout_idx, tune_idx, device) -> dict:
    """What ``best --evaluate --seeds K`` ships for a val-selected trial: K plain models, averaged."""
    model_cfg, train_cfg = configs_from_params(params, epochs)
    bf16 = use_bf16(device)
    holdout = split(data.train.images, data.train.masks, holdout_idx, device)
    truth = torch.as_tensor(data.train.masks[holdout_idx])
    train = split(data.train.images, data.train.masks, tune_idx, device)
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
    start, probs, single = time.perf_counter(), 0, []
    for seed in range(seeds):
        result = fit_folds(model_cfg, train_cfg, [(train, val)], seed=seed)
        p = predict_probs(load_model(model_cfg, result.state_dict, device), holdout.images, bf16).cpu()
        single.append(dice_scores(p.argmax(1), truth)["dice_fg"])
        probs = probs + p
    return {"seeds": seeds, "holdout": dice_scores(probs.argmax(1), truth), "holdout_dice_fg_per_seed": single,
            "seconds": time.perf_counter() - start}


def verdict(results: list[dict]) -> dict:
    """Each rule's pick and its held-out Dice; rank correlations of each score with held-out Dice."""
    val = [r["plain"]["val_dice_fg"] for r in results]
    cv = [r["cv"]["cv_dice_fg"] for r in results]
    hold_plain = [r["plain"]["holdout"]["dice_fg"] for r in results]
    hold_cv = [r["cv"]["holdout"]["dice_fg"] for r in results]
    pv, pc = int(np.argmax(val)), int(np.argmax(cv))
    return {
        "n_candidates": len(results),
        "val_pick": {"candidate": pv, "val_dice_fg": val[pv], "holdout_dice_fg_single_model": hold_plain[pv],
                     "holdout_dice_fg_fold_ensemble": hold_cv[pv]},
        "cv_pick": {"candidate": pc, "cv_dice_fg": cv[pc], "holdout_dice_fg_fold_ensemble": hold_cv[pc],
                    "holdout_dice_fg_single_model": hold_plain[pc]},
        "best_possible_holdout_single_model": max(hold_plain),
        "best_possible_holdout_fold_ensemble": max(hold_cv),
        "spearman_val_vs_holdout": spearman(val, hold_plain),
        "spearman_cv_vs_holdout": spearman(cv, hold_cv),
        "spearman_cv_vs_holdout_single_model": spearman(cv, hold_plain),
        "seconds_plain": sum(r["plain"]["seconds"] for r in results),
        "seconds_cv": sum(r["cv"]["seconds"] for r in results),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cmri"))
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cv", type=int, default=4)
    parser.add_argument("--holdout", type=int, default=15, help="train slices held out for the verdict")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="selection.json")
    parser.add_argument("--finalize", action="store_true",
                        help="only add the val pick's seed ensemble to an existing --out file")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    data = load_dataset(args.data)
    order = np.random.default_rng(args.seed).permutation(len(data.train))
    holdout_idx, tune_idx = np.sort(order[: args.holdout]), np.sort(order[args.holdout:])
    if args.finalize:
        out = json.loads(Path(args.out).read_text())
        finalize(out, data, holdout_idx, tune_idx, device)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps(out["verdict"], indent=1))
        return 0
    candidates = [SWEEP_BEST, *random_candidates(max(0, args.candidates - 2), args.seed, args.epochs), dict(ORIGINAL)]
    candidates = candidates[: args.candidates]
    out = {"data": data.describe(), "epochs": args.epochs, "cv": args.cv, "holdout": [data.train.names[i] for i in holdout_idx],
           "tune_train": len(tune_idx), "val": len(data.val), "device": str(device), "candidates": []}
    for i, params in enumerate(candidates):
        res = evaluate_candidate(params, args.epochs, args.cv, data, holdout_idx, tune_idx, device, args.seed)
        out["candidates"].append(res)
        out["verdict"] = verdict(out["candidates"])
        Path(args.out).write_text(json.dumps(out, indent=1))
        p, c = res["plain"], res["cv"]
        print(f"candidate {i}: val {p['val_dice_fg']:.4f} -> holdout {p['holdout']['dice_fg']:.4f} ({p['seconds']:.0f} s) | "
              f"cv {c['cv_dice_fg']:.4f} -> holdout {c['holdout']['dice_fg']:.4f} ({c['seconds']:.0f} s)", file=sys.stderr, flush=True)
    finalize(out, data, holdout_idx, tune_idx, device)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out["verdict"], indent=1))
    return 0


def finalize(out: dict, data, holdout_idx, tune_idx, device) -> None:
    """Equal final models: the val pick as a K-seed ensemble, beside the CV pick's K-fold ensemble."""
    pick = out["verdict"]["val_pick"]["candidate"]
    ens = seed_ensemble_holdout(out["candidates"][pick]["params"], out["epochs"], out["cv"], data, holdout_idx, tune_idx, device)
    out["val_pick_seed_ensemble"] = ens
    out["verdict"]["val_pick"]["holdout_dice_fg_seed_ensemble"] = ens["holdout"]["dice_fg"]
    print(f"val pick (candidate {pick}) as a {ens['seeds']}-seed ensemble: holdout {ens['holdout']['dice_fg']:.4f}",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
