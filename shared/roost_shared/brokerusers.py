"""The broker users of a site: one per service and one shared by agents without per-host users.

Each process connects as its own user (:func:`roost_shared.publishers.user_of`), with the
password in ``<passwords dir>/<user>`` (setting ``broker_passwords_dir``). Each user may write
to the shared exchanges only its own event types (RabbitMQ topic permissions on
``roost.events``) and may configure and read only its own queues; the consumers' check of every
message's ``user_id`` (:mod:`roost_shared.publishers`) is what makes a leaked user gain nothing
beyond what its owner could do. The definitions go to the broker in one request: ``rabbitmqctl
import_definitions`` on the broker's machine (make run), or the management API's
``POST /api/definitions`` (docker-compose and Kubernetes, whose broker has the plugin)::

    python -m roost_shared.brokerusers ensure DIR [--vhost /] [--management-url URL]
    python -m roost_shared.brokerusers definitions DIR [--vhost /]   # print them

``ensure`` makes missing passwords (kept across runs) and (re)loads every user and permission.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from roost_shared.files import write_atomic
from roost_shared.publishers import AGENT_USER, SERVICES, user_of

_SHARED = r"roost\.(events|commands|dead|heartbeat|sm)"
#: Exclusive unnamed queues (probes, listeners, wake-ups): named by the server (amq.gen-…) or
#: by aio-pika (amq_<hex>).
_EXCLUSIVE = r"amq(\.gen-|_)[0-9A-Za-z_-]+"


def users(site: str = "") -> list[str]:
    return [user_of(s, site) for s in (*SERVICES, "agent")]


def permissions(user: str) -> dict[str, str]:
    """RabbitMQ configure/write/read regexes, and the topic write regex on ``roost.events``."""
    user = user.split(".", 1)[0]  # the site suffix changes nothing
    if user == AGENT_USER:
        own = r"agent\..*"
        return {
            "configure": rf"^({_SHARED}|{own}|{_EXCLUSIVE})$",
            "write": rf"^({_SHARED}|amq\.default|{own}|{_EXCLUSIVE})$",
            "read": rf"^({_SHARED}|{own}|{_EXCLUSIVE})$",
            "topic": r"^agent\..*$",
        }
    service = user.removeprefix("roost-")
    own = rf"{service}\..*"
    return {
        "configure": rf"^({_SHARED}|{own}|{_EXCLUSIVE})$",
        # amq.default: the retry queues and dead-letter replay are fed through it.
        "write": rf"^({_SHARED}|amq\.default|{own}|{_EXCLUSIVE})$",
        "read": rf"^({_SHARED}|{own}|{_EXCLUSIVE})$",
        "topic": (
            r"^fault\..*$"
            if service == "fault"
            else rf"^({service}\..*|fault\.alarm\.(set|clear)|fault\.log\.write)$"
        ),
    }


def ensure_passwords(directory: Path, site: str = "") -> dict[str, str]:
    """Every user's password, each in ``directory/<user>`` (made once, mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    passwords: dict[str, str] = {}
    for user in users(site):
        path = directory / user
        if not path.exists():
            write_atomic(path, secrets.token_urlsafe(24).encode(), mode=0o600)
        passwords[user] = path.read_text().strip()
    return passwords


def read_password(directory: Path, user: str) -> str | None:
    path = directory / user
    return path.read_text().strip() if path.is_file() else None


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def user_definition(
    name: str, password: str, limits: dict[str, int] | None = None
) -> dict[str, Any]:
    """One user as definitions name it: the password as its salted hash only."""
    user: dict[str, Any] = {
        "name": name,
        "password_hash": password_hash(password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": "",
    }
    if limits:
        user["limits"] = limits
    return user


def definitions(
    passwords: dict[str, str], vhosts: list[str], *, admins: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Definitions (users, vhosts, permissions) for ``import_definitions`` or a boot-time load;
    ``admins``: existing users given every permission on the vhosts (they are not redefined)."""
    defs: dict[str, Any] = {
        "users": [user_definition(user, password) for user, password in passwords.items()],
        "vhosts": [{"name": v} for v in vhosts],
        "permissions": [],
        "topic_permissions": [],
    }
    for vhost in vhosts:
        for admin in admins:
            defs["permissions"].append(
                {"user": admin, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
            )
        for user in passwords:
            p = permissions(user)
            defs["permissions"].append(
                {"user": user, "vhost": vhost, **{k: p[k] for k in ("configure", "write", "read")}}
            )
            defs["topic_permissions"].append(
                {
                    "user": user,
                    "vhost": vhost,
                    "exchange": "roost.events",
                    "write": p["topic"],
                    "read": ".*",
                }
            )
    return defs


def import_definitions(defs: dict[str, Any], management_url: str | None = None) -> None:
    """Load definitions into the running broker: through its management API when
    ``management_url`` (``http://user:password@broker:15672``) is given, else ``rabbitmqctl``
    (``ROOST_RABBITMQCTL`` overrides the command)."""
    if management_url:
        _post_definitions(defs, management_url)
        return
    command = shlex.split(os.environ.get("ROOST_RABBITMQCTL", "rabbitmqctl"))
    result = subprocess.run(
        [*command, "-q", "import_definitions"],
        input=json.dumps(defs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl import_definitions failed: {(result.stderr or result.stdout).strip()}"
        )


def _post_definitions(defs: dict[str, Any], management_url: str) -> None:
    parsed = urllib.parse.urlparse(management_url)
    user = urllib.parse.unquote(parsed.username or "")
    password = urllib.parse.unquote(parsed.password or "")
    netloc = parsed.hostname or "127.0.0.1"
    if parsed.port:
        netloc += f":{parsed.port}"
    url = urllib.parse.urlunparse(parsed._replace(netloc=netloc, path="/api/definitions"))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        url,
        data=json.dumps(defs).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60):
            pass
    except OSError as exc:  # HTTPError and URLError are OSErrors; neither shows the password
        raise RuntimeError(f"broker management API at {netloc}: {exc}") from None


def ensure(
    directory: Path,
    vhosts: list[str],
    *,
    site: str = "",
    admins: tuple[str, ...] = (),
    management_url: str | None = None,
) -> dict[str, str]:
    """Make the passwords (once) and load the users and their permissions on ``vhosts``."""
    passwords = ensure_passwords(directory, site)
    import_definitions(definitions(passwords, vhosts, admins=admins), management_url)
    return passwords


def add_vhost(vhost: str, directory: Path, site: str = "", admins: tuple[str, ...] = ()) -> None:
    """A virtual host with the permissions of the site's users (made already) and of
    ``admins``, in one call (a test's or benchmark's own vhost)."""
    defs = definitions(ensure_passwords(directory, site), [vhost], admins=admins)
    del defs["users"]  # only their permissions here: the users exist
    import_definitions(defs)


def remove(site: str) -> None:
    """Delete the site's users (a test run or benchmark that shared the broker, at its end)."""
    command = shlex.split(os.environ.get("ROOST_RABBITMQCTL", "rabbitmqctl"))
    for user in users(site):
        subprocess.run(
            [*command, "-q", "delete_user", user], capture_output=True, timeout=60, check=False
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roost_shared.brokerusers", description=__doc__)
    parser.add_argument("action", choices=["ensure", "definitions"])
    parser.add_argument("directory", type=Path, help="where the users' passwords are kept")
    parser.add_argument("--vhost", action="append", help="virtual host (default: /)")
    parser.add_argument(
        "--site",
        default=os.environ.get("ROOST_BROKER_SITE", ""),
        help="suffix of every user name, for a broker several sites share (ROOST_BROKER_SITE)",
    )
    parser.add_argument(
        "--management-url",
        default=os.environ.get("ROOST_BROKER_MANAGEMENT_URL"),
        help="the broker's management API, http://admin:password@host:15672 (default: "
        "ROOST_BROKER_MANAGEMENT_URL; unset: rabbitmqctl on this machine)",
    )
    args = parser.parse_args(argv)
    vhosts = args.vhost or ["/"]
    try:
        if args.action == "ensure":
            ensure(args.directory, vhosts, site=args.site, management_url=args.management_url)
            print(f"broker users {', '.join(users(args.site))} ready on {', '.join(vhosts)}")
        else:
            passwords = ensure_passwords(args.directory, args.site)
            print(json.dumps(definitions(passwords, vhosts), indent=2))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
