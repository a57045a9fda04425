"""How the runner of a custom program talks to the program's own container (an image without
kubetrain): the files in a folder both containers of the pod mount. Standard library only: the
operator builds the pod with ``LAUNCHER`` as the program container's command.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

PROGRAM_DIR = "/kubetrain"
"""The shared folder (an emptyDir) in both containers."""
LAUNCH_FILE = "launch.sh"
"""Written by the runner: ``export``s and ``set -- COMMAND``, shell-quoted."""
OUTPUT_FIFO = "output"
"""A FIFO the runner reads: the program's stdout and stderr."""
PID_FILE = "pid"
EXIT_CODE_FILE = "exit-code"
CANCEL_FILE = "cancel"
"""Written by a runner that ends before it launched the program (a spec problem, an
unreachable study): the program container then exits without running anything."""

# The program container's entrypoint (``sh -c LAUNCHER sh``), for an image without kubetrain:
# it waits for the runner's launch file (environment and command, shell-quoted), runs the
# program with its output into the runner's FIFO, and leaves its pid and exit code beside them.
# The pod shares one process namespace, so the runner signals the program by that pid. It exits
# 0 whatever the program did: the runner reports the program's exit code (and exits with it),
# so a program stopped on purpose (pruned) does not fail the pod.
LAUNCHER = r"""
D=${KUBETRAIN_PROGRAM_DIR:-/kubetrain}
while [ ! -f "$D/launch.sh" ]; do [ -f "$D/cancel" ] && exit 0; sleep 0.2; done
. "$D/launch.sh"
"$@" > "$D/output" 2>&1 &
child=$!
echo "$child" > "$D/pid"
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
while :; do wait "$child"; code=$?; kill -0 "$child" 2>/dev/null || break; done
echo "$code" > "$D/exit-code.tmp" && mv "$D/exit-code.tmp" "$D/exit-code"
exit 0
"""




def cancel(folder: Path | None) -> None:
    """Let the program container end when this runner ends without launching the program."""
    if folder is not None and not (folder / LAUNCH_FILE).exists():
        with contextlib.suppress(OSError):
            (folder / CANCEL_FILE).touch()
