"""Trials per hour on this machine's cores: one worker with every thread against one worker per core.

    python -m benchmarks.throughput --data ../shared/data/acdc --workers 1,2 \
        --out docs/measurements/throughput-acdc.json

The README's ACDC recipe at its epoch cost (``--epoch-slices 500 --val-slices 100 --patch 128``):
the ``--preset`` and ``--configs - 1`` of its neighbours in ``run --space local`` (drawn once, by a
fixed seed, so that every worker count trains the same configurations) are enqueued into a fresh
SQLite study and ``sweep.training.run.run`` trains each for ``--epochs`` epochs without pruning,
with ``--workers W`` (``run`` gives each worker ``cores // W`` threads). Timed from the call to its
return: data loading, worker start-up and storage are in the figure, as they are in a sweep.

Reported per worker count: each configuration's seconds per epoch on its own trial's clock (the
trials the configurations ran as, in number order; the extra ones, start-up and data loading
left out), the steady rate of W busy workers from them (``epochs_per_hour``: W over the mean
seconds per epoch), and trials per hour at the recipe's epoch budget (``--trial-epochs``, its 20):
the rate a long search that prunes nothing runs at. ``epochs_per_hour_wall`` is every finished
epoch over the call's wall time, start-up and the extra trials included, for comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from sweep.core import records as rec
from sweep.core import study as st
from sweep.search.options import RunOptions
from sweep.search.space import suggest
from sweep.training.run import parse_enqueue, run
from sweep.training.workers import available_cores

ROOT = Path(__file__).resolve().parents[1]


def neighbours(preset: dict, count: int, epochs: int, seed: int = 0) -> list[dict]:
    """The preset and ``count - 1`` configurations of its local space, drawn at random by ``seed``."""
    rec.silence_optuna()
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = {"name": "local", "centre": preset}
    configs = [preset]
    for _ in range(count - 1):
        trial = draw.ask()
        suggest(trial, epochs, space)
        configs.append(dict(trial.params))
    return configs


def measure(configs: list[dict], workers: int, args, tmp: Path) -> dict:
    """One fresh study holding ``configs`` (and, with W workers, up to W - 1 more: the same ones
    again from the last, so that no worker idles at the end on a sampler's draw), run to its end."""
    folder = tmp / f"w{workers}"
    folder.mkdir()
    url, name = f"sqlite:///{folder / 'studies.db'}", "throughput"
    study = optuna.create_study(storage=st.make_storage(url), study_name=name, direction="maximize")
    for params in configs + [configs[-1 - i % len(configs)] for i in range(workers - 1)]:
        study.enqueue_trial(params)
    opts = RunOptions(trials=len(configs), epochs=args.epochs, data=args.data, storage=url, study=name,
                      pruner="none", workers=workers, progress=False, epoch_slices=args.epoch_slices,
                      val_slices=args.val_slices, patch=args.patch, artifacts=str(folder / "artifacts"))
    start = time.perf_counter()
    run(opts)
    wall = time.perf_counter() - start
    finished = [t for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    epochs = sum(len(t.intermediate_values) for t in finished)
    # Each of the shared configurations' seconds per epoch, from its own trial's clock: the extra
    # trials, start-up and data loading left out, so that every worker count is timed on the same work
    per_epoch = [(t.datetime_complete - t.datetime_start).total_seconds() / len(t.intermediate_values)
                 for t in sorted(finished, key=lambda t: t.number)[:len(configs)]]
    steady = workers / (sum(per_epoch) / len(per_epoch)) * 3600  # every worker busy, as in a long sweep
    return {"workers": workers, "threads_per_worker": max(1, available_cores() // workers), "wall_s": round(wall, 1),
            "trials": len(finished), "epochs": epochs, "epochs_per_hour_wall": round(epochs / wall * 3600, 1),
            "trial_seconds_per_epoch": [round(x, 3) for x in per_epoch], "epochs_per_hour": round(steady, 1),
            "trials_per_hour": round(steady / args.trial_epochs, 2)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "acdc"))
    p.add_argument("--preset", default="acdc", help="a preset, a JSON file or a JSON object (as run --enqueue)")
    p.add_argument("--configs", type=int, default=4, help="configurations trained by every worker count")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each configuration")
    p.add_argument("--trial-epochs", type=int, default=20, help="the recipe's epoch budget, for trials per hour")
    p.add_argument("--epoch-slices", type=int, default=500)
    p.add_argument("--val-slices", type=int, default=100)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    args = p.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w]
    configs = neighbours(parse_enqueue(args.preset, args.epochs), args.configs, args.epochs)
    result = {"command": "python -m benchmarks.throughput " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.processor() or platform.machine()}, {available_cores()} cores, "
                         f"torch {torch.__version__}", "configs": configs, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in counts:
            result["runs"].append(measure(configs, workers, args, Path(tmp)))
            print(json.dumps(result["runs"][-1]), file=sys.stderr, flush=True)
    base = result["runs"][0]["epochs_per_hour"]
    for r in result["runs"]:
        r["vs_first"] = round(r["epochs_per_hour"] / base, 3)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["runs"]))
    return result


if __name__ == "__main__":
    main()
