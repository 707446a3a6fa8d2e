"""`python -m vaelab.compare <run or sweep dirs>`: compare finished runs (see vaelab.evaluation.compare)."""

import sys

from vaelab.evaluation.compare import main

if __name__ == "__main__":
    sys.exit(main())
