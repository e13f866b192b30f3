"""Every command's flags, and the YAML files they name, as one family: jsonargparse parses them all (LightningCLI's
fit, validate, test and predict in cli.py; `flag_parser` and `parse` for `sweep`, `export` and `serve`), no flag may
be abbreviated, and a mistake is one line that names the flag or file, what is wrong and the fix, never usage text
first (`parse_error`, from jsonargparse's and argparse's complaints as compat names their texts; a YAML file's problems
in `YamlFile`'s words). (No Lightning here: `serve --model` starts without it.)"""

from __future__ import annotations

import argparse
import ast
import difflib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace

from mnist_lightning import compat
from mnist_lightning.errors import ArgumentError


def flag_parser(prog: str, description: str) -> ArgumentParser:
    """A command's own parser, of the family LightningCLI's belongs to: its mistakes raised for `parse` to put in one
    line (not printed after the usage), and no abbreviated flag taken for a whole one (`--work` for `--workers`)."""
    return ArgumentParser(prog=prog, description=description, exit_on_error=False, allow_abbrev=False)


def parse(parser: ArgumentParser, args: list[str], fixes: Mapping[str, str] | None = None) -> Namespace:
    """`parser.parse_args(args)` for a command's own parser (`flag_parser`'s), a mistake in `args` raised as a
    one-line ArgumentError. `fixes`: what to say when a required flag is left out, by flag (`{"--config": ...}`)."""
    parser.exit_on_error = False
    parser.allow_abbrev = False  # (argparse reads both while it parses)
    try:
        return parser.parse_args(args)
    except argparse.ArgumentError as e:
        defaults = parser.get_defaults()
        flags = {f"--{key}": defaults[key] for key in defaults.keys()}  # noqa: SIM118 (a Namespace's values iterate)
        raise parse_error(e, parser.prog, flags, args, fixes=fixes) from None


def parse_error(
    error: Exception,
    command: str,
    flags: dict[str, Any],
    args: list[str],
    settings_of: str = "",
    fixes: Mapping[str, str] | None = None,
) -> ArgumentError:
    """jsonargparse's complaint about the command line `args` or a config file, as one line with the fix.

    `command`: what a user types (`python -m mnist_lightning fit`). `flags`: every flag with its default
    (`{"--trainer.max_epochs": 20, ...}`), for the closest match to an unknown one and the value a bare flag needs.
    `settings_of`: the subcommand whose settings a config file gives. `fixes`: what to say when a required flag is
    left out, by flag.
    """
    message = str(error)
    help_command = command
    command = f"{command} --help"
    configs = [value for flag, value in itertools.pairwise(args) if flag in ("-c", "--config")]
    configs += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    config = f"--config {configs[-1]}" if len(configs) == 1 else "a --config file"
    if key := re.match(compat.PARSER_KEY, message):
        if key.group(1) == "config":
            path = re.search(compat.CONFIG_PATH, message)
            if path:
                problem = "missing" if path.group(1) == compat.MISSING_FILE else None
                problem = problem or ("folder" if Path(path.group(2)).is_dir() else "special")  # /dev/null, a pipe
                return YamlFile(f"--config {path.group(2)}").error(problem)
            return ArgumentError(f"--config: {first_line_after_key(message)}")
        given = re.search(compat.GIVEN_VALUE, message)
        kinds = [a or b for a, b in re.findall(compat.KIND, message)]
        wanted = " or ".join(dict.fromkeys(describe(kind) for kind in kinds)) or first_line_after_key(message)
        value = given.group(1).strip() if given else value_given(f"--{key.group(1)}", args)
        value = f" {value}" if value is not None else ""
        return ArgumentError(f"--{key.group(1)}{value}: expected {wanted} (`{command}` says what each flag takes)")
    if unknown := re.match(compat.UNRECOGNIZED, message):
        flag = unknown.group(1).split("=")[0]
        return unknown_flag(flag, closest_flag(flag, flags), help_command)
    if unknown := re.search(compat.NOT_ACCEPTED, message):
        close = difflib.get_close_matches(f"--{unknown.group(1)}", list(flags), n=1)
        hint = f"did you mean {close[0].removeprefix('--')}? " if close else ""
        return ArgumentError(
            f"{config} sets {unknown.group(1)}, which {settings_of or help_command} does not have: {hint}`{command}` "
            "lists every setting"
        )
    if missing := re.match(compat.REQUIRED, message):
        names = ", ".join(f"--{name.strip().lstrip('-')}" for name in missing.group(1).split(","))
        if fixes and names in fixes:
            return ArgumentError(f"{names} is required: {fixes[names]}")
        return ArgumentError(f"{names} is required (`{command}` lists every flag)")
    if bare := re.match(compat.NO_VALUE, message):
        flag = bare.group(1)
        value = "true" if isinstance(flags.get(flag), bool) else "VALUE"
        return ArgumentError(f"{flag} needs a value: {flag} {value} (`{command}` lists every flag)")
    if message.startswith(compat.INVALID_CONFIG):
        return YamlFile(config).error("invalid", yaml_reason(message.removeprefix(f"{compat.INVALID_CONFIG}: ")))
    if message.startswith(compat.NOT_A_MAPPING):
        text = " ".join(message.split(":", 1)[1].split())[:60]
        return YamlFile(config).error("not a mapping", f"holds {text!r}" if text else "is empty")
    return ArgumentError(f"{' '.join(message.split())} (`{command}` lists every flag)")


def value_given(flag: str, args: list[str]) -> str | None:
    """The value `args` last gave `flag` (`--flag=value` or `--flag value`), or None."""
    value = None
    for arg, following in itertools.pairwise([*args, ""]):
        if arg == flag:
            value = following
        elif arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
    return value


def closest_flag(flag: str, flags: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The flag of `flags` that `flag` most likely means: one it abbreviates (`--work` for `--workers`), else the
    closest spelling, or None."""
    flags = list(flags)
    abbreviated = [known for known in flags if known.startswith(flag) and flag.strip("-")]
    close = difflib.get_close_matches(flag, abbreviated, n=1, cutoff=0) or difflib.get_close_matches(
        flag, flags, n=1, cutoff=cutoff
    )
    return close[0] if close else None


def unknown_flag(flag: str, close: str | None, command: str) -> ArgumentError:
    """The one line for a flag `command` does not have (`close`: the one it likely means)."""
    hint = f"did you mean {close}? " if close else ""
    return ArgumentError(f"unknown flag {flag}: {hint}`{command} --help` lists every flag")


def first_line_after_key(message: str) -> str:
    lines = [line.strip(" -") for line in message.splitlines()[1:] if line.strip(" -")]
    return lines[0] if lines else message.split(":", 1)[-1].strip()


def describe(kind: str) -> str:
    """A kind of value compat.KIND found: `<class 'int'>` → `an integer`; `typing.Literal['adam', 'adamw']` → `one of
    adam, adamw`."""
    if kind.startswith(compat.LITERAL):
        return "one of " + ", ".join(map(str, ast.literal_eval(kind.removeprefix(compat.LITERAL))))
    if kind == compat.CLASS_KIND:
        return "a class (its name, or its import path)"
    if kind in RESTRICTED:
        return RESTRICTED[kind]
    name = match.group(1) if (match := re.search(r"'(\w+)'", kind)) else kind
    plain = {"NoneType": "null", "int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}
    return plain.get(name, "a path" if name == "Path" else f"a {name}")


# jsonargparse.typing's restricted numbers, as `Not of type PositiveInt: ...` names them (compat.KIND).
RESTRICTED = {
    "PositiveInt": "a positive integer",
    "NonNegativeInt": "an integer, 0 or more",
    "PositiveFloat": "a number above 0",
    "NonNegativeFloat": "a number, 0 or more",
    "ClosedUnitInterval": "a number from 0 to 1",
    "OpenUnitInterval": "a number between 0 and 1",
}


# --- YAML files --------------------------------------------------------------------------------------------------

# What is wrong with a YAML file, in the words of every command: `--config` of fit and the others (from jsonargparse's
# complaint, in parse_error), the sweep file and the fit config it names (read by YamlFile.read).
YAML_PROBLEMS = {
    "missing": "{name}: no such file; pass a {kind}{example}",
    "folder": "{name}: a folder, not a {kind}{example}",
    "special": "{name}: not a regular file; pass a {kind}{example}",
    "not text": "{name} is not text (YAML); pass a {kind}{example}",
    "unreadable": "{name} cannot be read ({detail}): make it readable",
    "invalid": "{name} is not valid YAML: {detail}",
    "not a mapping": "{name} {detail}, not a YAML mapping of {holds}{example}",
}
SETTINGS = "settings (model: ..., data: ..., ...)"
# PyYAML's safe loader, in C where it is built (as jsonargparse reads a --config file): its complaints are the same.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlFile:
    """A YAML file a command reads, as its one-line errors name it: `name` (`--config sweep.yaml`), the `kind` of file
    it must be (`sweep file`), an `example` of one (` (configs/sweep.yaml is an example)`), and what it maps."""

    name: str
    kind: str = "YAML file"
    example: str = ""
    holds: str = SETTINGS

    def error(self, problem: str, detail: str = "") -> ArgumentError:
        """The one line for `problem`, a key of YAML_PROBLEMS (`detail`: the reason, or what the file holds)."""
        text = YAML_PROBLEMS[problem].format(
            name=self.name, kind=self.kind, example=self.example, holds=self.holds, detail=detail
        )
        return ArgumentError(text)

    def read(self, path: Path) -> Any:
        """The YAML in `path`, whatever it holds, or the one line that says why it cannot be read."""
        try:
            if path.is_dir():
                raise self.error("folder")
            if path.exists() and not path.is_file():  # /dev/null, a pipe (which reading would wait on)
                raise self.error("special")
            text = path.read_text()
        except FileNotFoundError:
            raise self.error("missing") from None
        except UnicodeDecodeError:
            raise self.error("not text") from None
        except OSError as e:  # a folder that cannot be searched, a file that cannot be read
            raise self.error("unreadable", e.strerror or type(e).__name__) from None
        try:
            return yaml.load(text, Loader=SAFE_LOADER)
        except yaml.YAMLError as e:
            raise self.error("invalid", yaml_reason(str(e))) from None

    def mapping(self, path: Path) -> dict[Any, Any]:
        """`read(path)`, refused in one line unless it is a mapping with something in it."""
        content = self.read(path)
        if not isinstance(content, dict) or not content:
            raise self.error("not a mapping", held(content))
        return content


def yaml_reason(message: str) -> str:
    """PyYAML's complaint (`while parsing ...\\n  in "<file>", line 2, column 17\\ndid not find ...`) on one line:
    what it says, and where the problem is."""
    parts = [" ".join(part.split()) for part in re.split(compat.YAML_MARK, message)]
    where = re.findall(compat.YAML_LINE_COLUMN, message)
    return ", ".join(part for part in parts if part) + (f" at {where[-1]}" if where else "")


def held(value: Any) -> str:
    """What a YAML file holds instead of a mapping with something in it, for a message: `is empty`, `holds a str,
    'hello world'`."""
    if value is None or value == {}:
        return "is empty"
    text = " ".join(repr(value).split())
    return f"holds a {type(value).__name__}, {text[:40]}{'...' if len(text) > 40 else ''}"
