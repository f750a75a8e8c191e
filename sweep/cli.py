"""Argument parsing and exit codes; every command is a plain function in its own module.

Read-only commands (status, best without --evaluate, export, report, dashboard) import nothing
that trains: their modules load only when the command runs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import select
import signal
import sys

from data import DataError
from sweep.core import flags, interrupts
from sweep.core.best import BestOptions
from sweep.core.errors import OutsideError, UsageError, outside_failure
from sweep.core.flags import DashboardOptions, ExportOptions, PredictOptions, ReportOptions, StatusOptions
from sweep.core.records import VAL_DICE_FG, score_label, search_line, silence_optuna, states_line
from sweep.core.study import PROG, display_url, sweep_command
from sweep.nn import threads
from sweep.search.options import RunOptions, resume_command

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout closed it
RECORDING = ("run", "best")  # the commands that record an interruption, which a second signal must not cut short


class _Parser(argparse.ArgumentParser):
    """Bad options end with one line naming the flag (argparse's usage block is two more).

    Abbreviated flags are refused: ``--trial 5`` must not silently mean ``--trials 5``; a
    mistyped flag is answered with the command's closest one (``--trails``: did you mean ``--trials``?).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}{self._suggestion(message)}")

    def _suggestion(self, message: str) -> str:
        """`` (did you mean --FLAG?)`` for the first unrecognised flag close to one of the command's."""
        if "unrecognized arguments" not in message:
            return ""
        for token in message.split(":", 1)[1].split():
            match = difflib.get_close_matches(token.split("=")[0], self._command_flags(), n=1) if token.startswith("--") else []
            if match:
                return f" (did you mean {match[0]}?)"
        return ""

    def _command_flags(self) -> list[str]:
        """This parser's flags and those of the sub-command named first on the command line."""
        flags = [f for f in self._option_string_actions if f.startswith("--")]
        commands = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
        name = next((t for t in getattr(self, "_argv", []) if t in commands), None)
        if name is not None:
            flags += [f for f in commands[name]._option_string_actions if f.startswith("--")]
        return flags


def _add_run(sub) -> None:
    """``run``'s flags, one per flag field of ``RunOptions`` (``sweep.search.options``: defaults, help, checks)."""
    run = sub.add_parser("run", help="create or resume a study and run trials until --trials have finished")
    flags.add_flags(run, RunOptions)
    run.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


# Every other command: its name, its one-line help, and the options class whose fields are its flags.
SUBCOMMANDS = (
    ("best", "show the best trial; --evaluate retrains it and reports test Dice", BestOptions),
    ("status", "trials by state, the best trial, running trials with worker and age", StatusOptions),
    ("export", "one CSV row per trial", ExportOptions),
    ("report", "one self-contained HTML report of the study", ReportOptions),
    ("dashboard", "optuna-dashboard on the study's storage and artifacts", DashboardOptions),
    ("predict", "segment PNG slices or NIfTI volumes with a saved model.pt", PredictOptions),
)


def _add_command(sub, name: str, help: str, options) -> argparse.ArgumentParser:
    """One sub-command whose flags are the fields of ``options`` (the subparsers' ``parser_class``
    makes errors one line)."""
    parser = sub.add_parser(name, help=help)
    flags.add_flags(parser, options)
    return parser


def _add_predict(sub) -> argparse.ArgumentParser:
    """``predict`` alone, for a caller that builds its own parser."""
    return _add_command(sub, *next(c for c in SUBCOMMANDS if c[0] == "predict"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=" ".join(PROG), description="Hyperparameter sweeps of SegNet on cardiac MR slices.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    for command in SUBCOMMANDS:
        _add_command(sub, *command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. Output cut short by its reader (``status | head -1``) ends
    quietly, as ``head`` meant: no BrokenPipeError traceback, exit 141 as a shell shows for SIGPIPE."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # inside: a closed pipe fails here, not in the interpreter's exit
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe (a worker's): a fault of this tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush writes nowhere
        return EXIT_BROKEN_PIPE


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) nobody reads any more: polling its write end says so."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test's capture
        return False
    if not hasattr(select, "poll"):
        return True  # (no poll: take it that the pipe was ours)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _main(argv: list[str] | None = None) -> int:
    silence_optuna()
    # SIGTERM ends every command as Ctrl-C does: exit 130 and one line, never a half-written output.
    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signal.default_int_handler)}
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # to print the command that reruns it
        if args.command in RECORDING:  # a second signal right behind the first is absorbed (sweep.core.interrupts)
            interrupts.install()
        return COMMANDS[args.command](args)
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        rerun = f"; rerun with: {flags.command_line(*args.argv)}" if args is not None else ""
        print(f"interrupted; no output was left half-written{rerun}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OutsideError as err:  # a worker process's outside failure, its one line
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:
        storage = getattr(args, "storage", None)
        line = outside_failure(err, storage and display_url(storage))
        if line is None:
            raise  # a fault of this tool: its traceback is what a bug report needs
        print(f"error: {line}", file=sys.stderr)
        damaged = any(word in line for word in ("malformed", "not a database"))
        return EXIT_USAGE if damaged else EXIT_ERROR
    finally:
        if argv is None and args is not None and args.command in RECORDING and interrupts.interrupted():
            interrupts.ignore_until_exit()  # the process's own command line ends: nothing may cut that short
        else:
            interrupts.restore(previous)
        threads.stop()


def _run(args: argparse.Namespace) -> int:
    from sweep.training.run import run

    opts = RunOptions.from_args(args)
    try:
        summary = run(opts)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the study is saved. Resume with:\n  {resume_command(opts)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_run_summary(summary, args.json, opts.storage)
    return EXIT_ERROR if summary["stopped_early"] else EXIT_OK


def _best(args: argparse.Namespace) -> int:
    from sweep.core import study as st
    from sweep.core.best import describe_best

    opts = flags.from_args(BestOptions, args)
    opts.check()
    if not opts.evaluate:
        result = describe_best(st.open_study_readonly(opts.storage, opts.study))
    else:
        from sweep.shipping.evaluate import evaluate_best

        st.check_storage_url(opts.storage)
        st.require_existing_sqlite(opts.storage)
        study = st.load_study(st.make_storage(opts.storage, heartbeat=False), opts.study)
        try:
            result = evaluate_best(study, opts)
        except KeyboardInterrupt:
            rerun = flags.command_line(*args.argv)
            print(f"\ninterrupted; nothing was recorded, on the study or in --out {opts.out}. Rerun with:\n  {rerun}",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
    print(json.dumps(result) if opts.json else _format_best(result))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from sweep.views.status import format_status, study_status

    opts = flags.from_args(StatusOptions, args)
    result = study_status(opts.storage, opts.study)
    print(json.dumps(result) if opts.json else format_status(result))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from sweep.views.export import cases_path, export_cases, export_csv

    opts = flags.from_args(ExportOptions, args)
    rows = export_csv(opts.storage, opts.study, opts.csv)
    print(f"wrote {rows} trials to {opts.csv}")
    cases = export_cases(opts.storage, opts.study, opts.csv)
    if cases:
        print(f"wrote {cases} evaluated test volumes (per-patient Dice, HD95, ASSD) to {cases_path(opts.csv)}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from sweep.views.report import write_report

    opts = flags.from_args(ReportOptions, args)
    print(f"wrote {write_report(opts.storage, opts.study, opts.out)}")
    return EXIT_OK


def _dashboard(args: argparse.Namespace) -> int:
    from sweep.views.dashboard import serve

    opts = flags.from_args(DashboardOptions, args)
    serve(opts.storage, host=opts.host, port=opts.port)
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from sweep.shipping.predict import format_summary, run_predict

    print(format_summary(run_predict(flags.from_args(PredictOptions, args))))
    return EXIT_OK


COMMANDS = {"run": _run, "best": _best, "status": _status, "export": _export, "report": _report,
            "dashboard": _dashboard, "predict": _predict}


def _print_run_summary(summary: dict, as_json: bool, storage: str) -> None:
    """``storage``: the URL as given (the summary's has its password masked); the ``next:`` line
    refers to one with a password as ``$SEGNET_STORAGE`` (``sweep.core.study.command_line``)."""
    if as_json:
        print(json.dumps(summary))
        return
    if summary.get("note"):
        print(summary["note"])
    s = summary["states"]
    print(
        f"study {summary['study']!r}: {summary['finished']} of {summary['target']} trials finished "
        f"({states_line(s, summary.get('chains'))})"
    )
    if summary["best"]:
        b = summary["best"]
        print(f"best: trial {b['trial']}, val dice_fg {b[VAL_DICE_FG]:.4f}")
        print(f"next: {sweep_command('best --evaluate', storage, summary['study'])}")


def _format_best(result: dict) -> str:
    cv = result.get("cv")
    lines = [f"study {result['study']!r}: best trial {result['trial']}, {score_label(cv)} {result[VAL_DICE_FG]:.4f}"]
    val = result.get("val") or {}
    if any(v is not None for v in val.values()):
        lines.append(("  cv Dice   " if cv else "  val Dice  ") + "  ".join(f"{k[5:]} {v:.4f}" for k, v in val.items() if v is not None))
    lines.append("  params    " + ", ".join(f"{k}={_fmt(v)}" for k, v in result["params"].items()))
    if "search" in result:
        lines.append(f"  search    {search_line(result['search'])}")
    if "seeds" in result:
        lines += _format_evaluation(result)
    return "\n".join(lines)


def _format_evaluation(result: dict) -> list[str]:
    test = result.get("test")
    if test is None:
        lines = ["  test      no masks: predicted masks written, no test Dice"]
    else:
        classes = "  ".join(f"{k[5:]} {test[k]:.4f}±{test[k + '_std']:.4f}" for k in ("dice_rv", "dice_myo", "dice_lv"))
        ens = test["ensemble"]
        lo, hi = ens["dice_fg_ci95"]
        lines = [(f"  test Dice {classes}  fg {test['dice_fg']:.4f}±{test['dice_fg_std']:.4f}"
                  f"  mean4 {test['dice_mean4']:.4f}  ({test['n_images']} images, mean±std over seeds {result['seeds']})"),
                 f"  ensemble  fg {ens['dice_fg']:.4f} (95% bootstrap interval {lo:.4f}-{hi:.4f}): the written masks"]
    recipe = result.get("recipe") or {}
    if recipe:
        trials = ", ".join(str(t) for t in recipe["trials"])
        lines.append(f"  recipe    {len(result['seeds'])} seed(s) of trial(s) {trials}"
                     + ("; each refit on train+val for its best epoch count" if recipe["refit"] else ""))
    post = result["postprocess"]
    chosen_on = "out-of-fold predictions" if result.get("cv") else "val"
    lines.append(f"  post      rotation TTA {'on' if post['tta'] else 'off'}, largest component "
                 f"{'on' if post['largest_component'] else 'off'} (chosen on {chosen_on})")
    est = result.get("estimate")
    if est:
        lo, hi = est["dice_fg_ci95"]
        lines.append(f"  expect    fg {est['dice_fg']:.4f} (95% bootstrap interval {lo:.4f}-{hi:.4f}) on unseen slices, "
                     f"from {est['source']}")
    if result.get("volumes"):
        from sweep.views.status import volume_summary_lines

        lines += volume_summary_lines(result["volumes"]["summary"])
        for key, agreement in (result["volumes"].get("clinical") or {}).items():
            # None: under 2 patients or no variance (r); an EF with no predicted EDV for any patient (bias).
            r = "–" if agreement["r"] is None else f"{agreement['r']:.3f}"
            bias = "–" if agreement["bias"] is None else f"{agreement['bias']:+.2f}"
            lines.append(f"  clinical  {key}: r {r}, bias {bias}")
    lines.append(f"  masks     {result['masks']}")
    lines.append(f"  model     {result['model']}")
    return lines


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
