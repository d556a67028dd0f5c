"""Start the config service with short timings for tests."""

from __future__ import annotations

import uuid

import pytest

from tests.support.stack import ServiceUnderTest

GRACE_S = 1.0


@pytest.fixture
def start_config(stack):
    """Start config with a 1 s out-of-date grace and its own state directory (key file)."""

    def start(**env: str) -> ServiceUnderTest:
        state = stack.workdir / f"config-state-{uuid.uuid4().hex[:8]}"
        return stack.start(
            "config",
            ROOST_STATE_DIR=str(state),
            ROOST_CONFIG_GRACE_S=str(GRACE_S),
            ROOST_DRIFT_CHECK_PERIOD_S="0.2",
            **env,
        )

    return start
