"""The tool on a busy machine: the README's first command and one ACDC epoch, idle and beside other work,
with the thread policy before issue 37 and the one now (sweep/nn/threads.py), in one run.

    python -m benchmarks.busy --out docs/measurements/busy.json
    python -m benchmarks.busy --workloads first --loads idle,busy --policies old,new
    python -m benchmarks.busy --probe             # one training step's ms per slice, per wait policy
    python -m benchmarks.busy --quick             # tiny sizes: a smoke run (tests/test_bench.py)

Workloads, each in a fresh temporary folder (``python -m sweep``, as a user runs it):

- ``first``: the README's first command, ``run --trials 10 --epochs 6 --timeout 150
  --max-trial-seconds 40`` then ``best --evaluate --seeds 1``; timed from the start of ``run`` to
  the end of ``best``, and whether ``best/model.pt`` was shipped.
- ``acdc``: one epoch of the ``acdc`` preset at the README's ACDC recipe's cost (``--data
  ../shared/data/acdc --epoch-slices 500 --val-slices 100 --patch 128 --enqueue acdc --trials 1
  --epochs 1``), timed on the trial's own clock (the data is preprocessed into a cache first, once).

Loads beside it: ``idle`` (nothing), ``busy`` (two single-threaded ``while True: pass`` processes),
``sweep`` (a second ``python -m sweep run`` of the phantom in another folder, with the same policy,
started 10 s before). Policies: ``old`` (``SEGNET_THREAD_POLICY=old``: every core in one process,
no timing) and ``new`` (the default now: the count chosen by timing steps). For each load, both
policies run one after the other, so that they see the same machine; the JSON keeps every figure
and the machine's load average.

The targets (issue 37): beside two busy processes on 2 cores, within 2.5x of the idle time (half
the cores are taken: 2x is the floor); the idle time no worse than the old policy's by more than 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACDC = ROOT.parent / "shared" / "data" / "acdc"
OUT = ROOT / "docs" / "measurements" / "busy.json"
LOADS = ("idle", "busy", "sweep")
POLICIES = ("old", "new")
WORKLOADS = ("first", "acdc")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
                    "SEGNET_THREAD_POLICY")

FIRST = (["run", "--trials", "10", "--epochs", "6", "--timeout", "150", "--max-trial-seconds", "40", "--quiet"],
         ["best", "--evaluate", "--seeds", "1"])
FIRST_QUICK = (["run", "--trials", "1", "--epochs", "1", "--enqueue", "small", "--quiet"],
               ["best", "--evaluate", "--seeds", "1", "--epochs", "1"])
ACDC_RUN = ["run", "--trials", "1", "--epochs", "1", "--epoch-slices", "500", "--val-slices", "100", "--patch", "128",
            "--enqueue", "acdc", "--quiet"]
ACDC_QUICK = ["run", "--trials", "1", "--epochs", "1", "--epoch-slices", "8", "--val-slices", "4", "--patch", "64",
              "--enqueue", "small", "--quiet"]
SECOND_SWEEP = ["run", "--trials", "1000", "--epochs", "6", "--quiet", "--study", "beside"]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def environment(policy: str, cache: Path) -> dict:
    """The environment of a command under ``policy``: none of the thread variables of the caller."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), SEGNET_CACHE_DIR=str(cache))
    if policy == "old":
        env["SEGNET_THREAD_POLICY"] = "old"
    return env


def sweep(args: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, float, str]:
    """``python -m sweep ARGS`` in ``cwd``: (exit code, seconds, stderr's tail); 124 past ``timeout``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "sweep", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        code, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as timed_out:
        code, err = 124, (timed_out.stderr or b"").decode(errors="replace") if isinstance(timed_out.stderr, bytes) else ""
    return code, time.perf_counter() - start, err[-2000:]


class Load:
    """Other work on the machine while a workload runs."""

    def __init__(self, kind: str, policy: str, cache: Path, tmp: Path) -> None:
        self.kind, self.procs = kind, []
        if kind == "busy":
            self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        elif kind == "sweep":
            folder = Path(tempfile.mkdtemp(prefix="beside-", dir=tmp))
            self.procs = [subprocess.Popen([sys.executable, "-m", "sweep", *SECOND_SWEEP], cwd=folder,
                                           env=environment(policy, cache), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)]
            time.sleep(10)  # imported, data made, training

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def run_first(policy: str, cache: Path, tmp: Path, quick: bool, timeout: float) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="first-", dir=tmp))
    env = environment(policy, cache)
    steps = FIRST_QUICK if quick else FIRST
    out: dict = {"seconds": 0.0, "commands": []}
    for args in steps:
        code, seconds, err = sweep(args, folder, env, max(1.0, timeout - out["seconds"]))
        out["seconds"] += seconds
        out["commands"].append({"args": args, "exit": code, "seconds": round(seconds, 1)})
        if code != 0:
            out["error"] = err
            break
    out["seconds"] = round(out["seconds"], 1)
    out["shipped"] = (folder / "best" / "model.pt").is_file()
    summary = folder / "best" / "summary.json"
    if summary.is_file():  # what it shipped: the test figure and whether the search beat the default
        shipped = json.loads(summary.read_text())
        out["trial"] = shipped.get("trial")
        out["test_dice_fg"] = (shipped.get("test") or {}).get("dice_fg")
        out["search"] = shipped.get("search")
    shutil.rmtree(folder, ignore_errors=True)
    return out


def acdc_data(quick: bool) -> str:
    return "phantom" if quick else str(ACDC)


def run_acdc(policy: str, cache: Path, tmp: Path, quick: bool, timeout: float) -> dict:
    import optuna

    folder = Path(tempfile.mkdtemp(prefix="acdc-", dir=tmp))
    args = [*(ACDC_QUICK if quick else ACDC_RUN), "--data", acdc_data(quick)]
    code, seconds, err = sweep(args, folder, environment(policy, cache), timeout)
    out: dict = {"exit": code, "wall_seconds": round(seconds, 1)}
    if code == 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trial = optuna.load_study(study_name="segnet", storage=f"sqlite:///{folder / 'studies.db'}").trials[0]
        out["seconds"] = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
    else:
        out["error"] = err
    shutil.rmtree(folder, ignore_errors=True)
    return out


def warm_cache(cache: Path, tmp: Path, quick: bool) -> None:
    """Preprocess the ACDC volumes into the cache once, so that every timed epoch starts from it."""
    folder = Path(tempfile.mkdtemp(prefix="warm-", dir=tmp))
    args = [*(ACDC_QUICK if quick else ACDC_RUN), "--data", acdc_data(quick)]
    args[args.index("--epoch-slices") + 1] = "1"
    sweep(args, folder, environment("new", cache), 3600)
    shutil.rmtree(folder, ignore_errors=True)


def ratios(results: dict) -> dict:
    """Per workload and policy: each load's time over the idle time; and the new idle over the old idle."""
    out: dict = {}
    for workload, by_load in results.items():
        idle = by_load.get("idle", {})
        for load, by_policy in by_load.items():
            for policy, r in by_policy.items():
                base = idle.get(policy, {}).get("seconds")
                if load != "idle" and base and r.get("seconds"):
                    out[f"{workload}/{policy}/{load}_over_idle"] = round(r["seconds"] / base, 2)
        if idle.get("old", {}).get("seconds") and idle.get("new", {}).get("seconds"):
            out[f"{workload}/idle_new_over_old"] = round(idle["new"]["seconds"] / idle["old"]["seconds"], 3)
    return out


def table(results: dict) -> str:
    lines = ["| workload | policy | idle | beside two busy loops | beside a second sweep |", "|---|---|---|---|---|"]
    for workload, by_load in results.items():
        for policy in POLICIES:
            cells = []
            idle = by_load.get("idle", {}).get(policy, {}).get("seconds")
            for load in LOADS:
                r = by_load.get(load, {}).get(policy)
                if r is None:
                    cells.append("–")
                elif r.get("seconds") is None or (workload == "first" and not r.get("shipped")):
                    cells.append(f"did not finish ({r.get('seconds', r.get('wall_seconds'))} s)")
                else:
                    ratio = f" ({r['seconds'] / idle:.1f}x)" if idle and load != "idle" else ""
                    cells.append(f"{r['seconds']:.0f} s{ratio}")
            if any(c != "–" for c in cells):
                lines.append(f"| {workload} | {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PROBE = r"""
import json, sys, time
from dataclasses import replace
import torch
from benchmarks.bench import ARCHS, TRAINER_CFG
from data import make_phantom
from sweep.training.train import DeviceSplit, _FoldRun, train_epoch, use_bf16
torch.set_num_threads(int(sys.argv[1]))
cpu = torch.device("cpu")
images, masks = make_phantom(64, seed=0, size=96)
split = DeviceSplit.from_arrays(images, masks, cpu)
cfg = replace(TRAINER_CFG, batch_size=16)
run = _FoldRun(ARCHS["small"], cfg, split, cpu)
g = torch.Generator().manual_seed(0)
bf16 = use_bf16(cpu)
def epoch():
    train_epoch(run.model, run.optimizer, run.scheduler, split, cfg, run.weights, g, bf16)
epoch()
times, end = [], time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    t = time.perf_counter(); epoch(); times.append((time.perf_counter() - t) / 64 * 1000)
print(json.dumps(sorted(times)[len(times) // 2]))
"""
PROBE_WAITS = {"2 threads, libgomp's default spin": (2, {}),
               "2 threads, GOMP_SPINCOUNT=100000": (2, {"GOMP_SPINCOUNT": "100000"}),
               "2 threads, GOMP_SPINCOUNT=10000": (2, {"GOMP_SPINCOUNT": "10000"}),
               "2 threads, GOMP_SPINCOUNT=1000": (2, {"GOMP_SPINCOUNT": "1000"}),
               "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}), "1 thread": (1, {})}


def probe(loads: list[str], rounds: int, seconds: float, tmp: Path) -> dict:
    """One training step of the ``small`` configuration (96 px, batch 16, bf16 where the CPU has it,
    channels_last), ms per slice, per thread count and wait policy, ``rounds`` times interleaved:
    the measurement behind the wait ``sweep.nn.threads`` leaves at libgomp's default."""
    out: dict = {}
    for load in loads:
        runs: dict = {name: [] for name in PROBE_WAITS}
        with Load(load if load != "sweep" else "busy", "new", tmp / "cache", tmp):
            for _ in range(rounds):
                for name, (threads, extra) in PROBE_WAITS.items():
                    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
                    env.update(PYTHONPATH=str(ROOT), **extra)
                    proc = subprocess.run([sys.executable, "-c", PROBE, str(threads), str(seconds)], env=env, cwd=ROOT,
                                          capture_output=True, text=True, check=True)
                    runs[name].append(round(json.loads(proc.stdout), 2))
        out[load] = {name: {"median": sorted(v)[len(v) // 2], "all": v} for name, v in runs.items()}
        log(f"probe {load}: " + ", ".join(f"{k} {v['median']}" for k, v in out[load].items()))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.busy", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="first, acdc (default both)")
    p.add_argument("--loads", default=",".join(LOADS), help="idle, busy, sweep (default all)")
    p.add_argument("--policies", default=",".join(POLICIES), help="old, new (default both)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a workload may run (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (phantom stands for ACDC): a smoke run")
    p.add_argument("--probe", action="store_true", help="only the training-step probe of the wait policies")
    p.add_argument("--rounds", type=int, default=3, help="--probe: interleaved rounds (default %(default)s)")
    p.add_argument("--out", default=None, help=f"JSON file (default {OUT.relative_to(ROOT)}; none with --quick or --probe)")
    args = p.parse_args(argv)
    for name, allowed in (("workloads", WORKLOADS), ("loads", LOADS), ("policies", POLICIES)):
        values = [v for v in getattr(args, name).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"--{name}: expected some of {', '.join(allowed)}, got {getattr(args, name)!r}")
        setattr(args, name, values)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "cores_usable": len(os.sched_getaffinity(0)), "torch": torch.__version__,
               "loadavg_start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="busy-") as name:
        tmp = Path(name)
        if args.probe:
            result = {"machine": machine, "probe": probe(args.loads, args.rounds, 1.0 if args.quick else 4.0, tmp)}
        else:
            cache = tmp / "cache"
            if "acdc" in args.workloads:
                if not args.quick and not (ACDC / "training").is_dir():
                    log(f"acdc: no data at {ACDC}; left out")
                    args.workloads.remove("acdc")
                else:
                    log("acdc: preprocessing into the cache once")
                    warm_cache(cache, tmp, args.quick)
            results: dict = {}
            for workload in args.workloads:
                for load in args.loads:
                    for policy in args.policies:
                        log(f"{workload}, {load}, {policy} policy ...")
                        with Load(load, policy, cache, tmp):
                            runner = run_first if workload == "first" else run_acdc
                            r = runner(policy, cache, tmp, args.quick, args.timeout)
                        results.setdefault(workload, {}).setdefault(load, {})[policy] = r
                        log(f"  {r.get('seconds')} s" + ("" if r.get("seconds") else f": {r}"))
            result = {"machine": machine, "quick": args.quick, "results": results, "ratios": ratios(results)}
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    out = args.out or (None if args.quick or args.probe else str(OUT))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {out}")
    print(json.dumps(result["probe"], indent=1) if args.probe else table(result["results"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
