"""The accuracy benchmark runs end to end (one epoch of each preset, synthetic data); nothing it measures is
asserted beyond being there."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.synthetic import REPO_ROOT, subprocess_env, write_synthetic_mnist


def load_accuracy_bench():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the script imports its sibling bench.py
    try:
        spec = importlib.util.spec_from_file_location("accuracy", REPO_ROOT / "benchmarks" / "accuracy.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return module


def test_the_accuracy_benchmark_runs_each_preset_and_writes_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    write_synthetic_mnist(data_dir)
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    monkeypatch.setenv("MNIST_LIGHTNING_TEST_SYNTHETIC", str(data_dir))
    bench = load_accuracy_bench()

    # Two presets (the plainest and the one with every option) and two seeds keep this under a minute.
    arguments = ["--presets", "seed", "strong", "--seeds", "1", "2", f"--output={tmp_path / 'results'}"]
    overrides = [f"--data.data_dir={data_dir}", "--data.val_size=200", "--trainer.max_epochs=1"]
    report = bench.main([*arguments, *overrides])

    assert list(report["summary"]) == ["seed", "strong"]
    assert report["summary"]["seed"]["parameters"] == 784 * 100 + 100 + 100 * 10 + 10
    for row in report["summary"].values():
        assert row["epochs"] == 1 and row["seeds"] == [1, 2]
        assert row["wall_seconds_min"] > 0 and all(0 < accuracy <= 1 for accuracy in row["test_accuracies"])
    written = json.loads(next((tmp_path / "results").glob("accuracy-*.json")).read_text())
    assert written["summary"] == report["summary"] and written["machine"]["torch"]
    markdown = next((tmp_path / "results").glob("accuracy-*.md")).read_text()
    assert "| configs/seed.yaml | 79,510 | 1 |" in markdown and "| configs/strong.yaml |" in markdown
