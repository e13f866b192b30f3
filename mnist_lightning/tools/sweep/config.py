"""The sweep file (configs/sweep.yaml): the `fit` every trial starts from, the metric, Optuna's sampler and pruner,
and the search space over dotted LightningCLI keys, each checked before any trial runs."""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from mnist_lightning.errors import ArgumentError
from mnist_lightning.flag_errors import YamlFile
from mnist_lightning.tools.sweep.sampler import TrialSeededSampler

SECTIONS = ("fit", "metric", "direction", "n_trials", "sampler", "pruner", "search_space")
FIT_SECTIONS = ("model", "data", "trainer", "seed_everything", "optimizer", "lr_scheduler", "ckpt_path")
EXAMPLE = "(configs/sweep.yaml is an example)"
FIT_SETTINGS = "fit settings (model: ..., data: ..., trainer: ...)"
DIRECTIONS = ("maximize", "minimize")
# Optuna stores these as they are; anything else (a list of widths, say) is stored as its JSON text.
PLAIN = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Parameter:
    """One searched LightningCLI key: a float or int range (`low`, `high`, optional `log`, `step`), or `choices`."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask `trial` for this parameter's value."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def flag(self, value: Any) -> str:
        """The LightningCLI flag that sets this key to `value` (as `suggest` returned it)."""
        return f"--{self.key}={value if isinstance(value, str) else json.dumps(value)}"

    def extremes(self) -> list[Any]:
        """The values worth checking against the parser: both ends of a range, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def as_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep file. `fit` is the path of the base fit config, or the YAML text of an inline one (LightningCLI's
    `--config` takes either)."""

    path: Path
    fit: str
    metric: str = "val/acc_best"
    direction: str = "maximize"
    n_trials: int = 20
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    space: tuple[Parameter, ...] = ()

    def identity(self) -> dict[str, Any]:
        """What a study must keep across runs: trials with another space or metric would not compare."""
        return {
            "metric": self.metric,
            "direction": self.direction,
            "search_space": {p.key: p.as_dict() for p in self.space},
        }

    def make_sampler(self) -> TrialSeededSampler:
        """Optuna's TPE sampler with the file's arguments, trial N drawing with seed + N."""
        arguments = dict(self.sampler)
        seed = arguments.pop("seed", None)
        try:
            return TrialSeededSampler(None if seed is None else int(seed), **arguments)
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"sampler: {e}; see the arguments of optuna's TPESampler") from None

    def make_pruner(self) -> optuna.pruners.MedianPruner:
        """Optuna's median pruner with the file's arguments; its steps are epochs."""
        return _construct(optuna.pruners.MedianPruner, self.pruner, "pruner")


def _construct(cls: type, arguments: dict[str, Any], section: str) -> Any:
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as e:
        raise ArgumentError(f"{section}: {e}; see the arguments of optuna's {cls.__name__}") from None


def read_sweep_config(path: Path) -> SweepConfig:
    """Read and check a sweep file; every problem is one line that names it and its fix. The sampler and the pruner
    are built once here, so that a wrong argument of theirs stops the sweep before anything is written."""
    raw = YamlFile(f"--config {path}", "sweep file", f" {EXAMPLE}", ", ".join(SECTIONS)).mapping(path)
    fit_sections = sorted(set(raw) & set(FIT_SECTIONS))
    if fit_sections and not set(raw) & {"fit", "search_space"}:
        raise ArgumentError(
            f"--config {path} is a fit config ({', '.join(fit_sections)}), not a sweep file: name it in a sweep file's "
            f"`fit:` section {EXAMPLE}"
        )
    unknown = sorted(set(raw) - set(SECTIONS), key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), SECTIONS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ArgumentError(f"{path}: unknown section {unknown[0]!r}: {hint}the sections are {', '.join(SECTIONS)}")
    if "fit" not in raw:
        raise ArgumentError(f"{path}: no `fit:` section: name the fit config the trials start from (fit: fast.yaml)")
    metric = raw.get("metric", "val/acc_best")
    if not isinstance(metric, str) or not metric.strip():
        raise ArgumentError(f"{path}: metric must name a logged metric (val/acc_best, val/loss, ...), got {metric!r}")
    direction = raw.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise ArgumentError(f"{path}: direction must be maximize or minimize, got {direction!r}")
    n_trials = raw.get("n_trials", 20)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ArgumentError(f"{path}: n_trials must be a positive integer, got {n_trials!r}")
    for section in ("sampler", "pruner"):
        if not isinstance(raw.get(section) or {}, dict):
            raise ArgumentError(f"{path}: {section} must be a mapping of optuna arguments, got {raw[section]!r}")
    space = raw.get("search_space")
    if not isinstance(space, dict) or not space:
        raise ArgumentError(f"{path}: search_space must map dotted keys to ranges, e.g. model.lr: {{low: 1e-4, ...}}")
    config = SweepConfig(
        path=path,
        fit=_fit_config(path, raw["fit"]),
        metric=metric,
        direction=direction,
        n_trials=n_trials,
        sampler=dict(raw.get("sampler") or {}),
        pruner=dict(raw.get("pruner") or {}),
        space=tuple(_parameter(str(key), spec) for key, spec in space.items()),
    )
    config.make_sampler()
    config.make_pruner()
    return config


def _fit_config(path: Path, fit: Any) -> str:
    if isinstance(fit, dict):
        return yaml.safe_dump(fit, default_flow_style=True, width=10**6).strip()
    if not isinstance(fit, str) or not fit.strip():
        raise ArgumentError(
            f"{path}: fit must name the fit config the trials start from (a YAML file, relative to the sweep file) or "
            f"be a mapping of its settings, got {fit!r}"
        )
    fit_path = path.parent / fit
    name = f"{path}: fit config {fit_path}"
    if not fit_path.exists() and not fit_path.is_symlink():
        raise ArgumentError(f"{name} does not exist (the path is relative to the sweep file)")
    YamlFile(name, "fit config", " (configs/fast.yaml is one)", FIT_SETTINGS).mapping(fit_path)
    return str(fit_path)


def _number(key: str, name: str, value: Any) -> float | int:
    if isinstance(value, str):  # YAML reads 1e-4 (without a dot) as text
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"search_space {key}: {name} must be a number, got {value!r}")
    return value


def _parameter(key: str, spec: Any) -> Parameter:
    if not isinstance(spec, dict):
        raise ArgumentError(f"search_space {key}: give {{low: ..., high: ...}} or {{choices: [...]}}, got {spec!r}")
    fields = ("low", "high", "log", "step", "choices")
    unknown = sorted(set(spec) - set(fields), key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ArgumentError(
            f"search_space {key}: unknown field {unknown[0]!r}: {hint}use low, high, log, step or choices"
        )
    if "choices" in spec:
        choices = spec["choices"]
        if len(spec) > 1:
            raise ArgumentError(f"search_space {key}: give either choices or a range (low, high, ...), not both")
        if not isinstance(choices, list) or not choices:
            raise ArgumentError(f"search_space {key}: choices is empty: list at least one value")
        plain = tuple(c if isinstance(c, PLAIN) else json.dumps(c) for c in choices)
        if len(set(map(json.dumps, plain))) < len(plain):
            raise ArgumentError(f"search_space {key}: choices {choices} repeat a value: list each once")
        return Parameter(key, choices=plain)
    if "low" not in spec or "high" not in spec:
        raise ArgumentError(f"search_space {key}: give both low and high (or choices)")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    step = None if spec.get("step") is None else _number(key, "step", spec["step"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ArgumentError(f"search_space {key}: log must be true or false, got {log!r}")
    if low > high:
        raise ArgumentError(f"search_space {key}: low {low} is above high {high}: swap them")
    if log and low <= 0:
        raise ArgumentError(f"search_space {key}: a log scale needs low above 0, got {low}")
    if log and step is not None:
        raise ArgumentError(f"search_space {key}: Optuna takes either log or step, not both: drop one")
    if step is not None and step <= 0:
        raise ArgumentError(f"search_space {key}: step must be above 0, got {step}")
    if isinstance(low, int) and isinstance(high, int) and step is not None and not isinstance(step, int):
        raise ArgumentError(
            f"search_space {key}: an integer range (low {low}, high {high}) takes an integer step, got {step}: "
            "make low or high a float (e.g. 1.0) for a range of floats"
        )
    return Parameter(key, low=low, high=high, log=log, step=step)


def space_size(space: Iterable[Parameter]) -> int | None:
    """How many different parameter sets `space` holds, or None when it is not finite (a range of floats)."""
    size = 1
    for p in space:
        if p.choices is not None:
            size *= len(p.choices)
        elif isinstance(p.low, int) and isinstance(p.high, int):
            size *= (p.high - p.low) // int(p.step or 1) + 1
        elif p.step is not None:
            size *= int((p.high - p.low) / p.step + 1e-9) + 1
        else:
            return None
    return size


def check_keys(space: Iterable[Parameter], valid: list[str]) -> None:
    """Refuse a searched key that is not a fit setting, naming the close ones and the valid ones (those of the model
    and the data; any other key of `valid`, e.g. trainer.max_epochs or seed_everything, is searchable too)."""
    for parameter in space:
        if parameter.key in valid:
            continue
        close = difflib.get_close_matches(parameter.key, valid, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        listed = [key for key in valid if key.startswith(("model.", "data."))]
        raise ArgumentError(
            f"search_space key {parameter.key} is not a fit setting: {hint}valid keys are {', '.join(listed)}, "
            "seed_everything, and trainer.* (e.g. trainer.max_epochs)"
        )
