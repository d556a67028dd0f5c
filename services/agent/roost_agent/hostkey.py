"""``python -m roost_agent.hostkey``: enrol this node's agent for heartbeats and the service link.

Writes this node's host key (:func:`roost_shared.hostkeys.host_key` of the site secret and the
node's management MAC, found as the agent finds it) to ``<ROOST_STATE_DIR>/heartbeat.key``,
mode 0600, unless the right one is there already. The site secret comes from
``ROOST_HEARTBEAT_SECRET`` (hex) or ``ROOST_HEARTBEAT_SECRET_FILE``; the agent itself never
needs it. Used where enrolment runs on the node (the Kubernetes DaemonSet's init container);
elsewhere derive the key off the node: ``python -m roost_shared.hostkeys derive MAC``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from roost_agent.settings import AgentSettings
from roost_shared.hostkeys import (
    HOST_KEY_FILE,
    KeyFileError,
    SiteSecretSettings,
    host_key,
    install_key,
)
from roost_shared.hostkeys import site_secret as load_site_secret


class EnrolSettings(AgentSettings, SiteSecretSettings):
    """The agent's identity plus the site secret (this step only)."""


def enrol(settings: EnrolSettings) -> Path:
    secret = load_site_secret(settings)
    if secret is None:
        raise KeyFileError("no site secret given (ROOST_HEARTBEAT_SECRET or its _FILE)")
    path = settings.heartbeat_key_file or settings.state_dir / HOST_KEY_FILE
    return install_key(path, host_key(secret, settings.mgmt_mac))


def main() -> int:
    settings = EnrolSettings()
    try:
        path = enrol(settings)
    except KeyFileError as exc:
        print(f"roost: {exc}", file=sys.stderr)
        return 1
    print(f"host key of {settings.mgmt_mac} in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
