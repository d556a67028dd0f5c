"""What fuzzing the OpenAPI specs found (test_openapi_fuzz.py), each pinned by a plain request.

* Every error is problem+json, but the specs said a 422 was ``application/json`` (FastAPI's
  ``HTTPValidationError``) and documented no other client error at all: a generated client or
  a schema check rejected every refusal the APIs make. The specs now document every ``4XX``
  (and the 422) as an RFC 9457 ``Problem``.
* A 405 named only one of the path's methods: with GET and DELETE declared as two routes, a PUT
  was told ``Allow: GET`` (RFC 9110: the header lists every method the resource supports).
* config: a host parameter whose value held a lone surrogate (JSON ``"\\ud800"``, valid JSON,
  invalid Unicode) reached the database driver, which cannot encode it: a 500 on PUT/PATCH
  ``/v1/hosts/{ref}/parameters`` and POST ``/v1/hosts``. The spec did not say which parameter
  names and values are valid, so no generated request got that far; it does now.
* dashboard (its form posts, beside the specs): a token that cannot be a token (a NUL, 100 kB)
  made the login page say the token "could not be checked" with a 503, as if the APIs were down;
  an unknown action 100 kB long came back in a 100 kB ``Set-Cookie`` (browsers drop cookies
  over 4 kB, so the page showed nothing; proxies refuse such headers).
* software: POST ``/v1/strategy`` took any string as the release id, and one that was not
  Unicode reached the database query: a 500. The id now has the pattern every release id has.
* service: a group declaration nested thousands deep (``[[[[…``, JSON or YAML) made the parsers
  raise RecursionError: a 500 on PUT ``/v1/service-groups/{name}``.
* dashboard: a ``roost_flash`` cookie that was JSON but not an object (``1``, ``[1]``), or
  nested too deep, was a 500 on every page, the login page included (cookies are not in the
  spec: found by reading the code the fuzzer pointed at).
"""

from __future__ import annotations

import json

from tests.support.dashboard import csrf_in, login, post_form
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


#: "x" and a lone surrogate: json.dumps writes it as the valid JSON text "x\ud800".
NOT_UNICODE = "x\ud800"


async def test_config_refuses_a_parameter_that_is_not_unicode(stack):
    config = stack.start("config")
    json_type = {"Content-Type": "application/json"}
    async with config.client(stack.tokens.admin) as http:
        host = {"hostname": "worker-1", "personality": "worker", "mgmt_mac": "52:54:00:aa:bb:01"}
        assert (await http.post("/v1/hosts", json=host)).status_code == 201
        body = json.dumps({"parameters": {"mtu": 9000, "motd": NOT_UNICODE}})
        for method in ("PUT", "PATCH"):
            r = await http.request(
                method, "/v1/hosts/worker-1/parameters", content=body, headers=json_type
            )
            detail = problem(r, 422, "body.parameters")["detail"]
            assert "motd" in detail and "Unicode" in detail, detail
        other = json.dumps(
            {**host, "hostname": "worker-2", "mgmt_mac": "52:54:00:aa:bb:02"}
            | {"parameters": {"motd": NOT_UNICODE}}
        )
        problem(await http.post("/v1/hosts", content=other, headers=json_type), 422)
        # Nothing was stored, and the service still answers (valid text still works).
        r = await http.get("/v1/hosts/worker-1/parameters")
        assert r.status_code == 200 and r.json()["parameters"] == {}, r.text
        assert (await http.get("/v1/hosts/worker-2")).status_code == 404
        r = await http.put("/v1/hosts/worker-1/parameters", json={"parameters": {"motd": "hé"}})
        assert r.status_code == 200 and r.json()["parameters"] == {"motd": "hé"}, r.text
        # The spec says which names and values are valid (what got a fuzzer that far).
        spec = (await http.get("/openapi.json")).json()
        schema = spec["components"]["schemas"]["ParametersBody"]["properties"]["parameters"]
        assert schema["propertyNames"]["pattern"] == "^[a-z0-9_.-]{1,63}$"
        assert {"type": "boolean"} in schema["additionalProperties"]["anyOf"]


async def test_service_refuses_a_declaration_nested_too_deep(stack):
    service = stack.start("service")
    deep = "[" * 20_000 + "]" * 20_000  # 40 kB: well under the body limit
    async with service.client(stack.tokens.admin) as http:
        for kind in ("application/json", "application/yaml"):
            r = await http.put(
                "/v1/service-groups/web", content=deep, headers={"Content-Type": kind}
            )
            detail = problem(r, 422, "body")["detail"]
            assert "nested too deeply" in detail, detail
        assert (await http.get("/v1/service-groups")).status_code == 200


async def test_dashboard_pages_survive_a_bad_flash_cookie(stack):
    dashboard = stack.start("dashboard")
    for cookie in ("1", "%5B1%5D", "%22x%22", "%5B" * 1500 + "%5D" * 1500, "not json"):
        async with dashboard.client(None) as browser:
            browser.cookies.set("roost_flash", cookie)
            r = await browser.get("/login")
            assert r.status_code == 200, (cookie[:20], r.status_code, r.text[:200])
            assert "<form" in r.text


async def test_software_strategy_refuses_a_release_id_that_is_no_id(stack):
    software = stack.start("software")
    async with software.client(stack.tokens.admin) as http:
        body = json.dumps({"release": NOT_UNICODE})
        r = await http.post(
            "/v1/strategy", content=body, headers={"Content-Type": "application/json"}
        )
        problem(r, 422, "body.release")
        problem(await http.post("/v1/strategy", json={"release": "Not An Id"}), 422, "body.release")
        # A well-formed id that names no release is still the 404 it was.
        r = await http.post("/v1/strategy", json={"release": "nope-1.0"})
        assert r.status_code == 404 and "nope-1.0" in r.json()["detail"], r.text


async def test_dashboard_login_refuses_what_cannot_be_a_token(stack):
    fault = stack.start("fault")
    dashboard = stack.start("dashboard", ROOST_FAULT_URL=fault.url)
    async with dashboard.client(None) as browser:
        csrf = csrf_in((await browser.get("/login")).text)
        for token in ("abc\x00def", "x" * 100_000, "tökén"):
            r = await browser.post("/login", data={"token": token, "next": "/", "csrf": csrf})
            assert r.status_code == 401, (token[:10], r.status_code, r.text[:300])
            assert "That token was refused." in r.text
            assert "roost_session" not in r.headers.get("set-cookie", "")
        # A real one still logs in.
        r = await login(browser, stack.tokens.admin)
        assert r.status_code == 303 and "roost_session" in r.headers["set-cookie"], r.text[:300]


async def test_dashboard_flash_message_fits_in_a_cookie(stack):
    dashboard = stack.start("dashboard")
    async with dashboard.client(None) as browser:
        assert (await login(browser, stack.tokens.admin)).status_code == 303
        r = await post_form(browser, "/hosts/worker-1/actions", {"action": "x" * 100_000})
        assert r.status_code == 303, r.text[:300]
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("roost_flash=") and len(cookie) < 4096, len(cookie)
        # The page after it shows the (shortened) message.
        flash = cookie.split(";", 1)[0].split("=", 1)[1]
        browser.cookies.set("roost_flash", flash)
        r = await browser.get("/login")
        assert r.status_code == 200 and "Unknown action &#39;xxxx" in r.text, r.text[-2000:]
