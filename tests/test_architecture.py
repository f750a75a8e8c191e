"""The house rules that keep the code navigable: checked, so that they stay true."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep.search import strategies
from sweep.cli import build_parser
from sweep.core.errors import UsageError
from sweep.search.options import RunOptions, resume_command

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_IMPORTERS = 8  # modules of sweep/ that may import one module, but for the few every command needs
SHARED_BY_ALL = {"records", "errors", "study"}


def sweep_imports(path: Path) -> set[str]:
    """The modules of ``sweep/`` that ``path`` imports anywhere: at the top, inside functions, or
    only for type checking (a circle through ``TYPE_CHECKING`` still ties two modules together)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sweep.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "sweep":
                names |= {a.name for a in node.names if (ROOT / "sweep" / f"{a.name}.py").is_file()}
            elif node.module.startswith("sweep."):
                names.add(node.module.split(".")[1])
    return names - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: sweep_imports(p) for p in sorted((ROOT / "sweep").glob("*.py"))}


def loaded_after_importing(modules: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after ``import {modules}``."""
    code = f"import sys\nimport {modules}\nprint(','.join(m for m in {watched!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_read_only_commands_load_nothing_that_trains():
    modules = "sweep.cli, sweep.core.best, sweep.views.status, sweep.views.export, sweep.views.report, sweep.views.dashboard, sweep.search.space"
    assert loaded_after_importing(modules, ("torch", "sweep.training.train", "sweep.training.objective", "sweep.training.run", "sweep.shipping.evaluate")) == []


def test_inference_loads_no_trainer():
    assert loaded_after_importing("sweep.shipping.predict, sweep.nn.model_file, sweep.nn.postprocess",
                                  ("sweep.training.train", "sweep.training.augment", "sweep.training.losses")) == []


def test_no_module_is_a_hub():
    graph = import_graph()
    importers = {name: sorted(m for m, deps in graph.items() if name in deps) for name in graph}
    hubs = {name: who for name, who in importers.items() if len(who) > MAX_IMPORTERS and name not in SHARED_BY_ALL}
    assert not hubs


def test_no_import_circle_not_even_for_type_checking():
    graph = import_graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        for dep in sorted(graph.get(name, ())):
            circle = visit(dep, path + [name])
            if circle:
                return circle
        done.add(name)
        return None

    circles = [c for name in graph if (c := visit(name, []))]
    assert not circles


def architecture_layers() -> list[tuple[str, list[str], str]]:
    """docs/ARCHITECTURE.md's layer table: (layer, its modules of sweep/, what it imports), top first."""
    rows = []
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] not in ("layer", "---"):
            rows.append((cells[0], re.findall(r"`(\w+)\.py`", cells[1]), cells[2]))
    return rows


def test_the_layer_table_names_every_module_once():
    named = [m for _, modules, _ in architecture_layers() for m in modules]
    assert sorted(named) == sorted(p.stem for p in (ROOT / "sweep").glob("*.py") if p.stem != "__init__")


def test_each_layer_imports_only_from_itself_and_the_layers_above():
    graph = import_graph()
    allowed: set[str] = set()
    wrong = []
    for layer, modules, _ in architecture_layers():
        allowed |= set(modules)
        wrong += [f"{m} ({layer}) imports {dep}" for m in modules for dep in sorted(graph[m] - allowed)]
    assert not wrong


def test_the_layers_said_to_load_no_torch_load_none():
    quiet = [m for _, modules, imports in architecture_layers() if "no torch" in imports for m in modules]
    assert quiet
    code = f"import sys\nimport {', '.join('sweep.' + m for m in quiet)}\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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


def test_run_flags_defaults_and_the_resume_command_are_one_table():
    assert RunOptions.from_args(build_parser().parse_args(["run"])) == RunOptions()
    opts = RunOptions(trials=3, epochs=2, sampler="random", timeout=5.0, cv=3, groups=r"p(\d+)", val_slices=0,
                      patch=64, artifacts="/shared/a", max_trial_seconds=30.0, progress=False)
    argv = shlex.split(resume_command(opts))[3:]  # after "python -m sweep"
    assert RunOptions.from_args(build_parser().parse_args([*argv, "--quiet"])) == opts
