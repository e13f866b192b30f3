"""Lightning's own cost per training step, apart from any arithmetic: the floor under `fit`'s epoch time.

A one-weight model (its arithmetic takes microseconds) is trained for the same number of steps three ways,
alternating in one process, so that the machine's drifting speed hits all three alike; each takes its input from
the same kind of DataLoader:

1. `plain-loop`: zero_grad, forward, backward and a fused Adam step in a Python loop.
2. `lightning`: a `Trainer` with logger, checkpoints, progress bar, model summary and validation off, and the
   project's no-cost profiler; the module's `training_step` returns the loss (automatic optimization).
3. `lightning-manual`: the same with manual optimization (the step calls the optimizer itself), which skips the
   loss closure, but refuses `--trainer.gradient_clip_val` and `--trainer.accumulate_grad_batches`.

Reported: microseconds per step of each, and what Lightning adds per step over the plain loop, also times the
550 training steps of an epoch of the seed configuration (compare with the raw loop's epoch from `make bench`).
Writes Markdown and JSON under benchmarks/results/.

    python benchmarks/step_floor.py --steps 3000 --repeats 5     # about 30 seconds on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

from bench import BARE_TRAINER, REPO_ROOT, RESULTS_DIR, write_report

SEED_STEPS_PER_EPOCH = 550  # 55,000 training images in batches of 100


def one_input_per_step(steps: int):
    import torch
    from torch.utils.data import DataLoader

    return DataLoader([torch.ones(1, 1)] * steps, batch_size=None)


def plain_loop_seconds(steps: int) -> float:
    import torch

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    start = time.perf_counter()
    for inputs in one_input_per_step(steps):
        optimizer.zero_grad()
        model(inputs).sum().backward()
        optimizer.step()
    return time.perf_counter() - start


def lightning_seconds(steps: int, manual: bool) -> float:
    import lightning as L
    import torch

    from mnist_lightning.cli import NullProfiler

    class OneWeight(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)
            self.automatic_optimization = not manual

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
            loss = self.linear(batch).sum()
            if self.automatic_optimization:
                return loss
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return None

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), fused=True)

        def on_train_epoch_start(self) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self) -> None:
            self.seconds = time.perf_counter() - self.start

    trainer = L.Trainer(max_epochs=1, profiler=NullProfiler(), **BARE_TRAINER)
    model = OneWeight()
    trainer.fit(model, train_dataloaders=one_input_per_step(steps))
    return model.seconds


def markdown_table(summary: dict[str, float], floor: dict[str, float]) -> str:
    lines = ["| loop | µs per step, median |", "| --- | --- |"]
    lines += [f"| {kind} | {microseconds:.0f} |" for kind, microseconds in summary.items()]
    lines.append("")
    lines += [
        f"- {kind} adds **{microseconds:.0f} µs** per step to the plain loop: "
        f"{microseconds * SEED_STEPS_PER_EPOCH / 1e6:.3f} s per epoch of the seed configuration"
        for kind, microseconds in floor.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements of each loop, alternating")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for the JSON and Markdown")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    import lightning  # noqa: F401  (imported first, as in `fit`: it changes how torch asks about GPUs)

    from mnist_lightning.cli import silence_third_party_noise, stop_probing_for_nvml_without_gpus

    silence_third_party_noise()
    stop_probing_for_nvml_without_gpus()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # each Trainer would print its devices
    loops = {
        "plain-loop": plain_loop_seconds,
        "lightning": lambda steps: lightning_seconds(steps, manual=False),
        "lightning-manual": lambda steps: lightning_seconds(steps, manual=True),
    }
    lightning_seconds(100, manual=False)  # warm-up: first-call costs of Lightning and the optimizer
    seconds: dict[str, list[float]] = {kind: [] for kind in loops}
    for _ in range(args.repeats):
        for kind, measure in loops.items():
            seconds[kind].append(measure(args.steps))
    summary = {kind: statistics.median(values) / args.steps * 1e6 for kind, values in seconds.items()}
    floor = {kind: summary[kind] - summary["plain-loop"] for kind in loops if kind != "plain-loop"}
    results = {"steps": args.steps, "repeats": args.repeats, "microseconds_per_step": summary, "added": floor}
    results["seconds"] = seconds
    return write_report("step_floor", argv, results, markdown_table(summary, floor), args.output)


if __name__ == "__main__":
    main()
