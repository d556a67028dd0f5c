"""Commands to a host's agent: direct exchange ``roost.commands``, one routing key per agent,
each signed by the service that issues it.

The key is ``agent.<management MAC without colons>``: the MAC names a node before it has a
hostname (a newly discovered node) and does not change when the operator renames it.

Nothing about a command is believed for having arrived on the agent's queue: anyone holding the
site's broker credentials can publish there. So every command carries an Ed25519 signature by
its issuing service over what it means: its type, the host it is for, its id, its deadline, a
sequence number and its payload (:func:`signed_bytes`). An agent holds the issuers' public keys
(provisioned with the node, never taken from the bus) and refuses (:class:`CommandVerifier`) a
command that is unsigned, signed by a key it does not know or by a service that may not issue
that type (only ``config`` sends ``config.apply``), meant for another host, without a deadline
or past it, or whose sequence number is not above the last one it ran from that issuer (a
replay, or an old command overtaken by a newer one).

Sequence numbers are microseconds of the issuer's clock, never below the last one it used
(:class:`CommandSigner`): they keep increasing across the issuer's restarts and from one leader
replica to the next without any shared counter. Commands are signed when they are published,
not when they are written to the outbox, so that the numbers follow the order the broker
delivers them in.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey
from pydantic import BaseModel

from roost_shared.events import Envelope, utcnow
from roost_shared.files import write_atomic
from roost_shared.signing import BadKey, Signer, verifies, verify_key

log = logging.getLogger(__name__)

#: The one service that may issue each command type; an agent refuses any other signer.
ISSUERS: dict[str, str] = {
    "config.apply": "config",
    "service.instance.assign": "service",
    "service.instance.remove": "service",
    "service.instance.restart": "service",
    "software.install": "software",
    "software.rollback": "software",
}

#: Refusal reasons that say someone tried to make the agent act: counted towards an alarm.
FORGERY_REASONS = frozenset(
    {"unsigned", "unknown-signer", "wrong-signer", "bad-signature", "misdirected", "replayed"}
)


def agent_key(mgmt_mac: str) -> str:
    """The routing key (and queue name stem) of the agent with this management MAC."""
    return "agent." + mgmt_mac.replace(":", "").lower()


def command(
    payload: BaseModel, *, source: str, subject: str, deadline_s: float, type: str | None = None
) -> Envelope:
    """A command envelope that expires ``deadline_s`` from now (signed when published)."""
    env = Envelope.of(payload, source=source, subject=subject, type=type)
    env.deadline = utcnow() + timedelta(seconds=deadline_s)
    return env


def expired(envelope: Envelope) -> bool:
    """True once a command's deadline has passed (it must then be rejected, not run)."""
    return envelope.deadline is not None and utcnow() > envelope.deadline


def signed_bytes(envelope: Envelope) -> bytes:
    """What a command's signature covers, in one canonical form (both ends build it from the
    parsed envelope, so JSON spacing or key order on the wire do not matter)."""
    deadline = envelope.deadline
    fields: list[Any] = [
        "roost-command-1",
        envelope.type,
        envelope.target,
        envelope.id,
        None if deadline is None else round(deadline.timestamp() * 1_000_000),
        envelope.seq,
        envelope.signer,
        envelope.data,
    ]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class CommandSigner:
    """The issuing service's side: signs a command for the agent whose queue it goes to."""

    def __init__(self, name: str, key: Signer) -> None:
        self.name = name
        self._key = key
        self._last_seq = 0

    def next_seq(self) -> int:
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    def sign(self, envelope: Envelope, routing_key: str) -> Envelope:
        """A signed copy of ``envelope``, bound to the agent of ``routing_key``."""
        if envelope.deadline is None:
            raise ValueError(f"command {envelope.type} has no deadline: every command needs one")
        signed = envelope.model_copy(
            update={
                "target": routing_key.removeprefix("agent."),
                "seq": self.next_seq(),
                "signer": self.name,
                "signature": None,
            }
        )
        signed.signature = base64.b64encode(self._key.sign(signed_bytes(signed))).decode()
        return signed


def load_signers(
    key: str | None, key_file: Path | None, keys_dir: Path | None, name: str
) -> dict[str, Signer]:
    """The issuing service's own signing key: ``key`` (PEM text), ``key_file``, else
    ``<keys_dir>/<name>.pem`` if it exists; empty when none names one (the process then cannot
    send commands)."""
    if key:
        return {name: Signer.from_pem(key)}
    path = key_file or (keys_dir / f"{name}.pem" if keys_dir is not None else None)
    if path is None or (key_file is None and not path.exists()):
        return {}
    return {name: Signer.from_file(path)}


#: What ``keygen`` writes beside the private keys: the public keys every agent is given.
TRUST_FILE = "command-keys.json"


def ensure_site_keys(keys_dir: Path, trust_file: Path | None = None) -> Path:
    """Make the site's command signing keys where missing (existing ones are kept): one private
    key per issuer, ``<keys_dir>/<issuer>.pem`` (mode 0600, for that service alone), and the
    public keys for the agents, ``trust_file`` (default ``<keys_dir>/command-keys.json``).
    Returns the trust file's path."""
    trust_file = trust_file or keys_dir / TRUST_FILE
    public: dict[str, str] = {}
    for issuer in sorted(set(ISSUERS.values())):
        path = keys_dir / f"{issuer}.pem"
        if path.exists():
            signer = Signer.from_file(path)
        else:
            signer = Signer.generate()
            signer.write(path)
        public[issuer] = signer.public_key
    keys_dir.chmod(0o700)
    TrustedIssuers.write(trust_file, public)
    return trust_file


class Refusal(Exception):
    """A command the agent must not run; ``reason`` is one short word for logs and metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def forgery(self) -> bool:
        return self.reason in FORGERY_REASONS


@dataclass(frozen=True, slots=True)
class TrustedIssuers:
    """The issuers' public keys an agent trusts, by issuer name: one each, or several while a
    key is being rotated (the old and the new, until every issuer signs with the new one)."""

    keys: dict[str, list[VerifyKey]]

    @classmethod
    def of(cls, public_keys: dict[str, str | list[str]]) -> TrustedIssuers:
        return cls(
            {
                str(name): [verify_key(str(k)) for k in ([keys] if isinstance(keys, str) else keys)]
                for name, keys in public_keys.items()
            }
        )

    @classmethod
    def read(cls, path: Path) -> TrustedIssuers:
        """From a JSON file ``{"config": "<base64 public key>", "service": [old, new], ...}``; a
        corrupt file fails here, at start, not at the first command."""
        try:
            document = json.loads(path.read_text())
            if not isinstance(document, dict):
                raise ValueError("expected a JSON object of issuer name to public key(s)")
            return cls.of(document)
        except (ValueError, TypeError, BadKey) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @staticmethod
    def write(path: Path, public_keys: dict[str, str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(public_keys, indent=2, sort_keys=True) + "\n")


class CommandVerifier:
    """The agent's side: decides whether a command may run, and remembers, per issuer, the
    highest sequence number it ran (in ``seq_path``, so a restart does not reopen replays)."""

    def __init__(self, trusted: TrustedIssuers | None, target: str, seq_path: Path) -> None:
        self.trusted = trusted
        self.target = target
        self.seq_path = seq_path
        self.last_seq: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self.seq_path.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError):
            # A corrupt file must not reopen replays: refuse everything until a newer command
            # than "now" arrives, which every issuer's next command is (its seq is its clock).
            log.error("%s is unreadable; only commands issued from now on will run", self.seq_path)
            now = time.time_ns() // 1000
            return {issuer: now for issuer in set(ISSUERS.values())}

    def check(self, envelope: Envelope) -> None:
        """Raise :class:`Refusal` unless ``envelope`` may run now."""
        issuer = ISSUERS.get(envelope.type)
        if issuer is None:
            raise Refusal("unknown-type", f"{envelope.type} is not a command agents run")
        if envelope.signature is None or envelope.signer is None or envelope.seq is None:
            raise Refusal("unsigned", "the command carries no signature")
        if self.trusted is None:
            raise Refusal("unknown-signer", "this agent was given no issuers' keys")
        if envelope.signer != issuer:
            raise Refusal(
                "wrong-signer", f"{envelope.type} is {issuer}'s to send, not {envelope.signer}'s"
            )
        keys = self.trusted.keys.get(envelope.signer)
        if not keys:
            raise Refusal("unknown-signer", f"no key for issuer {envelope.signer}")
        if envelope.target != self.target:
            raise Refusal("misdirected", f"meant for agent {envelope.target}")
        try:
            signature = base64.b64decode(envelope.signature, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal("bad-signature", "the signature is not base64") from None
        message = signed_bytes(envelope)
        if not any(verifies(key, message, signature) for key in keys):
            raise Refusal("bad-signature", f"not signed by {envelope.signer}'s key")
        if envelope.deadline is None:
            raise Refusal("no-deadline", "the command has no deadline")
        if expired(envelope):
            raise Refusal("expired", f"its deadline {envelope.deadline} has passed")
        last = self.last_seq.get(envelope.signer, 0)
        if envelope.seq <= last:
            raise Refusal(
                "replayed", f"sequence {envelope.seq} is not above {last}, the last one run"
            )

    def ran(self, envelope: Envelope) -> None:
        """Record that ``envelope`` (checked) was handled: nothing at or below its sequence number
        from its issuer runs again. Called after the handler, so a command whose handling failed
        and is delivered again still runs once."""
        assert envelope.signer is not None and envelope.seq is not None
        if envelope.seq > self.last_seq.get(envelope.signer, 0):
            self.last_seq[envelope.signer] = envelope.seq
            write_atomic(self.seq_path, json.dumps(self.last_seq, sort_keys=True).encode())


def main(argv: list[str] | None = None) -> int:
    """``python -m roost_shared.commands keygen DIR``: the site's command signing keys."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m roost_shared.commands", description=__doc__)
    parser.add_argument("action", choices=["keygen"])
    parser.add_argument("dir", type=Path, help="where the keys go (made if missing)")
    parser.add_argument(
        "--env",
        action="store_true",
        help="print them instead as docker-compose .env lines (ROOST_<ISSUER>_COMMAND_KEY, "
        "ROOST_COMMAND_KEYS)",
    )
    args = parser.parse_args(argv)
    trust = ensure_site_keys(args.dir)
    if args.env:
        for issuer in sorted(set(ISSUERS.values())):
            line = Signer.from_file(args.dir / f"{issuer}.pem").one_line()
            print(f"ROOST_{issuer.upper()}_COMMAND_KEY={line}")
        print(f"ROOST_COMMAND_KEYS='{json.dumps(json.loads(trust.read_text()))}'")
        return 0
    issuers = ", ".join(f"{i}.pem" for i in sorted(set(ISSUERS.values())))
    print(
        f"private keys in {args.dir}: {issuers} (each to its service alone, "
        f"ROOST_COMMAND_KEY_FILE)\npublic keys for every agent: {trust} "
        "(ROOST_COMMAND_KEYS_FILE)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
