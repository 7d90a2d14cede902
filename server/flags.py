"""TF-Serving's command-line syntax (tensorflow/core/util/command_line_flags.cc) over Settings.

Only `--name=value` is accepted; booleans also take a bare `--name`. Unknown arguments are
reported and ignored (the server continues, as TF-Serving does). A bad value or `--help`
prints the usage and exits with 255.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NoReturn, TextIO

from tfrec.base.settings import Settings, fields

__all__ = ["Settings", "field", "parse", "usage"]

_INT32 = (-(2**31), 2**31 - 1)
_BOOL = {"true": True, "1": True, "false": False, "0": False}


class StartupError(Exception):
    """A start-up failure, printed as TF-Serving prints it before exiting with 255."""


def usage() -> str:
    lines = ["usage: tfrec_model_server", "Flags:"]
    for f in fields():
        kind = {int: "int64", bool: "bool", float: "float", str: "string"}[_type(f)]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        note = " (accepted, no effect)" if f.metadata.get("accepted") else ""
        lines.append(f"\t--{f.name}={default!s:<12}\t{kind}\t{f.metadata['help']}{note}")
    return "\n".join(lines)


def _type(f: dataclasses.Field) -> type:
    return {"int": int, "bool": bool, "float": float, "str": str}[str(f.type)]


def _convert(f: dataclasses.Field, text: str) -> Any:
    kind = _type(f)
    if kind is bool:
        if text not in _BOOL:
            raise ValueError(text)
        return _BOOL[text]
    if kind is int:
        value = int(text)
        if f.name != "load_retry_interval_micros" and not _INT32[0] <= value <= _INT32[1]:
            raise ValueError(text)
        return value
    return kind(text)


def _fail(message: str, err: TextIO) -> NoReturn:
    print(message, file=err)
    print(usage(), file=err)
    sys.exit(255)


def parse(argv: list[str], err: TextIO = sys.stderr) -> tuple[Settings, list[str]]:
    """Returns the settings and the explicitly set flag names. Exits on --help or a bad value."""
    by_name = {f.name: f for f in fields()}
    settings = Settings()
    explicit: list[str] = []
    for arg in argv:
        if arg in ("--help", "-help", "--helpfull"):
            _fail("", err)
        name, eq, text = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        f = by_name.get(name)
        if f is None or (not eq and _type(f) is not bool):
            print(f"unknown argument: {arg}", file=err)
            continue
        try:
            value = _convert(f, text) if eq else True
        except ValueError:
            _fail(f"Illegal value for flag --{name}: {text}", err)
        setattr(settings, name, value)
        explicit.append(name)
    return settings, explicit


def field(name: str) -> dataclasses.Field:
    """The Settings field behind flag `name`."""
    return next(f for f in fields() if f.name == name)
