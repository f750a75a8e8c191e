"""Argument parsing and exit codes; every command is a plain function in its own module.

Read-only commands (status, best without --evaluate, export, report, dashboard) import nothing
that trains: their modules load only when the command runs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shlex
import signal
import sys

import sqlalchemy
from optuna.exceptions import StorageInternalError

from data import DataError
from sweep.core.errors import UsageError
from sweep.search.options import RunOptions, flag_name, resume_command, run_flags
from sweep.core.records import score_label, silence_optuna, states_line
from sweep.core.study import DEFAULT_STORAGE, DEFAULT_STUDY, sweep_command

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _port(text: str) -> int:
    port = _int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, got {port}")
    return port


def _storage_flags(p: argparse.ArgumentParser, study: bool = True) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL (default %(default)s)")
    if study:
        p.add_argument("--study", default=DEFAULT_STUDY, help="study name (default %(default)s)")


ARG_TYPES = {"int": _int, "float": float}  # by a RunOptions field's annotation (``int | None``: int); str as given


def _add_run(sub) -> None:
    """``run``'s flags, one per flag field of ``RunOptions`` (``sweep.search.options``: defaults, help, checks)."""
    run = sub.add_parser("run", help="create or resume a study and run trials until --trials have finished")
    for f in run_flags():
        keywords = {k: v for k, v in f.metadata.items() if k not in ("flag", "resume")}
        if "choices" in keywords:
            keywords["choices"] = tuple(keywords["choices"])
        kind = ARG_TYPES.get(str(f.type).split(" |")[0])
        if kind is not None:
            keywords["type"] = kind
        run.add_argument(flag_name(f), dest=f.name, default=f.default, **keywords)
    run.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _add_best(sub) -> None:
    best = sub.add_parser("best", help="show the best trial; --evaluate retrains it and reports test Dice")
    best.add_argument("--evaluate", action="store_true",
                      help="retrain the best trial, evaluate it on the test split, write masks, summary.json and model.pt")
    best.add_argument("--seeds", type=_int, default=3, help="retrainings with seeds 0..K-1, ensembled for the masks (default %(default)s)")
    best.add_argument("--data", default=None, help="data folder (default: the one recorded on the study)")
    best.add_argument("--out", default="best", help="folder for predicted test masks, summary.json and model.pt (default %(default)s)")
    best.add_argument("--top", type=_int, default=1, metavar="K",
                      help="ensemble the best K trials' configurations, each retrained --seeds times (default %(default)s)")
    best.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                      help="ship each seed retrained on train+val for its best epoch count; --no-refit ships the "
                           "models trained on train with the checkpoint chosen on val (default: refit)")
    best.add_argument("--holdout", type=float, default=0.2, metavar="F",
                      help="share of train patients held out of the estimate's retrainings, so that the estimate "
                           "is scored on slices that neither trained nor selected them; 0 scores it on val, which "
                           "also selected the trial (default %(default)s)")
    best.add_argument("--epochs", type=_int, default=None, metavar="E",
                      help="epoch budget of the retrainings (default: each trial's own): a search run at a "
                           "lower budget, its pick trained longer to ship")
    best.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    best.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K for the retrainings (default %(default)s)")
    best.add_argument("--quiet", action="store_true", help="no progress bar")
    _storage_flags(best)


def _add_views(sub) -> None:
    status = sub.add_parser("status", help="trials by state, the best trial, running trials with worker and age")
    _storage_flags(status)
    status.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    export = sub.add_parser("export", help="one CSV row per trial")
    export.add_argument("--csv", required=True, metavar="FILE", help="the CSV file to write (one row per trial)")
    _storage_flags(export)
    report = sub.add_parser("report", help="one self-contained HTML report of the study")
    report.add_argument("--out", default="report.html", metavar="FILE.html", help="the HTML file to write (default %(default)s)")
    _storage_flags(report)
    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on the study's storage and artifacts")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to serve on (default %(default)s: this machine only; 0.0.0.0 for others)")
    dashboard.add_argument("--port", type=_port, default=8080, help="TCP port (default %(default)s)")
    _storage_flags(dashboard, study=False)


def _add_predict(subparsers) -> argparse.ArgumentParser:
    """Add ``predict`` to the CLI's subparsers (their ``parser_class`` makes errors one line)."""
    p = subparsers.add_parser("predict", help="segment PNG slices or NIfTI volumes with a saved model.pt")
    p.add_argument("--model", default=None, metavar="FILE",
                   help="model.pt written by `best --evaluate` (default: the evaluated model of --study, "
                        "fetched from the study's artifact location)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL, where --model is not given (default %(default)s)")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study name, where --model is not given (default %(default)s)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="PNG or NIfTI (.nii, .nii.gz) files, or folders of them")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default %(default)s)")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png pictures")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--export", nargs=2, metavar=("onnx|torchscript", "FILE"), default=None,
                   help="also write the ensemble (without TTA and cleaning) as ONNX or TorchScript, checked against PyTorch")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sweep", description="Hyperparameter sweeps of SegNet on cardiac MR slices.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    _add_best(sub)
    _add_views(sub)
    _add_predict(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    silence_optuna()
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # to print the command that reruns it
        return COMMANDS[args.command](args)
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as err:
        reason = _storage_reason(err)
        print(f"error: --storage: {reason}", file=sys.stderr)
        damaged = any(word in reason for word in ("malformed", "not a database", "file is not a database"))
        return EXIT_USAGE if damaged else EXIT_ERROR


def _storage_reason(err: BaseException) -> str:
    """The database's own words (e.g. "database or disk is full"), one line."""
    while (inner := getattr(err, "orig", None) or err.__cause__ or err.__context__) is not None:
        err = inner
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _run(args: argparse.Namespace) -> int:
    from sweep.training.run import run

    opts = RunOptions.from_args(args)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends like Ctrl-C
    try:
        summary = run(opts)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the study is saved. Resume with:\n  {resume_command(opts)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_run_summary(summary, args.json)
    return EXIT_ERROR if summary["stopped_early"] else EXIT_OK


def _best(args: argparse.Namespace) -> int:
    from sweep.core import study as st
    from sweep.core.best import BestOptions, describe_best

    opts = BestOptions(
        evaluate=args.evaluate, seeds=args.seeds, data=args.data, out=args.out, json=args.json,
        storage=args.storage, study=args.study, device=args.device, progress=not args.quiet,
        refit=args.refit, top=args.top, holdout=args.holdout, epochs=args.epochs,
    )
    opts.check()
    if not opts.evaluate:
        result = describe_best(st.open_study_readonly(opts.storage, opts.study))
    else:
        from sweep.shipping.evaluate import evaluate_best

        st.check_storage_url(opts.storage)
        st.require_existing_sqlite(opts.storage)
        study = st.load_study(st.make_storage(opts.storage, heartbeat=False), opts.study)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends like Ctrl-C
        try:
            result = evaluate_best(study, opts)
        except KeyboardInterrupt:
            rerun = shlex.join(["python", "-m", "sweep", *args.argv])
            print(f"\ninterrupted; nothing was recorded on the study. Rerun with:\n  {rerun}", file=sys.stderr)
            return EXIT_INTERRUPTED
    print(json.dumps(result) if opts.json else _format_best(result))
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from sweep.views.status import format_status, study_status

    result = study_status(args.storage, args.study)
    print(json.dumps(result) if args.json else format_status(result))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from sweep.views.export import cases_path, export_cases, export_csv

    rows = export_csv(args.storage, args.study, args.csv)
    print(f"wrote {rows} trials to {args.csv}")
    cases = export_cases(args.storage, args.study, args.csv)
    if cases:
        print(f"wrote {cases} evaluated test volumes (per-patient Dice, HD95, ASSD) to {cases_path(args.csv)}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from sweep.views.report import write_report

    print(f"wrote {write_report(args.storage, args.study, args.out)}")
    return EXIT_OK


def _dashboard(args: argparse.Namespace) -> int:
    from sweep.views.dashboard import serve

    serve(args.storage, host=args.host, port=args.port)
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from sweep.shipping.predict import format_summary, run_predict

    print(format_summary(run_predict(args)))
    return EXIT_OK


COMMANDS = {"run": _run, "best": _best, "status": _status, "export": _export, "report": _report,
            "dashboard": _dashboard, "predict": _predict}


def _print_run_summary(summary: dict, as_json: bool) -> None:
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
        print(f"best: trial {b['trial']}, val dice_fg {b['val_dice_fg']:.4f}")
        print(f"next: {sweep_command('best --evaluate', summary['storage'], summary['study'])}")


def _format_best(result: dict) -> str:
    cv = result.get("cv")
    lines = [f"study {result['study']!r}: best trial {result['trial']}, {score_label(cv)} {result['val_dice_fg']:.4f}"]
    val = result.get("val") or {}
    if any(v is not None for v in val.values()):
        lines.append(("  cv Dice   " if cv else "  val Dice  ") + "  ".join(f"{k[5:]} {v:.4f}" for k, v in val.items() if v is not None))
    lines.append("  params    " + ", ".join(f"{k}={_fmt(v)}" for k, v in result["params"].items()))
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
