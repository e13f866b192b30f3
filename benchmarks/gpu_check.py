"""The GPU check: the seed and fast presets fitted with 32-true, 16-mixed and bf16-mixed precision on one device.

For each fit it records every training epoch's seconds (validation and checkpoints included), the test accuracy of
the best checkpoint, where the data module keeps the splits, and what crosses from the host to the device during
one profiled training epoch (the second; the data should already live in device memory, so only a few scalars
should cross). Writes a Markdown table and a JSON file under benchmarks/results/ (or --output).

    bash benchmarks/gpu_check.sh                     # on a GPU machine: installs what it carries, then runs this
    python benchmarks/gpu_check.py --accelerator cpu --presets seed --precisions 32-true --epochs 2   # a dry run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, timed_classifier, write_report

PRESETS = ("seed", "fast")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
PROFILED_EPOCH = 1


def host_to_device_copies(profile) -> tuple[int, int]:
    """(count, bytes) of the host-to-device copies a torch.profiler run saw."""
    copies = [event for event in profile.events() if "HtoD" in event.name]
    return len(copies), sum(getattr(event, "device_memory_usage", 0) or 0 for event in copies)


def profiled_classifier(epoch_seconds: list[float], copies: dict) -> type:
    """The timed classifier, with torch.profiler running through training epoch PROFILED_EPOCH."""
    import torch

    class ProfiledClassifier(timed_classifier(epoch_seconds)):
        profile = None

        def on_train_epoch_start(self) -> None:
            super().on_train_epoch_start()
            if self.current_epoch == PROFILED_EPOCH:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profile = torch.profiler.profile(activities=activities)
                self.profile.__enter__()

        def on_train_epoch_end(self) -> None:
            super().on_train_epoch_end()
            if self.profile is not None:
                self.profile.__exit__(None, None, None)
                copies["count"], copies["bytes"] = host_to_device_copies(self.profile)
                self.profile = None

    return ProfiledClassifier


def fit(preset: str, precision: str, accelerator: str, epochs: int | None) -> dict:
    from mnist_lightning.cli import build_cli

    epoch_seconds: list[float] = []
    copies: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        args = ["fit", f"--config={REPO_ROOT / 'configs' / f'{preset}.yaml'}", f"--trainer.precision={precision}"]
        args += [f"--trainer.accelerator={accelerator}", "--trainer.devices=1", "--trainer.enable_progress_bar=false"]
        args += [f"--trainer.default_root_dir={workdir}"]
        if epochs is not None:
            args.append(f"--trainer.max_epochs={epochs}")
        cli = build_cli(args, profiled_classifier(epoch_seconds, copies))
        test_accuracy = cli.trainer.callback_metrics["test/acc"].item()
    # The first epoch pays for warm-up, the profiled one for the profiler.
    steady = [seconds for epoch, seconds in enumerate(epoch_seconds) if epoch not in (0, PROFILED_EPOCH)]
    return {
        "preset": preset,
        "precision": precision,
        "trainer_precision": cli.trainer.precision,
        "device": str(cli.trainer.strategy.root_device),
        "data_device": str(cli.datamodule.train_set.images.device),
        "epoch_seconds": epoch_seconds,
        "epoch_seconds_median": statistics.median(steady or epoch_seconds),
        "test_accuracy": test_accuracy,
        "htod_copies_in_profiled_epoch": copies.get("count"),
        "htod_bytes_in_profiled_epoch": copies.get("bytes"),
    }


def markdown_table(runs: list[dict]) -> str:
    lines = [
        "| preset | precision | device | data on | s/epoch (median) | test accuracy | host→device copies in epoch 2 |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for run in runs:
        copied = "n/a" if run["htod_copies_in_profiled_epoch"] is None else f"{run['htod_copies_in_profiled_epoch']}"
        lines.append(
            f"| {run['preset']} | {run['trainer_precision']} | {run['device']} | {run['data_device']} "
            f"| {run['epoch_seconds_median']:.3f} | {run['test_accuracy']:.4f} | {copied} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--epochs", type=int, default=None, help="override each preset's max_epochs")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    runs = []
    for preset in args.presets:
        for precision in args.precisions:
            runs.append(fit(preset, precision, args.accelerator, args.epochs))
            print(markdown_table(runs[-1:]), flush=True)  # a partial result survives a timeout
    return write_report("gpu_check", argv, {"runs": runs}, markdown_table(runs), args.output, name="gpu-check")


if __name__ == "__main__":
    main()
