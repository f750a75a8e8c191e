"""Argument parsing and exit codes; every command is a plain function in its own module."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from data import DataError
from sweep.errors import UsageError
from sweep.study import DEFAULT_STORAGE, DEFAULT_STUDY

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """Bad options end with one line naming the flag (argparse's usage block is two more)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sweep", description="Hyperparameter sweeps of SegNet on cardiac MR slices.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def storage_flags(p):
        p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL (default %(default)s)")
        p.add_argument("--study", default=DEFAULT_STUDY, help="study name (default %(default)s)")

    run = sub.add_parser("run", help="create or resume a study and run trials until --trials have finished")
    run.add_argument("--trials", type=_positive_int, default=20, help="target of finished trials, across runs and workers (default %(default)s)")
    run.add_argument("--epochs", type=_positive_int, default=50, help="epoch budget of each trial (default %(default)s)")
    run.add_argument("--data", default="phantom", help="'phantom' (built-in synthetic) or a data folder (default %(default)s)")
    storage_flags(run)
    run.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    run.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    run.add_argument("--seed", type=int, default=0, help="sampler and training seed (default %(default)s)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default %(default)s)")
    run.add_argument("--workers", type=_positive_int, default=1, help="worker processes on this machine (default %(default)s)")
    run.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    run.add_argument("--enqueue", default=None, metavar="PARAMS.json|JSON", help="run this configuration first, e.g. configs/original.json")
    run.add_argument("--cv", type=int, default=0, metavar="K",
                     help="K-fold cross-validation over train+val: a trial's value is its mean fold dice_fg "
                          "(default 0: train on train, select on val)")
    run.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    run.add_argument("--quiet", action="store_true", help="no progress bar or per-trial lines")

    best = sub.add_parser("best", help="show the best trial; --evaluate retrains it and reports test Dice")
    best.add_argument("--evaluate", action="store_true")
    best.add_argument("--seeds", type=_positive_int, default=3, help="retrainings with seeds 0..K-1, ensembled for the masks (default %(default)s)")
    best.add_argument("--data", default=None, help="data folder (default: the one recorded on the study)")
    best.add_argument("--out", default="best", help="folder for predicted test masks and summary.json (default %(default)s)")
    best.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    best.add_argument("--device", default="auto")
    best.add_argument("--quiet", action="store_true")
    storage_flags(best)

    status = sub.add_parser("status", help="trials by state, the best trial, running trials with worker and age")
    storage_flags(status)
    status.add_argument("--json", action="store_true")

    export = sub.add_parser("export", help="one CSV row per trial")
    export.add_argument("--csv", required=True, metavar="FILE")
    storage_flags(export)

    report = sub.add_parser("report", help="one self-contained HTML report of the study")
    report.add_argument("--out", default="report.html", metavar="FILE.html")
    storage_flags(report)

    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on the study's storage and artifacts")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _quiet_libraries() -> None:
    """Optuna's logs (a traceback per failed trial) would drown the per-trial lines, which say the same."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from sweep.run import RunOptions, run, resume_command

        opts = RunOptions(
            trials=args.trials, epochs=args.epochs, data=args.data, storage=args.storage, study=args.study,
            sampler=args.sampler, pruner=args.pruner, seed=args.seed, device=args.device, workers=args.workers,
            timeout=args.timeout, enqueue=args.enqueue, cv=args.cv, progress=not args.quiet,
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends like Ctrl-C
        try:
            summary = run(opts)
        except KeyboardInterrupt:
            print(f"\ninterrupted; the study is saved. Resume with:\n  {resume_command(opts)}", file=sys.stderr)
            return EXIT_INTERRUPTED
        _print_run_summary(summary, args.json)
        return EXIT_ERROR if "stopped after" in summary.get("note", "") else EXIT_OK

    if args.command == "best":
        from sweep.best import BestOptions, describe_best, evaluate_best, open_study_readonly

        opts = BestOptions(
            evaluate=args.evaluate, seeds=args.seeds, data=args.data, out=args.out, json=args.json,
            storage=args.storage, study=args.study, device=args.device, progress=not args.quiet,
        )
        opts.check()
        study = open_study_readonly(opts.storage, opts.study)
        result = evaluate_best(study, opts) if opts.evaluate else describe_best(study)
        if opts.json:
            print(json.dumps(result))
        else:
            _print_best(result)
        return EXIT_OK
    if args.command == "status":
        from sweep.status import format_status, study_status

        result = study_status(args.storage, args.study)
        print(json.dumps(result) if args.json else format_status(result))
        return EXIT_OK
    if args.command == "export":
        from sweep.export import export_csv

        rows = export_csv(args.storage, args.study, args.csv)
        print(f"wrote {rows} trials to {args.csv}")
        return EXIT_OK
    if args.command == "report":
        from sweep.report import write_report

        path = write_report(args.storage, args.study, args.out)
        print(f"wrote {path}")
        return EXIT_OK
    if args.command == "dashboard":
        from sweep.dashboard import serve

        serve(args.storage, host=args.host, port=args.port)
        return EXIT_OK
    raise UsageError(f"unknown command {args.command!r}")


def _print_run_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    if summary.get("note"):
        print(summary["note"])
    s = summary["states"]
    print(
        f"study {summary['study']!r}: {summary['finished']} of {summary['target']} trials finished "
        f"({s['complete']} complete, {s['pruned']} pruned, {s['fail']} failed)"
    )
    if summary["best"]:
        b = summary["best"]
        print(f"best: trial {b['trial']}, val dice_fg {b['val_dice_fg']:.4f}")
        print("next: python -m sweep best --evaluate")


def _print_best(result: dict) -> None:
    score = f"{result['cv']}-fold cv dice_fg" if result.get("cv") else "val dice_fg"
    print(f"study {result['study']!r}: best trial {result['trial']}, {score} {result['val_dice_fg']:.4f}")
    val = result.get("val") or {}
    if val:
        print(("  cv Dice   " if result.get("cv") else "  val Dice  ") + "  ".join(f"{k[5:]} {v:.4f}" for k, v in val.items() if v is not None))
    print("  params    " + ", ".join(f"{k}={_fmt(v)}" for k, v in result["params"].items()))
    test = result.get("test")
    if "seeds" in result:
        if test is None:
            print("  test      no masks: predicted masks written, no test Dice")
        else:
            classes = "  ".join(f"{k[5:]} {test[k]:.4f}±{test[k + '_std']:.4f}" for k in ("dice_rv", "dice_myo", "dice_lv"))
            print(f"  test Dice {classes}  fg {test['dice_fg']:.4f}±{test['dice_fg_std']:.4f}"
                  f"  mean4 {test['dice_mean4']:.4f}  ({test['n_images']} images, mean±std over seeds {result['seeds']})")
            ens = test["ensemble"]
            lo, hi = ens["dice_fg_ci95"]
            print(f"  ensemble  fg {ens['dice_fg']:.4f} (95% bootstrap interval {lo:.4f}-{hi:.4f}): the written masks")
        post = result["postprocess"]
        chosen_on = "out-of-fold predictions" if result.get("cv") else "val"
        print(f"  post      rotation TTA {'on' if post['tta'] else 'off'}, largest component {'on' if post['largest_component'] else 'off'} (chosen on {chosen_on})")
        est = result.get("estimate")
        if est:
            lo, hi = est["dice_fg_ci95"]
            print(f"  expect    fg {est['dice_fg']:.4f} (95% bootstrap interval {lo:.4f}-{hi:.4f}) on unseen slices, "
                  f"from {est['source']}")
        print(f"  masks     {result['masks']}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
