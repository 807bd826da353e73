"""The console script's entry point (``threestudio-like``, ``launch.py``, ``python -m threestudio_like``).

Importing the CLI loads torch, Lightning and diffusers, which takes seconds; a Ctrl-C then is
caught here and reported in one line instead of an import traceback. That is why the CLI is
imported inside ``main`` and nowhere else in the package is a module imported this way.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from threestudio_like.interrupts import EXIT_INTERRUPTED


def main(argv: Optional[list[str]] = None) -> int:
    try:
        from threestudio_like import cli  # inside the guard: see the module docstring
    except KeyboardInterrupt:
        print("\nInterrupted during start-up: nothing was written.", file=sys.stderr, flush=True)
        # Out at once: an import cut short (torch's, mid-way) can make the interpreter's shutdown die
        # of the same SIGINT (exit -2, not 130); nothing was written, so skipping it loses nothing.
        sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
