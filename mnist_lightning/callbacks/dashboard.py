"""`Dashboard`: TensorBoard panels that show what the model learned, in one Lightning callback.

One callback rather than one per panel: Lightning calls every hook of every callback on every step, and seven
callbacks cost ~4 % of an epoch of the seed model before drawing anything. The dashboard calls each hook of only the
panels that use it (`mnist_lightning.callbacks.panels`), so its per-step cost is one addition. Each panel has its own
switch (`--dashboard.histograms false`, or `dashboard: {histograms: false}` in YAML).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import lightning as L

from mnist_lightning.callbacks import panels

# The Callback hooks that some panel uses; the dashboard forwards each to the panels that override it.
HOOKS = (
    "setup",
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_epoch_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "on_validation_epoch_start",
    "on_validation_batch_end",
    "on_validation_epoch_end",
    "on_test_start",
    "on_test_batch_end",
    "on_test_epoch_end",
)


class Dashboard(L.Callback):
    """What the model learned, in TensorBoard, at epoch ends only and from global rank 0 only.

    The confusion matrices and the most confident mistakes are also saved as PNG files in the run folder, with a
    CSV logger too; the other panels need a TensorBoard logger. Without a logger it draws nothing.

    Args:
        samples: a labelled grid of training images, once when training starts (`samples/train`).
        confusion_matrix: the validation confusion matrix after each epoch as a heatmap (`confusion_matrix/val`),
            the test one as a labelled figure (`confusion_matrix/test`); PNG files of the test set and of the
            last validation epoch.
        misclassified: the test images the model got most confidently wrong (`misclassified/test`).
        first_layer: each first-layer unit's weights as an image after each epoch (`weights/first_layer`).
        histograms: every layer's weights and biases after each epoch (`parameters/...`).
        throughput: training images per second of each epoch, validation excluded (`train/samples_per_sec`).
        hparams: the HPARAMS tab: the run's hyperparameters beside `val/acc_best` and `test/acc`.
        grid_size: images in the sample and mistake grids; units in the first-layer grid.
    """

    def __init__(
        self,
        samples: bool = True,
        confusion_matrix: bool = True,
        misclassified: bool = True,
        first_layer: bool = True,
        histograms: bool = True,
        throughput: bool = True,
        hparams: bool = True,
        grid_size: int = 32,
    ) -> None:
        switched = [
            (samples, lambda: panels.Samples(grid_size)),
            (confusion_matrix, panels.ConfusionMatrix),
            (misclassified, lambda: panels.Mistakes(grid_size)),
            (first_layer, lambda: panels.FirstLayer(grid_size)),
            (histograms, panels.Histograms),
            (throughput, panels.Throughput),
            (hparams, panels.Hparams),
        ]
        self.panels: list[L.Callback] = [make() for on, make in switched if on]
        self.hooks = {
            hook: [getattr(p, hook) for p in self.panels if getattr(type(p), hook) is not getattr(L.Callback, hook)]
            for hook in HOOKS
        }
        self.noted_missing_tensorboard = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for hook in self.hooks["setup"]:
            hook(trainer, pl_module, stage)
        if panels.png_folder(trainer) and not panels.writer(trainer) and not self.noted_missing_tensorboard:
            self.noted_missing_tensorboard = True
            print(
                "note: the dashboard's TensorBoard panels (samples, weights, histograms, HPARAMS) need "
                "--trainer.logger TensorBoardLogger; its PNG figures are saved to the run folder",
                file=sys.stderr,
            )


def _forwarder(hook: str) -> Callable[..., None]:
    def forward(self: Dashboard, *args, **kwargs) -> None:
        for method in self.hooks[hook]:
            method(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = hook
    return forward


for _hook in HOOKS[1:]:
    setattr(Dashboard, _hook, _forwarder(_hook))
