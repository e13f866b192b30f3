"""Test accuracy and wall time of the presets in configs/, over several seeds, measured on this machine.

Each run is `python -m mnist_lightning fit --config configs/<preset>.yaml --seed_everything <seed>` in its own
process and its own scratch folder, timed from launch to exit (start-up, data loading, training, validation
every epoch, checkpoints, dashboards and the test of the best checkpoint, which is chosen on validation accuracy
only). Writes a Markdown table and a JSON file (with the machine's description) under benchmarks/results/.

    python benchmarks/accuracy.py                          # `make bench-accuracy`: seed, fast, strong × 3 seeds
    python benchmarks/accuracy.py --presets fast --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench import REPO_ROOT, RESULTS_DIR, write_report

PRESETS = ("seed", "fast", "strong")


def fit_command(preset: str, seed: int, extra: list[str]) -> list[str]:
    config = REPO_ROOT / "configs" / f"{preset}.yaml"
    return [sys.executable, "-m", "mnist_lightning", "fit", f"--config={config}", f"--seed_everything={seed}", *extra]


def measure(preset: str, seed: int, extra: list[str]) -> dict:
    command = fit_command(preset, seed, ["--trainer.enable_progress_bar=false", *extra])
    with tempfile.TemporaryDirectory(prefix=f"accuracy-{preset}-") as scratch:
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=scratch, env=child_env())
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{preset} (seed {seed}) failed:\n{result.stderr[-3000:]}")
    return {
        "preset": preset,
        "seed": seed,
        "wall_seconds": seconds,
        "test_accuracy": float(re.search(r"Test accuracy\s+([0-9.]+)", result.stdout).group(1)),
        "val_accuracy": float(re.search(r"val accuracy\s+([0-9.]+)", result.stdout).group(1)),
    }


def child_env() -> dict[str, str]:
    # The CLI runs from a scratch folder; it must still import this checkout of the project.
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT)}


def preset_description(preset: str, extra: list[str]) -> dict:
    """Parameter count and epochs of a preset, from its YAML and the project's defaults."""
    from mnist_lightning import MNISTClassifier

    config = yaml.safe_load((REPO_ROOT / "configs" / f"{preset}.yaml").read_text())
    epochs = config.get("trainer", {}).get("max_epochs", 20)
    for argument in extra:  # overrides given to this script
        if argument.startswith("--trainer.max_epochs="):
            epochs = int(argument.split("=", 1)[1])
    model = MNISTClassifier(**config.get("model", {}))
    return {"parameters": sum(parameter.numel() for parameter in model.parameters()), "epochs": epochs}


def summarize(runs: list[dict], extra: list[str]) -> dict[str, dict]:
    summary = {}
    for preset in dict.fromkeys(run["preset"] for run in runs):
        mine = [run for run in runs if run["preset"] == preset]
        accuracies = [run["test_accuracy"] for run in mine]
        wall = [run["wall_seconds"] for run in mine]
        summary[preset] = {
            **preset_description(preset, extra),
            "seeds": [run["seed"] for run in mine],
            "wall_seconds_median": statistics.median(wall),
            "wall_seconds_min": min(wall),
            "wall_seconds_max": max(wall),
            "test_accuracies": accuracies,
            "test_accuracy_mean": statistics.mean(accuracies),
            "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "val_accuracy_mean": statistics.mean(run["val_accuracy"] for run in mine),
        }
    return summary


def markdown_table(summary: dict[str, dict]) -> str:
    lines = [
        "| config | parameters | epochs | wall time, median (min–max) | test accuracy, mean ± std | seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for preset, row in summary.items():
        lines.append(
            f"| configs/{preset}.yaml | {row['parameters']:,} | {row['epochs']} | "
            f"{row['wall_seconds_median']:.1f} s ({row['wall_seconds_min']:.1f}–{row['wall_seconds_max']:.1f}) | "
            f"{100 * row['test_accuracy_mean']:.2f} ± {100 * row['test_accuracy_std']:.2f} % | "
            f"{', '.join(map(str, row['seeds']))} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for the JSON and Markdown")
    args, extra = parser.parse_known_args(argv)  # the rest goes to every fit, e.g. --trainer.max_epochs=1
    sys.path.insert(0, str(REPO_ROOT))

    runs = []
    for seed in args.seeds:
        for preset in args.presets:
            runs.append(measure(preset, seed, extra))
            run = runs[-1]
            print(f"{preset} seed {seed}: {run['test_accuracy']:.4f} in {run['wall_seconds']:.1f} s", file=sys.stderr)
    summary = summarize(runs, extra)
    return write_report("accuracy", argv, {"summary": summary, "runs": runs}, markdown_table(summary), args.output)


if __name__ == "__main__":
    main()
