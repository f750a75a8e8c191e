"""What the command line prints for a person to act on: hints that work as printed, help for every flag."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from sweep.cli import build_parser, main
from sweep.search.presets import preset
from sweep.core.study import sweep_command


@pytest.mark.parametrize("argv,closest", [
    (["run", "--trails", "5"], "--trials"),
    (["run", "--epoch-slice", "4"], "--epoch-slices"),
    (["best", "--evalute"], "--evaluate"),
    (["status", "--jsn"], "--json"),
])
def test_a_mistyped_flag_names_the_closest_one_of_its_command(argv, closest, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"(did you mean {closest}?)") and len(err.splitlines()) == 1


def test_a_flag_like_no_other_gets_no_guess(capsys):
    assert main(["run", "--zzzzzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_every_flag_of_every_command_has_help_text():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in commands.items() for action in sub._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []


@pytest.mark.slow
def test_the_next_step_carries_the_study_and_storage_that_were_used(in_tmp, capsys):
    storage = f"sqlite:///{in_tmp / 'other.db'}"
    args = ["run", "--trials", "1", "--epochs", "1", "--quiet", "--enqueue", json.dumps(preset("small")),
            "--study", "acdc1", "--storage", storage]
    assert main(args) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("next: "))
    assert hint == f"next: {sweep_command('best --evaluate', storage, 'acdc1')}"
    assert main(shlex.split(hint[len("next: "):])[3:]) == 0  # works as printed
    assert "best trial 0" in capsys.readouterr().out


def test_commands_leave_defaults_out_and_passwords_hidden():
    assert sweep_command("status", "sqlite:///studies.db", "segnet") == "python -m sweep status"
    shown = sweep_command("best --evaluate", "postgresql://u:secret@db:5432/s", "x y")
    assert "secret" not in shown and shlex.split(shown, comments=True)[-2:] == ["--study", "x y"]
