"""Agents run as real processes against the test's own RabbitMQ vhost."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agents import AgentUnderTest


@pytest.fixture
def agents(stack, tmp_path: Path) -> Iterator[Callable[..., AgentUnderTest]]:
    """``agents(profile="worker", **env)`` starts one more agent; all stop after the test."""
    started: list[AgentUnderTest] = []

    def start(profile: str = "worker", **env: str) -> AgentUnderTest:
        agent = AgentUnderTest(
            stack.amqp_url,
            tmp_path,
            profile,
            # One bytecode cache for the session: agents start warm, as in a running fleet.
            PYTHONPYCACHEPREFIX=str(stack.workdir / "pycache"),
            **env,
        )
        started.append(agent.start())
        return agent

    yield start
    for agent in started:
        agent.stop()
