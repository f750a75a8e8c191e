"""What to ship from a sweep, and how far to trust its estimate, judged on slices nothing saw.

    python -m benchmarks.shipping --minutes 55 [--seed 3] [--recipes top1x3,top3x1]
                                  [--holdout 15] [--work DIR] [--out benchmarks/results/shipping-SEED.json]

One draw: ``--holdout`` train slices are held out by this script (drawn with ``--seed``; never
the test split), ``python -m sweep run`` runs with its defaults on the rest for ``--minutes``
(stopped by SIGTERM as Ctrl-C stops it), then each recipe ``topKxS`` is shipped by
``python -m sweep best --evaluate --top K --seeds S`` (refit on train + val, as by default).
For each recipe the JSON gives the held-out ``dice_fg`` of the written masks (with its 95 %
bootstrap interval), ``best --evaluate``'s own ``estimate`` (scored on the train patients its
retrainings left out) and the same recipe's figure on val (which also selected the trials): how
far each estimate lies from what the held-out slices say.

A sweep already in ``--work`` (its ``sweep.json``) is reused, so recipes can be added to a draw
without searching again. Run on a quiet machine for timings; the figures here are Dice only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.time_to_quality import CMRI, EPOCHS, log, machine, make_folder, run_ours

RESULTS = ROOT / "benchmarks" / "results"


def parse_recipe(text: str) -> tuple[int, int]:
    """``top3x1`` -> (3, 1): the best 3 trials, one seed each."""
    top, _, seeds = text.removeprefix("top").partition("x")
    try:
        if not text.startswith("top"):
            raise ValueError(text)
        k, s = int(top), int(seeds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"recipe {text!r}: expected topKxS, e.g. top3x1") from None
    if k < 1 or s < 1:
        raise argparse.ArgumentTypeError(f"recipe {text!r}: K and S must be positive")
    return k, s


def sweep(work: Path, data: Path, holdout: int, seed: int, minutes: float) -> dict:
    """The draw's sweep: run once, then reused from ``work/sweep.json``."""
    record = work / "sweep.json"
    if record.exists():
        log(f"reusing the sweep in {work}")
        return json.loads(record.read_text())
    work.mkdir(parents=True, exist_ok=True)
    held = make_folder(data, holdout, seed, work / "slices")
    (work / "held.json").write_text(json.dumps(held))
    log(f"sweeping for {minutes} min on {work / 'slices'} ({holdout} train slices held out)")
    url, start = run_ours(work / "slices", work, minutes * 60, seed, EPOCHS)
    info = {"url": url, "start": start.isoformat(), "minutes": minutes, "seed": seed, "holdout": holdout}
    record.write_text(json.dumps(info))
    return info


def study_summary(url: str) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="ttq", storage=url)
    states = [t.state.name for t in study.trials]
    ranked = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value, reverse=True)
    return {"trials": len(states), "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "top_val_dice_fg": [round(t.value, 4) for t in ranked[:5]]}


def ship(url: str, work: Path, top: int, seeds: int) -> dict:
    name = f"top{top}x{seeds}"
    cmd = [sys.executable, "-m", "sweep", "best", "--evaluate", "--storage", url, "--study", "ttq", "--top", str(top),
           "--seeds", str(seeds), "--out", str(work / f"ship-{name}"), "--json", "--quiet"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    held_out, est = res["test"]["ensemble"], res["estimate"]
    return {"recipe": name, "trials": res["recipe"]["trials"], "best_epochs": [r["best_epoch"] for r in res["runs"]],
            "held_out_dice_fg": held_out["dice_fg"], "held_out_ci95": held_out["dice_fg_ci95"],
            "held_out_single_models": res["test"]["dice_fg"], "held_out_single_models_std": res["test"]["dice_fg_std"],
            "estimate": est["dice_fg"], "estimate_ci95": est["dice_fg_ci95"], "estimate_n": est["n_images"],
            "estimate_on_val": est["val_dice_fg"],
            "estimate_error": round(est["dice_fg"] - held_out["dice_fg"], 4),
            "estimate_on_val_error": round(est["val_dice_fg"] - held_out["dice_fg"], 4),
            "postprocess": res["postprocess"], "ship_s": round(time.perf_counter() - start)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="search budget of the draw's sweep")
    p.add_argument("--seed", type=int, default=3, help="held-out draw and sweep seed (default %(default)s)")
    p.add_argument("--recipes", default="top1x3,top3x1", help="what to ship, topKxS each (default %(default)s)")
    p.add_argument("--holdout", type=int, default=15, help="train slices held out by this script (default %(default)s)")
    p.add_argument("--data", default=str(CMRI))
    p.add_argument("--work", default=None, help="working folder (default: benchmarks/results/shipping-SEED)")
    p.add_argument("--out", default=None, help="JSON result (default: benchmarks/results/shipping-SEED.json)")
    args = p.parse_args(argv)
    recipes = [parse_recipe(r) for r in args.recipes.split(",")]
    work = Path(args.work or RESULTS / f"shipping-{args.seed}").resolve()
    out = Path(args.out or RESULTS / f"shipping-{args.seed}.json")
    info = sweep(work, Path(args.data).resolve(), args.holdout, args.seed, args.minutes)
    result = {"machine": machine(), "sweep": {**info, **study_summary(info["url"])}, "recipes": []}
    if out.exists():  # recipes shipped before on this draw are kept, not shipped again
        result["recipes"] = [r for r in json.loads(out.read_text()).get("recipes", [])]
    done = {r["recipe"] for r in result["recipes"]}
    for top, seeds in recipes:
        if f"top{top}x{seeds}" in done:
            continue
        log(f"shipping top {top} x {seeds} seed(s)")
        shipped = ship(info["url"], work, top, seeds)
        result["recipes"].append(shipped)
        log(f"top{top}x{seeds}: held-out {shipped['held_out_dice_fg']:.4f}, estimate {shipped['estimate']:.4f}, "
            f"on val {shipped['estimate_on_val']:.4f}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
