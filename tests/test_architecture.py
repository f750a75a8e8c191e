"""The house rules that keep the code navigable: checked, so that they stay true."""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep.cli import SUBCOMMANDS, build_parser
from sweep.core import flags
from sweep.core.errors import UsageError
from sweep.search import strategies
from sweep.search.options import RunOptions, resume_command

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_IMPORTERS = 8  # modules of sweep/ that may import one module, but for the few every command needs
SHARED_BY_ALL = {"sweep.core.records", "sweep.core.errors", "sweep.core.study"}
MAX_TOP_LEVEL_MODULES = 8  # sweep/'s own modules beside its layer packages (cli, __main__, ...)
LAYERS = ("core", "search", "nn", "training", "shipping", "views")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sweep_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "sweep").rglob("*.py"))}


def sweep_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``sweep/`` that ``path`` imports anywhere: at the top, inside functions, or
    only for type checking (a circle through ``TYPE_CHECKING`` still ties two modules together)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in known:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            names |= subs or {node.module}
    return names - {module_name(path)} - {"sweep"}


def import_graph() -> dict[str, set[str]]:
    modules = sweep_modules()
    return {name: sweep_imports(path, set(modules)) for name, path in modules.items()}


def loaded_after_importing(modules: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after ``import {modules}``."""
    code = f"import sys\nimport {modules}\nprint(','.join(m for m in {watched!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_read_only_commands_load_nothing_that_trains():
    modules = ("sweep.cli, sweep.core.best, sweep.views.status, sweep.views.export, sweep.views.report, "
               "sweep.views.dashboard, sweep.search.space")
    trainers = ("torch", "sweep.training.train", "sweep.training.objective", "sweep.training.run",
                "sweep.shipping.evaluate")
    assert loaded_after_importing(modules, trainers) == []


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


def test_the_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: the layers import one way, views and search
    load no torch, nothing imports the command line, model and data never import sweep."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " 0 broken" in out.stdout


def test_sweep_is_layers_with_a_thin_top():
    top = [p.stem for p in (ROOT / "sweep").glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "sweep" / layer / "__init__.py").read_text())) or ""
        assert len(doc.splitlines()) == 2, f"sweep/{layer}/__init__.py says in two lines what it holds and imports"


def test_the_layers_said_to_load_no_torch_load_none():
    quiet = [m for m in sweep_modules() if m.startswith(("sweep.core", "sweep.search", "sweep.views"))]
    assert loaded_after_importing(", ".join(quiet), ("torch",)) == []


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", ["sweep", "model", "data"])
def test_no_function_is_longer_than_a_screen(package):
    long = [f"{p.name}:{name} ({n} lines)" for p in sorted((ROOT / package).rglob("*.py"))
            for name, n in _functions(p) if n > MAX_FUNCTION_LINES]
    assert not long


def test_nothing_outside_tests_imports_from_tests():
    offenders = []
    for folder in ("sweep", "model", "data", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
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


@pytest.mark.parametrize("command, options", [("run", RunOptions), *((name, cls) for name, _, cls in SUBCOMMANDS)])
def test_every_commands_flags_and_defaults_are_its_options_class(command, options):
    required = {"export": {"csv": "trials.csv"}}.get(command, {})
    argv = [command, *(part for name, value in required.items() for part in (f"--{name}", value))]
    assert flags.from_args(options, build_parser().parse_args(argv)) == options(**required)  # every field a flag


def test_printed_command_lines_come_from_one_function():
    opts = RunOptions(trials=5, epochs=50, storage="postgresql://u:pw@db/x", study="s 1")
    assert resume_command(opts) == flags.command_line("run", "--trials", "5", "--epochs", str(opts.epochs),
                                                      "--storage", "postgresql://u:pw@db/x", "--study", "s 1")
    from sweep.core.study import sweep_command

    # A URL with a password is the variable the user exports: the line runs as printed, and shows no secret.
    assert sweep_command("best --evaluate", "postgresql://u:pw@db/x", "s 1", after=("--seeds", "2")) == \
        ('python -m sweep best --evaluate --storage "$SEGNET_STORAGE" --study \'s 1\' --seeds 2'
         "  # SEGNET_STORAGE: your --storage URL (not printed: it holds a password)")
