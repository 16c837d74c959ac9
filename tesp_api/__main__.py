"""``python -m tesp_api`` = ``tesp-api``."""

import sys

from tesp_api.cli import main

if __name__ == "__main__":
    sys.exit(main())
