"""jsonargparse's complaints about a command line or a config file, as one line that names the flag or file, what is
wrong and the fix, never usage text first: for the LightningCLI commands (cli.py) and for `export` and `serve`.
(No Lightning here: `serve --model` starts without it.)"""

from __future__ import annotations

import argparse
import ast
import difflib
import itertools
import re
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from mnist_lightning.errors import ArgumentError


def parse(parser: ArgumentParser, args: list[str]) -> Namespace:
    """`parser.parse_args(args)` for a command's own parser, a mistake in `args` raised as a one-line ArgumentError."""
    parser.exit_on_error = False
    try:
        return parser.parse_args(args)
    except argparse.ArgumentError as e:
        defaults = parser.get_defaults()
        flags = {f"--{key}": defaults[key] for key in defaults.keys()}  # noqa: SIM118 (a Namespace's values iterate)
        raise parse_error(e, parser.prog, flags, args) from None


def parse_error(
    error: Exception, command: str, flags: dict[str, Any], args: list[str], settings_of: str = ""
) -> ArgumentError:
    """jsonargparse's complaint about the command line `args` or a config file, as one line with the fix.

    `command`: what a user types (`python -m mnist_lightning fit`). `flags`: every flag with its default
    (`{"--trainer.max_epochs": 20, ...}`), for the closest match to an unknown one and the value a bare flag needs.
    `settings_of`: the subcommand whose settings a config file gives.
    """
    message = str(error)
    help_command = command
    command = f"{command} --help"
    configs = [value for flag, value in itertools.pairwise(args) if flag in ("-c", "--config")]
    configs += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    config = f"--config {configs[-1]}" if len(configs) == 1 else "a --config file"
    if key := re.match(r'Parser key "([^"]+)":', message):
        if key.group(1) == "config":
            path = re.search(r"(File does not exist|Path is not a file): '([^']*)'", message)
            if path:
                if path.group(1).startswith("File"):
                    what = "no such file"
                elif Path(path.group(2)).is_dir():
                    what = "a folder, not a YAML file"
                else:  # /dev/null, a pipe
                    what = "not a regular file; pass a YAML file"
                return ArgumentError(f"--config {path.group(2)}: {what}")
            return ArgumentError(f"--config: {first_line_after_key(message)}")
        given = re.search(r"(?:Given value|Got value): (.*)", message)
        kinds = re.findall(r"Expected an? (<class '\w+'>|typing\.Literal\[[^\]]*\]|dot import path)", message)
        wanted = " or ".join(dict.fromkeys(describe(kind) for kind in kinds)) or first_line_after_key(message)
        value = f" {given.group(1).strip()}" if given else ""
        return ArgumentError(f"--{key.group(1)}{value}: expected {wanted} (`{command}` says what each flag takes)")
    if unknown := re.match(r"[Uu]nrecognized arguments: (\S+)", message):
        close = difflib.get_close_matches(unknown.group(1).split("=")[0], list(flags), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return ArgumentError(f"unknown flag {unknown.group(1)}: {hint}`{command}` lists every flag")
    if unknown := re.search(r"does not accept option '([^']+)'", message):
        close = difflib.get_close_matches(f"--{unknown.group(1)}", list(flags), n=1)
        hint = f"did you mean {close[0].removeprefix('--')}? " if close else ""
        return ArgumentError(
            f"{config} sets {unknown.group(1)}, which {settings_of or help_command} does not have: {hint}`{command}` "
            "lists every setting"
        )
    if missing := re.match(r"the following arguments are required: (.+)", message):
        names = ", ".join(f"--{name.strip().lstrip('-')}" for name in missing.group(1).split(","))
        return ArgumentError(f"{names} is required (`{command}` lists every flag)")
    if bare := re.match(r"argument (--[\w.]+): expected one argument", message):
        flag = bare.group(1)
        value = "true" if isinstance(flags.get(flag), bool) else "VALUE"
        return ArgumentError(f"{flag} needs a value: {flag} {value} (`{command}` lists every flag)")
    if message.startswith("Problems parsing config"):
        problem = " ".join(message.split()).removeprefix("Problems parsing config: ")
        where = re.findall(r"line \d+, column \d+", problem)
        reason = " ".join(re.sub(r'in "<unicode string>", line \d+, column \d+', "", problem).split())
        return ArgumentError(f"{config} is not valid YAML: {reason}{' at ' + where[-1] if where else ''}")
    if message.startswith("Unexpected config"):
        text = " ".join(message.split(":", 1)[1].split())[:60]
        holds = f"holds {text!r}" if text else "is empty"
        return ArgumentError(f"{config} {holds}, not a YAML mapping of settings (model: ..., data: ..., ...)")
    return ArgumentError(f"{' '.join(message.split())} (`{command}` lists every flag)")


def first_line_after_key(message: str) -> str:
    lines = [line.strip(" -") for line in message.splitlines()[1:] if line.strip(" -")]
    return lines[0] if lines else message.split(":", 1)[-1].strip()


def describe(kind: str) -> str:
    """`<class 'int'>` → `an int`; `typing.Literal['adam', 'adamw']` → `one of adam, adamw`."""
    if kind.startswith("typing.Literal"):
        return "one of " + ", ".join(map(str, ast.literal_eval(kind.removeprefix("typing.Literal"))))
    if kind == "dot import path":
        return "a class (its name, or its import path)"
    name = re.search(r"'(\w+)'", kind).group(1)
    plain = {"NoneType": "null", "int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}
    return plain.get(name, "a path" if name == "Path" else f"a {name}")
