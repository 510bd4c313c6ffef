"""Exceptions of the PK engine."""

from __future__ import annotations

__all__ = ["PKInputError"]


class PKInputError(ValueError):
    """Bad PK input: the message names the file or argument, the row, the value and what is allowed.

    Examples
    --------
    ``PKInputError("DATA.csv row 17 (ID 3, TIME 4): EVID must be one of 0,1,2,3,4, got 7")``
    """
