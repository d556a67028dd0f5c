"""TLS for HTTP and AMQP: a service serves its API over HTTPS and talks to the broker over
``amqps://`` with the site's CA (``SSL_CERT_FILE``); a client that does not trust the CA is
refused, a half TLS configuration stops the service with one line, and an untrusted broker
certificate keeps the service from starting rather than letting it talk in clear."""

from __future__ import annotations

import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from roost_sim.ports import free_port
from roost_sim.processes import ManagedProcess, python_module
from tests.support.cli import clean_env, run_cli
from tests.support.fault import alarm
from tests.support.tls import make_pki, tls_proxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)


def _https_ready(url: str, ca: Path):
    ctx = ssl.create_default_context(cafile=ca)

    def check() -> bool:
        try:
            return httpx.get(url, verify=ctx, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


async def test_the_api_over_https_and_the_bus_over_amqps(stack, tmp_path):
    pki = make_pki(tmp_path / "pki")
    proxy_ctx = pki.server_context()
    with tls_proxy(proxy_ctx, ("127.0.0.1", 5672)) as amqps_port:
        amqps = stack.amqp_url.replace("amqp://", "amqps://").replace(
            "@127.0.0.1:5672/", f"@127.0.0.1:{amqps_port}/"
        )
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        fault = ManagedProcess(
            "fault-tls",
            python_module("roost_fault.app"),
            env={
                **stack.env(),
                "ROOST_AMQP_URL": amqps,
                "ROOST_DATABASE": f"roost_fault_{uuid.uuid4().hex[:8]}",
                "ROOST_STATE_DIR": str(tmp_path / "state"),
                "ROOST_PORT": str(port),
                "ROOST_TLS_CERT_FILE": str(pki.cert_file),
                "ROOST_TLS_KEY_FILE": str(pki.key_file),
                "SSL_CERT_FILE": str(pki.ca_file),  # the site's CA, for every client in it
            },
            log_path=tmp_path / "fault-tls.log",
            ready=_https_ready(f"{url}/readyz", pki.ca_file),
        ).start()
        try:
            fault.wait_ready(60)
            headers = {"Authorization": f"Bearer {stack.tokens.admin}"}
            async with httpx.AsyncClient(
                base_url=url, verify=pki.client_context(), headers=headers, timeout=5
            ) as https:
                ready = (await https.get("/readyz")).json()
                assert ready["checks"]["bus"] and ready["checks"]["database"], ready
                # An alarm published on the broker reaches the service through its amqps
                # connection, and is read back over HTTPS.
                bus = await stack.bus()
                entity = f"host=worker-0.tls={uuid.uuid4().hex[:6]}"
                await bus.publish([alarm(entity, "100.101", "major")])

                async def listed() -> bool:
                    r = await https.get("/v1/alarms")
                    return any(a["entity_instance_id"] == entity for a in r.json()["alarms"])

                await eventually(listed, timeout=15, what="the alarm consumed over amqps")
            # The CLI: with the site's CA it lists the alarm; without, one line says why.
            cli_env = clean_env(tmp_path / "home", ROOST_TOKEN=stack.tokens.admin)
            run = await run_cli(
                ["--fault-url", url, "--format", "json", "alarm-list"],
                {**cli_env, "SSL_CERT_FILE": str(pki.ca_file)},
            )
            assert run.code == 0 and entity in run.out, run.err
            cli_env.pop("SSL_CERT_FILE", None)
            run = await run_cli(["--fault-url", url, "alarm-list"], cli_env)
            assert run.code != 0
            assert "has a certificate this machine does not trust" in run.error_line
            # Plain HTTP on the HTTPS port is not served; a client without the CA is refused.
            async with httpx.AsyncClient(timeout=5) as plain:
                with pytest.raises(httpx.HTTPError):
                    await plain.get(f"http://127.0.0.1:{port}/healthz")
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await plain.get(f"{url}/healthz")
        finally:
            fault.stop()


async def test_a_broker_certificate_the_site_does_not_trust_stops_the_start(stack, tmp_path):
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")  # a CA that did not sign the proxy's certificate
    with tls_proxy(pki.server_context(), ("127.0.0.1", 5672)) as amqps_port:
        amqps = stack.amqp_url.replace("amqp://", "amqps://").replace(
            "@127.0.0.1:5672/", f"@127.0.0.1:{amqps_port}/"
        )
        log = tmp_path / "fault-untrusting.log"
        fault = ManagedProcess(
            "fault-untrusting",
            python_module("roost_fault.app"),
            env={
                **stack.env(),
                "ROOST_AMQP_URL": amqps,
                "ROOST_DATABASE": f"roost_fault_{uuid.uuid4().hex[:8]}",
                "ROOST_PORT": str(free_port()),
                "SSL_CERT_FILE": str(other.ca_file),
            },
            log_path=log,
        ).start()
        try:

            def refused() -> bool:
                return "CERTIFICATE_VERIFY_FAILED" in log.read_text(errors="replace")

            await eventually(refused, timeout=30, what="the broker's certificate refused")
            assert fault.proc is not None and fault.proc.poll() is None  # still retrying
        finally:
            fault.stop()


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"ROOST_TLS_CERT_FILE": "{cert}"}, "TLS needs both files; ROOST_TLS_KEY_FILE is not set"),
        (
            {"ROOST_TLS_CERT_FILE": "{cert}", "ROOST_TLS_KEY_FILE": "/nonexistent/key.pem"},
            "ROOST_TLS_KEY_FILE=/nonexistent/key.pem is not a readable file",
        ),
    ],
)
def test_a_half_tls_configuration_stops_the_service_with_one_line(stack, tmp_path, env, said):
    pki = make_pki(tmp_path / "pki")
    env = {k: v.format(cert=pki.cert_file) for k, v in env.items()}
    done = subprocess.run(
        [sys.executable, "-m", "roost_fault.app"],
        env={**stack.env(), "ROOST_PORT": str(free_port()), **env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
