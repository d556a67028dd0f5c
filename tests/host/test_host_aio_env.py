"""`make run` tells config where the host service is, so it refuses deleting unlocked hosts."""

from roost_sim.aio import service_env


def test_config_gets_the_host_service_url_and_a_token_when_host_is_installed():
    env = service_env("config", ["config", "fault", "host"], {"config": "config-peer-token"})
    assert env == {
        "ROOST_HOST_SERVICE_URL": "http://127.0.0.1:8103",
        "ROOST_HOST_SERVICE_TOKEN": "config-peer-token",
    }


def test_nothing_extra_without_the_host_service_or_for_other_services():
    assert service_env("config", ["config", "fault"], {"config": "t"}) == {}
    assert service_env("fault", ["config", "fault", "host"], {"config": "t"}) == {}
    assert service_env("host", ["config", "fault", "host"], {"config": "t"}) == {}
