"""`ThreadsFollowLoad`: torch's threads follow what other processes leave free of this process's CPUs, while a run
goes on (mnist_lightning.threads says why and how)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from mnist_lightning import threads

INTERVAL = 1.0  # seconds between two looks at the load: far longer than a reading of /proc/stat (~20 µs)


class ThreadsFollowLoad(L.Callback):
    """At the start of each stage and about once a second after, torch computes with one thread per CPU of this
    process that no other process keeps busy (`threads.threads_for`); the CPUs are shared by the processes of a
    distributed run on this machine. Does nothing when the user set OMP_NUM_THREADS (or MKL_NUM_THREADS)."""

    def __init__(self, meter: threads.LoadMeter | None = None, cpus: int | None = None) -> None:
        self.meter = meter or threads.METER
        self.cpus = cpus
        self.active = not threads.user_chose_threads()
        self.checked = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.cpus is None:
            local = trainer.num_devices if trainer.strategy.root_device.type == "cpu" else 1
            self.cpus = max(1, threads.usable_cpus() // max(1, local))

    def follow(self) -> None:
        """Set torch's threads for the load since the last look."""
        self.checked = time.monotonic()
        others = self.meter.others()
        if not self.active or others is None or self.cpus is None:
            return
        wanted = threads.threads_for(self.cpus, others)
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)

    def _now_and_then(self) -> None:
        if time.monotonic() - self.checked >= INTERVAL:
            self.follow()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._now_and_then()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._now_and_then()

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._now_and_then()

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._now_and_then()

    def on_predict_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._now_and_then()
