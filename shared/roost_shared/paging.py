"""Keyset paging (``limit`` + ``marker``) shared by every list endpoint.

A marker is the uuid of the last item of the previous page; the next page holds the items that
sort strictly after it. Unlike skip/offset this stays correct while items are added or removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from roost_shared.problems import NotFound

#: (field, 1 for ascending or -1 for descending); the last field must be unique.
SortSpec = Sequence[tuple[str, int]]


def after(sort: SortSpec, marker: Mapping[str, Any]) -> dict[str, Any]:
    """A filter for the documents sorting strictly after ``marker`` under ``sort``."""
    clauses: list[dict[str, Any]] = []
    for i, (field, direction) in enumerate(sort):
        clause = {f: marker.get(f) for f, _ in sort[:i]}
        clause[field] = {"$gt" if direction > 0 else "$lt": marker.get(field)}
        clauses.append(clause)
    return {"$or": clauses}


async def page(
    collection: Any,
    query: Mapping[str, Any],
    sort: SortSpec,
    *,
    marker: str | None,
    limit: int,
    what: str = "item",
    sort_indexed: bool = False,
) -> list[dict[str, Any]]:
    """One page of ``collection`` matching ``query`` in ``sort`` order, after the document whose
    ``uuid`` is ``marker`` (404 naming ``query.marker`` if there is none).

    ``sort_indexed``: the collection has an index on exactly ``sort``, and the query walks it
    (a hint). Without the hint the embedded database (SecantusDB 0.7) scans the whole collection
    for any filter and sorts every match; walking the index instead took the alarm list of
    1,500 (filtered on suppression status) from 72 to 51 ms. MongoDB picks the same index
    unhinted for a filter no other index serves.
    """
    selector: dict[str, Any] = dict(query)
    if marker:
        marker_doc = await collection.find_one({"uuid": marker})
        if marker_doc is None:
            raise NotFound(kind=f"Marker {what}", id=marker, field="query.marker")
        selector = (
            {"$and": [selector, after(sort, marker_doc)]} if selector else after(sort, marker_doc)
        )
    cursor = collection.find(selector).sort(list(sort)).limit(limit)
    if sort_indexed:
        cursor = cursor.hint(list(sort))
    return await cursor.to_list()


def next_link(request: Request, path: str, *, limit: int, marker: str, **defaults: Any) -> str:
    """StarlingX-style ``next`` href: ``<base>/v1/<path>?<params>&limit=N&marker=<uuid>``.

    Every query parameter of the request (filters, ``expand``, ...) is carried over, so following
    ``next`` as given continues the same listing; ``defaults`` fill in what the request omitted.
    """
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("limit", "marker")]
    given = {k for k, _ in kept}
    kept += [(k, v) for k, v in defaults.items() if k not in given]
    kept += [("limit", str(limit)), ("marker", marker)]
    base = str(request.base_url).rstrip("/")
    return f"{base}/v1/{path}?{urlencode(kept)}"


def next_if_full(
    request: Request, path: str, items: Sequence[Any], limit: int, **defaults: Any
) -> str | None:
    """The ``next`` href when the page is full (as StarlingX does), else None; the marker is the
    last item's ``uuid`` (a mapping key or an attribute)."""
    if not items or len(items) < limit:
        return None
    last = items[-1]
    marker = last["uuid"] if isinstance(last, Mapping) else last.uuid
    return next_link(request, path, limit=limit, marker=marker, **defaults)
