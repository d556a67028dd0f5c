"""Kubernetes cordon and drain for locked or failed hosts, through the official client.

When a host is locked (or fails) the host service cordons its Kubernetes node and evicts its
pods; when it is unlocked, it uncordons the node. :class:`KubeDrainer` does this with the
official ``kubernetes`` client, whose calls are synchronous: each runs in a worker thread
(``asyncio.to_thread``), at most ``kube_max_concurrency`` at once, each bounded by a request
timeout and by the operation's own deadline. Nothing here raises for a cluster-side problem:
every operation returns a result (:class:`NodeResult`, :class:`DrainResult`) whose ``status``
and ``message`` say what happened, so a lock never fails on an exception from here.

What ``drain`` does mirrors ``kubectl drain --ignore-daemonsets --delete-emptydir-data --force``:

1. Cordon: set ``spec.unschedulable`` (a strategic merge patch, as ``kubectl cordon`` sends).
2. List the node's pods (``fieldSelector=spec.nodeName=<node>``) and skip, as kubectl does,
   mirror pods (annotation ``kubernetes.io/config.mirror``: the kubelet owns static pods and
   the API cannot delete them) and DaemonSet-owned pods (the DaemonSet controller ignores
   ``unschedulable`` and would recreate them at once). Pods already terminating are only
   waited for. Unlike plain ``kubectl drain``, pods without a controller and pods with
   ``emptyDir`` volumes are evicted too (kubectl needs ``--force`` and
   ``--delete-emptydir-data`` for them): a locked host must be emptied.
3. Evict each pod through the Eviction subresource (``policy/v1`` ``Eviction``), so the API
   server enforces PodDisruptionBudgets. HTTP 429 means a budget would be violated: the pod is
   reported in ``blocked_by_pdb`` and its eviction retried with back-off (as kubectl retries
   every 5 s) until the budget allows it or the deadline passes. 404 means the pod is already
   gone. Connection failures and 5xx answers are retried within the deadline; other errors
   leave the pod with the reason.
4. Wait until every evicted pod is gone (404, or the same name with a new uid, as kubectl
   checks), or until the deadline. ``grace_s`` sets the pods' termination grace period (None
   keeps each pod's own ``terminationGracePeriodSeconds``, like kubectl's ``--grace-period=-1``).

The result lists evicted pods, skipped pods, pods left with reasons, pods that a budget blocked
at least once, whether the deadline passed, and how long it took. An unknown node, an API server
that cannot be reached, or no configured cluster each give a result with a clear message.

Settings (:class:`KubeSettings`; ``ROOST_*`` environment variables once the host service's
settings class inherits it):

- ``ROOST_KUBE_CONFIG``: path of a kubeconfig file (``ROOST_KUBE_CONTEXT`` picks a context);
- or ``ROOST_KUBE_API_URL`` plus ``ROOST_KUBE_TOKEN`` (a bearer token), with
  ``ROOST_KUBE_CA_CERT`` or ``ROOST_KUBE_VERIFY_TLS=false`` for the server certificate;
- neither: :meth:`KubeDrainer.disabled`, whose operations answer "no Kubernetes cluster
  configured" (status ``disabled``) and touch nothing.

The Kubernetes node of a Roost host is named like the host unless ``ROOST_KUBE_NODE_NAMES``
(a JSON object ``{"hostname": "node-name"}``) says otherwise; see :meth:`KubeDrainer.node_for`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr

from roost_shared.retry import backoff

if TYPE_CHECKING:  # the client is large: imported only when a cluster is configured
    from kubernetes.client import CoreV1Api, V1Pod

log = logging.getLogger(__name__)

T = TypeVar("T")

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
NO_CLUSTER = "no Kubernetes cluster configured"

KubeStatus = Literal[
    "done", "drained", "disabled", "not_found", "unreachable", "timed_out", "error"
]


class KubeSettings(BaseModel):
    """Where the Kubernetes API is and how to drain; inherit it into a ``RoostSettings``
    subclass to read ``ROOST_KUBE_*`` environment variables."""

    kube_config: Path | None = Field(None, description="Kubeconfig file; wins over the URL.")
    kube_context: str | None = Field(None, description="Kubeconfig context; default current.")
    kube_api_url: str | None = Field(None, description="API server URL (with kube_token).")
    kube_token: SecretStr | None = Field(None, description="Bearer token for kube_api_url.")
    kube_ca_cert: Path | None = Field(None, description="CA bundle for kube_api_url's TLS.")
    kube_verify_tls: bool = Field(True, description="Verify the API server's certificate.")
    kube_node_names: dict[str, str] = Field(
        default_factory=dict, description="Node name per Roost hostname when they differ."
    )
    kube_request_timeout_s: float = Field(10.0, gt=0, description="Bound on one API call.")
    kube_drain_timeout_s: float = Field(300.0, gt=0, description="Default drain deadline.")
    kube_grace_s: int | None = Field(
        None, ge=0, description="Pods' termination grace; None keeps each pod's own."
    )
    kube_max_concurrency: int = Field(4, ge=1, le=64, description="API calls in flight.")

    @property
    def configured(self) -> bool:
        return self.kube_config is not None or self.kube_api_url is not None


class PodRef(BaseModel):
    """A pod by namespace and name, with why it is listed where it is."""

    namespace: str
    name: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class NodeResult(BaseModel):
    """Outcome of a cordon or uncordon."""

    node: str
    status: KubeStatus
    unschedulable: bool | None = Field(None, description="The node's state afterwards.")
    changed: bool = False
    message: str

    @property
    def ok(self) -> bool:
        """The host may proceed: done, or there is no cluster to do it in."""
        return self.status in ("done", "disabled")


class DrainResult(BaseModel):
    """Outcome of a drain: what was evicted, skipped, left behind, and why."""

    node: str
    status: KubeStatus
    cordoned: bool = False
    evicted: list[PodRef] = Field(default_factory=list, description="Evicted and now gone.")
    skipped: list[PodRef] = Field(default_factory=list, description="DaemonSet and mirror pods.")
    left: list[PodRef] = Field(default_factory=list, description="Still on the node, and why.")
    blocked_by_pdb: list[PodRef] = Field(
        default_factory=list, description="Pods a PodDisruptionBudget refused at least once."
    )
    timed_out: bool = False
    duration_s: float = 0.0
    message: str

    @property
    def ok(self) -> bool:
        """The host may proceed: drained, or there is no cluster to drain."""
        return self.status in ("drained", "disabled")


class _Unreachable(Exception):
    """The API server did not answer (connection refused, timeout, 5xx) before the deadline."""


class _DeadlinePassed(Exception):
    """No time was left to make the call."""


class KubeDrainer:
    """Cordon, uncordon and drain Kubernetes nodes; one instance per cluster, no global state."""

    def __init__(
        self,
        core: CoreV1Api | None,
        *,
        where: str = "",
        node_names: dict[str, str] | None = None,
        request_timeout_s: float = 10.0,
        drain_timeout_s: float = 300.0,
        grace_s: int | None = None,
        max_concurrency: int = 4,
        pdb_retry_s: float = 5.0,
    ) -> None:
        self._core = core
        self.where = where
        self.node_names = dict(node_names or {})
        self.request_timeout_s = request_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.grace_s = grace_s
        self.pdb_retry_s = pdb_retry_s
        self._slots = asyncio.Semaphore(max_concurrency)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def disabled(cls) -> KubeDrainer:
        """A drainer for a site without Kubernetes: every operation says so and succeeds."""
        return cls(None)

    @classmethod
    def from_settings(cls, settings: KubeSettings | BaseModel, **overrides: Any) -> KubeDrainer:
        """Build from :class:`KubeSettings` (or any settings model carrying its fields).

        A kubeconfig wins over an API URL; with neither, the drainer is :meth:`disabled`.
        ``overrides`` go to the constructor (e.g. ``pdb_retry_s``).
        """
        if not isinstance(settings, KubeSettings):
            settings = KubeSettings.model_validate(settings, from_attributes=True)
        if not settings.configured:
            return cls.disabled()
        from kubernetes.client import ApiClient, Configuration, CoreV1Api
        from kubernetes.config import load_kube_config

        config = Configuration()
        if settings.kube_config is not None:
            load_kube_config(
                config_file=str(settings.kube_config),
                context=settings.kube_context,
                client_configuration=config,
                persist_config=False,
            )
            where = f"kubeconfig {settings.kube_config}"
        else:
            config.host = settings.kube_api_url or ""
            if settings.kube_token is not None:
                config.api_key = {"BearerToken": settings.kube_token.get_secret_value()}
                config.api_key_prefix = {"BearerToken": "Bearer"}
            config.verify_ssl = settings.kube_verify_tls
            if settings.kube_ca_cert is not None:
                config.ssl_ca_cert = str(settings.kube_ca_cert)
            where = config.host
        config.retries = 0  # one try per call: retries and back-off are ours, within deadlines
        config.connection_pool_maxsize = settings.kube_max_concurrency
        kwargs: dict[str, Any] = {
            "where": where,
            "node_names": settings.kube_node_names,
            "request_timeout_s": settings.kube_request_timeout_s,
            "drain_timeout_s": settings.kube_drain_timeout_s,
            "grace_s": settings.kube_grace_s,
            "max_concurrency": settings.kube_max_concurrency,
        }
        kwargs.update(overrides)
        return cls(CoreV1Api(ApiClient(config)), **kwargs)

    @property
    def enabled(self) -> bool:
        return self._core is not None

    def node_for(self, hostname: str) -> str:
        """The Kubernetes node name of a Roost host (its hostname unless mapped)."""
        return self.node_names.get(hostname, hostname)

    async def aclose(self) -> None:
        """Release the client's connection pool."""
        if self._core is not None:
            await asyncio.to_thread(self._core.api_client.close)

    # -- cordon / uncordon -------------------------------------------------------------------

    async def cordon(self, node: str, *, timeout_s: float | None = None) -> NodeResult:
        """Mark the node unschedulable (``kubectl cordon``)."""
        return await self._set_unschedulable(node, True, timeout_s)

    async def uncordon(self, node: str, *, timeout_s: float | None = None) -> NodeResult:
        """Make the node schedulable again (``kubectl uncordon``)."""
        return await self._set_unschedulable(node, False, timeout_s)

    async def _set_unschedulable(
        self, node: str, value: bool, timeout_s: float | None
    ) -> NodeResult:
        verb = "cordon" if value else "uncordon"
        if self._core is None:
            return NodeResult(node=node, status="disabled", message=f"{NO_CLUSTER}; not {verb}ed")
        deadline = time.monotonic() + (timeout_s or self.request_timeout_s * 3)
        try:
            changed = await self._patch_unschedulable(node, value, deadline)
        except (_Unreachable, _DeadlinePassed) as exc:
            return NodeResult(
                node=node, status="unreachable", message=f"could not {verb} {node}: {exc}"
            )
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status == 404:
                return NodeResult(node=node, status="not_found", message=self._not_found(node))
            log.warning("kube %s %s failed: %s", verb, node, _reason(exc))
            return NodeResult(
                node=node, status="error", message=f"could not {verb} {node}: {_reason(exc)}"
            )
        state = "cordoned" if value else "uncordoned"
        return NodeResult(
            node=node,
            status="done",
            unschedulable=value,
            changed=changed,
            message=f"node {node} {state}" if changed else f"node {node} already {state}",
        )

    async def _patch_unschedulable(self, node: str, value: bool, deadline: float) -> bool:
        """Set ``spec.unschedulable``; False when it already had that value."""
        assert self._core is not None
        current = await self._call(self._core.read_node, node, deadline=deadline)
        if bool(current.spec and current.spec.unschedulable) == value:
            return False
        # kubectl sends a strategic merge patch. The client's default Content-Type for
        # patch_node is application/json-patch+json, which its REST layer rewrites to strategic
        # merge only for non-list bodies: say it explicitly rather than rely on that.
        await self._call(
            self._core.patch_node,
            node,
            {"spec": {"unschedulable": value or None}},  # None removes it, as kubectl does
            _content_type="application/strategic-merge-patch+json",
            deadline=deadline,
        )
        return True

    # -- drain -------------------------------------------------------------------------------

    async def drain(
        self, node: str, *, timeout_s: float | None = None, grace_s: int | None = None
    ) -> DrainResult:
        """Cordon ``node`` and evict its pods, respecting PodDisruptionBudgets, by a deadline.

        ``timeout_s`` bounds the whole drain (default ``kube_drain_timeout_s``); ``grace_s``
        the pods' termination grace (default ``kube_grace_s``, else each pod's own).
        """
        started = time.monotonic()
        if self._core is None:
            return DrainResult(node=node, status="disabled", message=f"{NO_CLUSTER}; not drained")
        deadline = started + (timeout_s if timeout_s is not None else self.drain_timeout_s)
        grace = grace_s if grace_s is not None else self.grace_s

        def result(status: KubeStatus, message: str, **fields: Any) -> DrainResult:
            return DrainResult(
                node=node,
                status=status,
                duration_s=round(time.monotonic() - started, 3),
                message=message,
                **fields,
            )

        try:
            await self._patch_unschedulable(node, True, deadline)
            pods = await self._call(
                self._core.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={node}",
                deadline=deadline,
            )
        except (_Unreachable, _DeadlinePassed) as exc:
            return result("unreachable", f"could not drain {node}: {exc}", timed_out=True)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return result("not_found", self._not_found(node))
            log.warning("kube drain %s failed: %s", node, _reason(exc))
            return result("error", f"could not drain {node}: {_reason(exc)}")

        to_evict: list[V1Pod] = []
        skipped: list[PodRef] = []
        for pod in pods.items:
            why = _skip_reason(pod)
            if why:
                skipped.append(_ref(pod, why))
            else:
                to_evict.append(pod)

        outcomes = await asyncio.gather(
            *(self._evict_and_wait(pod, deadline, grace) for pod in to_evict)
        )
        evicted = [o.pod for o in outcomes if o.gone]
        left = [o.pod for o in outcomes if not o.gone]
        blocked = [o.pdb for o in outcomes if o.pdb is not None]
        timed_out = any(o.timed_out for o in outcomes)
        fields = {
            "cordoned": True,
            "evicted": evicted,
            "skipped": skipped,
            "left": left,
            "blocked_by_pdb": blocked,
            "timed_out": timed_out,
        }
        summary = f"{len(evicted)} evicted, {len(skipped)} skipped (DaemonSet/mirror)"
        if blocked:
            summary += f", {len(blocked)} blocked by a PodDisruptionBudget at least once"
        if not left:
            return result("drained", f"node {node} drained: {summary}", **fields)
        pending = ", ".join(f"{p} ({p.reason})" for p in left)
        if timed_out:
            return result(
                "timed_out",
                f"node {node} cordoned but not drained within {deadline - started:g} s: "
                f"{summary}; {len(left)} left: {pending}",
                **fields,
            )
        return result(
            "error", f"node {node} cordoned but not drained: {summary}; left: {pending}", **fields
        )

    async def _evict_and_wait(self, pod: V1Pod, deadline: float, grace_s: int | None) -> _Outcome:
        """Evict one pod (retrying while a budget refuses) and wait until it is gone."""
        from kubernetes.client import V1DeleteOptions, V1Eviction, V1ObjectMeta

        assert self._core is not None
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        outcome = _Outcome(PodRef(namespace=ns, name=name))
        eviction = V1Eviction(
            api_version="policy/v1",
            kind="Eviction",
            metadata=V1ObjectMeta(name=name, namespace=ns),
            delete_options=V1DeleteOptions(grace_period_seconds=grace_s)
            if grace_s is not None
            else None,
        )
        pdb_delays = backoff(initial=min(0.25, self.pdb_retry_s), cap=self.pdb_retry_s)
        attempts = 0
        # 1. Evict, unless the pod is already terminating.
        while pod.metadata.deletion_timestamp is None:
            attempts += 1
            try:
                await self._call(
                    self._core.create_namespaced_pod_eviction, name, ns, eviction, deadline=deadline
                )
                break
            except (_Unreachable, _DeadlinePassed) as exc:
                return outcome.leave(f"eviction not accepted: {exc}", timed_out=True)
            except Exception as exc:
                status = getattr(exc, "status", None)
                if status == 404:
                    return outcome.done()
                if status != 429:
                    return outcome.leave(f"eviction refused: {_reason(exc)}")
                why = _reason(exc)
                outcome.pdb = PodRef(namespace=ns, name=name, reason=why)
                delay = next(pdb_delays)
                if time.monotonic() + delay >= deadline:
                    outcome.pdb.reason = f"{why} ({attempts} attempts)"
                    return outcome.leave(f"blocked by PodDisruptionBudget: {why}", timed_out=True)
                await asyncio.sleep(delay)
        if outcome.pdb is not None:
            outcome.pdb.reason = f"{outcome.pdb.reason} ({attempts} attempts)"
        # 2. Wait until it is gone (kubectl polls each pod too; a new uid is a new pod).
        polls = backoff(initial=0.05, cap=1.0)
        while True:
            try:
                current = await self._call(
                    self._core.read_namespaced_pod, name, ns, deadline=deadline
                )
            except (_Unreachable, _DeadlinePassed) as exc:
                return outcome.leave(f"evicted, still terminating: {exc}", timed_out=True)
            except Exception as exc:
                if getattr(exc, "status", None) == 404:
                    return outcome.done()
                return outcome.leave(f"evicted, could not check it: {_reason(exc)}")
            if current.metadata.uid != uid:
                return outcome.done()
            delay = next(polls)
            if time.monotonic() + delay >= deadline:
                return outcome.leave("evicted, still terminating", timed_out=True)
            await asyncio.sleep(delay)

    # -- plumbing ----------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any, deadline: float, **kwargs: Any) -> T:
        """Run one client call in a thread, bounded by the request timeout and ``deadline``.

        Connection failures and 5xx answers are retried with back-off until the deadline, then
        raised as :class:`_Unreachable`; other API errors are raised as the client's.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        delays = backoff(initial=0.1, cap=2.0)
        last = ""
        while True:
            if deadline - time.monotonic() <= 0.01:
                if last:
                    raise _Unreachable(f"{self._target()} unreachable: {last}")
                raise _DeadlinePassed("no time left before the deadline")
            async with self._slots:
                timeout = max(0.01, min(self.request_timeout_s, deadline - time.monotonic()))
                try:
                    return await asyncio.to_thread(fn, *args, _request_timeout=timeout, **kwargs)
                except ApiException as exc:
                    if exc.status is None or exc.status < 500:
                        raise
                    last = _reason(exc)
                except (HTTPError, OSError) as exc:
                    last = _connection_reason(exc)
            delay = min(next(delays), deadline - time.monotonic())
            if delay <= 0:
                raise _Unreachable(f"{self._target()} unreachable: {last}")
            await asyncio.sleep(delay)

    def _target(self) -> str:
        return f"Kubernetes API ({self.where})" if self.where else "Kubernetes API"

    def _not_found(self, node: str) -> str:
        return f"node {node} not found in the Kubernetes cluster ({self.where})"


class _Outcome:
    """One pod's fate during a drain."""

    def __init__(self, pod: PodRef) -> None:
        self.pod = pod
        self.gone = False
        self.timed_out = False
        self.pdb: PodRef | None = None

    def done(self) -> _Outcome:
        self.gone = True
        return self

    def leave(self, reason: str, *, timed_out: bool = False) -> _Outcome:
        self.pod.reason = reason
        self.timed_out = timed_out
        return self


def _ref(pod: V1Pod, reason: str = "") -> PodRef:
    return PodRef(namespace=pod.metadata.namespace, name=pod.metadata.name, reason=reason)


def _skip_reason(pod: V1Pod) -> str:
    """Why ``kubectl drain --ignore-daemonsets`` would leave this pod alone ('' to evict)."""
    meta = pod.metadata
    if MIRROR_ANNOTATION in (meta.annotations or {}):
        return "mirror pod (static pod managed by the kubelet)"
    for owner in meta.owner_references or []:
        if owner.controller and owner.kind == "DaemonSet":
            return f"DaemonSet-managed ({owner.name})"
    return ""


def _reason(exc: BaseException) -> str:
    """A one-line reason from an API error: the Status message (and causes) when there is one."""
    import json

    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if body:
        try:
            doc = json.loads(body)
        except (TypeError, ValueError):
            doc = None
        if isinstance(doc, dict) and doc.get("message"):
            causes = [c.get("message") for c in (doc.get("details") or {}).get("causes") or []]
            extra = f" ({'; '.join(c for c in causes if c)})" if any(causes) else ""
            return f"HTTP {status}: {doc['message']}{extra}"
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    return str(exc) or type(exc).__name__


def _connection_reason(exc: BaseException) -> str:
    """The innermost cause of a urllib3 failure (e.g. 'Connection refused'), not its wrapper."""
    inner = getattr(exc, "reason", None) or exc
    text = str(inner)
    if "]" in text and "Errno" in text:
        text = text[text.index("[Errno") :].split(")")[0].strip("'\" ")
    return text or type(inner).__name__
