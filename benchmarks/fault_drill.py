"""Fault drill: kill and interrupt a real sweep again and again, then check that nothing was lost.

    python -m benchmarks.fault_drill [--cycles 6] [--trials 8] [--storage URL]
    python -m benchmarks.fault_drill --machines 3 --storage postgresql://... --artifacts s3://BUCKET [--faults 9]

(The second form strikes several simulated machines: ``benchmarks/fault_drill_machines.py``.)

Each cycle starts `python -m sweep run` (small phantom trials), waits until a trial has
reported an epoch, then ends the worker: SIGKILL on even cycles (a crash), SIGINT on odd ones
(Ctrl-C). The same command is then rerun until the study is complete. Checked at the end:
exactly the target of finished trials, unique trial numbers, no RUNNING trial, every killed or
interrupted trial FAIL and retried with its params, continuing from its resume point (a
point every epoch here), every interrupted run exit 130 with the resume command. Prints one
JSON object.
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
from sweep.search.presets import preset

SMALL_PARAMS = preset("small")

ENV = {**os.environ, "SEGNET_HEARTBEAT_INTERVAL": "1", "SEGNET_GRACE_PERIOD": "3", "OMP_NUM_THREADS": "1",
       "SEGNET_RESUME_SECONDS": "0", "PYTHONPATH": str(ROOT)}  # a resume point every epoch
S = optuna.trial.TrialState


def wait_for_epoch(url: str, name: str, proc: subprocess.Popen, dead: list[int], timeout: float = 120) -> int | None:
    """The number of a trial of this run that has reported an epoch (not one a killed run left RUNNING)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            study = optuna.load_study(study_name=name, storage=url)
            running = [t for t in study.get_trials(states=(S.RUNNING,)) if t.intermediate_values and t.number not in dead]
            if running:
                return running[0].number
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.2)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--storage", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--machines", type=int, default=1, help="simulated machines (more than 1: the drill across machines)")
    parser.add_argument("--artifacts", default=None, help="with --machines: the study's artifact location (e.g. s3://BUCKET)")
    parser.add_argument("--faults", type=int, default=9, help="with --machines: SIGKILL, SIGTERM and vanished machines, in turn")
    parser.add_argument("--seed", type=int, default=0, help="with --machines: the random strike points and order of faults")
    parser.add_argument("--strike-within", type=float, default=2.0, help="with --machines: seconds after a trial's first point")
    parser.add_argument("--restart-after", type=float, default=1.0, help="with --machines: seconds before a struck machine reruns")
    parser.add_argument("--max-seconds", type=float, default=600, help="with --machines: give up dealing faults after this")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if args.machines > 1:
        from benchmarks.fault_drill_machines import drill

        result = drill(args, SMALL_PARAMS)
        print(json.dumps(result))
        sys.exit(0 if result["ok"] else 1)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{tmp}/studies.db"
        name = f"drill{os.getpid()}"
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        for i in range(args.trials):  # small configurations; retries of struck trials queue behind them
            study.enqueue_trial(dict(SMALL_PARAMS, lr=SMALL_PARAMS["lr"] * (1 + i / 20)))
        cmd = [sys.executable, "-m", "sweep", "run", "--trials", str(args.trials), "--epochs", str(args.epochs),
               "--storage", url, "--study", name, "--quiet"]
        killed, interrupted, resumed_ok, runs = [], [], 0, 0
        for cycle in range(args.cycles):
            # SIGINT back to its default in the child: a shell leaves it ignored in background jobs.
            proc = subprocess.Popen(cmd, cwd=tmp, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            runs += 1
            victim = wait_for_epoch(url, name, proc, killed)
            if victim is None:
                proc.communicate()
                break  # the study completed before this cycle could strike
            sig = signal.SIGKILL if cycle % 2 == 0 else signal.SIGINT
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
            if sig == signal.SIGKILL:
                killed.append(victim)
                time.sleep(4)  # heartbeat goes stale
            else:
                interrupted.append(victim)
                ok = proc.returncode == 130 and "python -m sweep run" in err and "Traceback" not in err
                resumed_ok += ok
                if not ok:
                    print(f"interrupted run: exit {proc.returncode}\n{err[-2000:]}", file=sys.stderr)
        while True:
            runs += 1
            done = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            study = optuna.load_study(study_name=name, storage=url)
            if not study.get_trials(states=(S.RUNNING,)):
                break
            time.sleep(4)  # a killed trial whose heartbeat is not stale yet: go round once more

        trials = study.trials
        finished = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
        retried = {t.system_attrs.get("failed_trial"): t for t in trials if "failed_trial" in t.system_attrs}
        struck = killed + interrupted
        resumed = {n: retried[n].user_attrs.get("resumed_at_epoch") for n in struck if n in retried}
        result = {
            "storage": url.split(":")[0],
            "target": args.trials,
            "runs": runs,
            "sigkill": len(killed),
            "sigint": len(interrupted),
            "sigint_exit_130_with_resume_command": resumed_ok,
            "finished": len(finished),
            "unique_numbers": len({t.number for t in trials}) == len(trials),
            "running_left": len([t for t in trials if t.state == S.RUNNING]),
            "struck_trials_failed": all(trials[n].state == S.FAIL for n in struck),
            "struck_trials_retried_with_same_params": all(
                n in retried and retried[n].params == trials[n].params for n in struck
            ),
            "retries_resumed_at_epoch": resumed,  # trial struck -> the epoch its retry continued after
            "retries_resumed": sum(1 for v in resumed.values() if v),
            "finished_trials_lost": 0 if len(finished) >= args.trials else args.trials - len(finished),
        }
        result["ok"] = (
            result["finished"] == args.trials
            and result["unique_numbers"]
            and result["running_left"] == 0
            and result["struck_trials_failed"]
            and result["struck_trials_retried_with_same_params"]
            and resumed_ok == len(interrupted)
        )
        if args.storage:
            optuna.delete_study(study_name=name, storage=url)
        print(json.dumps(result))
        sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
