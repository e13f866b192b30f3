"""A stop signal during the imports is noted, and stops the command with its one line once they are done: raised in
there, torch's extension either clears it or aborts the process."""

from __future__ import annotations

import signal

import pytest

from mnist_lightning import interrupts


def test_a_stop_signal_during_a_deferred_block_stops_the_command_when_the_block_ends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    finished = False
    with pytest.raises(SystemExit) as stopped, interrupts.handled():
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)  # noted only: nothing is raised in the imports
            finished = True
        pytest.fail("the command went on after the block")
    assert finished and stopped.value.code == 143
    assert capsys.readouterr().err.strip().splitlines() == ["stopped by SIGTERM"]


def test_a_second_ctrl_c_stops_a_deferred_block_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped, interrupts.handled(), interrupts.deferred():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        pytest.fail("the second Ctrl-C did not stop the block")
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["stopped by Ctrl-C"]


def test_after_a_deferred_block_a_stop_signal_stops_the_program_where_it_is() -> None:
    with pytest.raises(SystemExit) as stopped, interrupts.handled():
        with interrupts.deferred():
            pass
        signal.raise_signal(signal.SIGINT)
        pytest.fail("the signal was only noted")
    assert stopped.value.code == 130


def test_a_deferred_block_inside_a_run_leaves_the_stop_to_the_run() -> None:
    went_on = False
    with pytest.raises(SystemExit) as stopped, interrupts.handled():
        interrupts.take_over()  # a Lightning run, which stops at a batch end
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # still only noted after the block
        went_on = True
        interrupts.release()
    assert went_on and stopped.value.code == 143


def test_the_signal_handling_is_entered_once_per_command() -> None:
    """commands.main enters it (and a sweep's worker process, its own entry point); cli_main does not enter it again."""
    with interrupts.handled(), pytest.raises(RuntimeError, match="entered once per command"), interrupts.handled():
        pass
    with interrupts.handled():  # and again once the first has ended
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler


def test_a_signal_of_an_ended_command_does_not_stop_a_run_started_later_in_the_process() -> None:
    """A LightningCLI built outside `commands.main` (a test, a notebook) after a command that was stopped: its run's
    StopOnSignal must not see the earlier command's signal."""
    with pytest.raises(SystemExit), interrupts.handled():
        signal.raise_signal(signal.SIGTERM)
    assert interrupts.received() is None
