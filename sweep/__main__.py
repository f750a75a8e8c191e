"""``python -m sweep``: see sweep/cli.py."""

import sys

from sweep.nn.threads import prepare_environment

prepare_environment()  # the OpenMP wait policy: before anything loads torch (sweep.nn.threads)

from sweep.cli import main  # noqa: E402 - after the environment is set

if __name__ == "__main__":
    sys.exit(main())
