"""MNIST as a folder of PNG files against the built-in IDX pipeline: the cost of reading it once, and the same test
accuracy from the same images, in one run.

1. Writes MNIST's 70,000 images as PNG folders: `ROOT/train/<digit>/<index>.png` (the 60,000 training images) and
   `ROOT/test/<digit>/<index>.png` (the 10,000 test images), `<index>` being the image's place in its IDX file.
2. Starts `MNISTDataModule(image_folder=ROOT, data_dir=<a new folder>, val_size=5000)` (then `setup("fit")`) in a
   fresh process twice: the first reads every PNG and builds the cache, the second loads it. Each reports its
   seconds (imports apart), its peak memory (`resource.getrusage(...).ru_maxrss`) and the read's own peak over the
   memory held before it (Linux's VmHWM, reset after the imports through /proc/self/clear_refs; where that fails,
   ru_maxrss's growth over the imports' peak), set against the size of the cached tensors (target: no more than
   about twice). The PNGs were just written, so they are read from the OS page cache: a cold disk would add its
   reading time.
3. Checks that the cache holds the very images and labels of the IDX files (by `<index>`), and counts how many of
   the folder's 5,000 validation images are those of the IDX pipeline: the folder's validation split is a seeded,
   stratified split of train/ (`data.folders.hold_out`), the IDX pipeline's is `data.module.fixed_split`, so the
   55,000 training images differ slightly between the two.
4. Trains the seed configuration (`--config configs/seed.yaml`, seed 42) for `--epochs` epochs from the folder and
   from the IDX files, each in a fresh `python -m mnist_lightning fit` process with a temporary
   `--trainer.default_root_dir` (the folder's run with `--data.val_size 5000`, so that the splits are 55,000 /
   5,000 / 10,000 for both). Reported: the test accuracy of fit's summary line (`Test accuracy X`), seconds per
   epoch (the median and the fastest of the intervals between consecutive epochs' `val/acc` entries in the run's
   TensorBoard file: training plus validation plus the epoch-end work, the first epoch excluded as it has no start
   entry), the median training images per second (`train/samples_per_sec`), and the wall time of the whole process.

Prints a Markdown table and writes it with a JSON file under benchmarks/results/ (image-folder-<time>.*).

    python benchmarks/image_folder.py --epochs 5      # about 2 minutes on 2 cores
    python benchmarks/image_folder.py --root /tmp/mnist-png --keep   # keep the PNGs and the cache
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, write_report

SPLITS = {"train": "train", "test": "t10k"}  # the folder's split: the IDX file's
VAL_SIZE = 5000
SEED_CONFIG = REPO_ROOT / "configs" / "seed.yaml"

# One start of the data module in a fresh process: its seconds and its peak memory, as one JSON line.
READ_CHILD = """
import json, resource, sys, time
from pathlib import Path
started = time.perf_counter()
from mnist_lightning import MNISTDataModule
def status_kib(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith(field + ":")).split()[1])
imported = time.perf_counter()
peak_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rss_before = status_kib("VmRSS")
try:  # Linux: "5" resets VmHWM (the peak RSS) to the RSS now, so that a read whose peak is below the imports' shows
    Path("/proc/self/clear_refs").write_text("5")
    hwm_reset = status_kib("VmHWM") - status_kib("VmRSS") < 1024
except OSError:
    hwm_reset = False
data = MNISTDataModule(image_folder=sys.argv[1], data_dir=sys.argv[2], val_size=int(sys.argv[3]))
data.setup("fit")
ready = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peak_of_read = status_kib("VmHWM")
rss_after = status_kib("VmRSS")
cache = data.folder.cache
train, val, test = data.folder_splits
print(json.dumps({
    "import_seconds": imported - started,
    "data_seconds": ready - imported,
    "peak_rss_after_imports_kib": peak_after_imports,
    "peak_rss_kib": peak,
    "rss_before_kib": rss_before,
    "hwm_reset": hwm_reset,
    "peak_of_read_kib": peak_of_read if hwm_reset else None,
    "rss_after_kib": rss_after,
    "cache": str(cache),
    "cache_bytes": {p.name: p.stat().st_size for p in sorted(cache.glob("*.pt"))},
    "tensor_bytes": sum(t.nbytes for s in data.folder.splits.values() for t in (s.images, s.labels, s.sums, s.squares)),
    "image_bytes": sum(s.images.nbytes for s in data.folder.splits.values()),
    "split_sizes": [len(train.labels), len(val.labels), len(test.labels)],
    "val_indices": sorted(int(Path(f).stem) for f in val.files),
    "summary": data.folder.summary,
}))
"""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def idx_data(data_dir: Path) -> dict:
    from mnist_lightning.data.sources import read_split
    from mnist_lightning.datasets import DATASETS

    return {split: read_split(DATASETS["mnist"], data_dir, idx) for split, idx in SPLITS.items()}


def exported_before(root: Path, data: dict) -> bool:
    """Whether `root` holds a whole export already (an earlier run's, kept); refused if it holds part of one."""
    expected = sum(len(labels) for _, labels in data.values())
    present = sum(1 for _ in root.glob("*/*/*.png")) if root.exists() else 0
    if present and present != expected:
        raise SystemExit(f"{root} holds {present:,} PNG files, not {expected:,}: pass an empty or a new --root")
    return present == expected


def write_pngs(root: Path, data: dict) -> dict:
    """The IDX images as ROOT/<split>/<digit>/<index>.png; its seconds and bytes."""
    from PIL import Image

    from mnist_lightning.threads import usable_cpus

    jobs = []
    for split, (images, labels) in data.items():
        for digit in range(10):
            (root / split / str(digit)).mkdir(parents=True, exist_ok=True)
        pixels = images[:, 0].numpy()
        jobs += [(root / split / str(int(label)) / f"{i:05d}.png", pixels[i]) for i, label in enumerate(labels)]
    start = time.perf_counter()
    with ThreadPoolExecutor(usable_cpus()) as pool:  # zlib and the file writes release the GIL
        list(pool.map(lambda job: Image.fromarray(job[1], "L").save(job[0]), jobs, chunksize=256))
    seconds = time.perf_counter() - start
    size = sum(path.stat().st_size for path, _ in jobs)
    log(f"wrote {len(jobs):,} PNG files ({size / 1e6:.1f} MB) under {root} in {seconds:.1f} s")
    return {"seconds": seconds, "bytes": size}


def read_folder(root: Path, data_dir: Path) -> dict:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", READ_CHILD, str(root), str(data_dir), str(VAL_SIZE)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"reading {root} failed:\n{result.stderr[-3000:]}")
    run = json.loads(result.stdout.strip().splitlines()[-1])
    run["process_seconds"] = time.perf_counter() - start
    if run["hwm_reset"]:  # the read's own peak, over the memory held before it
        run["growth_mib"] = (run["peak_of_read_kib"] - run["rss_before_kib"]) / 1024
    else:  # ru_maxrss only: what the read's peak added over the imports' (0 if it stayed below theirs)
        run["growth_mib"] = (run["peak_rss_kib"] - run["peak_rss_after_imports_kib"]) / 1024
    run["held_after_mib"] = (run["rss_after_kib"] - run["rss_before_kib"]) / 1024
    run["growth_per_cache"] = run["growth_mib"] * 2**20 / sum(run["cache_bytes"].values())
    return run


def same_images(cache: Path, data: dict) -> dict:
    """How many cached images and labels are those of the IDX files, matched by the `<index>` of each file name."""
    import torch

    found = {}
    for split, (images, labels) in data.items():
        content = torch.load(cache / f"{split}.pt", map_location="cpu", weights_only=True, mmap=True)
        index = torch.tensor([int(Path(name).stem) for name in content["files"]])
        same = (content["images"] == images[index]).flatten(1).all(dim=1) & (content["labels"] == labels[index])
        found[split] = {"identical": int(same.sum()), "of": len(labels), "cached": len(index)}
    return found


def events(run_root: Path, tag: str) -> list[tuple[float, float]]:
    """(wall time, value) of every `tag` entry in the TensorBoard files under `run_root`, in time order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = []
    for folder in sorted({path.parent for path in run_root.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            found += [(event.wall_time, event.value) for event in accumulator.Scalars(tag)]
    return sorted(found)


def fit(pipeline: str, epochs: int, extra: list[str], work: Path) -> dict:
    runs = work / f"runs-{pipeline}"
    command = [sys.executable, "-m", "mnist_lightning", "fit", f"--config={SEED_CONFIG}"]
    command += [f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={runs}"]
    command += ["--trainer.enable_progress_bar=false", *extra]
    log(f"{pipeline}: {' '.join(command[1:])}")
    start = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"fit from {pipeline} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    accuracy = float(re.search(r"Test accuracy\s+([0-9.]+)", result.stdout).group(1))
    val = events(runs, "val/acc")
    if len(val) != epochs:
        raise RuntimeError(f"{pipeline}: {len(val)} val/acc entries in {runs}, not one per epoch ({epochs})")
    intervals = [later[0] - earlier[0] for earlier, later in itertools.pairwise(val)]
    throughput = [value for _, value in events(runs, "train/samples_per_sec")]
    split = re.search(r"Image folder .*?: \d+ classes, ([\d,]+) train, ([\d,]+) val, ([\d,]+) test", result.stderr)
    return {
        "pipeline": pipeline,
        "command": command[1:],
        "test_accuracy": accuracy,
        "best_val_accuracy": max(value for _, value in val),
        "epoch_intervals": intervals,
        "samples_per_sec": throughput,
        "process_seconds": seconds,
        "folder_splits": [int(n.replace(",", "")) for n in split.groups()] if split else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="where to write the PNG folders (default: a temp one)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each fit (2 or more)")
    parser.add_argument("--keep", action="store_true", help="keep the PNGs, the cache and the runs (else removed)")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST's IDX files (default: the project's cache)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR, help="folder for the JSON and Markdown")
    options = parser.parse_args(argv)
    if options.epochs < 2:
        parser.error("--epochs must be 2 or more: seconds per epoch are the intervals between epochs")

    sys.path.insert(0, str(REPO_ROOT))
    from mnist_lightning.data.module import fixed_split
    from mnist_lightning.data.sources import default_data_dir

    idx_dir = options.data_dir or default_data_dir()
    work = Path(tempfile.mkdtemp(prefix="image-folder-bench-"))
    root = options.root or work / "mnist-png"
    cache_dir = work / "cache"  # --data.data_dir of the folder: a new one, so that the first read builds the cache
    writing = False  # whether this run writes the PNGs (under --root: removed afterwards, unless --keep)
    try:
        data = idx_data(idx_dir)
        if exported_before(root, data):
            log(f"{root} already holds the 70,000 PNG files: kept, not written again")
            written = {"seconds": None, "bytes": sum(path.stat().st_size for path in root.glob("*/*/*.png"))}
        else:
            writing = True
            written = write_pngs(root, data)
        first = read_folder(root, cache_dir)
        log(f"first read (cache build): {first['data_seconds']:.1f} s, {first['growth_mib']:.0f} MiB growth")
        second = read_folder(root, cache_dir)
        log(f"second start (cache hit): {second['data_seconds']:.1f} s, {second['growth_mib']:.0f} MiB growth")
        if second["cache"] != first["cache"]:
            raise RuntimeError(f"the second start used another cache: {second['cache']}, not {first['cache']}")
        identical = same_images(Path(first["cache"]), data)
        _, idx_val = fixed_split(len(data["train"][1]), VAL_SIZE)
        val_overlap = len(set(idx_val.tolist()) & set(first["val_indices"]))
        folder_run = [f"--data.image_folder={root}", f"--data.data_dir={cache_dir}"]
        folder_run.append(f"--data.val_size={VAL_SIZE}")
        fits = [
            fit("idx", options.epochs, [f"--data.data_dir={idx_dir}"], work),
            fit("image-folder", options.epochs, folder_run, work),
        ]
    finally:
        if options.keep:
            log(f"kept: {work}" + (f" and {root}" if options.root else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)
            if options.root and writing:
                shutil.rmtree(root, ignore_errors=True)

    for run in (first, second):
        run.pop("val_indices")
    table = report_table(written, first, second, identical, val_overlap, fits, options.epochs)
    results = {
        "epochs": options.epochs,
        "png_export": written,
        "first_read": first,
        "second_start": second,
        "identical_images": identical,
        "val_overlap": val_overlap,
        "fits": fits,
    }
    return write_report("image_folder", argv, results, table, options.output)


def report_table(
    written: dict, first: dict, second: dict, identical: dict, val_overlap: int, fits: list[dict], epochs: int
) -> str:
    cache_mb = sum(first["cache_bytes"].values()) / 2**20
    png = f"{written['seconds']:.1f}" if written["seconds"] is not None else "(kept from before)"
    lines = [
        "| step (a fresh process each) | seconds | peak RSS MiB (ru_maxrss) | the read's peak over the RSS before it, "
        "MiB | × cached tensors | RSS held after it, MiB |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| write 70,000 PNG files ({written['bytes'] / 1e6:.1f} MB) | {png} | — | — | — | — |",
    ]
    for name, run in (("first read: cache build", first), ("second start: cache hit", second)):
        lines.append(
            f"| {name} | {run['data_seconds']:.1f} (+ {run['import_seconds']:.1f} imports) | "
            f"{run['peak_rss_kib'] / 1024:.0f} | {run['growth_mib']:.0f} | {run['growth_per_cache']:.1f}× | "
            f"{run['held_after_mib']:.0f} |"
        )
    if not (first["hwm_reset"] and second["hwm_reset"]):
        lines += ["", "(VmHWM could not be reset here: the peaks are ru_maxrss's, over the imports' peak.)"]
    lines += [
        "",
        f"Cached tensors: {cache_mb:.1f} MiB in {len(first['cache_bytes'])} files ({', '.join(first['cache_bytes'])}; "
        f"images {first['image_bytes'] / 2**20:.1f} MiB). {first['summary']}.",
        "Identical to the IDX files (pixels and label, matched by file name): "
        + ", ".join(f"{split} {v['identical']:,} of {v['of']:,}" for split, v in identical.items())
        + f". Validation images shared with the IDX pipeline's fixed split: {val_overlap:,} of {VAL_SIZE:,}.",
        "",
        f"| `fit --config configs/seed.yaml`, {epochs} epochs, seed 42 | train / val / test | test accuracy | "
        f"best val accuracy | s/epoch, median (fastest), epochs 2-{epochs} | training images/s, median | "
        "fit process s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in fits:
        splits = run["folder_splits"] or [55_000, 5_000, 10_000]
        lines.append(
            f"| {run['pipeline']} | {' / '.join(f'{n:,}' for n in splits)} | {run['test_accuracy']:.4f} | "
            f"{run['best_val_accuracy']:.4f} | {statistics.median(run['epoch_intervals']):.2f} "
            f"({min(run['epoch_intervals']):.2f}) | {statistics.median(run['samples_per_sec']):,.0f} | "
            f"{run['process_seconds']:.1f} |"
        )
    lines += [
        "",
        "The folder's 5,000 validation images are a stratified split of train/, the IDX pipeline's a fixed random "
        "one: the training images differ slightly, so the accuracies agree within seed noise, not to the digit.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
