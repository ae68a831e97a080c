"""``python -m diffbir`` (and ``accelerate launch -m diffbir``) runs the CLI."""

import sys

from diffbir.cli import main

sys.exit(main())
