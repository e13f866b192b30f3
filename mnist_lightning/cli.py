"""The command line: `python -m mnist_lightning {fit,validate,test,predict}`, a LightningCLI.

Every constructor argument of `MNISTClassifier`, `MNISTDataModule` and `Trainer` is a flag
(`--model.hidden_sizes`, `--data.batch_size`, `--trainer.max_epochs`), and `--config FILE.yaml` takes them from YAML.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.predictions import PredictionWriter
from mnist_lightning.sources import DataError
from mnist_lightning.visuals import Dashboard


class MNISTLightningCLI(LightningCLI):
    """LightningCLI with the defaults this project's users expect, and a test of the best checkpoint after `fit`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint on the official test set (used by fit only).",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(TQDMProgressBar, "progress_bar")
        parser.add_lightning_class_args(Dashboard, "dashboard")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                # The metric name has a slash, which must not become a folder: spell the label out.
                "checkpoint.filename": "epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                # Since Lightning 2.6, `save_last=True` rewrites last.ckpt only in epochs that improve the monitored
                # metric; resuming needs the latest state, so a second callback without a monitor saves each epoch.
                "last_checkpoint.filename": "last",
                "last_checkpoint.monitor": None,
                "last_checkpoint.enable_version_counter": False,
                # Redrawing the bar after every step costs more than a training step of this small network.
                "progress_bar.refresh_rate": 50,
                "trainer.max_epochs": 20,
                "trainer.logger": lazy_instance(TensorBoardLogger, save_dir=".", default_hp_metric=False),
                "trainer.callbacks": [
                    {
                        "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                        "init_args": {"logging_interval": "epoch"},
                    }
                ],
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        # Lightning refuses a progress bar callback with enable_progress_bar=False; keep that flag working by
        # silencing the bar instead (refresh rate 0 disables it).
        if config.trainer.enable_progress_bar is False:
            config.trainer.enable_progress_bar = True
            config.progress_bar.refresh_rate = 0

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        assert isinstance(checkpoint, ModelCheckpoint)  # the parser always adds one
        best_path = checkpoint.best_model_path
        # Without a best checkpoint (fit stopped before validating), the weights in memory are tested.
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best_path or None)
        best_score = checkpoint.best_model_score
        self._print_fit_summary(best_path, None if best_score is None else float(best_score), results[0]["test/acc"])

    @rank_zero_only
    def _print_fit_summary(self, best_path: str, best_val_acc: float | None, test_acc: float) -> None:
        run_folder = Path(self.trainer.log_dir or ".")
        lines = []
        if best_path:
            lines.append(f"Best checkpoint   {best_path}")
        if best_val_acc is not None:
            lines.append(f"  val accuracy    {best_val_acc:.4f}")
        lines.append(f"Test accuracy     {test_acc:.4f}")
        lines.append(f"Run folder        {run_folder}")
        lines.append(f"TensorBoard       tensorboard --logdir {run_folder.parent}")
        if best_path:
            lines.append(
                f"Test it again     python -m mnist_lightning test --config {run_folder / 'config.yaml'} "
                f"--ckpt_path {best_path}"
            )
        print("\n" + "\n".join(lines))


def cli_main(args: ArgsType = None) -> MNISTLightningCLI | None:
    """Run the command line; `args` replaces `sys.argv[1:]` (a list of strings or a dict)."""
    try:
        return MNISTLightningCLI(MNISTClassifier, MNISTDataModule, seed_everything_default=42, args=args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
