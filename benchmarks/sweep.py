"""What a sweep costs and saves, on the shipped example (configs/sweep.yaml) or a shorter version of it.

1. `overhead`: the seconds a trial takes inside a sweep (Optuna's storage, the pruning callback, the HPARAMS, its
   own LightningCLI parse) against an in-process `fit` of the same configuration; pruning off, one worker.
2. `workers`: the wall time of the same sweep with `--workers 2` against `--workers 1` (each in a fresh folder and
   process), pruning off, so that both run the same number of epochs.
3. `pruning`: the wall time of the sweep with the example's median pruner against the same sweep without pruning.

Every sweep runs in a temporary folder; the report goes to benchmarks/results/ as Markdown and JSON.

    python benchmarks/sweep.py --trials 6 --max_epochs 2     # the shipped example, shortened
    python benchmarks/sweep.py --trials 20                   # configs/sweep.yaml as shipped (3 epochs a trial)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench import REPO_ROOT, RESULTS_DIR, write_report

NO_PRUNING = {"n_startup_trials": 10**6}  # the median pruner never prunes before this many trials complete


def write_sweep(folder: Path, pruner: dict | None) -> Path:
    config = yaml.safe_load((REPO_ROOT / "configs" / "sweep.yaml").read_text())
    config["fit"] = str(REPO_ROOT / "configs" / config["fit"])
    if pruner is not None:
        config["pruner"] = pruner
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def timed_sweep(pruner: dict | None, trials: int, workers: int, overrides: list[str]) -> tuple[float, list[dict]]:
    """Wall seconds of one sweep in a fresh folder and process, and its summary rows."""
    import csv

    with tempfile.TemporaryDirectory() as folder:
        config = write_sweep(Path(folder), pruner)
        command = [sys.executable, "-m", "mnist_lightning", "sweep", f"--config={config}", f"--n_trials={trials}"]
        command += [f"--workers={workers}", "--trainer.enable_progress_bar=false", *overrides]
        start = time.perf_counter()
        subprocess.run(
            command, cwd=folder, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        )
        seconds = time.perf_counter() - start
        with open(Path(folder) / "lightning_logs" / "sweep" / "summary.csv") as file:
            return seconds, list(csv.DictReader(file))


def in_process_fit_seconds(overrides: list[str], repeats: int) -> list[float]:
    """Seconds of `fit` of the example's base config with its first choices, in this process, after a warm-up."""
    sys.path.insert(0, str(REPO_ROOT))
    from mnist_lightning.cli import build_cli

    config = yaml.safe_load((REPO_ROOT / "configs" / "sweep.yaml").read_text())
    times = []
    with tempfile.TemporaryDirectory() as folder:
        args = ["fit", f"--config={REPO_ROOT / 'configs' / config['fit']}", "--test_after_fit=false", *overrides]
        args += ["--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={folder}"]
        for _ in range(repeats + 1):
            start = time.perf_counter()
            build_cli(args)
            times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--max_epochs", type=int, help="override the fast preset's 3 epochs")
    args = parser.parse_args()
    overrides = [f"--trainer.max_epochs={args.max_epochs}"] if args.max_epochs else []

    one_worker, rows = timed_sweep(NO_PRUNING, args.trials, 1, overrides)
    trial_seconds = [float(row["seconds"]) for row in rows if row["state"] == "COMPLETE"]
    # The first trials' values, as a fit of their own (the same work a trial does, without the sweep around it).
    first = rows[0]
    fit_overrides = [*overrides, f"--model.hidden_sizes={first['model.hidden_sizes']}"]
    fit_overrides += [f"--model.lr={first['model.lr']}", f"--data.batch_size={first['data.batch_size']}"]
    fit_seconds = in_process_fit_seconds(fit_overrides, repeats=2)
    two_workers, _ = timed_sweep(NO_PRUNING, args.trials, 2, overrides)
    pruned, pruned_rows = timed_sweep(None, args.trials, 1, overrides)

    results = {
        "trials": args.trials,
        "first_trial_seconds": float(first["seconds"]),
        "fit_of_first_trial_seconds": statistics.median(fit_seconds),
        "trial_seconds_median": statistics.median(trial_seconds),
        "sweep_1_worker_seconds": one_worker,
        "sweep_2_workers_seconds": two_workers,
        "speedup_2_workers": one_worker / two_workers,
        "sweep_pruned_seconds": pruned,
        "pruned_trials": sum(row["state"] == "PRUNED" for row in pruned_rows),
        "pruning_saves": 1 - pruned / one_worker,
    }
    lines = [
        f"# Sweep benchmark: {args.trials} trials of configs/sweep.yaml {' '.join(overrides)}",
        "",
        "| measure | value |",
        "|---|---|",
        *(
            f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in results.items()
        ),
    ]
    write_report("sweep", None, results, "\n".join(lines), RESULTS_DIR)


if __name__ == "__main__":
    main()
