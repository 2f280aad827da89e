"""Errors a user can fix (defined in ``schemas.errors``, the bottom layer; kept here for the CLI)."""

from folkrnn.schemas.errors import UsageError, describe_os_error

__all__ = ["UsageError", "describe_os_error"]
