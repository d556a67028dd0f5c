"""Signing and verifying commands without a broker: what makes an agent refuse one."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from roost_shared.catalog import ConfigApply, Personality
from roost_shared.commands import (
    CommandSigner,
    CommandVerifier,
    Refusal,
    TrustedIssuers,
    agent_key,
    command,
    signed_bytes,
)
from roost_shared.events import Envelope, utcnow
from roost_shared.signing import BadKey, Signer, read_public_keys, signed_by

MAC = "02:00:00:00:00:07"
TARGET = agent_key(MAC).removeprefix("agent.")


@pytest.fixture
def keys() -> dict[str, Signer]:
    return {name: Signer.generate() for name in ("config", "service", "software")}


@pytest.fixture
def verifier(keys: dict[str, Signer], tmp_path: Path) -> CommandVerifier:
    trusted = tmp_path / "trusted.json"
    TrustedIssuers.write(trusted, {n: k.public_key for n, k in keys.items()})
    return CommandVerifier(TrustedIssuers.read(trusted), TARGET, tmp_path / "seq.json")


def apply(version: int = 1, deadline_s: float = 30) -> Envelope:
    payload = ConfigApply(version=version, hostname="worker-0", personality=Personality.worker)
    return command(payload, source="config", subject=MAC, deadline_s=deadline_s)


def refusal(verifier: CommandVerifier, envelope: Envelope) -> str:
    with pytest.raises(Refusal) as caught:
        verifier.check(envelope)
    return caught.value.reason


def wire(envelope: Envelope) -> Envelope:
    """As the agent reads it off the broker."""
    return Envelope.model_validate_json(envelope.model_dump_json(exclude_none=True))


def test_a_signed_command_survives_the_wire_and_runs_once(keys, verifier):
    env = wire(CommandSigner("config", keys["config"]).sign(apply(), agent_key(MAC)))
    verifier.check(env)
    verifier.ran(env)
    assert refusal(verifier, env) == "replayed"


def test_every_refusal_reason(keys, verifier):
    config = CommandSigner("config", keys["config"])
    assert refusal(verifier, wire(apply())) == "unsigned"
    service = CommandSigner("service", keys["service"])
    assert refusal(verifier, wire(service.sign(apply(), agent_key(MAC)))) == "wrong-signer"
    stranger = CommandSigner("config", Signer.generate())
    assert refusal(verifier, wire(stranger.sign(apply(), agent_key(MAC)))) == "bad-signature"
    elsewhere = config.sign(apply(), "agent.020000000008")
    assert refusal(verifier, wire(elsewhere)) == "misdirected"
    assert refusal(verifier, wire(config.sign(apply(deadline_s=-1), agent_key(MAC)))) == "expired"
    unknown = wire(config.sign(apply(), agent_key(MAC))).model_copy(update={"type": "x.y.z"})
    assert refusal(verifier, unknown) == "unknown-type"


def test_any_signed_field_changed_breaks_the_signature(keys, verifier):
    genuine = config_signed(keys)
    for change in (
        {"data": {**genuine.data, "version": 99}},
        {"id": "another"},
        {"seq": (genuine.seq or 0) + 1},
        {"deadline": (genuine.deadline or utcnow()) + timedelta(days=365)},
    ):
        assert refusal(verifier, genuine.model_copy(update=change)) == "bad-signature", change
    without = genuine.model_dump(mode="json")
    del without["deadline"]
    assert refusal(verifier, Envelope.model_validate(without)) == "bad-signature"


def config_signed(keys: dict[str, Signer], version: int = 1) -> Envelope:
    return wire(CommandSigner("config", keys["config"]).sign(apply(version), agent_key(MAC)))


def test_an_older_command_overtaken_by_a_newer_one_does_not_run(keys, verifier):
    signer = CommandSigner("config", keys["config"])
    older, newer = (wire(signer.sign(apply(v), agent_key(MAC))) for v in (1, 2))
    assert (older.seq or 0) < (newer.seq or 0)
    verifier.check(newer)
    verifier.ran(newer)
    assert refusal(verifier, older) == "replayed"


def test_sequence_numbers_keep_increasing_across_signers_of_one_issuer(keys):
    """A restarted issuer (or the next leader replica) starts above the last one's numbers."""
    first = CommandSigner("config", keys["config"])
    seqs = [first.next_seq() for _ in range(1000)]
    assert seqs == sorted(set(seqs))
    assert CommandSigner("config", keys["config"]).next_seq() > seqs[-1] - 1_000_000  # same clock


def test_the_agent_remembers_across_restarts_and_a_corrupt_record_reopens_nothing(
    keys, verifier, tmp_path
):
    env = config_signed(keys)
    verifier.check(env)
    verifier.ran(env)
    again = CommandVerifier(verifier.trusted, TARGET, verifier.seq_path)
    assert refusal(again, env) == "replayed"
    verifier.seq_path.write_text("{not json")
    corrupt = CommandVerifier(verifier.trusted, TARGET, verifier.seq_path)
    assert refusal(corrupt, env) == "replayed"
    corrupt.check(config_signed(keys, 2))  # what the issuer signs from now on still runs


def test_no_trusted_keys_refuses_everything(keys, tmp_path):
    verifier = CommandVerifier(None, TARGET, tmp_path / "seq.json")
    assert refusal(verifier, config_signed(keys)) == "unknown-signer"


def test_signing_needs_a_deadline(keys):
    undated = Envelope.of(
        ConfigApply(version=1, hostname="worker-0", personality=Personality.worker),
        source="config",
    )
    with pytest.raises(ValueError, match="no deadline"):
        CommandSigner("config", keys["config"]).sign(undated, agent_key(MAC))


def test_signed_bytes_do_not_depend_on_key_order_or_spacing(keys):
    env = config_signed(keys)
    shuffled = json.loads(env.model_dump_json())
    shuffled["data"] = dict(reversed(list(shuffled["data"].items())))
    assert signed_bytes(Envelope.model_validate(shuffled)) == signed_bytes(env)


def test_key_files(tmp_path):
    key = Signer.generate()
    path = tmp_path / "k" / "config.pem"
    key.write(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Signer.from_file(path).public_key == key.public_key
    assert "PRIVATE" not in repr(key) and key.pem().split("\n")[1] not in repr(key)
    pubs = tmp_path / "keys.pub"
    pubs.write_text(f"# site keys\n{key.public_key}\n\n")
    assert read_public_keys(pubs) == [key.public_key]
    assert signed_by(read_public_keys(pubs), b"m", key.sign(b"m")) == key.public_key
    pubs.write_text("not-a-key\n")
    with pytest.raises(BadKey, match=r"keys\.pub:1"):
        read_public_keys(pubs)
    (tmp_path / "bad.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
    )
    with pytest.raises(BadKey):
        Signer.from_file(tmp_path / "bad.pem")
    trusted = tmp_path / "trusted.json"
    trusted.write_text('{"config": "short"}')
    with pytest.raises(ValueError, match=r"trusted\.json"):
        TrustedIssuers.read(trusted)


def test_rotation_trusts_the_old_and_the_new_key_until_the_old_is_dropped(keys, tmp_path):
    new = Signer.generate()
    both = TrustedIssuers.of({"config": [keys["config"].public_key, new.public_key]})
    verifier = CommandVerifier(both, TARGET, tmp_path / "seq.json")
    verifier.check(config_signed(keys))
    verifier.check(wire(CommandSigner("config", new).sign(apply(), agent_key(MAC))))
    only_new = CommandVerifier(
        TrustedIssuers.of({"config": new.public_key}), TARGET, tmp_path / "s"
    )
    assert refusal(only_new, config_signed(keys)) == "bad-signature"
