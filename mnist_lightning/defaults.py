"""What this project sets beyond Lightning's defaults, process-wide: a profiler that costs nothing, no NVML probing
without GPUs, and no third-party messages a user can do nothing about."""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
from lightning.pytorch.profilers import PassThroughProfiler

from mnist_lightning import compat


class NullProfiler(PassThroughProfiler):
    """Lightning's default profiler, which records nothing, without the cost of entering it.

    Lightning wraps every hook call in `profiler.profile(...)`, about 60 times per training step; the inherited
    context manager is a generator that costs 1.7 µs each time. `--trainer.profiler simple` (or `advanced`) shows
    where a run's time goes.
    """

    def profile(self, action_name: str) -> AbstractContextManager:
        return nullcontext(action_name)


def stop_probing_for_nvml_without_gpus() -> None:
    """Let torch answer "is CUDA available?" from its cached runtime count when no NVIDIA GPU is visible.

    Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that the question never initializes CUDA (which would
    break forked worker processes). torch's Adam asks it on every step, and without an NVIDIA driver each answer
    then tries to load NVML and fails: 0.12 ms per step on this CPU, about 10 % of an epoch of the seed configuration
    (`python benchmarks/alternating.py --toggle nvml-probe`). With no GPU there is no CUDA state to protect.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]


def silence_third_party_noise() -> None:
    """Drop messages a user of this program can do nothing about, or that it says better itself: a deprecation inside
    Lightning (printed twice per fit with torch 2.14), its hint to use `srun` on any machine where SLURM is installed
    (slurm/fit.sbatch runs fits under srun; outside a job there is nothing to do about it), and compat.NOISE."""
    warnings.filterwarnings("ignore", message=compat.TREESPEC_DEPRECATION)
    warnings.filterwarnings("ignore", message=compat.SRUN_NOT_USED)
    for name in compat.NOISY_LOGGERS:  # a filter is added once, however often this runs
        logging.getLogger(name).addFilter(is_not_noise)


def is_not_noise(record: logging.LogRecord) -> bool:
    """Whether a log record of Lightning's is worth showing (compat.NOISE and SAVED_ON_EXCEPTION say what is not)."""
    message = record.getMessage()
    return not any(noise in message for noise in compat.NOISE) and not all(
        part in message for part in compat.SAVED_ON_EXCEPTION
    )
