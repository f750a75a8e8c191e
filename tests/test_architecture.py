"""The house rules that keep the code navigable: checked, so that they stay true."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep import strategies
from sweep.cli import build_parser
from sweep.errors import UsageError
from sweep.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def test_read_only_commands_load_nothing_that_trains():
    code = (
        "import sys\n"
        "import sweep.cli, sweep.best, sweep.status, sweep.export, sweep.report, sweep.dashboard, sweep.space\n"
        "heavy = sorted(m for m in ('torch', 'sweep.train', 'sweep.objective', 'sweep.run', 'sweep.evaluate') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", ["sweep", "model", "data"])
def test_no_function_is_longer_than_a_screen(package):
    long = [f"{p.name}:{name} ({n} lines)" for p in sorted((ROOT / package).glob("*.py"))
            for name, n in _functions(p) if n > MAX_FUNCTION_LINES]
    assert not long


def test_nothing_outside_tests_imports_from_tests():
    offenders = []
    for folder in ("sweep", "model", "data", "benchmarks"):
        for path in (ROOT / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
                    offenders.append(path.name)
    assert not offenders


def test_a_new_pruner_is_one_table_entry(monkeypatch):
    monkeypatch.setitem(strategies.PRUNERS, "patient", lambda epochs: optuna.pruners.PatientPruner(None, patience=2))
    args = build_parser().parse_args(["run", "--pruner", "patient"])
    RunOptions(pruner=args.pruner).check()
    assert isinstance(strategies.make_pruner("patient", 10), optuna.pruners.PatientPruner)
    with pytest.raises(UsageError, match="--pruner"):
        RunOptions(pruner="nonesuch").check()
