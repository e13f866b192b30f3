"""Ctrl-C, SIGTERM and SLURM's requeue signal (SIGUSR1), in every command: a stop at a safe point, one line that says
what happened (and the command that resumes, where there is something to resume), and the exit status 128 + the
signal's number (130, 143, 138).

While a Lightning Trainer runs (fit, validate, test, predict), a stop signal is only noted, and the run stops the way
Lightning stops on SIGTERM (callbacks.stop.StopOnSignal): every process of the run at the end of the same batch, and
callbacks save what is worth saving (`LastCheckpoint`). During a command's imports it is noted too, and stops the
command once they are done (`deferred`). Anywhere else, `Stopped` is raised where the program is. A second Ctrl-C
stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from mnist_lightning.errors import global_rank

NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGUSR1: "SLURM's requeue signal (SIGUSR1)"}


class Stopped(KeyboardInterrupt):
    """A stop signal arrived outside a Lightning run. (A KeyboardInterrupt, so that code which cleans up after
    Ctrl-C, DataLoader workers' among it, does the same here.)"""

    def __init__(self, signum: int) -> None:
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum


class _State:
    received: int | None = None  # the first stop signal of this process
    stopped_at: str = ""  # where the interrupted work stopped, said by whoever saved it
    resume: str | None = None  # the command that resumes it
    installed = False  # `handled` is in force: a command runs (entered once, by commands.main or a worker)
    signals: tuple[int, ...] = ()  # the signals handled
    only_note = False  # a Lightning run is in progress (it stops at a batch end), or imports are (`deferred`)


def received() -> int | None:
    """The first stop signal the running command received, if any (None outside a command: `handled` not in force,
    as for a LightningCLI built in a test or a notebook, where an earlier command's signal must not stop a run)."""
    return _State.received if _State.installed else None


def note_resume(stopped_at: str, command: str) -> None:
    """Record where the interrupted work stopped (and what was saved), and the command that resumes it."""
    _State.stopped_at, _State.resume = stopped_at, command


def exit_status() -> int:
    """128 + the number of the signal that stopped the process (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (_State.received or signal.SIGINT)


def final_line(requeued: str | None = None) -> str:
    """The line a stopped command ends with; `requeued` says what became of its SLURM job."""
    line = f"stopped by {NAMES.get(_State.received or signal.SIGINT, 'a signal')}"
    line += f" {_State.stopped_at}" if _State.stopped_at else ""
    if requeued:
        return f"{line}: {requeued}"
    return f"{line}; resume with: {_State.resume}" if _State.resume else line


def _handle(signum: int, frame: FrameType | None) -> None:
    first = _State.received is None
    _State.received = _State.received or signum
    if _State.only_note and (first or signum != signal.SIGINT):  # stopped later; a second Ctrl-C stops at once
        return
    raise Stopped(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Only note a stop signal while the block runs, and stop once it has ended (a second Ctrl-C stops at once). For
    the imports: torch's extension initialises itself through Python, and an exception raised in there is either
    cleared, when it lands while torch imports numpy (the command then went on and started its run), or aborts the
    process (`terminate called after throwing an instance of 'pybind11::error_already_set'`, exit status -6)."""
    noting = _State.only_note  # already (inside a run): its own end stops it
    _State.only_note = True
    try:
        yield
    finally:
        _State.only_note = noting
    if not noting and _State.installed and _State.received is not None:
        raise Stopped(_State.received)


def take_over() -> None:
    """A Lightning run is in progress: handle the stop signals here again (Lightning puts its own SIGTERM handler in
    place for each run), and only note them: callbacks.stop.StopOnSignal stops the run at a batch end."""
    _State.only_note = True
    if _State.installed and threading.current_thread() is threading.main_thread():
        for signum in _State.signals:
            signal.signal(signum, _handle)


def release() -> None:
    """The Lightning run has ended: a stop signal now stops the program where it is."""
    _State.only_note = False


@contextmanager
def handled(requeue: Callable[[], str] | None = None, say: bool = True) -> Iterator[None]:
    """Handle Ctrl-C and SIGTERM as this module says while the block runs, and end a stopped block with its one line
    (unless `say` is false) and exit status. `requeue`: under SLURM, SIGUSR1 is handled too, and when it stopped the
    block this requeues the job (after whatever was worth saving is saved) and says so."""
    if _State.installed:
        raise RuntimeError("interrupts.handled() is entered once per command, and it is in force already")
    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if requeue else [])
    install = threading.current_thread() is threading.main_thread()  # Python runs handlers there only
    previous = {signum: signal.getsignal(signum) for signum in signals} if install else {}
    # A command begins: nothing of an earlier one in this process (a test's) carries over.
    _State.received, _State.stopped_at, _State.resume, _State.only_note = None, "", None, False
    _State.installed = True
    _State.signals = tuple(signals)
    try:
        for signum in previous:
            signal.signal(signum, _handle)
        yield
        # A stop signal whose exception a library swallowed (torch.onnx's exporter does): the block ran to its end,
        # but the user asked it to stop. (SLURM's SIGUSR1 then needs no requeue: the work is done.)
        if _State.received not in (None, signal.SIGUSR1):
            raise Stopped(_State.received)
    except BaseException as e:
        # Whatever ends a block after a stop signal is its consequence: Lightning's SIGTERMException (a SystemExit
        # without a code), its sys.exit(1) after an interrupt it caught itself, or in a distributed run the error of
        # a collective call whose peer has stopped.
        if _State.received is None or (isinstance(e, SystemExit) and e.code not in (None, 1)):
            raise
        # Exiting now: a second Ctrl-C, or the SIGTERM that follows a requeue, has nothing to add.
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        previous = {}
        outcome = requeue() if requeue and _State.received == signal.SIGUSR1 and global_rank() == 0 else None
        if say and global_rank() == 0:
            print(f"\n{final_line(outcome)}", file=sys.stderr)
        raise SystemExit(exit_status()) from None
    finally:
        _State.installed = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
