"""Work units: what runs inside a pod (and as a local process).

A work unit is often PID 1 of its container, and PID 1 ignores signals it has no handler for.
SIGTERM (pod deletion, suspend, Ctrl-C from the local executor) must end it even while it is
still importing torch, so a handler goes in before anything heavy is imported; the trainer
replaces it with a graceful one (finish the epoch, checkpoint) once training runs.
"""

import signal
import sys
import threading
from types import FrameType


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


# Only a process's main thread may set handlers; an operator imports this from a worker thread.
if threading.current_thread() is threading.main_thread() and signal.getsignal(
    signal.SIGTERM
) in (signal.SIG_DFL, None):
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
