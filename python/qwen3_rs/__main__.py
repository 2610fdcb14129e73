"""`python -m qwen3_rs generate|chat|bench ...` (see qwen3_rs.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
