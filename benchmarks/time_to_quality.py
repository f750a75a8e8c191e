"""Time to quality: with the same wall-clock budget, whose shipped model is better on unseen slices?

    python -m benchmarks.time_to_quality --minutes 60 [--repeats 2] [--fractions 0.25,0.4,0.5,1]
                                         [--holdout 15] [--data ../shared/data/cmri]
                                         [--out benchmarks/results/time_to_quality.json] [--resume]

Two ways to spend M minutes on the real data, each in its own process, alternating which goes
first between repeats:

- **ours**: ``python -m sweep run`` with its defaults (TPE, median pruner, 50-epoch trials,
  the whole search space) and ``--timeout`` the budget, as the README's recipe runs it (so the
  cap per trial, a tenth of it, applies; SIGTERM if it overruns); its pick is
  shipped as ``python -m sweep best --evaluate`` ships it (3 seeds, refit on train + val);
- **plain**: the Optuna script a user would write instead (in this file): in-memory study,
  TPE and the median pruner at Optuna's defaults, a similar space (learning rate, depth,
  width, convolutions per stage, kernel size, batch size), the coursework's float32 loop
  reading PNGs every epoch (``benchmarks/naive.py``), each trial's value its best val
  ``dice_fg``; its pick is retrained once and shipped at its best val epoch.

Both tune on the train slices less ``--holdout`` slices held out by this script (a new draw
each repeat), with the val split for selection, and are scored on the held-out slices: never
the test split. At each fraction of the budget, the pick among the trials finished by then is
shipped and scored (shipping is not counted in the budget; a pick that does not change is
shipped once). The JSON gives each approach's held-out ``dice_fg`` per fraction and repeat,
their means and spread, ``time_to_quality_gain`` (ours minus plain at the full budget) and
``time_to_quality_speedup`` (the plain loop's time to its final figure over ours to the same
figure; a time is the first fraction whose mean reaches the figure). Results are written after
every shipped model, so an interrupted run keeps what it measured, and ``--resume`` goes on from
it: each approach of each repeat whose every fraction was shipped is kept; one whose search
finished but whose shipping was cut off ships only what is left (the plain loop's trials are in
the JSON, our study in ``<out>-repeat<R>-ours.db`` beside it); the rest run again (a repeat's
held-out draw depends only on its number, so a resumed repeat scores the same slices). Raise
``--repeats`` with ``--resume`` to add repeats to a finished run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CMRI = ROOT.parent / "shared" / "data" / "cmri"
RESULT = ROOT / "benchmarks" / "results" / "time_to_quality.json"
EPOCHS = 50  # both approaches' epoch budget per trial: `run`'s default
GRACE_S = 120  # after Ctrl-C, how long `run` may take to record its interrupted trial


def log(message: str) -> None:
    print(f"[ttq {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Data: tuning folder (train less the held-out slices, val) with the held-out slices as "test"
# --------------------------------------------------------------------------------------------


def make_folder(source: Path, holdout: int, seed: int, dest: Path) -> list[str]:
    """Link the coursework layout into ``dest``; returns the held-out names (the test split)."""
    images = sorted((source / "train" / "image").glob("*.png"))
    order = np.random.default_rng(seed).permutation(len(images))
    held = {images[i].stem for i in order[:holdout]}
    for split, names in (("train", [p.stem for p in images if p.stem not in held]), ("test", sorted(held)),
                         ("val", [p.stem for p in sorted((source / "val" / "image").glob("*.png"))])):
        origin = source / ("val" if split == "val" else "train")
        for kind, suffix in (("image", ""), ("mask", "_mask")):
            (dest / split / kind).mkdir(parents=True, exist_ok=True)
            for name in names:
                (dest / split / kind / f"{name}{suffix}.png").symlink_to(origin / kind / f"{name}{suffix}.png")
    return sorted(held)


# --------------------------------------------------------------------------------------------
# Ours: `run` until the budget, then `best --evaluate` on the trials finished by each fraction
# --------------------------------------------------------------------------------------------


def run_ours(folder: Path, work: Path, seconds: float, seed: int, epochs: int, db: Path) -> tuple[str, datetime]:
    db.unlink(missing_ok=True)  # a search cut off earlier: `run` would go on with its study
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "sweep", "run", "--data", str(folder), "--storage", url, "--study", "ttq",
           "--trials", "100000", "--seed", str(seed), "--epochs", str(epochs), "--quiet",
           "--timeout", f"{seconds:g}"]  # as a user with a budget runs it: the cap per trial follows from it
    start = datetime.now()
    with open(work / "ours.log", "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            # SIGTERM ends `run` as Ctrl-C does; SIGINT itself is ignored by a background job's children.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return url, start


def truncated_study(url: str, start: datetime, seconds: float, name: str, source: str = "ttq"):
    """A copy of study ``source`` holding only the trials finished within ``seconds`` of ``start``;
    returns it, the number of its best complete trial (None if none) and how many it holds."""
    import optuna

    from sweep.core.records import FINISHED

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = optuna.load_study(study_name=source, storage=url)
    cutoff = start + timedelta(seconds=seconds)
    trials = [t for t in source.get_trials(deepcopy=False)
              if t.state in FINISHED and t.datetime_complete is not None and t.datetime_complete <= cutoff]
    if name in optuna.get_all_study_names(storage=url):  # left by a shipping step cut off earlier
        optuna.delete_study(study_name=name, storage=url)
    copy = optuna.create_study(study_name=name, storage=url, direction="maximize", load_if_exists=False)
    for key, value in source.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.add_trials(trials)
    complete = [t for t in trials if t.value is not None and t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value).number if complete else None
    return copy, best, len(trials)


def study_trials(url: str, start: datetime, source: str = "ttq") -> list[dict]:
    """Every finished trial of our search as the plain loop's are recorded: number, state, value,
    params and ``done``, its seconds from the start (so the JSON alone tells what was found when)."""
    import optuna

    from sweep.core.records import FINISHED

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=source, storage=url)
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "done": round((t.datetime_complete - start).total_seconds(), 1)}
            for t in study.get_trials(deepcopy=False, states=FINISHED) if t.datetime_complete is not None]


def ship_ours(url: str, study: str, work: Path, folder: Path) -> dict:
    # --data: the study records the folder of the search, which a resumed run makes anew elsewhere
    cmd = [sys.executable, "-m", "sweep", "best", "--evaluate", "--storage", url, "--study", study, "--data", str(folder),
           "--out", str(work / f"ship-{study}"), "--json", "--quiet"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    return {"dice_fg": res["test"]["ensemble"]["dice_fg"], "estimate": res["estimate"]["dice_fg"],
            "ship_s": round(time.perf_counter() - start)}


def ours(folder: Path, work: Path, seconds: float, fractions: list[float], seed: int, epochs: int, save,
         db: Path, earlier: dict | None = None) -> dict:
    """Search into ``db``, then ship at each fraction. The search is recorded (``save(out)``: the
    database and the start) before any shipping; given such a record as ``earlier`` whose database
    is still there, only the fractions not shipped yet are shipped."""
    earlier = earlier or {}
    if "start" in earlier and Path(earlier.get("db", "")).is_file():
        db, start = Path(earlier["db"]), datetime.fromisoformat(earlier["start"])
        url = f"sqlite:///{db}"
        log(f"ours: search kept ({db}); shipping what is left")
    else:
        if "start" in earlier:
            log(f"ours: its study {earlier.get('db')} is gone; searching again")
        earlier = {}
        url, start = run_ours(folder, work, seconds, seed, epochs, db)
    out: dict = {"db": str(db), "start": start.isoformat(), "trials": study_trials(url, start),
                 "checkpoints": dict(earlier.get("checkpoints", {}))}
    save(out)
    shipped: dict = {c["trial"]: {k: c[k] for k in ("dice_fg", "estimate", "ship_s")}
                     for c in out["checkpoints"].values() if c.get("trial") is not None}
    for f in fractions:
        if str(f) in out["checkpoints"]:
            continue
        _, best, n = truncated_study(url, start, f * seconds, f"ttq-{round(f * 100)}")
        if best is None:
            out["checkpoints"][str(f)] = {"trials": n, "dice_fg": None}
            continue
        if best not in shipped:
            log(f"ours: shipping trial {best} (the best of {n} trials by {f:.0%} of the budget)")
            shipped[best] = ship_ours(url, f"ttq-{round(f * 100)}", work, folder)
        out["checkpoints"][str(f)] = {"trials": n, "trial": best, **shipped[best]}
        log(f"ours at {f:.0%}: held-out dice_fg {shipped[best]['dice_fg']:.4f}")
        save(out)
    return out


# --------------------------------------------------------------------------------------------
# Plain: the Optuna script a user would write, in a child process killed at the budget
# --------------------------------------------------------------------------------------------


def plain_params(trial) -> dict:
    depth = trial.suggest_int("depth", 3, 5)
    return {"lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True), "depth": depth,
            "base_width": trial.suggest_categorical("base_width", [16, 32, 64]),
            "convs": trial.suggest_int("convs", 1, 3), "kernel_size": trial.suggest_categorical("kernel_size", [3, 5]),
            "batch_size": trial.suggest_categorical("batch_size", [4, 8, 16])}


def model_config(p: dict):
    from model import SegNetConfig

    return SegNetConfig(depth=p["depth"], base_width=p["base_width"], convs_per_stage=(p["convs"],) * p["depth"],
                        kernel_size=p["kernel_size"])


def plain_search(folder: Path, log_path: Path, seed: int, epochs: int) -> None:
    """The plain loop (runs until killed); appends one JSON line per finished trial."""
    import optuna
    import torch

    from benchmarks.naive import naive_fit

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner())

    def objective(trial) -> float:
        p = plain_params(trial)
        best = 0.0

        def on_epoch(epoch: int, record: dict) -> None:
            nonlocal best
            best = max(best, record["val_dice_fg"])
            trial.report(record["val_dice_fg"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        naive_fit(model_config(p), folder, epochs=epochs, device=device, lr=p["lr"], batch_size=p["batch_size"],
                  seed=seed, on_epoch=on_epoch)
        return best

    def record(study, trial) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps({"number": trial.number, "state": trial.state.name, "value": trial.value,
                                "params": trial.params, "done": time.time()}) + "\n")

    study.optimize(objective, callbacks=[record], catch=(Exception,))


def ship_plain(folder: Path, params: dict, seed: int, epochs: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from benchmarks.naive import PngDataset, naive_evaluate, naive_train

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    model, _ = naive_train(model_config(params), folder, epochs=epochs, device=device, lr=params["lr"],
                           batch_size=params["batch_size"], seed=seed, keep_best=True)
    scores = naive_evaluate(model, DataLoader(PngDataset(folder / "test"), batch_size=16), device)
    return {"dice_fg": round(scores["dice_fg"], 5), "ship_s": round(time.perf_counter() - start)}


def plain_search_run(folder: Path, work: Path, seconds: float, seed: int, epochs: int) -> tuple[float, list[dict]]:
    """The plain loop for ``seconds``: its start (epoch seconds) and its finished trials."""
    log_path = work / "plain.jsonl"
    cmd = [sys.executable, "-m", "benchmarks.time_to_quality", "--plain-search", str(folder), str(log_path), str(seed), str(epochs)]
    start = time.time()
    with open(work / "plain.log", "w") as log_file:
        proc = subprocess.Popen(cmd, stderr=log_file, cwd=ROOT)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return start, [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []


def plain(folder: Path, work: Path, seconds: float, fractions: list[float], seed: int, epochs: int, save,
          earlier: dict | None = None) -> dict:
    """Search, then ship at each fraction. The search is recorded (``save(out)``) before any
    shipping; given such a record as ``earlier``, only the fractions not shipped yet are
    shipped (a retraining depends only on the params, the data and ``seed``)."""
    earlier = earlier or {}
    if "trials" in earlier:
        start, trials = earlier["start"], earlier["trials"]
        log(f"plain: search kept ({len(trials)} trials); shipping what is left")
    else:
        start, trials = plain_search_run(folder, work, seconds, seed, epochs)
    out: dict = {"start": start, "trials": trials, "checkpoints": dict(earlier.get("checkpoints", {}))}
    save(out)
    shipped: dict = {c["trial"]: {k: c[k] for k in ("dice_fg", "ship_s")}
                     for c in out["checkpoints"].values() if c.get("trial") is not None}
    for f in fractions:
        if str(f) in out["checkpoints"]:
            continue
        done = [t for t in trials if t["done"] - start <= f * seconds]
        complete = [t for t in done if t["state"] == "COMPLETE"]
        if not complete:
            out["checkpoints"][str(f)] = {"trials": len(done), "dice_fg": None}
            continue
        best = max(complete, key=lambda t: t["value"])
        if best["number"] not in shipped:
            log(f"plain: shipping trial {best['number']} (the best of {len(done)} trials by {f:.0%} of the budget)")
            shipped[best["number"]] = ship_plain(folder, best["params"], seed, epochs)
        out["checkpoints"][str(f)] = {"trials": len(done), "trial": best["number"], "val_dice_fg": best["value"],
                                      **shipped[best["number"]]}
        log(f"plain at {f:.0%}: held-out dice_fg {shipped[best['number']]['dice_fg']:.4f}")
        save(out)
    return out


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def curve(runs: list[dict], side: str, fractions: list[float]) -> dict:
    """Mean, spread and per-repeat figures of one approach at each fraction of the budget, over
    the repeats where it shipped at every fraction (one cut off while shipping counts in none)."""
    out = {}
    for f in fractions:
        values = [r[side]["checkpoints"][str(f)].get("dice_fg") for r in runs if side_done(r, side, fractions)]
        values = [v if v is not None else 0.0 for v in values]
        if values:
            out[str(f)] = {"mean": round(statistics.mean(values), 4),
                           "std": round(statistics.stdev(values), 4) if len(values) > 1 else None, "runs": values}
    return out


def time_to_reach(curve_: dict, target: float, minutes: float) -> float | None:
    """Minutes until the first fraction whose mean reaches ``target`` (None: never within the budget)."""
    for f, point in sorted(curve_.items(), key=lambda kv: float(kv[0])):
        if point["mean"] >= target - 1e-9:
            return round(float(f) * minutes, 2)
    return None


def summarize(result: dict) -> None:
    fractions, minutes = result["fractions"], result["minutes"]
    curves = {side: curve(result["runs"], side, fractions) for side in ("ours", "plain")}
    result["curves"] = curves
    full = str(fractions[-1])
    if full not in curves["ours"] or full not in curves["plain"]:
        return
    ours_final, plain_final = curves["ours"][full]["mean"], curves["plain"][full]["mean"]
    plain_time = time_to_reach(curves["plain"], plain_final, minutes)
    ours_time = time_to_reach(curves["ours"], plain_final, minutes)
    result["time_to_quality_gain"] = round(ours_final - plain_final, 4)
    result["time_to_quality_speedup"] = round(plain_time / ours_time, 2) if ours_time else None
    result["minutes_to_reach"] = {"ours_to_plain_final": ours_time, "plain_to_plain_final": plain_time,
                                  "plain_to_ours_final": time_to_reach(curves["plain"], ours_final, minutes)}


def machine() -> dict:
    import torch

    from benchmarks.bench import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "date": time.strftime("%Y-%m-%d %H:%M"),
            "loadavg_start": list(os.getloadavg())}


SETTINGS = ("minutes", "epochs", "fractions", "holdout", "data")


def side_done(run: dict, side: str, fractions: list[float]) -> bool:
    """Whether one approach of one repeat shipped at every fraction (so a resumed run keeps it)."""
    checkpoints = run.get(side, {}).get("checkpoints", {})
    return all(str(f) in checkpoints for f in fractions)


def resumed(path: Path, fresh: dict) -> dict:
    """The earlier result at ``path`` to go on from, its settings checked against this run's."""
    try:
        earlier = json.loads(path.read_text())
    except FileNotFoundError:
        return fresh
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot resume from {path}: {exc}") from None
    differ = [f"{k} {earlier.get(k)!r} (now {fresh[k]!r})" for k in SETTINGS if earlier.get(k) != fresh[k]]
    if differ:
        raise SystemExit(f"error: cannot resume from {path}: it was run with other settings: {', '.join(differ)}")
    earlier["repeats"] = max(fresh["repeats"], len(earlier.get("runs", [])))
    earlier.setdefault("sessions", []).append(fresh["machine"])
    return earlier


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--plain-search":
        plain_search(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.time_to_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="search budget of each approach")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--fractions", default="0.25,0.4,0.5,1", help="budget fractions to ship at (default %(default)s)")
    p.add_argument("--holdout", type=int, default=15, help="train slices held out per repeat (default %(default)s)")
    p.add_argument("--data", default=str(CMRI))
    p.add_argument("--epochs", type=int, default=EPOCHS, help="epoch budget of every trial (default %(default)s: `run`'s)")
    p.add_argument("--out", default=str(RESULT))
    p.add_argument("--resume", action="store_true",
                   help="go on from --out: keep each approach of each repeat that shipped at every fraction")
    args = p.parse_args(argv)
    fractions = sorted(float(f) for f in args.fractions.split(","))
    seconds = args.minutes * 60
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"minutes": args.minutes, "repeats": args.repeats, "epochs": args.epochs, "fractions": fractions, "holdout": args.holdout,
              "data": args.data, "machine": machine(), "runs": []}
    if args.resume:
        result = resumed(out, result)

    def save() -> None:
        summarize(result)
        result["machine"]["loadavg_end"] = list(os.getloadavg())
        out.write_text(json.dumps(result, indent=1))

    for r in range(result["repeats"]):
        if r < len(result["runs"]) and all(side_done(result["runs"][r], s, fractions) for s in ("ours", "plain")):
            log(f"repeat {r + 1}/{result['repeats']}: kept from {out}")
            continue
        with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
            work = Path(tmp)
            held = make_folder(Path(args.data), args.holdout, r, work / "data")
            if r < len(result["runs"]):
                run = result["runs"][r]
                if run["holdout"] != held:
                    raise SystemExit(f"error: cannot resume repeat {r + 1}: {out} held out other slices")
            else:
                run = {"repeat": r, "holdout": held, "order": ["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]}
                result["runs"].append(run)
            for side in run["order"]:
                if side_done(run, side, fractions):
                    log(f"repeat {r + 1}/{result['repeats']}: {side} kept from {out}")
                    continue
                searched = any(k in run.get(side, {}) for k in ("trials", "start"))  # then cut off while shipping
                log(f"repeat {r + 1}/{result['repeats']}: {side} "
                    + ("goes on from its search" if searched else f"searches for {args.minutes:g} min"))
                (work / side).mkdir()

                def keep(side_out: dict, side: str = side, run: dict = run) -> None:
                    run[side] = side_out
                    save()

                if side == "ours":  # its study beside --out, so that a cut-off shipping step can go on
                    db = out.with_name(f"{out.stem}-repeat{r + 1}-ours.db")
                    run[side] = ours(work / "data", work / side, seconds, fractions, r, args.epochs, keep, db,
                                     earlier=run.get(side))
                else:
                    run[side] = plain(work / "data", work / side, seconds, fractions, r, args.epochs, keep,
                                      earlier=run.get(side))
                save()
    save()
    log(f"written {out}: gain {result.get('time_to_quality_gain')}, speedup {result.get('time_to_quality_speedup')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
