"""The benchmark scripts run end to end (an epoch or a few, synthetic data); their timings are never asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, subprocess_env, trust_for_one_test, write_synthetic_mnist

# Each child process first accepts the synthetic files as MNIST, then runs the script as `python bench.py ...`.
TRUSTING_CHILD = (
    "import runpy, sys; from tests.helpers import trust_synthetic_mnist; "
    "trust_synthetic_mnist(sys.argv[1]); sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def load_bench(name: str = "bench"):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the other scripts import bench.py
    try:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return module


def load_bench_with_trusting_children(name: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The script `name`, whose children accept the synthetic files in `data_dir` as MNIST (as this process does)."""
    trust_for_one_test(monkeypatch, data_dir)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]))
    module = load_bench(name)
    child_command = module.child_command

    def trusting_child_command(*args, **kwargs) -> list[str]:
        python, *script_and_options = child_command(*args, **kwargs)
        return [python, "-c", TRUSTING_CHILD, str(data_dir), *script_and_options]

    monkeypatch.setattr(module, "child_command", trusting_child_command)
    return module


def test_the_benchmark_runs_every_pipeline_and_writes_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir, train=5600, test=200)  # the seed configuration holds out 5,000 for validation
    bench = load_bench_with_trusting_children("bench", data_dir, monkeypatch)

    report = bench.main(["--epochs=1", "--repeats=1", f"--data-dir={data_dir}", f"--output={tmp_path / 'results'}"])

    assert set(report["summary"]) == set(bench.KINDS)
    for row in report["summary"].values():
        assert row["epoch_seconds_median"] > 0 and 0 <= row["test_accuracy_mean"] <= 1
        assert row["peak_rss_mib_max"] > 0 and row["startup_seconds_median"] > 0
    assert set(report["ratios"]) == {f"project / {kind}" for kind in bench.KINDS if kind != "project"}
    fastest = report["summary"]["project"]["epoch_seconds_min"] / report["summary"]["raw-loop"]["epoch_seconds_min"]
    assert report["ratios_of_fastest_epochs"]["project / raw-loop"] == fastest
    written = json.loads(next((tmp_path / "results").glob("bench-*.json")).read_text())
    assert written["machine"]["torch"] and written["summary"] == report["summary"]
    markdown = next((tmp_path / "results").glob("bench-*.md")).read_text()
    assert all(
        f"| {kind} |" in markdown and f"- {kind}: {bench.EPOCH_CONTENTS[kind]}" in markdown for kind in bench.KINDS
    )


def test_the_published_starting_point_trains_on_every_training_image_and_validates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir, train=5600, test=200)  # torchvision reads these files without checking digests
    bench = load_bench()

    published_train, published_val, _ = bench._starting_point_loaders(str(data_dir), published=True)
    train, val, test = bench._starting_point_loaders(str(data_dir))

    assert published_val is None and len(published_train().dataset) == 5600
    assert len(train().dataset) == 600 and len(val().dataset) == 5000 and len(test().dataset) == 200
    assert not set(train().dataset.indices) & set(val().dataset.indices)


@pytest.mark.parametrize("toggle", ["panels", "nvml-probe"])
def test_the_alternating_benchmark_switches_a_setting_each_epoch_and_writes_its_report(
    toggle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir, train=5600, test=200)
    alternating = load_bench_with_trusting_children("alternating", data_dir, monkeypatch)

    paths = [f"--data-dir={data_dir}", f"--output={tmp_path / 'results'}"]
    report = alternating.main([f"--toggle={toggle}", "--epochs=4", "--repeats=2", *paths])

    first, second = report["runs"]
    assert first["on"] == [True, False, True, False] and second["on"] == [False, True, False, True]
    assert all(len(run["epoch_seconds"]) == 4 and min(run["epoch_seconds"]) > 0 for run in report["runs"])
    assert report["summary"]["epochs_on"] == report["summary"]["epochs_off"] == 3
    assert report["summary"]["paired_ratio_median"] > 0
    assert "| on | 3 |" in next((tmp_path / "results").glob(f"alternating-{toggle}-*.md")).read_text()


def test_the_accuracy_benchmark_runs_each_preset_and_writes_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir)
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    monkeypatch.setenv("MNIST_LIGHTNING_TEST_SYNTHETIC", str(data_dir))
    bench = load_bench("accuracy")

    # Two presets (the plainest and the one with every option), one seed each: a fit process apiece.
    arguments = ["--presets", "seed", "strong", "--seeds", "1", f"--output={tmp_path / 'results'}"]
    overrides = [f"--data.data_dir={data_dir}", "--data.val_size=200", "--trainer.max_epochs=1"]
    report = bench.main([*arguments, *overrides])

    assert list(report["summary"]) == ["seed", "strong"]
    assert report["summary"]["seed"]["parameters"] == 784 * 100 + 100 + 100 * 10 + 10
    for row in report["summary"].values():
        assert row["epochs"] == 1 and row["seeds"] == [1]
        assert row["wall_seconds_min"] > 0 and all(0 < accuracy <= 1 for accuracy in row["test_accuracies"])
    # Several seeds of a preset make one row: its runs in seed order, their mean and spread.
    seed_run = report["runs"][0]
    second = {**seed_run, "seed": 2, "test_accuracy": seed_run["test_accuracy"] / 2, "wall_seconds": 1e-3}
    (row,) = bench.summarize([seed_run, second], overrides).values()
    assert row["seeds"] == [1, 2] and row["test_accuracies"] == [seed_run["test_accuracy"], second["test_accuracy"]]
    assert row["test_accuracy_mean"] == pytest.approx(0.75 * seed_run["test_accuracy"])
    assert row["test_accuracy_std"] > 0 and row["wall_seconds_min"] == 1e-3
    written = json.loads(next((tmp_path / "results").glob("accuracy-*.json")).read_text())
    assert written["summary"] == report["summary"] and written["machine"]["torch"]
    markdown = next((tmp_path / "results").glob("accuracy-*.md")).read_text()
    assert "| configs/seed.yaml | 79,510 | 1 |" in markdown and "| configs/strong.yaml |" in markdown


def test_the_step_floor_benchmark_times_each_loop_and_writes_its_report(tmp_path: Path) -> None:
    step_floor = load_bench("step_floor")

    report = step_floor.main(["--steps=30", "--repeats=2", f"--output={tmp_path}"])

    assert set(report["microseconds_per_step"]) == {"plain-loop", "lightning", "lightning-manual"}
    assert all(len(values) == 2 and min(values) > 0 for values in report["seconds"].values())
    added = report["microseconds_per_step"]["lightning"] - report["microseconds_per_step"]["plain-loop"]
    assert report["added"]["lightning"] == added
    assert "| lightning-manual |" in next(tmp_path.glob("step-floor-*.md")).read_text()


def test_the_gpu_check_runs_on_the_cpu_and_reports_where_the_data_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir, train=5600, test=200)  # the presets hold out 5,000 for validation
    trust_for_one_test(monkeypatch, data_dir)
    monkeypatch.setenv("MNIST_LIGHTNING_DATA", str(data_dir))
    gpu_check = load_bench("gpu_check")
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # jsonargparse imports the model class's module

    options = ["--accelerator=cpu", "--presets", "seed", "--precisions", "32-true", "bf16-mixed", "--epochs=2"]
    report = gpu_check.main([*options, f"--output={tmp_path / 'results'}"])

    assert [(run["preset"], run["trainer_precision"]) for run in report["runs"]] == [
        ("seed", "32-true"),
        ("seed", "bf16-mixed"),
    ]
    for run in report["runs"]:
        assert run["data_device"] == run["device"] == "cpu" and len(run["epoch_seconds"]) == 2
        assert 0 <= run["test_accuracy"] <= 1
        assert run["htod_copies_in_profiled_epoch"] == 0, "the profiled epoch ran, and nothing crossed to a device"
    assert list((tmp_path / "results").glob("gpu-check-*.md"))


def test_the_startup_benchmark_times_the_imports_and_both_ways_of_parsing_and_writes_its_report(tmp_path: Path) -> None:
    startup = load_bench("startup")
    report = startup.main(["--repeats=1", f"--output={tmp_path}"])
    summary = report["cpu_seconds_median"]
    assert set(summary) == set(startup.KINDS) == set(report["runs"])
    # CPU seconds, counted in clock ticks: well-formed, and compared with nothing (timings are the benchmark's).
    assert all(set(row) == {"imports", "parse"} for row in summary.values())
    assert all(isinstance(value, float) and 0 <= value < math.inf for row in summary.values() for value in row.values())
    markdown = next(tmp_path.glob("startup-*.md")).read_text()
    assert "| one-parser |" in markdown and "| four-parsers |" in markdown and "of CPU per process" in markdown
