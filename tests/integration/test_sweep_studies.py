"""A study continued over several runs of `sweep`, in this process on synthetic data: no finished parameter set is
proposed again (per-trial seeds, and the duplicate guard where the space is only choices), the study keeps its fixed
settings, the table shows 4 significant digits, and the files it writes are refused in one line when they cannot be.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from mnist_lightning.commands import main as dispatch
from tests.helpers import GOOD_LR, SWEEP, cli_context, enqueue_trials, sweep_error, write_sweep

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
# Trials of 2 training steps and one validation batch: what is tested here is the study, not the fits.
TINY_TRIALS = {
    **SWEEP["fit"],
    "trainer": {
        "max_epochs": 1,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "enable_progress_bar": False,
    },
}
# The shipped example's kind of space (configs/sweep.yaml): a continuous learning rate and a choice of widths.
CONTINUOUS = {"model.lr": {"low": 0.0005, "high": 0.02, "log": True}, "model.hidden_sizes": {"choices": [[16], [32]]}}
CHOICES = {"model.lr": {"choices": [GOOD_LR, 0.01]}, "model.hidden_sizes": {"choices": [[16], [32]]}}


def run_sweep(data_dir: Path, *args: str) -> str:
    """`sweep ARGS` in this process (the working folder set by the caller); what it printed. It must succeed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        dispatch(["sweep", *args, f"--data.data_dir={data_dir}"])
    return printed.getvalue()


def load(folder: Path, study: str = "sweep") -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(folder / "lightning_logs" / study / "optuna-journal.log")))
    return optuna.load_study(study_name=study, storage=storage)


def finished_sets(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(states=COUNTED)]


@pytest.fixture(scope="module")
def continued(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A study of CONTINUOUS run with --n_trials 3, then 4, then 5: (its working folder, what each run printed)."""
    workdir = tmp_path_factory.mktemp("continued")
    config = write_sweep(workdir, fit=TINY_TRIALS, search_space=CONTINUOUS, n_trials=3)
    with cli_context(synthetic_dir, workdir):
        outputs = [run_sweep(synthetic_dir, f"--config={config}", f"--n_trials={n}") for n in (3, 4, 5)]
    return workdir, outputs


def test_a_continued_study_never_proposes_a_finished_parameter_set_again(continued: tuple[Path, list[str]]) -> None:
    workdir, outputs = continued
    for n, output in zip((3, 4, 5), outputs, strict=True):
        assert f"Study sweep: {n - 1 if n > 3 else 0} of {n} trials done or running" in output
    study = load(workdir)
    finished = finished_sets(study)
    assert len(finished) == 5
    assert len(set(finished)) == 5, "a re-run replayed the random draws of the runs before"
    lrs = [t.params["model.lr"] for t in study.get_trials(states=COUNTED)]
    assert len(set(lrs)) == 5


def test_the_printed_table_shows_4_significant_digits_and_summary_csv_every_digit(
    continued: tuple[Path, list[str]],
) -> None:
    workdir, outputs = continued
    trials = {t.number: t for t in load(workdir).get_trials(states=COUNTED)}
    header = next(line for line in outputs[-1].splitlines() if line.startswith("trial  state"))
    column = header.split().index("model.lr")
    rows = [line.split() for line in outputs[-1].splitlines() if re.match(r"\d+ +(COMPLETE|PRUNED) ", line)]
    assert len(rows) == 5
    for row in rows:
        lr = trials[int(row[0])].params["model.lr"]
        assert row[column] == f"{lr:.4g}" and len(re.sub(r"\D|^0\.0*", "", row[column])) <= 4, row
    with open(workdir / "lightning_logs" / "sweep" / "summary.csv") as file:
        saved = {int(row["trial"]): row for row in csv.DictReader(file)}
    for number, trial in trials.items():
        assert float(saved[number]["model.lr"]) == trial.params["model.lr"], "summary.csv keeps every digit"
        assert float(saved[number]["val/loss"]) == trial.value
    assert any(len(saved[n]["model.lr"]) > 8 for n in trials), "the learning rates have more digits than shown"


def test_a_space_of_choices_only_keeps_the_finished_sets_distinct_by_refusing_duplicates(
    synthetic_mnist: Path, workdir: Path
) -> None:
    # Queued before each run: a set drawn twice in the first run, and two sets of the first run drawn again in the
    # second (as the sampler can draw them in a space of 4 sets).
    first, second, third, fourth = (
        {"model.lr": lr, "model.hidden_sizes": w} for lr in (GOOD_LR, 0.01) for w in ([16], [32])
    )
    config = write_sweep(workdir, fit=TINY_TRIALS, search_space=CHOICES, n_trials=3)
    outputs = []
    for n, queued in ((3, [first, first, second, third]), (4, [second, third, fourth])):
        enqueue_trials(workdir, *queued)
        outputs.append(run_sweep(synthetic_mnist, f"--config={config}", f"--n_trials={n}"))
    study = load(workdir)
    finished = finished_sets(study)
    assert len(finished) == 4 and len(set(finished)) == 4, outputs[-1]
    refused = [t for t in study.trials if t.user_attrs.get("error", "").startswith("not run: the parameters of trial")]
    assert len(refused) == 3, outputs[-1]
    assert [t.number for t in refused] == [1, 4, 5], "each repeated set is refused, where it comes"
    assert all(t.state == TrialState.FAIL and "worker" not in t.user_attrs for t in refused)
    # Refused draws are not trials that ran: the summary lists those only.
    with open(workdir / "lightning_logs" / "sweep" / "summary.csv") as file:
        assert len(list(csv.DictReader(file))) == 4


def test_a_study_refuses_other_fixed_settings_naming_them_and_a_new_study_takes_them(
    synthetic_mnist: Path, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_sweep(workdir, fit=TINY_TRIALS, search_space=CONTINUOUS, n_trials=1)
    data = f"--data.data_dir={synthetic_mnist}"
    run_sweep(synthetic_mnist, f"--config={config}", "--trainer.limit_train_batches", "30")
    journal = workdir / "lightning_logs" / "sweep" / "optuna-journal.log"
    before = journal.read_bytes()
    line = sweep_error(capsys, f"--config={config}", "--trainer.limit_train_batches", "60", data)
    assert "study sweep was made with other fixed settings (trainer.limit_train_batches 30 then, 60 now)" in line
    assert "pass the same flags, or pass --study NEW_NAME to start a new study" in line
    assert journal.read_bytes() == before
    output = run_sweep(synthetic_mnist, f"--config={config}", "--trainer.limit_train_batches", "60", "--study=longer")
    assert "Study longer: 0 of 1 trials done or running" in output
    assert len(load(workdir, "longer").get_trials(states=COUNTED)) == 1
    assert len(load(workdir).trials) == 1
    # The same flags as the first run continue its study.
    assert "Study sweep: 1 of 1" in run_sweep(synthetic_mnist, f"--config={config}", "--trainer.limit_train_batches=30")


def test_a_study_whose_trials_all_failed_takes_a_corrected_metric(
    synthetic_mnist: Path, workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    """A misspelt metric stops the first trial at its second validation (the first epoch's training metrics are
    logged after its validation), and the corrected sweep file continues the same study: it holds no trial that its
    settings would be mixed with."""
    data = f"--data.data_dir={synthetic_mnist}"
    fit = {**TINY_TRIALS, "trainer": {**TINY_TRIALS["trainer"], "max_epochs": 5}}
    config = write_sweep(workdir, fit=fit, search_space=CONTINUOUS, n_trials=1, metric="val/los")
    line = sweep_error(capsys, f"--config={config}", data)
    assert f"metric val/los of {config} is not logged by the trials: did you mean val/loss? the logged metrics" in line
    (failed,) = load(workdir).trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["epochs"] == 2
    config = write_sweep(workdir, fit=fit, search_space=CONTINUOUS, n_trials=1)
    output = run_sweep(synthetic_mnist, f"--config={config}")
    assert len(load(workdir).get_trials(states=COUNTED)) == 1, output


@pytest.mark.parametrize("where", ["summary.csv", "history.png"])
def test_a_folder_where_the_report_writes_a_file_is_one_line_and_the_study_is_kept(
    where: str,
    continued: tuple[Path, list[str]],
    synthetic_mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    shutil.copytree(continued[0], tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "lightning_logs" / "sweep"
    (study / where).unlink()
    (study / where).mkdir()
    journal = (study / "optuna-journal.log").read_bytes()
    line = sweep_error(
        capsys, f"--config={tmp_path / 'sweep.yaml'}", "--n_trials=5", f"--data.data_dir={synthetic_mnist}"
    )
    assert line.startswith(f"error: could not write lightning_logs/sweep/{where} (Is a directory): a folder stands")
    assert "or run the sweep elsewhere with --trainer.default_root_dir DIR" in line
    assert (study / "optuna-journal.log").read_bytes() == journal
    assert (study / where).is_dir()
