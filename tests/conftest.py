"""Session fixtures: the Prefect ephemeral API is started once (it takes ~25 s here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_api():
    """A Prefect test harness (temporary database and API) for the whole session."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_protocol(tmp_path: Path, *, n: int = 12, chunk: int = 5, draws: int = 600) -> Path:
    """The ORR example shrunk to a few patients per arm, with short chains."""
    text = (ROOT / "protocols" / "onc_phase2_orr.yaml").read_text()
    text = text.replace("    n: 40\n", f"    n: {n}\n").replace(
        "chunk_size: 20", f"chunk_size: {chunk}"
    )
    text = text.replace("trial_id: onc-ph2-orr", "trial_id: tiny-orr")
    text = text.replace(
        "mcmc: {draws: 1000, tune: 1000, chains: 2}",
        f"mcmc: {{draws: {draws}, tune: 500, chains: 2}}",
    )
    text = text.replace("follow_up_weeks: 48", "follow_up_weeks: 24").replace(
        "n_doses: 168", "n_doses: 84"
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path
