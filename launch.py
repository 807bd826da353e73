"""threestudio-compatible entry point: ``python launch.py --config X.yaml --train ...``."""

import sys

from threestudio_like.entry import main

if __name__ == "__main__":
    sys.exit(main())
