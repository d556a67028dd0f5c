"""A small fake Kubernetes API server for cordon/drain tests.

It serves, over real HTTP on 127.0.0.1, the paths the official ``kubernetes`` client calls for
cordon, uncordon and drain, with realistic JSON (``kind``/``apiVersion``/``metadata``) so the
client's model deserialisation runs as against a real API server:

- ``GET /api/v1/nodes/{name}`` and ``PATCH /api/v1/nodes/{name}`` (strategic merge or JSON merge
  patch of the node object; JSON patch and anything else answers 415, as the API server does);
- ``GET /api/v1/pods?fieldSelector=...`` (``key=value``, ``key==value``, ``key!=value`` terms on
  ``spec.nodeName``, ``metadata.name``, ``metadata.namespace``, ``status.phase``);
- ``GET /api/v1/namespaces/{ns}/pods/{name}``;
- ``POST /api/v1/namespaces/{ns}/pods/{name}/eviction``: a pod covered by a PodDisruptionBudget
  with no disruptions allowed answers 429 with a ``Status`` body, like the API server; a budget
  can free itself after a number of refused evictions. An accepted eviction marks the pod
  terminating (``deletionTimestamp``) and deletes it after its termination delay.

State is seeded and inspected directly (``add_node``, ``add_pod``, ``add_pdb``, ``nodes``,
``pods``, ``requests``). The server runs as a task on the caller's event loop; the client's
synchronous calls run in threads, so the two never block each other.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MERGE_PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, **details: Any) -> JSONResponse:
    """A ``metav1.Status`` error body, as the API server sends with every failure."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=code)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge (enough of strategic merge for node specs): ``null`` deletes a key."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


@dataclass
class FakePdb:
    """A PodDisruptionBudget reduced to what eviction needs."""

    name: str
    namespace: str
    match_labels: dict[str, str]
    disruptions_allowed: int = 0
    #: After this many refused evictions the budget allows one more disruption (None: never).
    release_after: int | None = None
    refused: int = 0

    def covers(self, pod: dict[str, Any]) -> bool:
        labels = pod["metadata"].get("labels") or {}
        return pod["metadata"]["namespace"] == self.namespace and all(
            labels.get(k) == v for k, v in self.match_labels.items()
        )


@dataclass
class FakeKube:
    """Cluster state plus the HTTP app that serves it; ``start()``/``stop()`` run it."""

    token: str | None = None
    termination_delay_s: float = 0.2
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pdbs: list[FakePdb] = field(default_factory=list)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    evictions: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _resource_version: int = 1000

    # -- seeding and inspection -------------------------------------------------------------

    def _next_rv(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def add_node(self, name: str) -> dict[str, Any]:
        node = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_rv(),
                "creationTimestamp": _now(),
                "labels": {"kubernetes.io/hostname": name},
            },
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        self.nodes[name] = node
        return node

    def add_pod(
        self,
        name: str,
        node: str,
        *,
        namespace: str = "default",
        owner_kind: str | None = "ReplicaSet",
        mirror: bool = False,
        labels: dict[str, str] | None = None,
        termination_delay_s: float | None = None,
    ) -> dict[str, Any]:
        """A running pod on ``node``; ``owner_kind`` None makes it unmanaged, ``mirror`` a
        static pod's mirror (annotated, owned by the Node)."""
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_rv(),
            "creationTimestamp": _now(),
            "labels": labels or {"app": name},
        }
        if mirror:
            metadata["annotations"] = {"kubernetes.io/config.mirror": uuid.uuid4().hex}
            owner_kind = "Node"
        if owner_kind:
            owner_name = node if owner_kind == "Node" else f"{name}-owner"
            metadata["ownerReferences"] = [
                {
                    "apiVersion": "v1" if owner_kind == "Node" else "apps/v1",
                    "kind": owner_kind,
                    "name": owner_name,
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        pod = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": metadata,
            "spec": {
                "nodeName": node,
                "terminationGracePeriodSeconds": 30,
                "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
            },
            "status": {"phase": "Running", "podIP": "10.244.0.10", "startTime": _now()},
            "_termination_delay_s": termination_delay_s,
        }
        self.pods[(namespace, name)] = pod
        return pod

    def add_pdb(
        self,
        name: str,
        match_labels: dict[str, str],
        *,
        namespace: str = "default",
        disruptions_allowed: int = 0,
        release_after: int | None = None,
    ) -> FakePdb:
        pdb = FakePdb(name, namespace, match_labels, disruptions_allowed, release_after)
        self.pdbs.append(pdb)
        return pdb

    def pod_names(self, node: str | None = None) -> set[str]:
        return {
            name for (_, name), pod in self.pods.items() if node in (None, pod["spec"]["nodeName"])
        }

    def unschedulable(self, node: str) -> bool:
        return bool(self.nodes[node]["spec"].get("unschedulable"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- HTTP ------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/v1/nodes/{name}", self._node, methods=["GET", "PATCH"]),
                Route("/api/v1/pods", self._list_pods, methods=["GET"]),
                Route("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod, methods=["GET"]),
                Route(
                    "/api/v1/namespaces/{ns}/pods/{name}/eviction", self._evict, methods=["POST"]
                ),
            ]
        )

    def _denied(self, request: Request) -> Response | None:
        self.requests.append(
            (request.method, request.url.path, request.headers.get("content-type"))
        )
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        return None

    @staticmethod
    def _public(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    async def _node(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        name = request.path_params["name"]
        node = self.nodes.get(name)
        if node is None:
            return _status(404, "NotFound", f'nodes "{name}" not found', name=name, kind="nodes")
        if request.method == "PATCH":
            content_type = (request.headers.get("content-type") or "").split(";")[0].strip()
            if content_type not in MERGE_PATCH_TYPES:
                return _status(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown "
                    f"format - accepted media types include: {', '.join(MERGE_PATCH_TYPES)}",
                )
            patch = json.loads(await request.body())
            if not isinstance(patch, dict):
                return _status(400, "BadRequest", "patch body must be a JSON object")
            _merge(node, patch)
            node["metadata"]["resourceVersion"] = self._next_rv()
        return JSONResponse(node)

    def _selected(self, pod: dict[str, Any], selector: str) -> bool:
        for term in filter(None, selector.split(",")):
            negate = "!=" in term
            key, _, value = term.replace("!=", "=").replace("==", "=").partition("=")
            obj: Any = pod
            for part in key.strip().split("."):
                obj = obj.get(part) if isinstance(obj, dict) else None
            if (obj == value.strip()) == negate:
                return False
        return True

    async def _list_pods(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        selector = request.query_params.get("fieldSelector", "")
        items = [self._public(p) for p in self.pods.values() if self._selected(p, selector)]
        return JSONResponse(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._resource_version)},
                "items": items,
            }
        )

    async def _get_pod(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        ns, name = request.path_params["ns"], request.path_params["name"]
        pod = self.pods.get((ns, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
        return JSONResponse(self._public(pod))

    async def _evict(self, request: Request) -> Response:
        if denied := self._denied(request):
            return denied
        ns, name = request.path_params["ns"], request.path_params["name"]
        body = json.loads(await request.body() or b"{}")
        if body.get("kind", "Eviction") != "Eviction":
            return _status(400, "BadRequest", f"expected an Eviction, got {body.get('kind')}")
        if (body.get("metadata") or {}).get("name") != name:
            return _status(400, "BadRequest", "name in URL does not match name in Eviction")
        pod = self.pods.get((ns, name))
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
        if pod["metadata"].get("deletionTimestamp"):  # already terminating: nothing to check
            return _status(200, "", "")
        for pdb in self.pdbs:
            if not pdb.covers(pod):
                continue
            if pdb.disruptions_allowed <= 0 and pdb.release_after is not None:
                if pdb.refused >= pdb.release_after:
                    pdb.disruptions_allowed = 1
            if pdb.disruptions_allowed <= 0:
                pdb.refused += 1
                return _status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    causes=[
                        {
                            "reason": "DisruptionBudget",
                            "message": f"The disruption budget {pdb.name} needs 1 healthy pods "
                            "and has 1 currently",
                        }
                    ],
                )
            pdb.disruptions_allowed -= 1
        self.evictions.append(body)
        grace = (body.get("deleteOptions") or {}).get("gracePeriodSeconds")
        pod["metadata"]["deletionTimestamp"] = _now()
        pod["metadata"]["deletionGracePeriodSeconds"] = (
            grace if grace is not None else pod["spec"]["terminationGracePeriodSeconds"]
        )
        delay = pod["_termination_delay_s"]
        delay = self.termination_delay_s if delay is None else delay
        uid = pod["metadata"]["uid"]
        asyncio.get_running_loop().call_later(delay, self._terminated, ns, name, uid)
        return _status(201, "", "")

    def _terminated(self, ns: str, name: str, uid: str) -> None:
        pod = self.pods.get((ns, name))
        if pod is not None and pod["metadata"]["uid"] == uid:
            del self.pods[(ns, name)]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> FakeKube:
        """Serve on 127.0.0.1 (a free port, or ``port`` again after a ``stop()``)."""
        config = uvicorn.Config(
            self._app(),
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="fake-kube")
        async with asyncio.timeout(5):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        async with asyncio.timeout(5):
            await self._task
        self._server = self._task = None
