"""What fuzzing the OpenAPI specs found (test_openapi_fuzz.py), each pinned by a plain request.

* Every error is problem+json, but the specs said a 422 was ``application/json`` (FastAPI's
  ``HTTPValidationError``) and documented no other client error at all: a generated client or
  a schema check rejected every refusal the APIs make. The specs now document every ``4XX``
  (and the 422) as an RFC 9457 ``Problem``.
* A 405 named only one of the path's methods: with GET and DELETE declared as two routes, a PUT
  was told ``Allow: GET`` (RFC 9110: the header lists every method the resource supports).
"""

from __future__ import annotations

from tests.support.problems import problem

PROBLEM_REF = "#/components/schemas/Problem"


def problem_schema_of(response_doc: dict) -> str | None:
    """The schema reference a documented response gives problem+json bodies (None: none)."""
    content = response_doc.get("content", {})
    return content.get("application/problem+json", {}).get("schema", {}).get("$ref")


async def test_the_spec_documents_the_problems_the_api_answers(stack):
    fault = stack.start("fault")
    async with fault.client(stack.tokens.admin) as http:
        spec = (await http.get("/openapi.json")).json()
        # A refusal as the API sends it...
        r = await http.get("/v1/alarms", params={"limit": "many"})
        body = problem(r, 422, "query.limit")
        # ...is what the spec says it sends, for this status and for any other client error.
        responses = spec["paths"]["/v1/alarms"]["get"]["responses"]
        assert problem_schema_of(responses["422"]) == PROBLEM_REF, responses["422"]
        assert "application/json" not in responses["422"]["content"]
        r = await http.get(f"/v1/alarms/{'0' * 8}")
        problem(r, 404)
        doc = spec["paths"]["/v1/alarms/{alarm_uuid}"]["get"]["responses"]
        assert problem_schema_of(doc["4XX"]) == PROBLEM_REF, doc
        schema = spec["components"]["schemas"]["Problem"]
        assert {"title", "status", "detail"} <= set(schema["required"])
        assert set(body) <= set(schema["properties"]), set(body) - set(schema["properties"])
        # FastAPI's validation-error schemas described nothing the API sends: gone.
        assert "HTTPValidationError" not in spec["components"]["schemas"]
        # Every operation documents its client errors (``4XX`` is an OpenAPI 3 status range),
        # each response has its (required) description, and the components named exist.
        for path, item in spec["paths"].items():
            for method, operation in item.items():
                assert "4XX" in operation["responses"], f"{method.upper()} {path}"
                for status, doc in operation["responses"].items():
                    assert doc.get("description"), f"{method.upper()} {path} {status}"
                    ref = problem_schema_of(doc)
                    assert ref is None or ref.rsplit("/", 1)[1] in spec["components"]["schemas"]


async def test_a_405_allows_every_method_of_the_path(stack):
    fault = stack.start("fault")
    async with fault.client(stack.tokens.admin) as http:
        # GET and DELETE /v1/dead-letters/{id} are two routes.
        r = await http.put("/v1/dead-letters/nothing-here", json={})
        problem(r, 405)
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert {"GET", "DELETE"} <= allowed, r.headers["allow"]
        assert "PUT" not in allowed
        # And both really are allowed there (the resource just does not exist).
        assert (await http.get("/v1/dead-letters/nothing-here")).status_code == 404
        assert (await http.delete("/v1/dead-letters/nothing-here")).status_code == 404
