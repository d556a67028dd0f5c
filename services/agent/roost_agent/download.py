"""Downloading release archives: only over http(s), only from the software service, streamed.

An agent runs what it downloads (the release's hooks, once verified), so where it downloads
from is policy, not a detail of the command: :class:`Sources` holds the base URLs of the site's
software service (``ROOST_SOFTWARE_URL``), and a URL is fetched only when its scheme, host and
port are those of one of them and its path lies under that base's path. Anything else --
``file:``, ``data:``, ``ftp:``, another host or port, credentials in the URL -- is refused
before any request; so is a redirect to anywhere else. No proxy is used (``http_proxy`` in the
agent's environment is not followed).

The body is written to a file as it arrives, hashed on the way, and at most ``limit`` bytes of
it: the archive never sits in the agent's memory. A download that fails, is cut short or grows
past the limit removes its file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

#: Bytes read from the socket at a time (one buffer, reused).
CHUNK_BYTES = 256 * 1024
MAX_REDIRECTS = 3
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(ValueError):
    """A URL the agent does not download from (nothing was requested)."""


class DownloadFailed(RuntimeError):
    """A download that did not complete (its file is removed)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a URL points: scheme, host (lower case) and port, and its path."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> Origin:
        """Parse ``url``; :class:`Refused` unless it is a plain http(s) URL with a host."""
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise Refused("the URL has spaces or control characters")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise Refused(f"only http and https URLs are downloaded, not {scheme or 'none'}:")
        if parts.username is not None or parts.password is not None:
            raise Refused("the URL carries credentials (user@host)")
        if not parts.hostname:
            raise Refused("the URL has no host")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise Refused("the URL's port is not a number from 0 to 65535") from None
        path = parts.path or "/"
        if any(seg in (".", "..") for seg in unquote(path).split("/")):
            raise Refused("the URL's path has '.' or '..' segments")
        return cls(scheme, parts.hostname.lower(), port, path)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_bases(text: str | None) -> tuple[Origin, ...]:
    """The base URLs of ``ROOST_SOFTWARE_URL`` (comma-separated); :class:`Refused` for one
    that is not a plain http(s) URL without query or fragment."""
    bases = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if urlsplit(item).query or urlsplit(item).fragment:
            raise Refused(f"{item}: a base URL has no query or fragment")
        try:
            origin = Origin.of(item)
        except Refused as exc:
            raise Refused(f"{item}: {exc}") from None
        bases.append(Origin(origin.scheme, origin.host, origin.port, origin.path.rstrip("/")))
    return tuple(bases)


@dataclass(frozen=True, slots=True)
class Sources:
    """The places release archives may be downloaded from."""

    bases: tuple[Origin, ...]

    @classmethod
    def of(cls, text: str | None) -> Sources:
        return cls(parse_bases(text))

    def check(self, url: str) -> Origin:
        """The parsed ``url``; :class:`Refused` unless it is under one of the bases."""
        if not self.bases:
            raise Refused(
                "no software service is configured on this host (ROOST_SOFTWARE_URL): "
                "releases are downloaded from nowhere else"
            )
        origin = Origin.of(url)
        for base in self.bases:
            if (origin.scheme, origin.host, origin.port) != (base.scheme, base.host, base.port):
                continue
            if not base.path or origin.path == base.path or origin.path.startswith(base.path + "/"):
                return origin
        allowed = ", ".join(f"{b.netloc}{b.path}" for b in self.bases)
        raise Refused(f"{origin.netloc} is not the software service ({allowed})")


@dataclass(frozen=True, slots=True)
class Downloaded:
    sha256: str
    size: int


def download(url: str, path: Path, *, sources: Sources, limit: int, timeout_s: float) -> Downloaded:
    """GET ``url`` into the new file ``path`` (blocking: run it in a thread), at most ``limit``
    bytes, following redirects only to where :meth:`Sources.check` allows. Raises
    :class:`Refused` for a URL it may not fetch (before any request to it) and
    :class:`DownloadFailed` for one that did not complete; either way ``path`` does not exist
    afterwards."""
    try:
        return _download(url, path, sources=sources, limit=limit, timeout_s=timeout_s)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _download(
    url: str, path: Path, *, sources: Sources, limit: int, timeout_s: float
) -> Downloaded:
    import http.client

    current = url
    for _ in range(MAX_REDIRECTS + 1):
        origin = sources.check(current)
        target = urlsplit(current)
        request_path = origin.path + (f"?{target.query}" if target.query else "")
        conn: http.client.HTTPConnection
        if origin.scheme == "https":
            import ssl

            conn = http.client.HTTPSConnection(
                origin.host, origin.port, timeout=timeout_s, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(origin.host, origin.port, timeout=timeout_s)
        try:
            try:
                conn.request("GET", request_path, headers={"User-Agent": "roost-agent"})
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadFailed(f"{origin.netloc}: {exc or type(exc).__name__}") from None
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise DownloadFailed(f"HTTP {response.status} without a Location")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise DownloadFailed(f"HTTP {response.status} {response.reason}")
            return _save(response, path, limit)
        finally:
            conn.close()
    raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects")


def _save(response: object, path: Path, limit: int) -> Downloaded:
    import http.client

    assert isinstance(response, http.client.HTTPResponse)
    declared_text = response.getheader("Content-Length")
    declared = int(declared_text) if declared_text and declared_text.isdigit() else None
    if declared is not None and declared > limit:
        raise DownloadFailed(f"the archive is {declared} bytes, larger than {limit}")
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while True:
            try:
                n = response.readinto(buffer)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadFailed(f"cut short after {size} bytes: {exc!r}") from None
            if not n:
                break
            size += n
            if size > limit:
                raise DownloadFailed(f"larger than {limit} bytes")
            digest.update(view[:n])
            out.write(view[:n])
    if declared is not None and size != declared:
        raise DownloadFailed(f"cut short: {size} of {declared} bytes")
    return Downloaded(digest.hexdigest(), size)
