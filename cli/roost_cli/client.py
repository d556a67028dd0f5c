"""A small synchronous client for a Roost service's API that turns every failure into a CliError."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from roost_cli import __version__
from roost_cli.config import credentials_path
from roost_cli.errors import CliError, ExitCode

Params = Mapping[str, Any] | list[tuple[str, Any]]

_ERRNO = re.compile(r"^\[Errno -?\d+\]\s*")


def path_part(value: str) -> str:
    """Quote a uuid or id for use as one URL path segment."""
    return quote(value, safe="")


def _transport_reason(exc: httpx.TransportError) -> str:
    text = _ERRNO.sub("", str(exc).strip()) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _problem_detail(response: httpx.Response) -> str:
    """The readable reason of an error answer: problem+json ``detail``, FM's ``faultstring``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        fault = body.get("error_message")
        if isinstance(fault, dict) and isinstance(fault.get("faultstring"), str):
            return fault["faultstring"]
        if detail is not None:
            return str(detail)
    text = response.text.strip()
    return text[:200] if text else response.reason_phrase or "error"


class ServiceClient:
    """One Roost service's v1 API over HTTP, with the token sent as a bearer token.

    ``service`` names it in error messages ("cannot reach the config service at ...").
    """

    def __init__(
        self, base_url: str, token: str | None, *, service: str = "fault", timeout: float = 15.0
    ) -> None:
        self.base_url = base_url
        self.service = service
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": f"roost-cli/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Requests ---------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, params: Params | None = None, json: Any = None
    ) -> Any:
        """Send one request; return the decoded JSON answer (None for an empty one)."""
        return self.send(method, path, params=params, json=json)[1]

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request (JSON, or ``content`` with its own ``headers``); return the status
        code and the decoded JSON answer (None for an empty one)."""
        try:
            response = self._http.request(
                method, path, params=params, json=json, content=content, headers=headers
            )
        except httpx.TimeoutException:
            raise CliError(
                f"the {self.service} service at {self.base_url} did not answer within "
                f"{self.timeout:g}s",
                ExitCode.unreachable,
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
            raise CliError(
                f"invalid {self.service} service URL {self.base_url!r}: {e}", ExitCode.usage
            ) from None
        except httpx.TransportError as e:
            if "CERTIFICATE_VERIFY_FAILED" in str(e):
                raise CliError(
                    f"the {self.service} service at {self.base_url} has a certificate this "
                    "machine does not trust: set SSL_CERT_FILE to the site's CA file",
                    ExitCode.unreachable,
                ) from None
            raise CliError(
                f"cannot reach the {self.service} service at {self.base_url} "
                f"({_transport_reason(e)})"
                " — is Roost running? (make run)",
                ExitCode.unreachable,
            ) from None
        if response.is_error:
            raise self._error(response)
        if response.status_code == 204 or not response.content:
            return response.status_code, None
        try:
            return response.status_code, response.json()
        except ValueError:
            raise CliError(
                f"the {self.service} service at {self.base_url} answered {method} {path} with "
                f"{response.status_code} but not with JSON",
            ) from None

    def _error(self, response: httpx.Response) -> CliError:
        error = self._error_of(response)
        try:
            error.problem = response.json()
        except ValueError:
            pass
        return error

    def _error_of(self, response: httpx.Response) -> CliError:
        status = response.status_code
        message = f"{status} {_problem_detail(response)}"
        if status == 401:
            return CliError(
                f"{message} — check the token (--token, ROOST_TOKEN or 'admin_token' in "
                f"{credentials_path()})",
                ExitCode.auth,
            )
        if status == 403:
            return CliError(
                f"{message} — this token's role may not change anything; use an admin token",
                ExitCode.auth,
            )
        if status == 404:
            return CliError(message, ExitCode.not_found)
        return CliError(message)

    def get(self, path: str, params: Params | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    # Paging -----------------------------------------------------------------------------------

    def collect(
        self,
        path: str,
        key: str,
        params: list[tuple[str, Any]],
        *,
        limit: int | None,
        page_size: int,
    ) -> dict[str, Any]:
        """A list endpoint's ``{key: [...]}``: one page of ``limit``, or every page.

        Each further page re-sends our own parameters with the ``marker`` from the ``next`` link
        rather than fetching ``next`` verbatim, so the listing cannot drift from what was asked
        even against a server (StarlingX FM) whose ``next`` drops the filters.
        """
        if limit is not None:
            return self.get(path, [*params, ("limit", limit)])
        items: list[Any] = []
        seen: set[str] = set()
        marker: str | None = None
        while True:
            page_params = [*params, ("limit", page_size)]
            if marker:
                page_params.append(("marker", marker))
            body = self.get(path, page_params)
            page = body.get(key, []) if isinstance(body, dict) else []
            items.extend(page)
            marker = _next_marker(body.get("next") if isinstance(body, dict) else None, page)
            if not page or marker is None or marker in seen:
                return {key: items}
            seen.add(marker)


def _next_marker(next_href: str | None, page: list[Any]) -> str | None:
    if not next_href:
        return None
    markers = parse_qs(urlsplit(next_href).query).get("marker")
    if markers:
        return markers[-1]
    last = page[-1] if page else None
    return last.get("uuid") if isinstance(last, dict) else None
