"""Does the search pay? Best-so-far held-out Dice against CPU minutes: the README's ACDC search,
the same search on the local space, plain Optuna, and the default preset alone, at equal budgets.

    OMP_NUM_THREADS=2 python -m benchmarks.search_vs_default --data ../shared/data/acdc --minutes 40 --seeds 3 \
        --ship-epochs 100 --out docs/measurements/search_vs_default.json

Uses ``training/`` only: the search trains on the train patients less ``best --evaluate``'s
estimate hold-out (``--holdout``, the same patients) and selects on val; the held-out patients
neither train nor select anything, and score each arm's pick whenever its pick changes, at full
fidelity (every slice of every held-out volume, whole slices, stacked onto the source grid: mean
foreground Dice per volume; stack Dice over slices on slice data). No post-processing, for every
arm alike. Each arm runs in this process, one after the other, for ``--minutes`` of wall time on
``--threads`` threads, the scoring not counted (a trial still running at the end stops at its
epoch's end and does not count); the x-axis is this process's CPU minutes, scoring excluded.
Arms (``--arms``):

- ``recipe``: the README's search: TPE (10 random start-up trials, multivariate), the median
  pruner, the full space, the ``--preset`` enqueued first, the cap per trial at 360/2400 of the budget;
- ``local``: ``run --space local --sampler tpe-5 --pruner halving``, the preset first, the same cap;
- ``plain``: the Optuna script a user would write: ``TPESampler(seed)`` and ``MedianPruner()`` at
  Optuna's defaults, the full space, no default, no cap;
- ``default``: the preset alone, one training whose epoch budget fills the minutes (from the time
  of one calibration epoch, not counted), its pick the epoch with the best val Dice so far.

What ships (``--ship-epochs``, the README's ``best --evaluate --epochs 100``): after its minutes each
search arm retrains its pick for that many epochs, as ``best --evaluate``'s estimate twin trains (the
same patients, checkpoint on val), and the arm's last point is that model, at the search's CPU
minutes plus the retraining's. The ``default`` arm of the same seed then trains for the search
minutes plus the mean wall time the seed's search arms spent shipping: the default trained alone for
the same total budget. ``--ship-epochs 0`` scores the picks at search fidelity and gives the default
the search minutes only.

All arms train at the same epoch cost (``--epochs``, ``--epoch-slices``, ``--val-slices``,
``--patch``: the recipe's). Seed s of every arm uses the sampler and training seed s, so arms
are paired by seed and by patient. The JSON (rewritten after every arm) holds every point, each
arm's final held-out figure per seed, and per seed the paired difference of each arm against
``default`` (mean over volumes, with a bootstrap interval over patients); the PNG beside it draws
the curves. ``--resume`` adds to the JSON in ``--out`` the (arm, seed) pairs it lacks, so that the
measurement can run in pieces (``--seeds 1``, then ``--seeds 2 --resume``, ...).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]

from data import load_dataset
from sweep.core import records as rec
from sweep.shipping.evaluate import patient_bootstrap, volume_estimate
from sweep.training.folds import estimate_holdout
from sweep.nn.metrics import dice_scores
from sweep.training.objective import Objective, TimeUp
from sweep.nn.postprocess import Probs, predict_probs
from sweep.training.run import parse_enqueue
from sweep.search.space import configs_from_params
from sweep.search.strategies import make_pruner, make_sampler
from sweep.nn.runtime import DeviceSplit, load_model, use_bf16
from sweep.training.train import fit_folds

RESULT = ROOT / "docs" / "measurements" / "search_vs_default.json"
ARMS = ("recipe", "local", "plain", "default")
CAP_SHARE = 360 / 2400  # the README recipe's --max-trial-seconds over its --timeout
NO_POSTPROCESSING = {"tta": False, "largest_component": False}
COLOURS = {"recipe": (31, 119, 180), "local": (44, 160, 44), "plain": (214, 39, 40), "default": (90, 90, 90)}


class OutOfTime(Exception):
    """The default arm's training reached the end of its minutes."""


@dataclass
class Bench:
    """What every arm shares: the data, the held-out patients, the epoch cost, the clock."""

    data: object
    held: np.ndarray
    folds: list
    hold_images: torch.Tensor
    fidelity: rec.Fidelity
    epochs: int
    seconds: float
    params: dict
    bf16: bool
    ship_epochs: int = 0
    scoring_cpu: float = 0.0  # CPU seconds spent scoring, kept off the x-axis ...
    scoring_wall: float = 0.0  # ... and wall seconds, kept out of every arm's minutes

    def score(self, model_cfg, state: dict) -> dict:
        """The held-out figure of one model: per volume where the data has volumes, else over slices."""
        start, wall = time.process_time(), time.time()
        model = load_model(model_cfg, state, self.hold_images.device)
        plain = predict_probs(model, self.hold_images, self.bf16, False).cpu()
        if self.data.volumes:
            figures = volume_estimate(self.data, self.held, Probs(plain, plain), NO_POSTPROCESSING)
            out = {"dice_fg": figures["dice_fg"]["all"][0],
                   "cases": {c["case"]: [c["patient"], c["dice_fg"]] for c in figures["cases"]}}
        else:
            truth = torch.as_tensor(self.data.train.masks[self.held])
            out = {"dice_fg": round(dice_scores(plain.argmax(1), truth)["dice_fg"], 5), "cases": None}
        self.scoring_cpu += time.process_time() - start
        self.scoring_wall += time.time() - wall
        return out

    def clock(self, seconds: float | None = None) -> Clock:
        """A clock from now, over ``seconds`` of wall time (the bench's minutes unless given)."""
        return Clock(self, time.process_time(), time.time(), self.scoring_cpu, self.scoring_wall,
                     self.seconds if seconds is None else seconds)

    def train_cfg(self, params: dict, epochs: int):
        """The configs of ``params`` for ``epochs`` epochs at the bench's epoch cost."""
        model_cfg, train_cfg = configs_from_params(params, epochs)
        return model_cfg, replace(train_cfg, epoch_slices=self.fidelity.epoch_slices, patch=self.fidelity.patch)


@dataclass
class Clock:
    """An arm's CPU and wall seconds since its start, the bench's scoring left out of both."""

    bench: Bench
    cpu0: float
    wall0: float
    scoring_cpu0: float
    scoring_wall0: float
    seconds: float

    def cpu_minutes(self) -> float:
        return round((time.process_time() - self.cpu0 - (self.bench.scoring_cpu - self.scoring_cpu0)) / 60, 3)

    def wall(self) -> float:
        return time.time() - self.wall0 - (self.bench.scoring_wall - self.scoring_wall0)

    def deadline(self) -> float:
        """The wall-clock end of the arm's minutes (``time.time()``), moved on by the scoring so far."""
        return time.time() + self.seconds - self.wall()

    def over(self) -> bool:
        return self.wall() > self.seconds


def setup(args) -> Bench:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data = load_dataset(args.data)
    held = estimate_holdout(data, args.holdout)
    rest = np.setdiff1d(np.arange(len(data.train)), held)
    train = DeviceSplit.from_arrays(data.train.images[rest], data.train.masks[rest], device)
    val = DeviceSplit.from_arrays(data.val.images, data.val.masks, device)
    fidelity = rec.Fidelity(args.epoch_slices, args.val_slices, args.patch)
    return Bench(data, held, [(train, val)], torch.as_tensor(data.train.images[held]).unsqueeze(1), fidelity,
                 args.epochs, args.minutes * 60, parse_enqueue(args.preset, args.epochs), use_bf16(device),
                 args.ship_epochs)


class _Keeping(Objective):
    """The trial objective of ``run``, keeping in memory (not as an artifact) the weights of the
    latest trial that beat every trial before it: the only ones a point scores."""

    kept: dict

    def _maybe_upload_checkpoint(self, trial, model_cfg, train_cfg, result) -> None:
        try:
            best = trial.study.best_value
        except ValueError:  # no complete trial yet
            best = -float("inf")
        if result.best_value > best:
            self.kept = {trial.number: (model_cfg, result.state_dict)}


def search_arm(bench: Bench, arm: str, seed: int) -> list[dict]:
    """One search for the bench's minutes; a point each time the study's best trial changes."""
    rec.silence_optuna()
    epochs = bench.epochs
    strategies = {
        "recipe": (make_sampler("tpe", seed), make_pruner("median", epochs), None),
        "local": (make_sampler("tpe-5", seed), make_pruner("halving", epochs), {"name": "local", "centre": bench.params}),
        "plain": (optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner(), None),
    }
    sampler, pruner, space = strategies[arm]
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    if arm != "plain":
        study.enqueue_trial(bench.params)
    clock = bench.clock()
    objective = _Keeping(bench.folds, epochs, seed=seed, deadline=clock.deadline(), fidelity=bench.fidelity,
                         max_trial_seconds=None if arm == "plain" else CAP_SHARE * bench.seconds, space=space)
    objective.kept = {}
    points: list[dict] = []

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = rec.best_summary(study)
        if clock.over():  # a trial that finished its last epoch after the end does not count
            study.stop()
            return
        if best is None or (points and points[-1]["trial"] == best["trial"]):
            return
        points.append({"cpu_minutes": clock.cpu_minutes(), "wall_minutes": round(clock.wall() / 60, 3),
                       "trials": len(study.trials), "trial": best["trial"], "val_dice_fg": best["val_dice_fg"],
                       "params": best["params"], **bench.score(*objective.kept[best["trial"]])})
        objective.deadline = clock.deadline()

    try:
        study.optimize(objective, catch=(Exception,), callbacks=[on_trial])
    except TimeUp:
        pass  # the trial running at the end stopped there: it does not count
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    if failed and not points:  # every trial broke: a fault of the bench, not a result
        reason = failed[0].user_attrs.get(rec.TrialKey.FAIL_REASON, "no reason recorded")
        raise RuntimeError(f"arm {arm}, seed {seed}: all {len(failed)} trials failed, the first with {reason}")
    if bench.ship_epochs and points:
        points.append(ship(bench, points[-1], seed, clock))
    return points


def ship(bench: Bench, pick: dict, seed: int, clock: Clock) -> dict:
    """The search's pick retrained for ``bench.ship_epochs`` as ``best --evaluate``'s estimate twin
    trains, scored; its CPU and wall time added to the arm's."""
    model_cfg, train_cfg = bench.train_cfg(pick["params"], bench.ship_epochs)
    wall = time.time()
    fit = fit_folds(model_cfg, train_cfg, bench.folds, seed=seed, val_slices=bench.fidelity.val_slices)
    return {"cpu_minutes": clock.cpu_minutes(), "wall_minutes": round(clock.wall() / 60, 3),
            "ship_wall_minutes": round((time.time() - wall) / 60, 3), "shipped": True, "trial": pick["trial"],
            "epochs": bench.ship_epochs, "best_epoch": fit.best_epoch, "val_dice_fg": round(fit.best_value, 5),
            "params": pick["params"], **bench.score(model_cfg, fit.state_dict)}


def default_arm(bench: Bench, seed: int, seconds: float) -> list[dict]:
    """The preset alone: one training whose epoch budget fills ``seconds``; a point at every new best val epoch."""
    model_cfg, train_cfg = bench.train_cfg(bench.params, 1)
    start = time.time()
    fit_folds(model_cfg, train_cfg, bench.folds, seed=seed, keep_state=False, val_slices=bench.fidelity.val_slices)
    epochs = max(1, int(seconds / (time.time() - start)))  # the calibration epoch is not counted
    clock = bench.clock(seconds)
    points: list[dict] = []

    def on_point(point: dict) -> None:
        record = point["history"][-1]
        if clock.over():
            raise OutOfTime
        if not points or record["val_dice_fg"] > points[-1]["val_dice_fg"]:
            points.append({"cpu_minutes": clock.cpu_minutes(), "wall_minutes": round(clock.wall() / 60, 3),
                           "epoch": point["epoch"], "epochs": epochs, "val_dice_fg": round(record["val_dice_fg"], 5),
                           **bench.score(model_cfg, point["folds"][0]["model"])})

    try:
        fit_folds(model_cfg, replace(train_cfg, epochs=epochs), bench.folds, seed=seed, keep_state=False,
                  on_resume_point=on_point, resume_every=0.0, val_slices=bench.fidelity.val_slices)
    except OutOfTime:
        pass
    return points


def paired(final: dict, base: dict) -> dict | None:
    """One arm's final pick against the default's, the same held-out volumes: mean difference per
    volume and its bootstrap interval over patients (on slice data, the difference alone)."""
    if final["cases"] is None:
        return {"gain": round(final["dice_fg"] - base["dice_fg"], 5), "ci95": None}
    diffs = [(patient, value - base["cases"][case][1]) for case, (patient, value) in final["cases"].items()]
    return {"gain": round(float(np.mean([d for _, d in diffs])), 5), "ci95": patient_bootstrap(diffs)}


def summarize(result: dict) -> dict:
    """Per arm: the final held-out figure of each seed and their mean; per seed, each arm against ``default``."""
    summary = {}
    for arm, runs in result["arms"].items():
        finals = [run["points"][-1] if run["points"] else None for run in runs]
        values = [f["dice_fg"] for f in finals if f]
        summary[arm] = {"final_dice_fg": [f and f["dice_fg"] for f in finals],
                        "mean": round(float(np.mean(values)), 5) if values else None}
    base = {run["seed"]: run for run in result["arms"].get("default", [])}
    if base:
        for arm, runs in result["arms"].items():
            if arm != "default":
                summary[arm]["vs_default"] = [
                    paired(r["points"][-1], base[r["seed"]]["points"][-1])
                    if r["points"] and r["seed"] in base and base[r["seed"]]["points"] else None for r in runs]
    return summary


def draw(result: dict, path: Path, size: tuple[int, int] = (800, 500)) -> None:
    """Best-so-far held-out Dice against CPU minutes, a step line per arm and seed (Pillow; no plotting library)."""
    width, height = size
    left, right, top, bottom = 60, 20, 20, 50
    points = [p for runs in result["arms"].values() for run in runs for p in run["points"]]
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    if not points:
        img.save(path)
        return
    xmax = max(max(p["cpu_minutes"] for p in points), 1e-3)
    ylo, yhi = min(p["dice_fg"] for p in points), max(p["dice_fg"] for p in points)
    ylo, yhi = (ylo - 0.01, yhi + 0.01) if yhi - ylo > 1e-6 else (ylo - 0.05, yhi + 0.05)

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x / xmax * (width - left - right), height - bottom - (y - ylo) / (yhi - ylo) * (height - top - bottom)

    d.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0, 0.5, 1):
        y = ylo + frac * (yhi - ylo)
        d.text((4, xy(0, y)[1] - 6), f"{y:.3f}", fill="black")
        d.text((xy(frac * xmax, ylo)[0] - 10, height - bottom + 6), f"{frac * xmax:.1f}", fill="black")
    d.text((width // 2 - 120, height - 20), "CPU minutes (scoring excluded)", fill="black")
    for i, (arm, runs) in enumerate(result["arms"].items()):
        colour = COLOURS.get(arm, (0, 0, 0))
        d.text((left + 10, top + 8 + 14 * i), arm, fill=colour)
        for run in runs:
            line, last = [], None
            for p in run["points"]:
                if last is not None:
                    line.append(xy(p["cpu_minutes"], last))
                line.append(xy(p["cpu_minutes"], p["dice_fg"]))
                last = p["dice_fg"]
                if p.get("shipped"):  # the pick after its shipping epochs: a dot
                    x, y = xy(p["cpu_minutes"], p["dice_fg"])
                    d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            if last is not None:
                line.append(xy(xmax, last))
                d.line(line, fill=colour, width=2)
    img.save(path)


SAME_SETTINGS = ("data", "preset", "minutes", "fidelity", "ship_epochs", "held_out_patients")


def resumed(fresh: dict, earlier: dict, parser: argparse.ArgumentParser) -> dict:
    """``--resume``: the earlier run's measurements, to which this run adds the (arm, seed) pairs it
    lacks; refused where the earlier run measured something else."""
    differ = [key for key in SAME_SETTINGS if earlier.get(key) != fresh[key]]
    if differ:
        parser.error(f"--resume: {', '.join(differ)} differ from the run in --out; use another --out")
    arms = {arm: earlier["arms"].get(arm, []) for arm in fresh["arms"]}
    arms.update({arm: runs for arm, runs in earlier["arms"].items() if arm not in arms})
    commands = earlier.get("commands", [earlier.get("command")]) + [fresh["command"]]
    machines = earlier.get("machines", [earlier.get("machine")])
    machines += [fresh["machine"]] if fresh["machine"] not in machines else []
    return {**fresh, "commands": commands, "machines": machines, "arms": arms}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "acdc"))
    p.add_argument("--minutes", type=float, default=40.0, help="wall minutes of each arm and seed (the recipe's 40)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS), help=f"which of {', '.join(ARMS)}")
    p.add_argument("--preset", default="acdc", help="the enqueued default (a preset, a JSON file or a JSON object)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--epoch-slices", type=int, default=500)
    p.add_argument("--val-slices", type=int, default=100)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--holdout", type=float, default=0.2, help="share of train patients held out (as best --evaluate)")
    p.add_argument("--ship-epochs", type=int, default=100,
                   help="epochs each search's pick retrains for before it is scored last (best --evaluate --epochs); "
                        "the default arm gets the time too (0: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULT), help="JSON file; the PNG goes beside it")
    p.add_argument("--resume", action="store_true",
                   help="keep what --out holds and run only the (arm, seed) pairs it lacks: a long measurement in pieces")
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        p.error(f"--arms: no such arm(s) {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")

    bench = setup(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python -m benchmarks.search_vs_default " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": bench.data.describe(), "preset": bench.params, "minutes": args.minutes, "seeds": args.seeds,
        "fidelity": {"epochs": args.epochs, **bench.fidelity.to_dict()}, "ship_epochs": args.ship_epochs,
        "held_out_patients": sorted(set(np.asarray(bench.data.train.groups)[bench.held])),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "arms": {arm: [] for arm in arms},
    }
    if args.resume and out.is_file():
        result = resumed(result, json.loads(out.read_text()), p)
    for seed in range(args.seeds):
        # wall seconds the seed's search arms spent retraining their picks, those of an earlier run included
        shipping = [pt["ship_wall_minutes"] * 60 for arm in arms if arm != "default"
                    for run in result["arms"][arm] if run["seed"] == seed for pt in run["points"] if pt.get("shipped")]
        for arm in sorted(arms, key=lambda a: a == "default"):  # the default last: its budget includes shipping
            if any(run["seed"] == seed for run in result["arms"][arm]):
                continue  # measured by an earlier run (--resume)
            if arm == "default":
                seconds = bench.seconds + (float(np.mean(shipping)) if shipping else 0.0)
                points = default_arm(bench, seed, seconds)
                if shipping or not args.ship_epochs:
                    budget = "the search minutes plus the seed's mean shipping time"
                else:
                    budget = "the search minutes only: no search arm shipped in this seed"
                result["arms"][arm].append({"seed": seed, "minutes": round(seconds / 60, 3), "budget": budget,
                                            "points": points})
            else:
                points = search_arm(bench, arm, seed)
                shipping += [p["ship_wall_minutes"] * 60 for p in points if p.get("shipped")]
                result["arms"][arm].append({"seed": seed, "points": points})
            result["summary"] = summarize(result)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps({"arm": arm, "seed": seed, "final": points[-1]["dice_fg"] if points else None}), flush=True)
    draw(result, out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
