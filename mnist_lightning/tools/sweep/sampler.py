"""`TrialSeededSampler`: Optuna's TPE sampler, seeded per trial rather than per process.

A `TPESampler(seed=42)` made afresh in every run of a sweep replays the same random draws: the first trials of each
run got the parameters of the first trials of the run before. Seeding trial N with `seed + N` gives every trial of a
study, in any run, worker or machine, a random stream of its own (trial numbers are unique in a study), and a sweep
stopped and resumed draws what an uninterrupted one would have drawn, given the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState


class TrialSeededSampler(BaseSampler):
    """TPE (with `tpe_arguments`) whose randomness for trial N comes from `seed + N` (random seeds when seed is None).

    TPE keeps nothing across trials that matters: it reads the study's history from the storage for every trial
    (RUNNING trials too, with `constant_liar`), so one TPESampler per trial samples what one for all trials would.
    """

    def __init__(self, seed: int | None = None, **tpe_arguments: Any) -> None:
        self.seed = seed
        self.tpe_arguments = tpe_arguments
        TPESampler(seed=seed, **tpe_arguments)  # refuses wrong arguments now, not at the first trial
        self.samplers: dict[int, TPESampler] = {}

    def _tpe(self, trial: FrozenTrial) -> TPESampler:
        if trial.number not in self.samplers:
            seed = None if self.seed is None else self.seed + trial.number
            self.samplers[trial.number] = TPESampler(seed=seed, **self.tpe_arguments)
        return self.samplers[trial.number]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._tpe(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._tpe(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._tpe(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        sampler = self.samplers.pop(trial.number, None)
        if sampler is not None:
            sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: the seeds are per trial. (Study.optimize calls it for n_jobs > 1.)"""
