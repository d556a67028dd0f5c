"""The one error type commands raise, and the exit codes it maps to."""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes (documented in cli/README.md)."""

    ok = 0
    error = 1  # the service refused or failed the request, or something unexpected happened
    usage = 2  # bad command-line input
    unreachable = 3  # the service could not be reached or did not answer
    auth = 4  # 401 or 403: the token is missing, wrong, or may not do this
    not_found = 5  # 404: no such alarm, event, entry or subscription


class CliError(Exception):
    """A failure to report as one ``roost: error: ...`` line on stderr."""

    def __init__(
        self, message: str, exit_code: ExitCode = ExitCode.error, *, problem: Any = None
    ) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # always one line
        self.exit_code = exit_code
        #: The service's decoded error answer (problem+json), when there was one.
        self.problem = problem
