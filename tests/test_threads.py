"""Threads that fit the machine as it is (sweep.nn.threads): each worker's share of the cores, and
the count chosen by timing steps while a run goes."""

from __future__ import annotations

import json

import pytest
import torch

from sweep.nn import threads
from sweep.nn.threads import Tuner

CPU = torch.device("cpu")


class Machine:
    """Steps whose time per slice depends on the thread count, as set by the tuner."""

    def __init__(self, per_slice: dict[int, float]) -> None:
        self.per_slice = per_slice
        self.threads = None
        self.changes: list[tuple[int, int]] = []

    def run(self, tuner: Tuner, steps: int, slices: int = 16, kind: str = "train") -> None:
        for _ in range(steps):
            tuner.step(self.per_slice[tuner.current] * slices, slices, kind)


def make(machine: Machine, **kw) -> Tuner:
    def apply(n: int) -> None:
        machine.threads = n

    return Tuner((2, 1), apply, on_change=lambda a, b, gain: machine.changes.append((a, b)), **kw)


def test_the_tuner_keeps_the_faster_count_and_says_so():
    busy = Machine({2: 0.019, 1: 0.0095})  # two busy loops beside 2 spinning threads (issue 37)
    tuner = make(busy)
    busy.run(tuner, 12)
    assert tuner.current == 1 and busy.threads == 1
    assert busy.changes == [(2, 1)]


def test_the_tuner_keeps_the_incumbent_unless_a_challenger_is_clearly_faster():
    idle = Machine({2: 0.0046, 1: 0.0047})  # within the margin: no change
    tuner = make(idle)
    idle.run(tuner, 12)
    assert tuner.current == 2 and idle.changes == []


def test_the_tuner_checks_again_and_follows_the_load():
    machine = Machine({2: 0.019, 1: 0.0095})
    tuner = make(machine, settle_seconds=1.0)
    machine.run(tuner, 12)
    assert tuner.current == 1
    machine.per_slice = {2: 0.0046, 1: 0.006}  # the other work ended
    for _ in range(200):
        machine.run(tuner, 1)
        if len(machine.changes) == 2:
            break
    assert machine.changes == [(2, 1), (1, 2)]
    assert tuner.current == 2 and tuner.probes == 2


def test_a_slowdown_after_a_probe_brings_the_next_probe_forward():
    machine = Machine({2: 0.0046, 1: 0.006})
    tuner = make(machine, settle_seconds=1000.0)
    machine.run(tuner, 20)
    assert tuner.current == 2 and tuner.probes == 1
    machine.per_slice = {2: 0.019, 1: 0.0095}  # other work arrived
    machine.run(tuner, 2000)
    assert tuner.current == 1 and tuner.probes == 2


def test_steps_of_another_kind_are_compared_apart():
    """Inference batches between training steps (validation) do not mix with them."""
    machine = Machine({2: 0.019, 1: 0.0095})
    tuner = make(machine)
    for _ in range(12):
        machine.run(tuner, 1, kind="train")
        tuner.step(0.001 * 64, 64, "infer")  # cheap per slice, the same at any count
    assert tuner.current == 1


def test_workers_get_their_share_and_omp_num_threads_forces_it(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    for name in ("OMP_NUM_THREADS", threads.POLICY_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    assert threads.plan(CPU, workers=1)[:2] == (8, (8, 4))
    assert threads.plan(CPU, workers=4)[:2] == (2, (2, 1))
    assert threads.plan(CPU, workers=8)[:2] == (1, ())
    assert threads.plan(CPU, workers=16)[:2] == (1, ())
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    count, candidates, text = threads.plan(CPU, workers=4)
    assert (count, candidates) == (3, ()) and "OMP_NUM_THREADS" in text
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv(threads.POLICY_VARIABLE, "old")  # as before: the cores split, no timing
    assert threads.plan(CPU, workers=4)[:2] == (2, ())
    assert threads.plan(CPU, workers=1)[:2] == (None, ())


def test_run_says_its_choice_times_its_steps_and_leaves_no_tuner_behind(in_tmp, monkeypatch, capsys):
    from sweep.cli import main
    from sweep.search.presets import preset

    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.POLICY_VARIABLE, raising=False)
    before = torch.get_num_threads()
    seen = []
    real = Tuner.step
    monkeypatch.setattr(Tuner, "step", lambda self, seconds, slices, kind="train": (seen.append(kind), real(self, seconds, slices, kind)))
    assert main(["run", "--trials", "1", "--epochs", "1", "--enqueue", json.dumps(preset("small")), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "threads: 2 or 1 of 2 cores, chosen by timing steps" in err
    assert "train" in seen and "infer" in seen  # training steps and validation batches were timed
    assert threads.active() is None and torch.get_num_threads() == before


def test_a_clear_winner_after_one_round_ends_the_probe():
    """On an idle machine the half count is 30 % slower: the probe spends one block on it, not two."""
    idle = Machine({2: 0.0046, 1: 0.006})
    tuner = make(idle, settle_seconds=1000.0)
    counts = []
    for _ in range(12):
        counts.append(tuner.current)
        idle.run(tuner, 1)
    assert counts.count(1) == 3 and tuner.current == 2 and not tuner.plan


def test_on_a_quiet_machine_the_other_count_is_not_timed():
    machine = Machine({2: 0.0046, 1: 0.006})
    used = [0.05]
    tuner = make(machine, settle_seconds=1000.0, others=lambda: used[0])
    counts = []
    for _ in range(10):
        counts.append(tuner.current)
        machine.run(tuner, 1)
    assert counts == [2] * 10 and not tuner.plan
    used[0] = 2.0  # two busy loops arrived: the next probe times both
    machine.per_slice = {2: 0.019, 1: 0.0095}
    for _ in range(2000):
        machine.run(tuner, 1)
        if machine.changes:
            break
    assert machine.changes == [(2, 1)]
    used[0] = 0.0  # they ended: the share again, without timing the half
    for _ in range(20000):
        machine.run(tuner, 1)
        if len(machine.changes) == 2:
            break
    assert machine.changes == [(2, 1), (1, 2)]


def test_other_work_reads_the_cores_other_processes_use():
    import time

    meter = threads.OtherWork()
    time.sleep(0.2)
    used = meter()
    assert used is None or used >= 0.0  # None off Linux
