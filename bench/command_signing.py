"""What signing commands costs: commands/s on one core, issuer side (build and sign the message
the relay publishes) and agent side (parse and check what arrives), against the same path
unsigned (the envelope as it was before commands were signed). Also the agent's memory for the
verifier, PyNaCl against ``cryptography``'s bindings (why the agent uses PyNaCl). No broker:
this isolates the CPU the signature adds to each command; the broker round trip is the same
either way. Bounded: a few seconds per figure."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import report, result

from roost_shared.bus import to_message
from roost_shared.catalog import InstanceAssign
from roost_shared.commands import CommandSigner, CommandVerifier, TrustedIssuers, agent_key, command
from roost_shared.events import Envelope
from roost_shared.signing import Signer

MAC = "02:00:00:00:00:01"
SECONDS = 2.0


def payload() -> InstanceAssign:
    """A realistic command: an instance assignment with its spec."""
    return InstanceAssign(
        group="gw",
        service="gateway",
        instance_id="gw-gateway-worker-0",
        role="active",
        fencing_token=42,
        spec={"name": "gateway", "argv": ["/usr/bin/gateway", "--port", "8080"]},
    )


def rate(step: Callable[[], object]) -> float:
    """Calls per second of ``step`` over about SECONDS of one core."""
    n, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < SECONDS:
        for _ in range(100):
            step()
        n += 100
    return n / elapsed


def rss_delta_mb(imports: str) -> float:
    """How much a fresh interpreter grows importing and using ``imports`` (MB)."""
    code = (
        "import asyncio, ssl, json\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        f"a = rss()\n{imports}\nprint(rss() - a)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    signer_key = Signer.generate()
    signer = CommandSigner("service", signer_key)
    key = agent_key(MAC)
    with tempfile.TemporaryDirectory() as tmp:
        verifier = CommandVerifier(
            TrustedIssuers.of({"service": signer_key.public_key}),
            key.removeprefix("agent."),
            Path(tmp) / "seq.json",
        )
        unsigned_body = to_message(
            command(payload(), source="service", subject=MAC, deadline_s=60)
        ).body
        signed_body = to_message(
            signer.sign(command(payload(), source="service", subject=MAC, deadline_s=60), key)
        ).body

        def issue_unsigned() -> None:
            to_message(command(payload(), source="service", subject=MAC, deadline_s=60))

        def issue_signed() -> None:
            env = command(payload(), source="service", subject=MAC, deadline_s=60)
            to_message(signer.sign(env, key))

        def receive_unsigned() -> None:
            Envelope.model_validate_json(unsigned_body)

        def receive_signed() -> None:
            verifier.check(Envelope.model_validate_json(signed_body))

        issue = (rate(issue_unsigned), rate(issue_signed))
        receive = (rate(receive_unsigned), rate(receive_signed))
    nacl = rss_delta_mb(
        "from nacl.signing import SigningKey\n"
        "k = SigningKey.generate(); k.verify_key.verify(k.sign(b'x'))"
    )
    crypto = rss_delta_mb(
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
        "k = Ed25519PrivateKey.generate(); k.public_key().verify(k.sign(b'x'), b'x')"
    )
    report(
        "command_signing",
        [
            result("issuer: commands/s signed, one core", issue[1], "cmd/s", "unsigned", issue[0]),
            result(
                "agent: commands/s checked, one core", receive[1], "cmd/s", "unsigned", receive[0]
            ),
            result(
                "agent memory for Ed25519 (PyNaCl)",
                nacl,
                "MB",
                "cryptography",
                crypto,
                higher_is_better=False,
            ),
        ],
    )


if __name__ == "__main__":
    main()
