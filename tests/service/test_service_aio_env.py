"""``make run`` tells the service service where the config service is (member host checks)."""

from roost_sim.aio import service_env


def test_service_gets_the_config_url_and_its_own_peer_token():
    peers = {"service": "service-peer-token", "config": "config-peer-token"}
    env = service_env("service", ["config", "fault", "host", "service"], peers)
    assert env == {
        "ROOST_CONFIG_SERVICE_URL": "http://127.0.0.1:8101",
        "ROOST_CONFIG_SERVICE_TOKEN": "service-peer-token",
    }
    assert service_env("service", ["service"], peers) == {}
