"""docker-compose.yml and the Dockerfiles cannot run here (no Docker engine), so they are kept
honest by reading them against the code: names, ports, settings, and what each image holds."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from roost_shared.settings import RoostSettings
from roost_sim.ports import SERVICE_PORTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ROOST_SERVICES = [n for n in COMPOSE["services"] if n in SERVICE_PORTS]


def settings_class(name: str) -> type[RoostSettings]:
    """The service's own settings class (the RoostSettings subclass its settings module defines)."""
    module = importlib.import_module(f"roost_{name}.settings")
    return next(
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, RoostSettings)
        and v is not RoostSettings
        and v.__module__ == module.__name__
    )


def test_every_service_package_is_in_compose():
    packaged = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "Dockerfile").exists())
    assert sorted(ROOST_SERVICES) == packaged


def test_compose_ports_env_and_health_match_the_code():
    for name in ROOST_SERVICES:
        spec = COMPOSE["services"][name]
        settings = settings_class(name)
        port = SERVICE_PORTS[name]
        assert settings.model_fields["port"].default == port, name
        assert spec["ports"][0] == f"127.0.0.1:{port}:{port}", name
        for extra in spec["ports"][1:]:  # UDP receivers the agents send to, from other hosts
            udp = int(extra.removesuffix("/udp").split(":")[-1])
            assert extra.endswith("/udp") and udp in (
                getattr(settings.model_fields.get(f), "default", None)
                for f in ("heartbeat_port", "sm_link_port")
            ), (name, extra)
        env = spec["environment"]
        assert str(env["ROOST_PORT"]) == str(port)
        for key in env:
            assert key.startswith("ROOST_"), key
            assert key.removeprefix("ROOST_").lower() in settings.model_fields, key
        assert "/readyz" in " ".join(spec["healthcheck"]["test"])
        assert set(spec["depends_on"]) == {"rabbitmq", "broker-users", "mongo"}
        # Each connects as its own broker user, with the password broker-users made.
        assert "broker-users:/run/roost/broker:ro" in spec["volumes"], name
    users = COMPOSE["services"]["broker-users"]
    assert users["command"][2] == "roost_shared.brokerusers"
    assert COMPOSE["x-roost-env"]["ROOST_BROKER_PASSWORDS_DIR"] == "/run/roost/broker"
    # Transactions need a replica set.
    assert "--replSet" in COMPOSE["services"]["mongo"]["command"]


def test_dockerfiles_are_minimal_non_root_and_expose_their_port():
    for name in ROOST_SERVICES:
        text = (ROOT / "services" / name / "Dockerfile").read_text()
        copied = re.findall(r"^COPY (\S+)", text, flags=re.M)
        assert copied == ["shared", f"services/{name}"], "only its own code goes in its image"
        assert re.search(r"^USER (?!root)\w+", text, flags=re.M)
        assert f"EXPOSE {SERVICE_PORTS[name]}" in text
        assert "secantus" not in text.lower(), "GPL SecantusDB never ships in a service image"
        entry = re.search(r'^CMD \["([\w-]+)"\]', text, flags=re.M)[1]
        pyproject = (ROOT / "services" / name / "pyproject.toml").read_text()
        assert f'{entry} = "roost_{name}.app:main"' in pyproject
        assert "secantus" not in pyproject.lower()


def test_the_control_plane_group_is_a_valid_declaration_of_real_services():
    from roost_service import logic
    from roost_service.models import ServiceGroupSpec

    doc = yaml.safe_load((ROOT / "deploy/control-plane/roost-control.yaml").read_text())
    name = doc.pop("name")
    spec = ServiceGroupSpec.model_validate(doc)
    assert logic.check_group(name, spec) == []
    for service in spec.services:
        assert service.name in SERVICE_PORTS, service.name
        assert service.start[0].endswith(f"roost-{service.name}")  # the package's script
        assert f":{SERVICE_PORTS[service.name]}/readyz" in str(service.probe.url)
