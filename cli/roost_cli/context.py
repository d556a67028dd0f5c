"""What every command needs from typer's context: the global options, the output format and a
client for the service it talks to (closed when the command ends)."""

from __future__ import annotations

import os
from typing import Any, Literal

import typer

from roost_cli.client import ServiceClient
from roost_cli.config import OutputFormat, Settings, _base_url

Service = Literal["fault", "config", "host", "service", "software"]

DEFAULT_SOFTWARE_URL = "http://127.0.0.1:8105"
#: Where ``roost --software-url`` leaves its value (click's ``meta`` is shared by every context).
SOFTWARE_URL_KEY = "roost.software_url"


def limit_option(maximum: int) -> Any:
    """The ``--limit/-l N`` option of the list commands (1..``maximum``, one page); use as
    ``Annotated[int | None, limit_option(maximum)] = None``."""
    return typer.Option(
        "--limit", "-l", min=1, max=maximum, help="Fetch at most N (one page).", metavar="N"
    )


def settings(ctx: typer.Context) -> Settings:
    """The global options given before the command."""
    found = ctx.find_root().obj
    assert isinstance(found, Settings)
    return found


def wants_json(ctx: typer.Context) -> bool:
    """``--format json``."""
    return settings(ctx).output is OutputFormat.json


def software_url(ctx: typer.Context) -> str:
    """The software service's base URL: ``--software-url``, else ``ROOST_SOFTWARE_URL``, else
    the all-in-one port on localhost."""
    given = ctx.meta.get(SOFTWARE_URL_KEY) or os.environ.get("ROOST_SOFTWARE_URL")
    return _base_url(given, DEFAULT_SOFTWARE_URL, "--software-url")


def client(ctx: typer.Context, service: Service) -> ServiceClient:
    """A client for ``service`` with the resolved URL and token."""
    s = settings(ctx)
    if service == "software":
        url = software_url(ctx)
    else:
        url = {
            "fault": s.url,
            "config": s.config_service_url,
            "host": s.host_service_url,
            "service": s.service_service_url,
        }[service]()
    http = ServiceClient(url, s.resolved_token(), service=service)
    ctx.call_on_close(http.close)
    return http
