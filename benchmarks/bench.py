"""Seconds per epoch of `fit` against the starting point and a raw PyTorch loop, measured in one run on this machine.

The starting point is a short script (784-100-10 MLP, Adam lr 1e-3, batch 100, 20 epochs) that reads MNIST through
torchvision with a per-sample `ToTensor`, trains on all 60,000 training images and evaluates once, after training.
It is measured two ways, because its epoch and `fit`'s epoch do different work:

1. `starting-point-published`: its loop as published. An epoch is training on the 60,000 images, nothing else;
   the one evaluation after training is outside the timed epochs (it is run here on the official test set, for
   the test accuracy column; the published script evaluated on its training images).
2. `starting-point-on-split`: the same per-sample pipeline doing what `fit` does each epoch: training on the
   project's 55,000 images, then validation on the 5,000 held out. The like-for-like comparison.
3. `raw-loop`: a plain PyTorch loop over data held in one tensor, on the same split with validation every epoch
   (the floor for a Python training loop).
4. `project`: `python -m mnist_lightning fit` with configs/seed.yaml and its default logging, checkpoints and
   TensorBoard panels; an epoch is training plus validation, timed from its start to the next one's.
5. `project-no-visuals` (only with `--kinds`): the same with every panel of the Dashboard (callbacks/dashboard.py) off.
   Separate runs drift more than the panels cost: benchmarks/alternating.py measures them properly.
6. `lightning-bare` (only with `--kinds`): the project's model and data in a plain `Trainer` with logger,
   checkpoints, progress bar and model summary off: Lightning's own per-step cost.

Every kind is the same network and optimizer. Every run is a separate process; the kinds alternate, repeated, each
repeat starting one kind later. Ratios are given of the median epochs and of the fastest ones: on a shared machine
whose speed drifts by ±25 % over tens of seconds, the fastest epoch of each kind is the one least slowed by its
neighbours (the reasoning of `timeit`'s minimum). Writes a Markdown table (which says what each kind's epoch
contains) and a JSON file (with the machine's description) under benchmarks/results/.

    python benchmarks/bench.py --epochs 20 --repeats 3     # `make bench`, about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

KINDS = ("starting-point-published", "starting-point-on-split", "raw-loop", "project")
EXTRA_KINDS = ("project-no-visuals", "lightning-bare")
# What one timed epoch of each kind contains: the comparison is only honest with this next to the numbers.
EPOCH_CONTENTS = {
    "starting-point-published": "training on 60,000 images; no evaluation between epochs (as published)",
    "starting-point-on-split": "training on 55,000 images + validation on 5,000 (per-sample `ToTensor` pipeline)",
    "raw-loop": "training on 55,000 images + validation on 5,000 (plain loop over tensors)",
    "project": "training on 55,000 images + validation on 5,000, with logging, checkpoints and panels (`fit`)",
    "project-no-visuals": "as `project`, with the TensorBoard panels off",
    "lightning-bare": "training on 55,000 images + validation on 5,000 in a bare `Trainer`",
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# A Trainer with everything a user would see switched off: what Lightning's loop costs by itself.
BARE_TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------
# Children: each trains, then prints one JSON line.


def run_child(kind: str, epochs: int, seed: int, data_dir: str, launched_at: float) -> dict:
    import torch

    from mnist_lightning.callbacks.dashboard import Dashboard

    epoch_seconds: list[float] = []
    if kind == "lightning-bare":
        test_accuracy, first_epoch_start = _bare_lightning_fit(epochs, seed, data_dir, epoch_seconds)
    elif kind.startswith("project"):
        extra = [f"--dashboard.{panel}=false" for panel in Dashboard().panels] if kind == "project-no-visuals" else []
        test_accuracy, first_epoch_start = _project_fit(epochs, seed, data_dir, epoch_seconds, extra)
    else:
        torch.manual_seed(seed)
        loops = {
            "starting-point-published": lambda data_dir: _starting_point_loaders(data_dir, published=True),
            "starting-point-on-split": _starting_point_loaders,
            "raw-loop": _in_memory_batches,
        }
        train, val, test = loops[kind](data_dir)
        model = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        first_epoch_start = time.time()
        for _ in range(epochs):
            start = time.perf_counter()
            model.train()
            for images, labels in train():
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(images.view(-1, 784)), labels).backward()
                optimizer.step()
            if val is not None:
                _accuracy(model, val())
            epoch_seconds.append(time.perf_counter() - start)
        test_accuracy = _accuracy(model, test())
    return {
        "kind": kind,
        "seed": seed,
        "epoch_seconds": epoch_seconds,
        "test_accuracy": test_accuracy,
        "startup_seconds": first_epoch_start - launched_at,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _accuracy(model, batches) -> float:
    import torch

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            correct += (model(images.view(-1, 784)).argmax(1) == labels).sum().item()
            total += len(labels)
    return correct / total


def _starting_point_loaders(data_dir: str, published: bool = False):
    """The starting point's per-sample `ToTensor` pipeline: (train, validation, test) batch factories.

    On the project's 55,000 / 5,000 split with validation every epoch; or, `published`, as the script was published:
    training on all 60,000 training images and no validation (None), the test set evaluated once at the end.
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from mnist_lightning.data.module import fixed_split

    train_full = datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor())
    test = DataLoader(datasets.MNIST(data_dir, train=False, transform=transforms.ToTensor()), batch_size=100)
    if published:
        train_batches = DataLoader(train_full, batch_size=100, shuffle=True)
        return (lambda: train_batches), None, (lambda: test)
    train_index, val_index = fixed_split(len(train_full), 5000)
    train_batches = DataLoader(Subset(train_full, train_index.tolist()), batch_size=100, shuffle=True)
    val_batches = DataLoader(Subset(train_full, val_index.tolist()), batch_size=100)
    return (lambda: train_batches), (lambda: val_batches), (lambda: test)


def _in_memory_batches(data_dir: str):
    import torch

    from mnist_lightning import MNISTDataModule
    from mnist_lightning.net import Normalize

    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup("fit")
    datamodule.setup("test")

    normalize = Normalize(datamodule.mean, datamodule.std)

    def as_tensors(dataset):  # normalized once: the raw loop's network has no Normalize of its own
        return normalize(datamodule.pixels(dataset.images)), dataset.labels

    def batches(images, labels, shuffle: bool = False):
        order = torch.randperm(len(labels)) if shuffle else torch.arange(len(labels))
        for start in range(0, len(labels), 100):
            index = order[start : start + 100]
            yield images[index], labels[index]

    train, val, test = (as_tensors(d) for d in (datamodule.train_set, datamodule.val_set, datamodule.test_set))
    return (lambda: batches(*train, shuffle=True)), (lambda: batches(*val)), (lambda: batches(*test))


def timed_classifier(epoch_seconds: list[float]) -> type:
    """MNISTClassifier appending each training epoch's seconds, from its start to the next epoch's start (or the end
    of training): validation, every callback's epoch-end work and the checkpoints are included.

    The clock is in the model's own hooks, which Lightning calls anyway: a timing callback would add Lightning's
    per-callback dispatch, about 30 µs per training step, which a user's `fit` does not pay.
    """
    from mnist_lightning import MNISTClassifier  # imported in the children only

    class TimedClassifier(MNISTClassifier):
        first_start = 0.0

        def on_train_epoch_start(self) -> None:
            now = time.perf_counter()
            if self.first_start:
                epoch_seconds.append(now - self.start)
            else:
                self.first_start = time.time()
            self.start = now

        def on_train_end(self) -> None:
            epoch_seconds.append(time.perf_counter() - self.start)

    return TimedClassifier


def _bare_lightning_fit(epochs: int, seed: int, data_dir: str, epoch_seconds: list[float]) -> tuple[float, float]:
    import lightning as L

    from mnist_lightning import MNISTDataModule

    L.seed_everything(seed, verbose=False)
    model = timed_classifier(epoch_seconds)()
    trainer = L.Trainer(max_epochs=epochs, **BARE_TRAINER)
    trainer.fit(model, MNISTDataModule(data_dir=data_dir))
    test_accuracy = trainer.test(model, datamodule=trainer.datamodule, verbose=False)[0]["test/acc"]
    return test_accuracy, model.first_start


def _project_fit(
    epochs: int, seed: int, data_dir: str, epoch_seconds: list[float], extra_args: list[str], callbacks: tuple = ()
) -> tuple[float, float]:
    import tempfile

    from mnist_lightning.cli import build_cli

    config = REPO_ROOT / "configs" / "seed.yaml"
    with tempfile.TemporaryDirectory() as workdir:
        args = ["fit", f"--config={config}", f"--trainer.max_epochs={epochs}", f"--seed_everything={seed}"]
        args += [f"--data.data_dir={data_dir}", *extra_args]
        args.append(f"--trainer.default_root_dir={workdir}")
        cli = build_cli(args, timed_classifier(epoch_seconds), trainer_defaults={"callbacks": list(callbacks)})
        test_accuracy = cli.trainer.callback_metrics["test/acc"].item()
    return test_accuracy, cli.model.first_start


# ---------------------------------------------------------------------------------------------------------------
# Parent: schedule, summarize, write.


def child_command(kind: str, epochs: int, seed: int, data_dir: str) -> list[str]:
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--child", kind, f"--epochs={epochs}", f"--seed={seed}", f"--data-dir={data_dir}"]


def measure(kind: str, epochs: int, seed: int, data_dir: str) -> dict:
    command = [*child_command(kind, epochs, seed, data_dir), f"--launched-at={time.time()}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict[str, dict]:
    summary = {}
    for kind in dict.fromkeys(run["kind"] for run in runs):
        mine = [run for run in runs if run["kind"] == kind]
        # The first epoch pays one-off costs (allocator warm-up, lazy imports): it is reported apart.
        steady = [seconds for run in mine for seconds in run["epoch_seconds"][1:]] or [
            run["epoch_seconds"][0] for run in mine
        ]
        summary[kind] = {
            "epoch_seconds_median": statistics.median(steady),
            "epoch_seconds_min": min(steady),
            "epoch_seconds_max": max(steady),
            "first_epoch_seconds_median": statistics.median(run["epoch_seconds"][0] for run in mine),
            "test_accuracies": [run["test_accuracy"] for run in mine],
            "test_accuracy_mean": statistics.mean(run["test_accuracy"] for run in mine),
            "startup_seconds_median": statistics.median(run["startup_seconds"] for run in mine),
            "peak_rss_mib_max": max(run["peak_rss_mib"] for run in mine),
        }
    return summary


def ratios(summary: dict[str, dict], statistic: str = "epoch_seconds_median") -> dict[str, float]:
    if "project" not in summary:
        return {}
    project = summary["project"][statistic]
    return {f"project / {kind}": project / row[statistic] for kind, row in summary.items() if kind != "project"}


def markdown_table(summary: dict[str, dict]) -> str:
    lines = [
        "| pipeline | s/epoch, median (min–max) | first epoch s | test accuracy (mean) | start-up s | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, row in summary.items():
        lines.append(
            f"| {kind} | {row['epoch_seconds_median']:.3f} ({row['epoch_seconds_min']:.3f}–"
            f"{row['epoch_seconds_max']:.3f}) | {row['first_epoch_seconds_median']:.3f} | "
            f"{row['test_accuracy_mean']:.4f} | {row['startup_seconds_median']:.1f} | {row['peak_rss_mib_max']:.0f} |"
        )
    lines += ["", "What one epoch is:", ""]
    lines += [f"- {kind}: {EPOCH_CONTENTS[kind]}" for kind in summary]
    lines.append("")
    fastest = ratios(summary, "epoch_seconds_min")
    lines += [
        f"- {name}: **{value:.2f}×** seconds per epoch (medians); {fastest[name]:.2f}× (fastest epochs)"
        for name, value in ratios(summary).items()
    ]
    return "\n".join(lines)


def machine_description() -> dict:
    import torch

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def write_report(
    script: str, argv: list[str] | None, results: dict, table: str, output: Path, name: str | None = None
) -> dict:
    """Write `results` as JSON and `table` as Markdown under `output` (`<name>-<time>.json`, `.md`; the name is the
    script's by default), both with the command that made them and the machine's description; print the table;
    return the whole report."""
    command = " ".join(["python", f"benchmarks/{script}.py", *(argv if argv is not None else sys.argv[1:])])
    report = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        **results,
    }
    output.mkdir(parents=True, exist_ok=True)
    stem = output / f"{name or script.replace('_', '-')}-{datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(f"`{command}` on {report['machine']['cpu']}\n\n{table}\n")
    print(table)
    print(f"\nwritten: {stem}.json, {stem}.md")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per run (the first is reported apart)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pipeline, alternating; seeds 42, 43, ...")
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None, help="MNIST data folder (default: the project's cache)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS + EXTRA_KINDS, default=list(KINDS))
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for the JSON and Markdown")
    parser.add_argument("--child", choices=KINDS + EXTRA_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from mnist_lightning.data.sources import default_data_dir, ensure_raw_files
    from mnist_lightning.datasets import DATASETS

    data_dir = args.data_dir or str(default_data_dir())
    if args.child:
        print(json.dumps(run_child(args.child, args.epochs, args.seed, data_dir, args.launched_at)))
        return {}

    ensure_raw_files(DATASETS["mnist"], Path(data_dir))
    runs = []
    for repeat in range(args.repeats):
        # Each repeat starts one kind later, so that no kind always follows the same one: this machine's speed
        # drifts over tens of seconds, and a fixed order would give one kind the same neighbour's aftermath.
        shift = repeat % len(args.kinds)
        for kind in args.kinds[shift:] + args.kinds[:shift]:
            runs.append(measure(kind, args.epochs, 42 + repeat, data_dir))
            print(f"run {repeat + 1}/{args.repeats} {kind}: {runs[-1]['epoch_seconds']}", file=sys.stderr)
    summary = summarize(runs)
    return write_report(
        "bench",
        argv,
        {
            "epochs": args.epochs,
            "repeats": args.repeats,
            "summary": summary,
            "ratios": ratios(summary),
            "ratios_of_fastest_epochs": ratios(summary, "epoch_seconds_min"),
            "runs": runs,
        },
        markdown_table(summary),
        args.output,
    )


if __name__ == "__main__":
    main()
