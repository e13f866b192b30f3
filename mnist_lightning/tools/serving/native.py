"""Stop signals held back while native code that calls back into Python runs.

`mnist_lightning.interrupts` stops a command by raising an exception from its signal handler, wherever Python is. In
torch.onnx's exporter and the onnx and onnxscript packages it loads (onnx's C++ extension initializing itself, its
functions calling Python), such an exception can abort the process (`terminate called after throwing an instance of
'nanobind::python_error'`), crash it, or be swallowed, so that the export carries on and writes the model: all three
were seen with torch 2.14 and onnx 1.23 when SIGTERM arrived as onnx loaded. Inside `signals_held()` a stop signal is
only noted; it is delivered when the block ends, to the handler that was in place (which then stops the command with
its one line). A second Ctrl-C is delivered at once, as everywhere (interrupts.py).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """Run the block with Ctrl-C and SIGTERM noted rather than acted on; the first is delivered when it ends."""
    if threading.current_thread() is not threading.main_thread():  # handlers only run in the main thread
        yield
        return
    noted: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def note(signum: int, frame: FrameType | None) -> None:
        if noted and signum == signal.SIGINT:  # a second Ctrl-C: stop now, whatever runs
            restore()
            signal.raise_signal(signum)
        noted.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, note)
    try:
        yield
    finally:
        restore()
        if noted:
            # The handler in place before runs now (or the default action, which ends the process).
            signal.raise_signal(noted[0])
