"""The one exception type of the data package."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; str(err) is ONE line naming the file/flag and the problem.

    A ValueError so callers that only know the standard library still catch it; the CLI
    maps it to exit code 2 and prints the message as is, without a traceback.
    """
