"""The fault service's HTTP API: StarlingX FM v1 paths and shapes, plus webhook subscriptions.

Routers stay thin: they validate, call the store or ``FaultOperations`` and shape the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from bson import ObjectId
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from roost_fault import logic
from roost_fault.destinations import DestinationRefused, redacted
from roost_fault.models import (
    ALARM_BRIEF_FIELDS,
    EVENT_BRIEF_FIELDS,
    AlarmCollection,
    AlarmCreate,
    AlarmSummary,
    AlarmView,
    DeliveryState,
    EventLogCollection,
    EventLogView,
    EventState,
    Link,
    LogCreate,
    PatchOp,
    SubscriptionCollection,
    SubscriptionCreate,
    SubscriptionView,
    SuppressionCollection,
    SuppressionStatus,
    SuppressionView,
)
from roost_fault.operations import FaultOperations
from roost_fault.retention import Retention
from roost_fault.store import FaultStore
from roost_fault.webhooks import WebhookDispatcher
from roost_shared.api import Platform
from roost_shared.auth import Principal, require_admin, require_reader
from roost_shared.catalog import AlarmClear
from roost_shared.events import utcnow
from roost_shared.paging import next_if_full
from roost_shared.problems import Invalid, NotFound

MAX_LIMIT = 2000


@dataclass
class FaultContext:
    """What the fault routes need, built by the app's lifespan."""

    platform: Platform
    store: FaultStore
    ops: FaultOperations
    dispatcher: WebhookDispatcher
    retention: Retention

    def committed(self) -> None:
        """Wake the relay and the webhook workers after a transaction committed."""
        self.platform.outbox.wake()
        self.dispatcher.wake()


def ctx(request: Request) -> FaultContext:
    return request.app.state.fault


Ctx = Annotated[FaultContext, Depends(ctx)]
Admin = Annotated[Principal, Depends(require_admin)]
Reader = Annotated[Principal, Depends(require_reader)]

router = APIRouter(prefix="/v1", dependencies=[Depends(require_reader)])


class FmQuery:
    """FM's repeated ``q.field``/``q.op``/``q.type``/``q.value`` parameters."""

    def __init__(
        self,
        fields: Annotated[list[str], Query(alias="q.field")] = [],  # noqa: B006
        ops: Annotated[list[str], Query(alias="q.op")] = [],  # noqa: B006
        types: Annotated[list[str], Query(alias="q.type")] = [],  # noqa: B006
        values: Annotated[list[str], Query(alias="q.value")] = [],  # noqa: B006
    ) -> None:
        self.fields, self.ops, self.values = fields, ops, values

    def to_filter(self, allowed: set[str], **kwargs: Any) -> dict[str, Any]:
        return logic.query_filter(self.fields, self.ops, self.values, allowed, **kwargs)


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (FM's limit_max: 2000).")]
SortDir = Annotated[Literal["asc", "desc"], Query()]


def _alarm_view(doc: dict[str, Any], expand: bool) -> dict[str, Any]:
    view = AlarmView.model_validate(doc).model_dump(mode="json")
    if not expand:
        view = {k: v for k, v in view.items() if k in ALARM_BRIEF_FIELDS}
    return view


def _event_view(doc: dict[str, Any], expand: bool) -> dict[str, Any]:
    view = EventLogView.model_validate(doc).model_dump(mode="json")
    if not expand:
        view = {k: v for k, v in view.items() if k in EVENT_BRIEF_FIELDS}
    return view


def _page(
    request: Request, key: str, views: list[dict[str, Any]], limit: int, **defaults: Any
) -> dict[str, Any]:
    """FM's collection body: ``{key: [...]}`` plus ``next`` when the page is full."""
    body: dict[str, Any] = {key: views}
    nxt = next_if_full(request, key, views, limit, **defaults)
    if nxt:
        body["next"] = nxt
    return body


@router.get("", include_in_schema=False)
async def version(request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    links = {
        name: [{"href": f"{base}/v1/{name}", "rel": "self"}]
        for name in ("alarms", "event_log", "event_suppression")
    }
    return {"id": "v1", "links": [{"href": f"{base}/v1/", "rel": "self"}], **links}


# Alarms ----------------------------------------------------------------------------------------


@router.get("/alarms", response_model=AlarmCollection, response_model_exclude_none=True)
async def list_alarms(
    request: Request,
    c: Ctx,
    q: Annotated[FmQuery, Depends()],
    marker: str | None = None,
    limit: Limit = MAX_LIMIT,
    sort_key: str = "id",
    sort_dir: SortDir = "asc",
    include_suppress: bool = False,
    expand: bool = False,
) -> dict[str, Any]:
    """Active alarms, most severe first (FM's fixed order), suppressed ones only on request."""
    query = q.to_filter(logic.ALARM_QUERY_FIELDS)
    if not include_suppress:
        query["suppression_status"] = SuppressionStatus.unsuppressed.value
    docs = await c.store.list_alarms(query, marker=marker, limit=limit)
    views = [_alarm_view(d, expand) for d in docs]
    return _page(request, "alarms", views, limit, sort_key=sort_key, sort_dir=sort_dir)


@router.get("/alarms/summary", response_model=AlarmSummary)
async def alarm_summary(c: Ctx, include_suppress: bool = False) -> AlarmSummary:
    """Active alarm counts per severity; suppressed alarms are counted apart."""
    shown = logic.severity_counts(await c.store.severity_counts(suppressed=False))
    hidden = logic.severity_counts(await c.store.severity_counts(suppressed=True))
    if include_suppress:
        shown = {k: shown[k] + hidden[k] for k in shown}
    return AlarmSummary(
        critical=shown["critical"],
        major=shown["major"],
        minor=shown["minor"],
        warnings=shown["warning"],
        status=logic.summary_status(shown["critical"], shown["major"], shown["minor"]),
        system_uuid=await c.store.system_uuid(),
        suppressed={
            "critical": hidden["critical"],
            "major": hidden["major"],
            "minor": hidden["minor"],
            "warnings": hidden["warning"],
        },
    )


@router.get("/alarms/{alarm_uuid}", response_model=AlarmView)
async def show_alarm(c: Ctx, alarm_uuid: str) -> JSONResponse:
    doc = await c.store.alarm(alarm_uuid)
    if doc is None:
        raise NotFound(kind="Alarm", id=alarm_uuid)
    return JSONResponse(_alarm_view(doc, expand=True))


@router.post("/alarms", status_code=201, response_model=AlarmView)
async def raise_alarm(c: Ctx, body: AlarmCreate, who: Admin) -> JSONResponse:
    """Raise or update the alarm (alarm_id, entity_instance_id), as ``fault.alarm.set`` does."""
    now = utcnow()
    await c.platform.db.in_transaction(lambda s: c.ops.apply(s, [(body, now, None)]))
    c.committed()
    doc = await c.store.alarms.find_one(
        {"alarm_id": body.alarm_id, "entity_instance_id": body.entity_instance_id}
    )
    assert doc is not None
    return JSONResponse(_alarm_view(doc, expand=True), status_code=201)


@router.delete("/alarms/{alarm_uuid}", status_code=204)
async def delete_alarm(c: Ctx, alarm_uuid: str, who: Admin) -> Response:
    """Clear an alarm by hand; the clear is logged and subscribers are told."""
    doc = await c.store.alarm(alarm_uuid)
    if doc is None:
        raise NotFound(kind="Alarm", id=alarm_uuid)
    clear = AlarmClear(alarm_id=doc["alarm_id"], entity_instance_id=doc["entity_instance_id"])
    now = utcnow()
    await c.platform.db.in_transaction(lambda s: c.ops.apply(s, [(clear, now, None)]))
    c.committed()
    return Response(status_code=204)


# Event log -------------------------------------------------------------------------------------


@router.get("/event_log", response_model=EventLogCollection, response_model_exclude_none=True)
async def list_events(
    request: Request,
    c: Ctx,
    q: Annotated[FmQuery, Depends()],
    marker: str | None = None,
    limit: Limit = MAX_LIMIT,
    sort_key: str = "timestamp",
    sort_dir: SortDir = "desc",
    alarms: bool = False,
    logs: bool = False,
    include_suppress: bool = False,
    expand: bool = False,
) -> dict[str, Any]:
    """Alarm sets and clears and customer logs, newest first; ``start``/``end`` in ``q``."""
    query = q.to_filter(logic.EVENT_QUERY_FIELDS, exact={"uuid", "event_log_type"})
    if alarms and not logs:
        query["state"] = {"$in": [EventState.set.value, EventState.clear.value]}
    elif logs and not alarms:
        query["state"] = EventState.log.value
    if not include_suppress:
        query["suppression_status"] = SuppressionStatus.unsuppressed.value
    docs = await c.store.list_events(query, marker=marker, limit=limit)
    views = [_event_view(d, expand) for d in docs]
    return _page(request, "event_log", views, limit, sort_key=sort_key, sort_dir=sort_dir)


@router.get("/event_log/{event_uuid}", response_model=EventLogView)
async def show_event(c: Ctx, event_uuid: str) -> JSONResponse:
    doc = await c.store.event(event_uuid)
    if doc is None:
        raise NotFound(kind="Event log", id=event_uuid)
    return JSONResponse(_event_view(doc, expand=True))


@router.post("/event_log", status_code=201, response_model=EventLogView)
async def write_log(c: Ctx, body: LogCreate, who: Admin) -> JSONResponse:
    """Write a customer log, as ``fault.log.write`` does."""
    now = utcnow()
    outcome = await c.platform.db.in_transaction(lambda s: c.ops.apply(s, [(body, now, None)]))
    c.committed()
    return JSONResponse(_event_view(outcome.event_log[0], expand=True), status_code=201)


# Suppression -----------------------------------------------------------------------------------


def _suppression_view(request: Request, doc: dict[str, Any]) -> SuppressionView:
    base = str(request.base_url).rstrip("/")
    return SuppressionView(
        uuid=doc["uuid"],
        alarm_id=doc["alarm_id"],
        description=doc.get("description", ""),
        suppression_status=doc["suppression_status"],
        links=[
            Link(href=f"{base}/v1/event_suppression/{doc['uuid']}", rel="self"),
            Link(href=f"{base}/event_suppression/{doc['uuid']}", rel="bookmark"),
        ],
    )


@router.get("/event_suppression", response_model=SuppressionCollection)
async def list_suppression(
    request: Request, c: Ctx, q: Annotated[FmQuery, Depends()]
) -> SuppressionCollection:
    """Every alarm id with its suppression status, by alarm id."""
    query = q.to_filter(logic.SUPPRESSION_QUERY_FIELDS, exact=logic.SUPPRESSION_QUERY_FIELDS)
    docs = await c.store.list_suppression(query)
    return SuppressionCollection(event_suppression=[_suppression_view(request, d) for d in docs])


@router.get("/event_suppression/{entry_uuid}", response_model=SuppressionView)
async def show_suppression(request: Request, c: Ctx, entry_uuid: str) -> SuppressionView:
    doc = await c.store.suppression_entry(entry_uuid)
    if doc is None:
        raise NotFound(kind="Event suppression entry", id=entry_uuid)
    return _suppression_view(request, doc)


@router.patch("/event_suppression/{entry_uuid}", response_model=SuppressionView)
async def patch_suppression(
    request: Request, c: Ctx, entry_uuid: str, patch: list[PatchOp], who: Admin
) -> SuppressionView:
    """Suppress or unsuppress an alarm id (JSON patch on ``/suppression_status``).

    The last operation wins: python-fmclient repeats the same operation in one body.
    """
    if not patch:
        raise Invalid(
            "the patch is empty; send [{'op': 'replace', 'path': "
            "'/suppression_status', 'value': 'suppressed'}]",
            field="body",
        )
    doc = await c.store.suppression_entry(entry_uuid)
    if doc is None:
        raise NotFound(kind="Event suppression entry", id=entry_uuid)
    status = patch[-1].value.value
    await c.platform.db.in_transaction(
        lambda s: c.store.set_suppression(s, doc["alarm_id"], status)
    )
    updated = await c.store.suppression_entry(entry_uuid)
    assert updated is not None
    return _suppression_view(request, updated)


# Subscriptions (webhooks) ----------------------------------------------------------------------


async def _subscription_view(
    c: FaultContext, doc: dict[str, Any], who: Principal
) -> SubscriptionView:
    pending = await c.store.notifications.count_documents(
        {"seq": {"$gt": doc.get("cursor", 0)}, **logic.subscription_query(doc)}
    )
    return SubscriptionView(
        uuid=doc["_id"],
        url=doc["url"] if who.is_admin else redacted(doc["url"]),
        severities=doc["severities"],
        alarm_id_prefixes=doc["alarm_id_prefixes"],
        include_suppressed=doc["include_suppressed"],
        description=doc["description"],
        created_at=doc["created_at"],
        state=DeliveryState(doc.get("state", "ok")),
        pending=pending,
        delivered=doc.get("delivered", 0),
        dropped=doc.get("dropped", 0),
        attempts=doc.get("attempts", 0),
        last_error=doc.get("last_error"),
        last_delivered_at=doc.get("last_delivered_at"),
    )


async def _subscription(c: FaultContext, sub_uuid: str) -> dict[str, Any]:
    doc = await c.store.subscriptions.find_one({"_id": sub_uuid})
    if doc is None:
        raise NotFound(kind="Subscription", id=sub_uuid)
    return doc


@router.get("/subscriptions", response_model=SubscriptionCollection)
async def list_subscriptions(c: Ctx, who: Reader) -> SubscriptionCollection:
    docs = await c.store.subscriptions_all()
    return SubscriptionCollection(subscriptions=[await _subscription_view(c, d, who) for d in docs])


@router.post("/subscriptions", status_code=201, response_model=SubscriptionView)
async def create_subscription(c: Ctx, body: SubscriptionCreate, who: Admin) -> SubscriptionView:
    """Register a webhook; alarm changes from now on are delivered to it at least once.

    A URL naming a loopback, link-local, private, unspecified or multicast address is refused
    unless ``ROOST_WEBHOOK_ALLOW_NETS`` allows it; a host name is checked at each delivery."""
    try:
        c.dispatcher.check_destination(str(body.url))
    except DestinationRefused as exc:
        raise Invalid(str(exc), field="url") from exc
    doc = {
        "_id": str(ObjectId()),
        **body.model_dump(mode="json"),
        "created_at": utcnow(),
        "state": "ok",
        "delivered": 0,
        "attempts": 0,
        # Changes from now on: start after the newest logged notification.
        "cursor": await c.store.last_seq(),
    }
    await c.store.subscriptions.insert_one(doc)
    c.dispatcher.subscriptions_changed()
    return await _subscription_view(c, doc, who)


@router.get("/subscriptions/{sub_uuid}", response_model=SubscriptionView)
async def show_subscription(c: Ctx, sub_uuid: str, who: Reader) -> SubscriptionView:
    return await _subscription_view(c, await _subscription(c, sub_uuid), who)


@router.delete("/subscriptions/{sub_uuid}", status_code=204)
async def delete_subscription(c: Ctx, sub_uuid: str, who: Admin) -> Response:
    """Stop delivering to a webhook (what it had not received yet is not sent)."""
    await _subscription(c, sub_uuid)

    await c.store.subscriptions.delete_one({"_id": sub_uuid})
    c.dispatcher.subscriptions_changed()
    return Response(status_code=204)
