"""Attacks run against the same real parts as every other test: the fixtures of the agent and
config tests, shared here."""

from tests.agent.conftest import agents  # noqa: F401
from tests.config.conftest import start_config  # noqa: F401
