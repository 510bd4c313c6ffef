"""One base for every error a user can cause, and the two kinds the CLI maps to exit codes.

Every error names the rule that was broken, the value it got (``actual``), what is allowed
(``expected``) and where (file and line, field, row or column), so that a message can say what
to do. Raised anywhere in the library; only :mod:`insilico_trials.app` turns them into exit
codes (:class:`InputError` 2, :class:`RunFailure` 1) and one-paragraph messages.

Examples
--------
>>> e = InputError("dose: must be > 0", rule="dose > 0", actual=-50, expected="> 0",
...                where="protocols/nsclc.yaml:23")
>>> str(e)
'dose: must be > 0'
>>> e.exit_code, e.actual
(2, -50)
"""

from __future__ import annotations

from typing import Any

__all__ = ["InputError", "InsilicoError", "PKInputError", "RunFailure"]

_UNSET: Any = object()


class InsilicoError(Exception):
    """Base of every insilico-trials error.

    Parameters
    ----------
    message : str
        The whole message, as the user reads it.
    rule : str
        The rule that was broken (``"ADY monotone per subject"``).
    actual : object
        The value that broke it (left unset when there is none).
    expected : str
        What is allowed.
    where : str
        File and line, field path, row or column.
    """

    exit_code = 1

    def __init__(
        self,
        message: str = "",
        *,
        rule: str = "",
        actual: Any = _UNSET,
        expected: str = "",
        where: str = "",
    ) -> None:
        super().__init__(message)
        self.rule = rule
        self.actual = None if actual is _UNSET else actual
        self.has_actual = actual is not _UNSET
        self.expected = expected
        self.where = where

    def report(self) -> str:
        """The message as the command line prints it."""
        return f"error: {self}"


class InputError(InsilicoError, ValueError):
    """Bad input (protocol, model, data set, archive, arguments): exit code 2, nothing written."""

    exit_code = 2


class RunFailure(InsilicoError, RuntimeError):
    """The work ran and failed (a service, the disk, a tampered archive): exit code 1."""

    exit_code = 1


class PKInputError(InputError):
    """Bad PK input: the message names the file or argument, the row, the value and what is allowed.

    Examples
    --------
    ``PKInputError("DATA.csv row 17 (ID 3, TIME 4): EVID must be one of 0,1,2,3,4, got 7")``
    """
