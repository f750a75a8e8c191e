"""Fault drill across machines: several simulated machines on one PostgreSQL study and one object
store, struck at random points by SIGKILL, SIGTERM and a machine that vanishes (killed, its folder
deleted with its cache). Run through ``benchmarks/fault_drill.py --machines N``.

A machine is a folder with its own HOME and cache and (as root, through ``unshare --uts``) its own
hostname; it reruns `python -m sweep run` until the study is done. Measured at the end: faults by
kind, trials finished against the target, every struck trial's retry and the epoch it resumed
after against the point the struck trial had stored, epochs retrained, chains left unfinished,
trials left RUNNING or WAITING. Prints one JSON object.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
from sweep.core.records import FINISHED, root_trial_number
from sweep.training.resume import POINTER, open_points

S = optuna.trial.TrialState
KINDS = ("sigkill", "sigterm", "vanish")


def can_unshare() -> bool:
    try:
        return os.geteuid() == 0 and subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


class Machine:
    """A folder with its own HOME and cache, a hostname of its own where ``unshare`` allows, and its run."""

    def __init__(self, root: Path, name: str, env: dict, cmd: list[str], hostname: bool) -> None:
        self.name, self.folder, self.cmd, self.hostname = name, root / name, cmd, hostname
        self.log = root / f"{name}.log"  # outside the folder: a vanished machine's last words stay readable
        self.env = {**env, "HOME": str(self.folder / "home"), "XDG_CACHE_HOME": str(self.folder / "cache")}
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        for sub in ("home", "cache"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        prefix = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name] if self.hostname else []
        with open(self.log, "a") as log:
            # SIGINT back to its default in the child: a shell leaves it ignored in background jobs.
            self.proc = subprocess.Popen(prefix + self.cmd, cwd=self.folder, env=self.env, stdout=log, stderr=log,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.runs += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def strike(self, kind: str) -> int:
        """SIGKILL, SIGTERM, or vanish (SIGKILL, then its folder with its cache deleted); the run's exit code."""
        self.proc.send_signal(signal.SIGTERM if kind == "sigterm" else signal.SIGKILL)
        code = self.proc.wait(timeout=120)
        if kind == "vanish":
            shutil.rmtree(self.folder)
        return code


def point_epoch(points, trial: optuna.trial.FrozenTrial) -> int:
    """The epochs held by the point the trial points at (0: none)."""
    name = trial.system_attrs.get(POINTER)
    data = points.get(name) if name else None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["point"]["epoch"] if data else 0


def drill(args, small_params: dict) -> dict:
    """Run the drill; returns the figures (``ok`` says whether every target was met)."""
    if not args.storage or not args.artifacts:
        raise SystemExit("--machines needs --storage (a server URL every machine reaches) and --artifacts")
    rng = random.Random(args.seed)
    name = f"drill{os.getpid()}"
    study = optuna.create_study(study_name=name, storage=args.storage, direction="maximize")
    for i in range(args.trials):  # small configurations; retries of struck trials queue behind them
        study.enqueue_trial(dict(small_params, lr=small_params["lr"] * (1 + i / 20)))
    cmd = [sys.executable, "-m", "sweep", "run", "--trials", str(args.trials), "--epochs", str(args.epochs),
           "--storage", args.storage, "--study", name, "--artifacts", args.artifacts, "--quiet"]
    env = {**os.environ, "SEGNET_HEARTBEAT_INTERVAL": "1", "SEGNET_GRACE_PERIOD": "3", "OMP_NUM_THREADS": "1",
           "SEGNET_RESUME_SECONDS": "0", "PYTHONPATH": str(ROOT)}  # a resume point every epoch
    hostname = can_unshare()
    kinds = [KINDS[i % len(KINDS)] for i in range(args.faults)]
    rng.shuffle(kinds)
    struck: list[dict] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        machines = [Machine(Path(tmp), f"machine-{chr(97 + i)}", env, cmd, hostname) for i in range(args.machines)]
        points = open_points(args.artifacts)
        for m in machines:
            m.start()
        try:
            while len(struck) < len(kinds) and time.monotonic() - start < args.max_seconds:
                trials = study.get_trials(deepcopy=False)
                if sum(t.state in FINISHED for t in trials) >= args.trials:
                    break  # done before every fault was dealt
                for m in machines:
                    if not m.alive():
                        m.start()
                victim = _victim(trials, machines, {s["trial"] for s in struck})
                if victim is None:
                    time.sleep(0.2)
                    continue
                trial, machine = victim
                time.sleep(rng.uniform(0.0, args.strike_within))  # a random point of the trial
                trial = study.get_trials(deepcopy=False)[trial.number]
                if trial.state != S.RUNNING or not machine.alive():
                    continue
                kind = kinds[len(struck)]
                code = machine.strike(kind)
                trial = study.get_trials(deepcopy=False)[trial.number]
                struck.append({"trial": trial.number, "kind": kind, "machine": machine.name, "exit": code,
                               "epochs_reported": len(trial.intermediate_values), "point_epoch": point_epoch(points, trial)})
                time.sleep(args.restart_after)
                machine.start()
            _finish(study, machines, args.max_seconds + 600 - (time.monotonic() - start))
        finally:
            for m in machines:
                if m.alive():
                    m.proc.kill()
        seconds = time.monotonic() - start
        result = _figures(study, struck, args, machines, seconds, hostname)
    optuna.delete_study(study_name=name, storage=args.storage)
    return result


def _victim(trials, machines, done: set[int]):
    """A RUNNING trial with a stored point, on a live machine of the drill, not struck yet (or None)."""
    by_pid = {m.proc.pid: m for m in machines if m.alive()}
    for t in trials:
        worker = t.user_attrs.get("worker", "")
        pid = int(worker.rsplit(":", 1)[1]) if ":" in worker else None
        if t.state == S.RUNNING and t.number not in done and t.intermediate_values and POINTER in t.system_attrs and pid in by_pid:
            return t, by_pid[pid]
    return None


def _finish(study, machines, timeout: float) -> None:
    """Let the machines run until nothing is RUNNING or WAITING and every run ended (a killed
    machine's trial is failed and retried once its heartbeat is stale)."""
    deadline = time.monotonic() + max(timeout, 60)
    while time.monotonic() < deadline:
        if all(not m.alive() for m in machines):
            left = study.get_trials(deepcopy=False, states=(S.RUNNING, S.WAITING))
            if not left:
                return
            time.sleep(4)  # a killed trial whose heartbeat is not stale yet: go round once more
            for m in machines:
                m.start()
        time.sleep(0.5)


def _figures(study, struck, args, machines, seconds: float, hostname: bool) -> dict:
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    finished = [t for t in trials if t.state in FINISHED]
    retries = []
    for s in struck:
        chain = [t for t in trials if root_trial_number(t) == root_trial_number(by_number[s["trial"]]) and t.number > s["trial"]]
        retry = chain[0] if chain else None
        s["retry"] = retry and retry.number
        s["resumed_at_epoch"] = retry and retry.user_attrs.get("resumed_at_epoch")
        s["retried_by"] = retry and (retry.user_attrs.get("worker") or "").split(":")[0]
        retries.append(retry)
    chains_struck = {root_trial_number(by_number[s["trial"]]) for s in struck}
    chain_finished = {root_trial_number(t) for t in finished}
    result = {
        "machines": args.machines,
        "own_hostnames": hostname,
        "storage": args.storage.split(":")[0],
        "artifacts": args.artifacts.split(":")[0],
        "target": args.trials,
        "epochs": args.epochs,
        "faults": {k: sum(s["kind"] == k for s in struck) for k in KINDS},
        "finished": len(finished),
        "struck": struck,
        "retried": sum(r is not None for r in retries),
        "resumed_from_point": sum(s["resumed_at_epoch"] == s["point_epoch"] > 0 for s in struck),
        "restarted_from_0_where_a_point_existed": sum(s["point_epoch"] > 0 and not s["resumed_at_epoch"] for s in struck),
        "epochs_retrained": sum(max(0, s["epochs_reported"] - (s["resumed_at_epoch"] or 0)) for s in struck),
        "struck_chains_unfinished": len(chains_struck - chain_finished),
        "running_left": sum(t.state == S.RUNNING for t in trials),
        "waiting_left": sum(t.state == S.WAITING for t in trials),
        "unique_numbers": len({t.number for t in trials}) == len(trials),
        "runs_started": sum(m.runs for m in machines),
        "seconds": round(seconds, 1),
    }
    result["ok"] = (
        sum(result["faults"].values()) >= args.faults
        and result["retried"] == len(struck)
        and result["resumed_from_point"] == len(struck)
        and result["struck_chains_unfinished"] == 0
        and result["running_left"] == result["waiting_left"] == 0
        and args.trials <= result["finished"] <= args.trials + args.machines - 1
        and result["unique_numbers"]
    )
    return result
