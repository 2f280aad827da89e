"""Errors a user can fix: the CLI prints them as one line, never a traceback."""


class UsageError(Exception):
    """A mistake in how a command was called or in its inputs; the message says how to fix it."""
