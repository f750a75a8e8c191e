"""Median pruning against Hyperband, per hour of compute, on the same data and the same start.

    python -m benchmarks.pruners [--minutes 20] [--epochs 30] [--data PATH] [--out FILE.json]

Runs ``python -m sweep run`` twice at the same time, one process per pruner, each with one
CPU thread (so the two share a 2-core machine evenly and see the same load), the same sampler
seed and the same ``--timeout``, into fresh SQLite studies in a temporary folder. Reports, per
pruner: trials finished, complete and pruned, epochs trained, and the best value reached after
each quarter of the time, read from the trials' completion times.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
PRUNERS = ("median", "hyperband")
GRACE_S = 30


def summarize(db: Path, name: str, minutes: float) -> dict:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    start = min(t.datetime_start for t in study.trials)
    done = sorted(
        ((t.datetime_complete - start).total_seconds(), t.value)
        for t in trials if t.state == optuna.trial.TrialState.COMPLETE
    )
    best_at = {}
    for quarter in (1, 2, 3, 4):
        limit = minutes * 60 * quarter / 4
        values = [v for s, v in done if s <= limit]
        best_at[f"{quarter * 25}%"] = max(values) if values else None
    states = [t.state.name for t in trials]
    return {
        "finished": sum(s in ("COMPLETE", "PRUNED") for s in states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "epochs_trained": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "best_value": max((v for _, v in done), default=None),
        "best_value_at": best_at,
        "best_params": study.best_params if done else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cmri"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="pruners.json")
    args = parser.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        procs = {}
        for pruner in PRUNERS:
            db = Path(tmp) / f"{pruner}.db"
            cmd = [sys.executable, "-m", "sweep", "run", "--data", args.data, "--trials", "10000",
                   "--epochs", str(args.epochs), "--pruner", pruner, "--seed", str(args.seed),
                   "--timeout", str(args.minutes * 60), "--storage", f"sqlite:///{db}", "--study", pruner, "--quiet"]
            procs[pruner] = (db, subprocess.Popen(cmd, cwd=tmp, env=env))
        # --timeout stops starting trials; a trial still running a little later is interrupted
        # (it ends FAIL and is not counted: only trials completed within the budget are).
        deadline = time.monotonic() + args.minutes * 60 + GRACE_S
        for _, proc in procs.values():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # the sweep treats it as Ctrl-C
                proc.wait()
        out = {"minutes": args.minutes, "epochs": args.epochs, "data": args.data, "seed": args.seed,
               "threads_per_run": 1, **{p: summarize(db, p, args.minutes) for p, (db, _) in procs.items()}}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
