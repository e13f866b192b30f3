"""What a sweep shows at the end of every run: the table of trials (printed and in summary.csv), the best trial's
best checkpoint tested once on the official test set, Optuna's plots, and the command that opens optuna-dashboard."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib
import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_lightning.callbacks.figures import save_png
from mnist_lightning.cli import build_cli
from mnist_lightning.files import write_csv
from mnist_lightning.runs.folders import CONFIG_FILE, command_on
from mnist_lightning.tools.sweep.study import WORKER, Sweep, shown_storage

matplotlib.use("Agg")  # the plots are written to files, never shown in a window

SUMMARY_FILE = "summary.csv"
ELSEWHERE = "or run the sweep elsewhere with --trainer.default_root_dir DIR"
BEST_TEST = "best_test"  # study user attribute: {"trial", "test_acc", "checkpoint"} of the last best trial tested


def report(study: optuna.Study, sweep: Sweep) -> None:
    """Print and write the summary, test the best trial (unless that trial was tested before), draw the plots."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    test_acc = test_best_trial(study, sweep, best) if best else None
    rows = summary_rows(trials, sweep, best, test_acc)
    header = list(rows[0]) if rows else ["trial"]
    write_csv(sweep.folder / SUMMARY_FILE, header, ([row[key] for key in header] for row in rows), ELSEWHERE)
    print("\n" + format_table(rows))
    counts = {state.name: sum(t.state == state for t in trials if ran(t)) for state in TrialState}
    counts["queued"] = sum(t.state == TrialState.WAITING for t in trials)
    print(", ".join(f"{n} {name}" for name, n in counts.items() if n) or "no trials")
    if counts["queued"]:
        print(f"note: {counts['queued']} queued trials (retries of stopped ones) run first when the study continues")
    if best is not None:
        print(f"Best trial        {best.number}: {sweep.config.metric} {shown(best.value)}  {params_text(best)}")
        if test_acc is not None:
            print(f"  test accuracy   {test_acc:.4f}")
        print(f"  run folder      {sweep.trial_folder(best.number)}")
    print(f"Summary           {sweep.folder / SUMMARY_FILE}")
    for line in draw_plots(study, sweep.folder, complete):
        print(line)
    print(f"TensorBoard       tensorboard --logdir {sweep.folder}")
    print(f"Dashboard         optuna-dashboard {shown_storage(sweep.storage)}")


def shown(value: Any) -> str:
    """A value as the printed table shows it: floats (learning rates, metrics) with 4 significant digits, and those of
    1,000 and above (seconds) in full. summary.csv keeps every digit."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if 1000 <= abs(value) < 1e15 else f"{value:.4g}"


def ran(trial: FrozenTrial) -> bool:
    """Whether a trial ran a fit, or runs one: not a queued retry, nor a trial drawn and never run (surplus or
    duplicate parameters)."""
    return WORKER in trial.user_attrs or trial.state not in (TrialState.FAIL, TrialState.WAITING)


def note(trial: FrozenTrial) -> str:
    """What the table says of a trial beside its numbers: why it failed, or whose parameters it tries again."""
    notes = [trial.user_attrs.get("error", "")]
    if "retry_of" in trial.user_attrs:
        notes.append(f"retries trial {trial.user_attrs['retry_of']} ({trial.user_attrs.get('why', 'it failed')})")
    return "; ".join(text for text in notes if text)


def params_text(trial: FrozenTrial) -> str:
    return " ".join(f"{key}={shown(value)}" for key, value in trial.params.items())


def test_best_trial(study: optuna.Study, sweep: Sweep, best: FrozenTrial) -> float | None:
    """The best trial's best checkpoint's accuracy on the official test set, measured once per best trial."""
    recorded = study.user_attrs.get(BEST_TEST)
    if recorded and recorded["trial"] == best.number:
        return recorded["test_acc"]
    checkpoint = best.user_attrs.get("checkpoint")
    folder = sweep.trial_folder(best.number)
    config = folder / CONFIG_FILE
    if not checkpoint:
        print(f"note: trial {best.number} kept no checkpoint (checkpointing is off): nothing to test")
        return None
    if not Path(checkpoint).is_file() or not config.is_file():
        host = best.user_attrs.get(WORKER, {}).get("host", "another machine")
        print(
            f"note: trial {best.number}'s best checkpoint is not on this machine but on {host}: test it there with "
            f"{command_on('test', folder, checkpoint)}"
        )
        return None
    print(f"\nTesting trial {best.number}'s best checkpoint on the official test set")
    # Its figures and events go to the trial's folder, `test/` (again, should a test have been interrupted).
    cli = build_cli(
        ["test", f"--config={config}", f"--ckpt_path={checkpoint}", "--verbose=false"],
        run_folder=folder / "test",
        save_config_kwargs={"overwrite": True},
    )
    test_acc = float(cli.trainer.callback_metrics["test/acc"])
    study.set_user_attr(BEST_TEST, {"trial": best.number, "test_acc": test_acc, "checkpoint": checkpoint})
    return test_acc


def summary_rows(
    trials: list[FrozenTrial], sweep: Sweep, best: FrozenTrial | None, test_acc: float | None
) -> list[dict[str, Any]]:
    """One row per trial: number, state, parameters, metric, epochs run, seconds, the best one's test accuracy."""
    rows = []
    for trial in filter(ran, trials):
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        row.update({p.key: trial.params.get(p.key, "") for p in sweep.config.space})
        row[sweep.config.metric] = "" if trial.value is None else trial.value
        row["epochs"] = trial.user_attrs.get("epochs", "")
        row["seconds"] = round(trial.duration.total_seconds(), 1) if trial.duration else ""
        tested = best is not None and trial.number == best.number and test_acc is not None
        row["test/acc"] = test_acc if tested else ""
        row["note"] = note(trial)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    header = list(rows[0])
    cells = [header] + [[shown(row[key]) for key in header] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def draw_plots(study: optuna.Study, folder: Path, complete: list[FrozenTrial]) -> list[str]:
    """Optuna's optimization history, parameter importances and parallel coordinates as PNGs; a line for each."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    if not complete:
        return ["Plots             none yet: no trial is COMPLETE"]
    varied = len({tuple(sorted(map(str, t.params.items()))) for t in complete}) > 1
    lines = []
    for name, draw in (
        ("history", plots.plot_optimization_history),
        ("importances", plots.plot_param_importances),
        ("parallel_coordinates", plots.plot_parallel_coordinate),
    ):
        if name == "importances" and not varied:
            lines.append("note: no importances plot yet: it needs 2 COMPLETE trials with different parameters")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as e:
                lines.append(f"note: no {name} plot: {e}")
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        path = folder / f"{name}.png"
        save_png(figure, path, ELSEWHERE)
        plt.close(figure)
        lines.append(f"Plot              {path}")
    return lines
