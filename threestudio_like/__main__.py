"""``python -m threestudio_like --config X.yaml --train ...``: the console script."""

import sys

from threestudio_like.entry import main

sys.exit(main())
