"""Checks that need more than the schema, run before any work by ``run`` and ``validate``.

Loading a protocol (:func:`insilico_trials.spec.protocol.load_protocol`) validates every field
and cross-section rule without sampling anything. Whether the eligibility criteria can be met
at all needs a pilot sample of the population, which costs about a second for a large
population: it is done here, once per command, with the same file:line messages.
"""

from __future__ import annotations

from pathlib import Path

from insilico_trials.sim.cohort import eligibility_problems
from insilico_trials.spec.protocol import (
    ProtocolError,
    ProtocolIssue,
    TrialProtocol,
    issues_at,
    load_protocol,
)

__all__ = ["checked_protocol", "preflight_issues", "validate_files"]


def preflight_issues(protocol: TrialProtocol, path: str | Path) -> list[ProtocolIssue]:
    """Problems of a loaded protocol found by sampling (impossible eligibility criteria)."""
    problems = [
        (("population", *loc), value, message)
        for loc, value, message in eligibility_problems(protocol.population)
    ]
    return issues_at(path, problems) if problems else []


def checked_protocol(path: str | Path) -> TrialProtocol:
    """Load ``path`` and run the pre-flight checks.

    Raises
    ------
    ProtocolError
        Listing every problem as ``file:line: field.path: message (got VALUE)``.
    """
    protocol = load_protocol(path)
    if issues := preflight_issues(protocol, path):
        raise ProtocolError(issues)
    return protocol


def validate_files(paths: list[str | Path]) -> list[ProtocolIssue]:
    """Validate several protocol files; return every issue of every file (empty when valid)."""
    issues: list[ProtocolIssue] = []
    for p in paths:
        try:
            checked_protocol(p)
        except ProtocolError as exc:
            issues.extend(exc.issues)
    return issues
