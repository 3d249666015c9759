"""Named crash points for the crash tests: `K2_FAILPOINT=<name>` kills the process there with SIGKILL.

SIGKILL, not an exception: nothing gets to clean up, exactly like a power cut or an OOM kill.
"""

from __future__ import annotations

import os
import signal


FAILPOINT_ENV = "K2_FAILPOINT"


def failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
