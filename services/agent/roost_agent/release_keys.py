"""The site's release signing keys, as provisioned on this node (never taken from the bus).

``ROOST_RELEASE_KEYS_FILE`` (one base64 Ed25519 public key a line, ``#`` comments: the format of
the software service's release keys file, ``release-keys.pub``) and ``ROOST_RELEASE_PUBLIC_KEYS``
(a JSON list, as the software service's setting of that name). They are read at every install,
so a key added to (or removed from) the file counts from the next install on, no restart. No
key at all: the agent installs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class NoReleaseKeys(RuntimeError):
    """No usable key: every install is refused (the message says why, never a key)."""


def site_release_keys(path: Path | None, inline: Sequence[str]) -> list[str]:
    """Every configured key (base64), each checked; :class:`NoReleaseKeys` when there is none
    or one is unreadable or malformed."""
    from roost_shared.signing import BadKey, read_public_keys, verify_key

    keys: list[str] = []
    for index, key in enumerate(inline):
        try:
            verify_key(key)
        except BadKey as exc:
            raise NoReleaseKeys(f"ROOST_RELEASE_PUBLIC_KEYS[{index}]: {exc}") from None
        keys.append(key.strip())
    if path is not None:
        try:
            keys.extend(read_public_keys(path))
        except FileNotFoundError:
            if not keys:
                raise NoReleaseKeys(
                    f"the release keys file {path} (ROOST_RELEASE_KEYS_FILE) does not exist"
                ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise NoReleaseKeys(f"cannot read the release keys file {path}: {exc}") from None
        except BadKey as exc:
            raise NoReleaseKeys(str(exc)) from None
    if not keys:
        raise NoReleaseKeys(
            "no release signing keys are provisioned on this host (ROOST_RELEASE_KEYS_FILE or "
            "ROOST_RELEASE_PUBLIC_KEYS)"
        )
    return keys
