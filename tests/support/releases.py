"""Release archives for tests: real hooks (shell scripts) that write files on the host."""

from __future__ import annotations

import json
from pathlib import Path

from roost_shared.releases import pack

INSTALL = """#!/bin/sh
for bad in {fail_on}; do
  if [ "$ROOST_HOSTNAME" = "$bad" ]; then echo "no space left on $ROOST_HOSTNAME" >&2; exit 1; fi
done
echo "$ROOST_RELEASE_VERSION" > "$ROOST_STATE_DIR/staged-version"
"""
ACTIVATE = """#!/bin/sh
echo "$ROOST_RELEASE_VERSION" > "$ROOST_STATE_DIR/running-version"
"""
ROLLBACK = """#!/bin/sh
echo "${ROOST_PREVIOUS_VERSION:-base}" > "$ROOST_STATE_DIR/running-version"
"""


def release_source(
    directory: Path,
    release_id: str,
    version: str,
    *,
    requires: tuple[str, ...] = (),
    reboot: bool = False,
    applies_to: tuple[str, ...] = ("controller", "worker"),
    fail_on: tuple[str, ...] = (),
    payload: bytes = b"new software\n",
) -> Path:
    """An author's directory for a release whose hooks record the version on the host."""
    directory.mkdir(parents=True)
    (directory / "release.json").write_text(
        json.dumps(
            {
                "id": release_id,
                "version": version,
                "summary": f"test release {version}",
                "requires": list(requires),
                "reboot_required": reboot,
                "applies_to": list(applies_to),
                "hooks": {
                    "install": "hooks/install",
                    "activate": "hooks/activate",
                    "rollback": "hooks/rollback",
                },
            }
        )
    )
    hooks = directory / "hooks"
    hooks.mkdir()
    for name, text in (
        ("install", INSTALL.format(fail_on=" ".join(fail_on) or "-")),
        ("activate", ACTIVATE),
        ("rollback", ROLLBACK),
    ):
        (hooks / name).write_text(text)
        (hooks / name).chmod(0o755)
    (directory / "payload.bin").write_bytes(payload)
    return directory


def release_archive(directory: Path, *args, key: str | None = None, **kwargs) -> bytes:
    """:func:`release_source` packed (signed with ``key``, a PEM private key, if given)."""
    return pack(release_source(directory, *args, **kwargs), key)
