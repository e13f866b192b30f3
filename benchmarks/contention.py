"""Seconds per epoch of `fit` on a quiet machine and beside busy processes, with each thread choice, in one run.

A busy process is `python3 -c "while True: pass"`, which keeps one core busy as another user's job would. For each
preset, each load (0, 1, 2 busy processes) and each thread choice, one `fit` runs in a fresh process:

- `auto`: the project's default: threads follow what other processes leave free (mnist_lightning/threads.py,
  callbacks/threads.py);
- `1`: `OMP_NUM_THREADS=1`;
- `all`: `OMP_NUM_THREADS=<the CPUs this process may use>`: torch's own default, what `fit` did before.

The starting point (the seed script's per-sample pipeline, benchmarks/bench.py's `starting-point-published`) runs
beside the same loads, once, with torch's default threads. Reported: the median of each run's epochs after its first
(which pays one-off costs), and each condition against the same preset's quiet `all` (the default before) and quiet
`auto`. Writes Markdown and JSON under benchmarks/results/.

    python benchmarks/contention.py                      # about 10 minutes on 2 cores
    python benchmarks/contention.py --presets seed --loads 0 1 --choices auto all --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, write_report

# What one epoch of each preset is here: the strong preset's epochs are cut to 120 batches (of 469), so that its runs
# take seconds, as its validation is kept whole.
PRESETS = {
    "seed": ["--config=configs/seed.yaml"],
    "fast": ["--config=configs/fast.yaml"],
    "strong": ["--config=configs/strong.yaml", "--trainer.limit_train_batches=120"],
}
CHOICES = ("auto", "1", "all")
BUSY = [sys.executable, "-c", "while True: pass"]

CHILD = """
import json, sys, tempfile
sys.path.insert(0, "benchmarks")
from bench import timed_classifier
from mnist_lightning.cli import build_cli
seconds = []
with tempfile.TemporaryDirectory() as folder:
    args = [*sys.argv[1:], f"--trainer.default_root_dir={folder}", "--test_after_fit=false"]
    args += ["--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.enable_checkpointing=false"]
    build_cli(["fit", *args], timed_classifier(seconds))
import torch
print(json.dumps({"epoch_seconds": seconds, "threads_at_end": torch.get_num_threads()}))
"""


def usable_cpus() -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from mnist_lightning.threads import usable_cpus as cpus

    return cpus()


def run_fit(preset: str, choice: str, epochs: int, data_dir: str | None) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if choice != "auto":
        env["OMP_NUM_THREADS"] = str(usable_cpus()) if choice == "all" else choice
    args = [*PRESETS[preset], f"--trainer.max_epochs={epochs}"]
    args += [f"--data.data_dir={data_dir}"] if data_dir else []
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        raise RuntimeError(f"{preset}/{choice} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_starting_point(epochs: int, data_dir: str | None) -> dict:
    command = [sys.executable, "benchmarks/bench.py", "--child", "starting-point-published", f"--epochs={epochs}"]
    command += [f"--data-dir={data_dir}"] if data_dir else []
    command.append(f"--launched-at={time.time()}")
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"starting point failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def steady(epoch_seconds: list[float]) -> float:
    """The median epoch after the first (which pays one-off costs)."""
    return statistics.median(epoch_seconds[1:] or epoch_seconds)


def beside(load: int, measure: Callable[..., dict], *args: object) -> dict:
    """`measure(*args)` while `load` busy processes run."""
    busy = [subprocess.Popen(BUSY) for _ in range(load)]
    try:
        time.sleep(0.5 if busy else 0)  # running before the fit starts, as a neighbour would be
        return measure(*args)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed", "strong"], choices=list(PRESETS))
    parser.add_argument("--loads", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--choices", nargs="+", default=list(CHOICES), choices=CHOICES)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--starting-point-epochs", type=int, default=2, help="0 leaves the starting point out")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    options = parser.parse_args(argv)

    rows = []
    for preset in options.presets:
        for load in options.loads:
            for choice in options.choices:
                run = beside(load, run_fit, preset, choice, options.epochs, options.data_dir)
                rows.append({"pipeline": f"fit {preset}", "busy": load, "threads": choice, **run})
                print(f"fit {preset}, {load} busy, threads {choice}: {steady(run['epoch_seconds']):.3f} s/epoch")
        if options.starting_point_epochs:
            for load in options.loads:
                run = beside(load, run_starting_point, options.starting_point_epochs, options.data_dir)
                rows.append({"pipeline": "starting point", "busy": load, "threads": "default", **run})
                print(f"starting point, {load} busy: {steady(run['epoch_seconds']):.3f} s/epoch")
            options.starting_point_epochs = 0  # once, not per preset

    def quiet(pipeline: str, threads: str) -> float | None:
        match = [r for r in rows if r["pipeline"] == pipeline and r["busy"] == 0 and r["threads"] == threads]
        return steady(match[0]["epoch_seconds"]) if match else None

    lines = [
        "| pipeline | busy processes | threads | s/epoch (median after the first) | threads at the end | "
        "× its quiet `all` (the default before) | × its quiet `auto` |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        seconds = steady(row["epoch_seconds"])
        before = quiet(row["pipeline"], "all") or quiet(row["pipeline"], "default")
        auto = quiet(row["pipeline"], "auto")
        lines.append(
            f"| {row['pipeline']} | {row['busy']} | {row['threads']} | {seconds:.3f} | "
            f"{row.get('threads_at_end', '—')} | {f'{seconds / before:.2f}×' if before else '—'} | "
            f"{f'{seconds / auto:.2f}×' if auto else '—'} |"
        )
    load_now = os.getloadavg()
    lines += ["", f"Load average when it ended: {load_now[0]:.2f} {load_now[1]:.2f} {load_now[2]:.2f}."]
    write_report("contention", argv, {"rows": rows, "epochs": options.epochs}, "\n".join(lines), options.output)


if __name__ == "__main__":
    main()
