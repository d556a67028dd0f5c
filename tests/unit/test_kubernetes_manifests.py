"""deploy/kubernetes cannot be applied here (no cluster), so it is kept honest two ways: every
document deserializes into the ``kubernetes`` client's model for its kind without losing a field
(a misspelt or misplaced key is dropped by the model and caught here), and the manifests are read
against the code: names, ports, settings, probes, budgets, users."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from roost_shared.settings import RoostSettings
from roost_sim.ports import SERVICE_PORTS

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
FILES = sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
DOCS: list[tuple[str, dict[str, Any]]] = [
    (p.name, d) for p in FILES for d in yaml.safe_load_all(p.read_text()) if d is not None
]
API = kubernetes.client.ApiClient()
#: Workloads whose pods run Roost's own images (the agent's is deploy/agent/Dockerfile).
ROOST_IMAGE = re.compile(r"^roost/([a-z]+):0\.1\.0$")


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == kind}


def model_name(doc: dict[str, Any]) -> str:
    """``apps/v1`` ``Deployment`` → ``V1Deployment`` (the client's class for it)."""
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def dropped(given: Any, back: Any, path: str = "") -> list[str]:
    """Paths in ``given`` that the model's round trip lost or changed (defaults it adds are
    fine: only what the manifest says is compared)."""
    if isinstance(given, dict):
        if not isinstance(back, dict):
            return [path or "/"]
        return [
            p
            for k, v in given.items()
            for p in ([f"{path}.{k}"] if k not in back else dropped(v, back[k], f"{path}.{k}"))
        ]
    if isinstance(given, list):
        if not isinstance(back, list) or len(back) != len(given):
            return [path]
        return [
            p
            for i, (g, b) in enumerate(zip(given, back, strict=True))
            for p in dropped(g, b, f"{path}[{i}]")
        ]
    return [] if given == back or str(given) == str(back) else [path]


def settings_class(name: str) -> type[RoostSettings]:
    module = importlib.import_module(f"roost_{name}.settings")
    return next(
        v
        for v in vars(module).values()
        if isinstance(v, type)
        and issubclass(v, RoostSettings)
        and v is not RoostSettings
        and v.__module__ == module.__name__
    )


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment, StatefulSet, DaemonSet and Job."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for _, d in DOCS
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def roost_containers() -> list[tuple[str, dict[str, Any]]]:
    """(service name from the image, container) of every long-running Roost container."""
    found = []
    for _, spec in pod_specs():
        for c in spec["containers"]:
            if m := ROOST_IMAGE.match(c["image"]):
                found.append((m[1], c))
    return found


def test_every_document_is_a_valid_kubernetes_object():
    assert DOCS
    for file, doc in DOCS:
        name = model_name(doc)
        model = getattr(kubernetes.client, name, None)
        assert model is not None, f"{file}: unknown kind {doc['apiVersion']} {doc['kind']}"
        obj = API._ApiClient__deserialize(doc, name)
        assert isinstance(obj, model)
        lost = dropped(doc, API.sanitize_for_serialization(obj))
        assert not lost, f"{file} {doc['kind']}/{doc['metadata']['name']}: {lost}"
        if doc["kind"] != "Namespace" and doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "roost", (file, doc["metadata"]["name"])


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in FILES]
    assert kustomization["namespace"] == "roost"


def test_every_packaged_service_is_a_deployment_with_its_port_probes_and_service():
    deployments = of_kind("Deployment")
    services = of_kind("Service")
    packaged = {p.name for p in (ROOT / "services").iterdir() if (p / "Dockerfile").exists()}
    assert packaged <= set(deployments)
    for name, dep in deployments.items():
        port = settings_class(name).model_fields["port"].default
        assert port == SERVICE_PORTS[name]
        pod = dep["spec"]["template"]
        # Leader leases make the loops safe with replicas; host, service and software keep one
        # for their UDP endpoints, operator actions and release volume (see each manifest).
        replicated = name in ("config", "fault", "dashboard")
        assert dep["spec"]["replicas"] == (2 if replicated else 1)
        # Replicated: rolled one pod at a time, never below the count (the lease keeps one copy
        # of each loop); the others are recreated (a second pod would be wrong even briefly).
        strategy = dep["spec"]["strategy"]
        if replicated:
            assert strategy == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            }
        else:
            assert strategy["type"] == "Recreate"
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (c,) = pod["spec"]["containers"]
        assert c["image"] == f"roost/{name}:0.1.0"
        http = next(p for p in c["ports"] if p["name"] == "http")
        assert http["containerPort"] == port
        env = {e["name"]: e for e in c.get("env", [])}
        assert env["ROOST_PORT"]["value"] == str(port)
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        svc = services[name]
        assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"} in svc[
            "spec"
        ]["ports"]


def udp_port(service: str, port_name: str) -> int:
    (c,) = of_kind("Deployment")[service]["spec"]["template"]["spec"]["containers"]
    (p,) = [p for p in c["ports"] if p["name"] == port_name]
    assert p["protocol"] == "UDP"
    return p["containerPort"]


def test_udp_paths_reach_the_receivers_the_agents_are_pointed_at():
    from roost_host.settings import HostSettings
    from roost_service.settings import ServiceSettings

    assert udp_port("host", "heartbeat") == HostSettings.model_fields["heartbeat_port"].default
    assert udp_port("service", "sm-link") == ServiceSettings.model_fields["sm_link_port"].default
    services = of_kind("Service")
    agent = of_kind("DaemonSet")["agent"]
    (c,) = agent["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    for var, svc, target in [
        ("ROOST_HEARTBEAT_ADDR", "host-heartbeat", "heartbeat"),
        ("ROOST_SM_LINK_ADDR", "service-link", "sm-link"),
    ]:
        (port,) = services[svc]["spec"]["ports"]
        assert services[svc]["spec"]["type"] == "NodePort"
        assert port["targetPort"] == target and port["protocol"] == "UDP"
        assert env[var]["value"] == f"$(NODE_IP):{port['nodePort']}"
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    spec = agent["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert any("control-plane" in t["key"] for t in spec["tolerations"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/roost-agent"
    assert "secret" in volumes["bmc"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["bmc"]["readOnly"] is True


def test_every_roost_setting_named_exists_in_the_code_and_every_secret_key_exists():
    configmaps, secrets = of_kind("ConfigMap"), of_kind("Secret")
    stores = {"configMapRef": configmaps, "secretRef": secrets}
    for service, c in roost_containers():
        fields = settings_class(service).model_fields
        names = [e["name"] for e in c.get("env", [])]
        for source in c.get("envFrom", []):
            ((ref, target),) = source.items()
            doc = stores[ref][target["name"]]
            names += list(doc.get("data") or {}) + list(doc.get("stringData") or {})
        for name in names:
            if name.startswith("ROOST_"):
                assert name.removeprefix("ROOST_").lower() in fields, (service, name)
            else:
                assert name == "NODE_IP", (service, name)  # only the downward-API helper
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                doc = secrets[ref["name"]]
                keys = set(doc.get("stringData") or {}) | set(doc.get("data") or {})
                if doc.get("type") == "kubernetes.io/service-account-token":
                    keys |= {"token", "ca.crt", "namespace"}
                assert ref["key"] in keys, (service, e["name"])
    for name, doc in configmaps.items():
        if name == "roost-common":
            for key in doc["data"]:
                assert key.removeprefix("ROOST_").lower() in RoostSettings.model_fields, key


def test_every_deployment_and_statefulset_has_one_budget():
    budgets = of_kind("PodDisruptionBudget")
    for _, doc in DOCS:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        matching = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, doc["metadata"]["name"]
        assert matching[0]["spec"].get("maxUnavailable") == 1


def test_stateful_backends_are_three_node_clusters():
    sets = of_kind("StatefulSet")
    services = of_kind("Service")
    for name in ("rabbitmq", "mongo"):
        spec = sets[name]["spec"]
        assert spec["replicas"] == 3
        assert services[spec["serviceName"]]["spec"]["clusterIP"] == "None"
        assert spec["volumeClaimTemplates"]
    assert sets["rabbitmq"]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "rabbitmq:3.13-management"
    )
    assert (
        "rabbitmq_peer_discovery_k8s"
        in of_kind("ConfigMap")["rabbitmq-config"]["data"]["enabled_plugins"]
    )
    mongo = sets["mongo"]["spec"]["template"]["spec"]["containers"][0]
    assert mongo["command"][mongo["command"].index("--replSet") + 1] == "rs0"
    assert "rs.initiate" in str(of_kind("Job")["mongo-rs-init"])
    url = of_kind("ConfigMap")["roost-common"]["data"]["ROOST_MONGO_URL"]
    assert "replicaSet=rs0" in url and url.count("mongo-headless") == 3


def test_non_root_everywhere_with_resources():
    for name, spec in pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, name
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert "ALL" in c["securityContext"]["capabilities"]["drop"]
            assert c.get("securityContext", {}).get("runAsUser", pod["runAsUser"]) != 0
            assert c["resources"]["requests"] and c["resources"]["limits"], (name, c["name"])
            if ROOST_IMAGE.match(c["image"]):
                assert pod["runAsUser"] == 10001  # the Dockerfiles' user
        for c in spec.get("initContainers", []):
            if c.get("securityContext", {}).get("runAsUser", pod["runAsUser"]) != 0:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
                assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, c["name"]
                assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
                continue
            # The one root exception: the agent's hostPath state dir is handed to uid 10001.
            assert (name, c["name"]) == ("agent", "state-owner")
            assert c["command"][0] == "chown"
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
