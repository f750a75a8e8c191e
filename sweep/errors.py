"""Errors a person caused and can fix: the CLI prints them as one line and exits 2."""


class UsageError(Exception):
    """A bad flag value, a missing study, unreachable storage: ``str(err)`` is one line naming it."""
