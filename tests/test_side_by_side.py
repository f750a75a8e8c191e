"""Two runs of the test suite on one machine at once (issue 37): no fixed port, path or shared
environment may let one disturb the other. Each run has its own temporary folders (``--basetemp``),
its own cache (conftest's ``own_cache``), study names and databases of its own on the shared
PostgreSQL and MariaDB servers (uuids), its own buckets, and ports the kernel hands out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# The fast tests of the files that touch what two runs could share: the database servers, the
# dashboard's port, the S3 server and its buckets, the caches, the study folder and the threads.
SUBSET = ["tests/test_chains.py", "tests/test_outside_failures.py", "tests/test_views.py", "tests/test_machines.py",
          "tests/test_volumes.py", "tests/test_threads.py"]


@pytest.mark.slow
def test_two_runs_of_the_fast_tests_at_once_both_pass(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    runs = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider",
                              "--basetemp", str(tmp_path / f"run{i}"), *SUBSET],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)]
    outputs = [run.communicate(timeout=1800)[0] for run in runs]
    for run, out in zip(runs, outputs):
        assert run.returncode == 0, out[-4000:]
        assert " passed" in out.strip().splitlines()[-1]
