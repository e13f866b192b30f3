"""`MNISTClassifier`: the LightningModule that trains the network of net.py: its loss, optimizer and metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning import compat
from mnist_lightning.datasets import DATASETS, DEFAULT_DATASET
from mnist_lightning.errors import ArgumentError, CheckpointError, TrainingDiverged, first_line
from mnist_lightning.net import Normalize, build_mlp

FINITE_CHECK_EVERY = 50
# The metric that chooses the best checkpoint and names its file (cli.py), and that checkpoints record the score of.
MONITORED = "val/acc"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}

Batch = tuple[Tensor, Tensor]
# The defaults of the dataset-given arguments, for a model built without the CLI (which links them to the data).
_DEFAULT = DATASETS[DEFAULT_DATASET]


class MNISTClassifier(L.LightningModule):
    """A multilayer perceptron trained with cross-entropy and Adam (or AdamW).

    Args:
        hidden_sizes: width of each hidden layer; `[100]` is the classic 784-100-10 network.
        dropout: dropout probability after each hidden layer (0 turns it off).
        batch_norm: batch normalization between each hidden Linear layer and its ReLU.
        lr: the optimizer's learning rate (with a schedule, its peak).
        weight_decay: with `adam`, an L2 penalty added to the gradient; with `adamw`, decoupled weight decay.
        optimizer: `adam` or `adamw`.
        lr_schedule: `constant`; `one_cycle` (warm up to `lr` over the first 30 % of the steps, then anneal to
            almost 0); or `cosine` (from `lr` down to 0). Both schedules step every batch and span the whole fit.
        label_smoothing: share of the target probability spread evenly over all classes (0 turns it off).
        input_size: pixels per image; the CLI sets it from the data module's dataset.
        num_classes: number of output classes; the CLI sets it from the data module's dataset.
        mean, std: of the training pixels on a 0-1 scale, which the model normalizes its inputs with; the CLI sets
            them from the data module's dataset. Inputs are images in [0, 1].
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (100,),
        dropout: float = 0.0,
        batch_norm: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Literal["adam", "adamw"] = "adam",
        lr_schedule: Literal["constant", "one_cycle", "cosine"] = "constant",
        label_smoothing: float = 0.0,
        input_size: int = _DEFAULT.input_size,
        num_classes: int = _DEFAULT.num_classes,
        mean: float = _DEFAULT.mean,
        std: float = _DEFAULT.std,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ArgumentError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise ArgumentError(f"weight_decay must be 0 or more, got {weight_decay}")
        if not 0 <= label_smoothing < 1:
            raise ArgumentError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        hidden_sizes = list(hidden_sizes)  # saved as a list, as the CLI gives it
        self.normalize = Normalize(mean, std)
        self.net = build_mlp(input_size, hidden_sizes, num_classes, dropout, batch_norm)  # checks its arguments
        self.save_hyperparameters()

        # One metric object per stage. validate_args=False skips per-step input checks that cost more than this
        # small network's forward pass.
        def accuracy() -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes, average="micro", validate_args=False)

        self.train_acc, self.val_acc, self.test_acc = accuracy(), accuracy(), accuracy()
        # A NaN loss is caught by training_step; the metric's own NaN check would wait for the device every step.
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))
        # The training metrics are updated once per epoch, from the outputs of its batches kept here: 550 updates of
        # one batch each cost 38 ms per epoch of the seed configuration (7 % of the raw loop's epoch), one update
        # with all 550 batches 2 ms.
        self._train_outputs: list[tuple[Tensor, Tensor, Tensor]] = []
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so a resumed run remembers its best validation accuracy.
        self.val_acc_best.persistent(True)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning records the running hook's name here about 40 times per training step; nn.Module.__setattr__
        # first checks whether the name is a parameter, buffer or submodule, which takes ten times as long.
        if name == compat.CURRENT_HOOK:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """nn.Module's, with weights that do not fit this network (a checkpoint of another version of it) refused in
        one line, however they are loaded: by Lightning's restore, or `runs.checkpoints.model_from_checkpoint`."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as e:
            raise CheckpointError(
                f"the checkpoint's weights do not fit MNISTClassifier ({first_line(e)}): it was written by another "
                "version of the network; use a checkpoint of this version's `fit`"
            ) from None

    def on_train_start(self) -> None:
        # A resumed fit restores its optimizer's state, learning rate and weight decay included; the values this run
        # was given (runs.checkpoints.model_settings: a new learning rate, say) apply from here on. With a schedule,
        # its own restored state sets the learning rate; an optimizer of the user's (`--optimizer`) keeps its own.
        if self.trainer.ckpt_path is None or self.hparams.lr_schedule != "constant":
            return
        for optimizer in self.trainer.optimizers:
            if type(optimizer) is OPTIMIZERS[self.hparams.optimizer]:
                for group in optimizer.param_groups:
                    group["lr"], group["weight_decay"] = self.hparams.lr, self.hparams.weight_decay

    def forward(self, images: Tensor) -> Tensor:
        """Class logits for a batch of images in [0, 1] (any shape that flattens to `input_size`)."""
        return self.net(self.normalize(images))

    def _loss_and_logits(self, batch: Batch) -> tuple[Tensor, Tensor]:
        images, labels = batch
        logits = self(images)
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing), logits

    def _update_metrics(self, stage: str, losses: Tensor, logits: Tensor, labels: Tensor) -> None:
        getattr(self, f"{stage}_loss").update(losses)
        getattr(self, f"{stage}_acc").update(logits, labels)

    def _log_epoch(self, stage: str) -> Tensor:
        """Log the stage's epoch loss and accuracy, reset them, and return the accuracy."""
        # compute() already gathers the states of all processes, so under DDP the values agree everywhere;
        # sync_dist then costs one tiny all-reduce per epoch and tells Lightning the values are global.
        accuracy = getattr(self, f"{stage}_acc").compute()
        self.log(f"{stage}/loss", getattr(self, f"{stage}_loss").compute(), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val", sync_dist=True)  # val/acc is MONITORED
        getattr(self, f"{stage}_loss").reset()
        getattr(self, f"{stage}_acc").reset()
        return accuracy

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        if self.hparams.batch_norm and len(batch[1]) == 1:
            # Batch statistics of one image do not exist. This is a final batch of one (55,000 images in batches
            # of 3, say); every process of a distributed run gets the same size, so all of them skip it.
            return None
        loss, logits = self._loss_and_logits(batch)
        self._train_outputs.append((loss.detach(), logits.detach(), batch[1]))
        # Reading the loss waits for the device; on a GPU that costs more than this network's step, so there
        # the check runs every FINITE_CHECK_EVERY steps, and every step on the CPU, where it is free.
        if (self.device.type == "cpu" or batch_idx % FINITE_CHECK_EVERY == 0) and not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                "no weights were updated with it and the checkpoints on disk are kept: try a smaller --model.lr"
            )
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_outputs:
            losses, logits, labels = zip(*self._train_outputs, strict=True)
            self._update_metrics("train", torch.stack(losses), torch.cat(logits), torch.cat(labels))
            self._train_outputs.clear()
        self._log_epoch("train")

    # The logits go to callbacks' on_*_batch_end (the confusion matrix, the misclassified grid).
    def _evaluation_step(self, stage: str, batch: Batch) -> dict[str, Tensor]:
        loss, logits = self._loss_and_logits(batch)
        self._update_metrics(stage, loss, logits, batch[1])
        return {"logits": logits}

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluation_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        accuracy = self._log_epoch("val")
        if self.trainer.sanity_checking:  # a few batches of an untrained model are no one's best
            return
        self.val_acc_best.update(accuracy)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluation_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """The predicted class and the class probabilities of each image (plus its label, when known)."""
        images, labels = batch
        probabilities = self(images).softmax(dim=-1)
        return {"label": labels, "prediction": probabilities.argmax(dim=-1), "probabilities": probabilities}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer_class = OPTIMIZERS[self.hparams.optimizer]
        # Adam divides by sqrt(v) + eps; in float16 weights (`--trainer.precision 16-true`) the default eps of 1e-8
        # rounds to 0 and the first zero gradient makes the loss nan. The smallest normal number of the weights'
        # dtype is 1e-8 or less for every other dtype, so only float16 changes (to 6.1e-5).
        eps = max(1e-8, torch.finfo(self.dtype).tiny)
        # The fused implementation updates all parameters in one kernel: the same algorithm, fewer Python steps.
        optimizer = optimizer_class(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, eps=eps, fused=True
        )
        if self.hparams.lr_schedule == "constant":
            return {"optimizer": optimizer}
        scheduler = lr_scheduler(optimizer, self.hparams.lr_schedule, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, steps: float) -> torch.optim.lr_scheduler.LRScheduler:
    """The `one_cycle` or `cosine` schedule over a fit of `steps` optimizer steps, peaking at the optimizer's lr."""
    if steps == float("inf"):
        raise ArgumentError(
            f"lr_schedule={schedule} spans the whole fit, which has no end here: "
            "pass --trainer.max_epochs N (or --trainer.max_steps N), or --model.lr_schedule constant"
        )
    if schedule == "one_cycle":
        peak = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=int(steps))
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(steps))
