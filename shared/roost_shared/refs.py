"""How API paths name a host or an item: uuid, management MAC or hostname."""

from __future__ import annotations

import re
import uuid
from typing import Any

_MAC_HEX = re.compile(r"^[0-9a-f]{12}$")


def is_uuid(ref: str) -> bool:
    """Whether a path reference is a uuid (else a name, a MAC, ...)."""
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


def normalise_mac(value: str) -> str:
    """``AA-BB-CC-DD-EE-FF``, ``aabb.ccdd.eeff`` or ``aabbccddeeff`` → ``aa:bb:cc:dd:ee:ff``."""
    hex_only = re.sub(r"[:.\-]", "", value.strip().lower())
    if not _MAC_HEX.match(hex_only) or len(value.strip()) not in (12, 14, 17):
        raise ValueError("not a MAC address; expected six hex octets such as 52:54:00:12:34:56")
    return ":".join(hex_only[i : i + 2] for i in range(0, 12, 2))


def host_query(ref: str) -> dict[str, Any] | None:
    """The filter for a host named by uuid, management MAC (a discovered host has no name yet;
    any spelling with colons) or hostname; None when it looks like a MAC but is not one."""
    if is_uuid(ref):
        return {"uuid": ref}
    if ":" in ref:  # hostnames never hold a colon
        try:
            return {"mgmt_mac": normalise_mac(ref)}
        except ValueError:
            return None
    return {"hostname": ref}
