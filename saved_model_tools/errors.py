"""The one error the converter raises for bad input or a failed check."""

from __future__ import annotations


class ConversionError(Exception):
    """A conversion that cannot proceed. The message is one line meant for the user."""
