"""`python -m vaelab.summary <sweep dir>`: rebuild a sweep's summary (see vaelab.sweeps.summary)."""

import sys

from vaelab.sweeps.summary import main

if __name__ == "__main__":
    sys.exit(main())
