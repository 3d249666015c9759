"""Named crash points for the crash tests: `K2_FAILPOINT=<name>` kills the process there with SIGKILL.

SIGKILL, not an exception: nothing gets to clean up, exactly like a power cut or an OOM kill.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    if os.environ.get("K2_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
