"""Every command's flags, defined once: a field of a command's options dataclass made with ``flag``
carries its help text and argparse's other keywords, and the parser (``sweep.cli``), the options
built from the parsed arguments and the command lines the tool prints all read these fields.

The options of ``run`` are ``RunOptions`` (``sweep.search.options``), of ``best`` ``BestOptions``
(``sweep.core.best``); the read-only commands' and ``predict``'s are here. ``--storage``,
``--study`` and ``--device`` are the same field wherever they appear.
"""

from __future__ import annotations

import argparse
from dataclasses import Field, dataclass, field, fields

from sweep.core.study import DEFAULT_STORAGE, DEFAULT_STUDY, command_line  # noqa: F401 - command_line: for commands


def flag(default, help: str, resume: bool = True, **argparse_keywords):
    """A dataclass field that is a command's flag (``--name-with-dashes`` unless ``flag=`` says
    otherwise; a ``flag=`` without dashes is a positional argument); ``resume``: whether the
    command line that repeats the options (``option_flags``) repeats it."""
    return field(default=default, metadata={"help": help, "resume": resume, **argparse_keywords})


def storage_flag(help: str = "SQLAlchemy URL (default %(default)s)"):
    return flag(DEFAULT_STORAGE, help)


def study_flag(help: str = "study name (default %(default)s)"):
    return flag(DEFAULT_STUDY, help)


def device_flag(help: str = "auto, cpu, cuda or cuda:K (default %(default)s)"):
    return flag("auto", help)


def json_flag(help: str = "print one JSON object on stdout"):
    return flag(False, help, resume=False, action="store_true")


def flag_fields(cls) -> list[Field]:
    """The fields of the options class ``cls`` that are flags, in the order ``--help`` shows them."""
    return [f for f in fields(cls) if "help" in f.metadata]


def flag_name(f: Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def port(text: str) -> int:
    number = integer(text)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535 (or 0: any free one), got {number}")
    return number


ARG_TYPES = {"int": integer, "float": float}  # by a field's annotation (``int | None``: int); str as given


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One argument of ``parser`` per flag field of ``cls``; each argument's ``dest`` is its field's name."""
    for f in flag_fields(cls):
        keywords = {k: v for k, v in f.metadata.items() if k not in ("flag", "resume")}
        if "choices" in keywords:
            keywords["choices"] = tuple(keywords["choices"])
        kind = ARG_TYPES.get(str(f.type).split(" |")[0])
        if kind is not None and "action" not in keywords and "type" not in keywords:
            keywords["type"] = kind
        name = flag_name(f)
        if name.startswith("-"):
            parser.add_argument(name, dest=f.name, default=f.default, **keywords)
        else:
            parser.add_argument(name, default=f.default, **keywords)


def from_args(cls, args: argparse.Namespace):
    """The options of a parsed command line (each flag's ``dest`` is its field's name)."""
    return cls(**{f.name: getattr(args, f.name) for f in flag_fields(cls)})


def option_flags(opts, always: tuple[str, ...] = ()) -> list[str]:
    """The flags that give ``opts`` again: those whose value is not the default (and those named in
    ``always``), in ``--help``'s order, leaving out the ones marked ``resume=False``."""
    parts: list[str] = []
    for f in flag_fields(type(opts)):
        value = getattr(opts, f.name)
        if f.metadata["resume"] and (f.name in always or value != f.default) and value is not None:
            parts += _flag_parts(f, value)
    return parts


def _flag_parts(f: Field, value) -> list[str]:
    """The words that give flag ``f`` the value ``value``: a switch alone (``--evaluate``,
    ``--no-refit``), else the flag and its value."""
    name = flag_name(f)
    if isinstance(value, bool):
        if f.metadata.get("action") is argparse.BooleanOptionalAction and not value:
            return ["--no-" + name[2:]]
        return [name] if value != f.default or f.metadata.get("action") is argparse.BooleanOptionalAction else []
    return [name, str(value)]


@dataclass
class StatusOptions:
    storage: str = storage_flag()
    study: str = study_flag()
    json: bool = json_flag()


@dataclass
class ExportOptions:
    csv: str | None = flag(None, "the CSV file to write (one row per trial)", required=True, metavar="FILE")
    storage: str = storage_flag()
    study: str = study_flag()


@dataclass
class ReportOptions:
    out: str = flag("report.html", "the HTML file to write (default %(default)s)", metavar="FILE.html")
    storage: str = storage_flag()
    study: str = study_flag()


@dataclass
class DashboardOptions:
    host: str = flag("127.0.0.1", "address to serve on (default %(default)s: this machine only; 0.0.0.0 for others)")
    port: int = flag(8080, "TCP port (default %(default)s; 0: any free port, named in the URL printed)", type=port)
    storage: str = storage_flag()


@dataclass
class PredictOptions:
    model: str | None = flag(None, "model.pt written by `best --evaluate` (default: the evaluated model of --study, "
                                   "fetched from the study's artifact location)", metavar="FILE")
    storage: str = storage_flag("SQLAlchemy URL, where --model is not given (default %(default)s)")
    study: str = study_flag("study name, where --model is not given (default %(default)s)")
    inputs: list[str] = flag((), "PNG or NIfTI (.nii, .nii.gz) files, or folders of them", flag="inputs",
                             nargs="*", metavar="INPUT")
    out: str = flag("predictions", "output folder (default %(default)s)", metavar="DIR")
    overlay: bool = flag(False, "also write NAME_overlay.png pictures", action="store_true")
    device: str = device_flag()
    quiet: bool = flag(False, "no progress bar", action="store_true")
    export: list[str] | None = flag(None, "also write the ensemble (without TTA and cleaning) as ONNX or TorchScript, "
                                          "checked against PyTorch", nargs=2, metavar=("onnx|torchscript", "FILE"))
