"""RFC 9457 problem details for every error a Roost API returns.

Bodies are ``application/problem+json`` with ``type``, ``title``, ``status``, ``detail`` and
``instance``; validation errors add ``errors`` (one entry per bad field, with its dotted path).
StarlingX clients (python-fmclient) read ``error_message.faultstring``, so every problem carries
that too, and ``fm`` prints the same reason.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

PROBLEM_JSON = "application/problem+json"
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


class RoostError(Exception):
    """Base of domain errors; each subclass carries its HTTP status and message template.

    Borrowed from Ironic's ``IronicException``: ``raise NotFound(kind="alarm", id=u)`` renders
    ``msg_fmt`` with the keyword arguments.
    """

    status: int = 500
    msg_fmt: str = "An unexpected error occurred."
    field: str | None = None

    def __init__(self, message: str | None = None, *, field: str | None = None, **kwargs: Any):
        self.kwargs = kwargs
        self.field = field or self.field
        super().__init__(message or self.msg_fmt.format(**kwargs))


class NotFound(RoostError):
    status = 404
    msg_fmt = "{kind} {id} could not be found."


class Conflict(RoostError):
    status = 409
    msg_fmt = "{kind} {id} conflicts with the current state: {reason}"


class Invalid(RoostError):
    status = 422
    msg_fmt = "Invalid value for {field_name}: {reason}"


def problem_response(
    status: int,
    detail: str,
    *,
    request: Request | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build the problem+json response (with StarlingX's ``error_message`` beside it)."""
    # python-fmclient reads the *first* key of an error body and shows its ``faultstring`` when it
    # is an object, so ``error_message`` comes first and is an object (StarlingX itself sends a
    # JSON-encoded string there, which fmclient cannot read and shows as "HTTP Client Error").
    body: dict[str, Any] = {
        "error_message": {
            "faultstring": detail,
            "faultcode": "Client" if status < 500 else "Server",
            "debuginfo": None,
        },
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if request is not None:
        body["instance"] = request.url.path
        request_id = request.headers.get("x-request-id") or getattr(
            request.state, "request_id", None
        )
        if request_id:
            body["request_id"] = request_id
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    # FastAPI locations look like ("body", "severity") or ("query", "limit"); keep them all so the
    # client sees where the field lives, and join list indexes with dots.
    return ".".join(str(part) for part in loc)


class FieldError(BaseModel):
    """One bad field of a refused request."""

    field: str
    message: str


class FaultString(BaseModel):
    """StarlingX's error body, which python-fmclient prints."""

    faultstring: str
    faultcode: str
    debuginfo: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem: the body of every error a Roost API returns."""

    error_message: FaultString
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


def _problem_response_doc(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def document_problems(spec: dict[str, Any]) -> dict[str, Any]:
    """Say in an OpenAPI spec what the handlers below do: every client error (``4XX``) of every
    operation is a problem+json body, and so is the 422 FastAPI documents as plain JSON.
    Changes ``spec`` in place (idempotent) and returns it."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (FieldError, FaultString, Problem):
        schemas[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas[model.__name__].pop("$defs", None)
    for item in spec.get("paths", {}).values():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "delete", "patch", "head", "options"):
                continue
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _problem_response_doc("Invalid input: `errors` names the field")
            responses.setdefault(
                "4XX", _problem_response_doc("Refused: `detail` says why (RFC 9457 problem)")
            )
    # FastAPI's own validation-error schemas now describe nothing this API sends.
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'/{unused}"' not in json.dumps([spec.get("paths"), schemas]):
            schemas.pop(unused, None)
    return spec


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at the request's path. Starlette's own 405
    names only the first route that matched the path, so with GET and DELETE declared as two
    routes a PUT was told ``Allow: GET`` (RFC 9110 wants all of them)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_problem_handlers(app: FastAPI) -> None:
    """Render validation, HTTP and domain errors as problem+json, and document them so in the
    app's OpenAPI spec."""
    build_spec = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # FastAPI builds the spec once and caches it
            document_problems(build_spec())
        return app.openapi_schema or build_spec()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": _field_path(tuple(e.get("loc", ()))),
                # Pydantic prefixes a validator's own message with "Value error, ".
                "message": str(e.get("msg", "invalid")).removeprefix("Value error, "),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        detail = f"{first['field']}: {first['message']}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem_response(422, detail, request=request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return problem_response(exc.status_code, detail, request=request, headers=headers)

    @app.exception_handler(RoostError)
    async def _domain(request: Request, exc: RoostError) -> JSONResponse:
        errors = [{"field": exc.field, "message": str(exc)}] if exc.field else None
        return problem_response(exc.status, str(exc), request=request, errors=errors)
