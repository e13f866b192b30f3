"""What one setting costs per epoch of `fit`, measured so that the machine's drifting speed cancels out.

On a shared machine the speed of the same program drifts by ±25 % over tens of seconds, more than most settings
cost, so separate runs with a setting on and off mostly measure the drift. Here each `fit` (the seed
configuration) alternates: the setting on in one epoch, off in the next; runs alternate which comes first. An
epoch is timed from its start to the next one's, so epoch-end work counts. Reported: the median epoch with the
setting on and off, and the median of paired ratios (an epoch with it on against the mean of its two neighbours
with it off). The first epoch (warm-up) is left out. Writes Markdown and JSON under benchmarks/results/.

Settings (`--toggle`):
- `panels`: every panel of the TensorBoard dashboard (mnist_lightning.callbacks.dashboard.Dashboard).
- `nvml-probe`: PYTORCH_NVML_BASED_CUDA_CHECK=1, which importing Lightning sets and the CLI clears on machines
  without a GPU (see mnist_lightning.defaults.stop_probing_for_nvml_without_gpus).

    python benchmarks/alternating.py --toggle panels --epochs 21 --repeats 4     # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, _project_fit, write_report


def switch_panels(trainer, on: bool) -> None:
    from mnist_lightning.callbacks.dashboard import Dashboard

    dashboard = next(callback for callback in trainer.callbacks if isinstance(callback, Dashboard))
    dashboard.panels = dict.fromkeys(dashboard.panels, on)


def switch_nvml_probe(trainer, on: bool) -> None:
    if on:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    else:
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


TOGGLES = {"panels": switch_panels, "nvml-probe": switch_nvml_probe}


def run_child(toggle: str, epochs: int, seed: int, data_dir: str, first_on: bool) -> dict:
    import lightning as L

    settings_on: list[bool] = []

    class Alternate(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            on = (trainer.current_epoch % 2 == 0) == first_on
            TOGGLES[toggle](trainer, on)
            settings_on.append(on)

    epoch_seconds: list[float] = []
    _project_fit(epochs, seed, data_dir, epoch_seconds, ["--trainer.enable_progress_bar=false"], (Alternate(),))
    return {"seed": seed, "epoch_seconds": epoch_seconds, "on": settings_on}


def child_command(toggle: str, epochs: int, seed: int, data_dir: str, first_on: bool) -> list[str]:
    script = str(Path(__file__).resolve())
    first = "on" if first_on else "off"
    options = [f"--toggle={toggle}", f"--epochs={epochs}", f"--seed={seed}", f"--data-dir={data_dir}"]
    return [sys.executable, script, "--child", first, *options]


def summarize(runs: list[dict]) -> dict:
    on, off, paired = [], [], []
    for run in runs:
        seconds, settings_on = run["epoch_seconds"], run["on"]
        for epoch in range(1, len(seconds)):  # epoch 0 warms up
            (on if settings_on[epoch] else off).append(seconds[epoch])
            if settings_on[epoch] and 1 < epoch < len(seconds) - 1:
                paired.append(seconds[epoch] / ((seconds[epoch - 1] + seconds[epoch + 1]) / 2))
    return {
        "epochs_on": len(on),
        "epochs_off": len(off),
        "seconds_on_median": statistics.median(on),
        "seconds_off_median": statistics.median(off),
        "ratio_of_medians": statistics.median(on) / statistics.median(off),
        "paired_ratio_median": statistics.median(paired),
        "paired_ratio_quartiles": statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3,
    }


def markdown_table(toggle: str, summary: dict) -> str:
    quartiles = summary["paired_ratio_quartiles"]
    return "\n".join(
        [
            f"| {toggle} | epochs | s/epoch, median |",
            "| --- | --- | --- |",
            f"| on | {summary['epochs_on']} | {summary['seconds_on_median']:.3f} |",
            f"| off | {summary['epochs_off']} | {summary['seconds_off_median']:.3f} |",
            "",
            f"- on / off, ratio of medians: **{summary['ratio_of_medians']:.3f}×**",
            f"- on / mean of its two off neighbours, median of paired ratios: **{summary['paired_ratio_median']:.3f}×**"
            f" (quartiles {quartiles[0]:.3f}–{quartiles[2]:.3f})",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toggle", choices=list(TOGGLES), default="panels", help="the setting switched each epoch")
    parser.add_argument("--epochs", type=int, default=21, help="epochs per run, alternating the setting on and off")
    parser.add_argument("--repeats", type=int, default=4, help="runs; seeds 42, 43, ...; every other run starts off")
    parser.add_argument("--data-dir", default=None, help="MNIST data folder (default: the project's cache)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for the JSON and Markdown")
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from mnist_lightning.data.sources import default_data_dir, ensure_raw_files
    from mnist_lightning.datasets import DATASETS

    data_dir = args.data_dir or str(default_data_dir())
    if args.child:
        print(json.dumps(run_child(args.toggle, args.epochs, args.seed, data_dir, first_on=args.child == "on")))
        return {}

    ensure_raw_files(DATASETS["mnist"], Path(data_dir))
    runs = []
    for repeat in range(args.repeats):
        command = child_command(args.toggle, args.epochs, 42 + repeat, data_dir, first_on=repeat % 2 == 0)
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
        if result.returncode != 0:
            raise RuntimeError(f"run {repeat + 1} failed:\n{result.stderr[-3000:]}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"run {repeat + 1}/{args.repeats}: {[round(s, 3) for s in runs[-1]['epoch_seconds']]}", file=sys.stderr)
    summary = summarize(runs)
    results = {"toggle": args.toggle, "summary": summary, "runs": runs}
    table = markdown_table(args.toggle, summary)
    return write_report("alternating", argv, results, table, args.output, name=f"alternating-{args.toggle}")


if __name__ == "__main__":
    main()
