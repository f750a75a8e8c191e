"""How many threads torch runs on the CPU, on a machine that other work shares (a browser, the
dashboard, a second worker or study, the test suite).

Torch's CPU wheels run GNU libgomp, whose threads spin at every barrier (300,000 turns before they
sleep): beside other processes a barrier waits for a thread that is not running while its partner
burns the core it needs. Measured on 2 cores, one training step of the ``small`` configuration
(96 px, batch 16, bf16, channels_last), ms per slice: issue 37 found 2 threads 4.6 idle and 19.2
beside two busy loops, 1 thread 6.0 and 9.5, 2 threads ``OMP_WAIT_POLICY=PASSIVE`` 5.5 and 7.6.
``benchmarks/busy.py --probe`` here, on a machine other sessions shared (so figures vary between
rounds), median of 2-3 rounds: idle, 2 threads with libgomp's default spin 7.5, ``GOMP_SPINCOUNT``
100000 7.5, 1000 8-10, 10000 25-27, PASSIVE 9.4-16.5, 1 thread 13-15; beside two busy loops, the
default spin 50-211, PASSIVE 19-41, ``GOMP_SPINCOUNT=10000`` 64-68, 1 thread 18.5-40.

So the wait stays libgomp's default (every shorter spin cost idle speed: PASSIVE 20-30 %, beyond
the 5 % the issue allows; the wait policy is read once, when torch loads, and cannot follow the
load), and the thread count does the adapting, since ``torch.set_num_threads`` works at any time:
each process starts with its share of the cores it may run on (``os.sched_getaffinity``, divided
between ``--workers``), times its steps with that count and with half of it, interleaved, keeps
the faster (``Tuner``), and checks again as the run goes; where no other process uses the cores
(``OtherWork``), it keeps its share without timing the half. At 1 thread there is no barrier to
wait at: beside two busy loops, 1 thread ran at 18.5-19.3 ms per slice where 2 spinning threads
took 49-50 in the same probe.

``OMP_NUM_THREADS`` forces the count (no timing), and ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
the wait, as for any OpenMP program. ``SEGNET_THREAD_POLICY=old`` restores the earlier behaviour
(every core in one process, the cores split between workers, no timing), so that
``benchmarks/busy.py`` can compare both in one run.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, MutableMapping

POLICY_VARIABLE = "SEGNET_THREAD_POLICY"  # "old": the policy before issue 37, for comparisons
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def old_policy(environ: MutableMapping[str, str] = os.environ) -> bool:
    return environ.get(POLICY_VARIABLE, "").strip().lower() == "old"


def wait_policy(environ: MutableMapping[str, str] = os.environ) -> str:
    """The OpenMP wait in ``environ``, in words."""
    given = [f"{v}={environ[v]}" for v in WAIT_VARIABLES if v in environ]
    return ", ".join(given) if given else "libgomp's default wait"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under ``taskset`` or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def forced_threads(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """``OMP_NUM_THREADS`` as a positive count, else None (unset, or not a plain positive integer)."""
    try:
        value = int(environ.get("OMP_NUM_THREADS", "").strip())
    except ValueError:
        return None
    return value if value > 0 else None


def share(workers: int = 1, cores: int | None = None) -> int:
    """One worker's share of the cores: ``--workers N`` on C cores gives each C // N (at least 1)."""
    return max(1, (available_cores() if cores is None else cores) // max(1, workers))


class Tuner:
    """Chooses the thread count by timing steps with each candidate, interleaved, and keeps the faster.

    ``step(seconds, slices, kind)`` is called after every timed step (a training step, or an
    inference batch: ``kind`` keeps them apart, since their costs per slice differ). A probe runs
    the candidates in turn, ``block`` steps each (the first after a change is not counted: it pays
    for the change), ``rounds`` times, or once where one candidate is ``lead`` faster than the
    others; the candidate with the lowest median time per slice wins, a challenger only by
    ``margin``. The next probe comes after ``settle_seconds`` of steps,
    doubling up to ``max_settle_seconds`` while the choice holds; sooner if steps become
    ``slowdown`` times slower than just after the probe (other work arrived).

    ``others()`` (``OtherWork``): the cores other processes used since its last call. Where they
    used under ``quiet_cores`` during the probe's first block, the probe ends there with the
    largest count, the share: on an idle machine a check then costs nothing.
    """

    def __init__(self, candidates: tuple[int, ...], apply: Callable[[int], None], *, block: int = 3, rounds: int = 2,
                 margin: float = 0.05, lead: float = 1.2, settle_seconds: float = 60.0, max_settle_seconds: float = 240.0,
                 slowdown: float = 1.5, on_change: Callable[[int, int, float | None], None] | None = None,
                 others: Callable[[], float | None] | None = None, quiet_cores: float = 0.5) -> None:
        self.candidates = tuple(dict.fromkeys(candidates))
        self.apply = apply
        self.block, self.rounds, self.margin, self.lead = block, rounds, margin, lead
        self.settle_seconds, self.max_settle_seconds, self.slowdown = settle_seconds, max_settle_seconds, slowdown
        self.on_change = on_change
        self.others, self.quiet_cores = others, quiet_cores
        self.current = self.candidates[0]
        self.interval = settle_seconds
        self.plan: list[int] = []
        self.samples: dict[str, dict[int, list[float]]] = {}  # per kind of step and count: seconds per slice
        self.spent: dict[str, float] = {}  # per kind of step: seconds measured in this probe
        self.warm = False  # the last step ran at the current count (not the first after a change)
        self.since_probe = 0.0
        self.baseline: dict[str, list[float]] = {}
        self.probes = 0
        self._begin_probe()

    def _set(self, threads: int) -> None:
        if threads != self.current:
            self.current = threads
            self.warm = False
            self.apply(threads)

    def _begin_probe(self) -> None:
        if len(self.candidates) < 2:
            return
        # The incumbent first: a probe that is cut short has spent least on the others.
        self.incumbent = self.current
        order = [self.current] + [c for c in self.candidates if c != self.current]
        self.plan = [c for _ in range(self.rounds) for c in order for _ in range(self.block)]
        self.samples, self.spent = {}, {}
        self.probes += 1
        if self.others is not None:
            self.others()  # the window of ``_quiet`` starts here

    def step(self, seconds: float, slices: int, kind: str = "train") -> None:
        per = seconds / max(1, slices)
        if self.plan:
            if self.warm:
                self.samples.setdefault(kind, {}).setdefault(self.current, []).append(per)
                self.spent[kind] = self.spent.get(kind, 0.0) + seconds
            self.warm = True
            self.plan.pop(0)
            if self.plan and self.plan[0] != self.incumbent and self._quiet():
                self.plan = []  # nothing else runs: no need to time the other count
                self._keep(self.candidates[0], None)
            elif self.plan and not self._clear_winner():
                self._set(self.plan[0])
            else:
                self.plan = []
                self._decide()
            return
        self.warm = True
        self.since_probe += seconds
        base = self.baseline.setdefault(kind, [])
        if len(base) < 5:
            base.append(per)
        elif per > self.slowdown * statistics.median(base) and self.since_probe > self.settle_seconds / 3:
            self.interval = self.settle_seconds
            self._reprobe()
            return
        if self.since_probe >= self.interval:
            self._reprobe()

    def _reprobe(self) -> None:
        self.since_probe = 0.0
        self.baseline = {}
        self._begin_probe()
        if self.plan:
            self._set(self.plan[0])

    def _quiet(self) -> bool:
        """Whether other work used under ``quiet_cores`` of CPU since the probe began (then the
        share is kept without timing the other count); False where that cannot be read."""
        if self.others is None:
            return False
        used = self.others()
        return used is not None and used < self.quiet_cores

    def _keep(self, best: int, gain: float | None) -> None:
        self.interval = min(self.max_settle_seconds, self.interval * 2) if best == self.incumbent else self.settle_seconds
        self._set(best)
        if best != self.incumbent and self.on_change is not None:
            self.on_change(self.incumbent, best, gain)

    def _medians(self, least: int = 1) -> dict[int, float] | None:
        """Each candidate's median seconds per slice in the kind of step that took the most time and
        ran at least ``least`` times with every candidate (None before there is one)."""
        complete = {k: s for k, s in self.samples.items() if all(len(s.get(c, ())) >= least for c in self.candidates)}
        if not complete:
            return None
        kind = max(complete, key=lambda k: self.spent[k])
        return {c: statistics.median(v) for c, v in complete[kind].items()}

    def _clear_winner(self) -> bool:
        """After a first round, one candidate ``lead`` faster than every other: no second round
        (where it is the incumbent, as on an idle machine, the probe then costs one block of the other)."""
        medians = self._medians(least=self.block - 1)
        if medians is None:
            return False
        fastest = min(medians, key=medians.get)
        return all(medians[fastest] * self.lead < m for c, m in medians.items() if c != fastest)

    def _decide(self) -> None:
        """Keep the candidate with the lowest median time per slice, in the kind of step that took
        the most time and ran with every candidate; the incumbent unless a challenger is ``margin`` faster."""
        medians = self._medians()
        best, gain = self.incumbent, 1.0
        if medians is not None:
            fastest = min(medians, key=medians.get)
            if medians[fastest] * (1 + self.margin) < medians[self.incumbent]:
                best, gain = fastest, medians[self.incumbent] / medians[fastest]
        self._keep(best, gain)


class OtherWork:
    """The CPU other processes used: called, it returns the cores they kept busy since its last
    call (all cores' busy time in ``/proc/stat`` less this process's own), or None where that
    cannot be read (not Linux) or too little time has passed."""

    def __init__(self) -> None:
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
            per_second = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
        busy = (sum(ticks) - ticks[3] - ticks[4]) / per_second
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def __call__(self) -> float | None:
        now, last = self._read(), self.last
        self.last = now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        return max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0])


_tuner: Tuner | None = None  # this process's, where ``start`` chose timing
_before: int | None = None  # torch's thread count before the first ``start``


def active() -> Tuner | None:
    """The tuner that timed steps report to (``step``), or None: no timing wanted."""
    return _tuner


def plan(device, workers: int = 1) -> tuple[int | None, tuple[int, ...], str]:
    """What ``start`` does for work on ``device`` with ``workers`` processes: (the count to set,
    or None to leave torch's; the candidates to time, none for a fixed count; the choice in words)."""
    if device.type != "cpu":
        return None, (), "threads: torch's default (the work is on the GPU)"
    if old_policy():
        n = share(workers) if workers > 1 else None
        return n, (), f"threads: {n or available_cores()} ({POLICY_VARIABLE}=old)"
    wait = wait_policy()
    forced = forced_threads()
    if forced is not None:
        return forced, (), f"threads: {forced} (OMP_NUM_THREADS); {wait}"
    n, cores = share(workers), available_cores()
    each = " per worker" if workers > 1 else ""
    if n < 2:
        return 1, (), f"threads: 1{each} ({cores} core(s)); {wait}"
    return n, (n, n // 2), (f"threads: {n} or {n // 2}{each} of {cores} cores, chosen by timing steps and checked "
                            f"again as the run goes; {wait}")


def start(device, workers: int = 1, report: Callable[[str], None] | None = None) -> str:
    """Set this process's CPU threads for work on ``device`` (a ``torch.device``, ``plan``) and
    start timing where there is a choice; returns the choice in words.

    ``workers``: processes of one run on this machine, sharing its cores. ``report``: told, in
    one line, each time timing changes the count.
    """
    import torch

    global _tuner, _before
    count, candidates, text = plan(device, workers)
    _tuner = None
    if _before is None:
        _before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    if candidates:
        def changed(before: int, after: int, gain: float | None) -> None:
            if report is not None:
                why = ("the other work on the cores has ended" if gain is None
                       else f"{gain:.2f}x faster per slice now: other work shares the cores")
                report(f"threads: {before} -> {after} ({why})")

        _tuner = Tuner(candidates, torch.set_num_threads, on_change=changed, others=OtherWork())
    return text


def stop() -> None:
    """No more timing, and torch's thread count as it was before ``start`` (a command run inside
    another program, as the tests do, leaves no tuner behind)."""
    global _tuner, _before
    _tuner = None
    if _before is not None:
        import torch

        torch.set_num_threads(_before)
        _before = None


def timed(kind: str = "train"):
    """A clock for one step: ``done = timed(); ...; done(slices)`` reports the step to the tuner
    (a no-op without one, so the hot loop pays one check)."""
    if _tuner is None:
        return _noop
    begin = time.perf_counter()
    return lambda slices: _tuner.step(time.perf_counter() - begin, slices, kind) if _tuner is not None else None


def _noop(slices: int) -> None:
    return None
