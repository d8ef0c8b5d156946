"""The gateway's HTTP surface through the in-process app: an unknown path is an OpenAI-shaped 404
naming the endpoints there are (worked out from the routes, so new ones appear), a wrong method
a 405 naming the right ones, and GET /v1/models/{id} (the SDK's `models.retrieve`) gives the
entry GET /v1/models lists, for names with "/" too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.route_errors import http_error
from tests.support.inprocess import InProcessGateway, in_process_gateway

MASTER = "master-surface-key"

POLICY = """
version: 1
models:
  openai/gpt-4o:
    provider: litellm
    model: openai/gpt-4o
    pricing: {input_per_1m: 5.0, output_per_1m: 15.0}
  small:
    provider: vllm
    endpoints: [http://small.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
    description: the cheap one
routes:
  cheap: {models: [small], description: cheapest first}
  vendor/auto: {models: [small, openai/gpt-4o]}
"""


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(POLICY, tmp_path) as gateway:
        yield gateway


def error_of(resp: object) -> dict[str, object]:
    body = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_an_unknown_path_is_a_404_naming_the_endpoints(gw: InProcessGateway) -> None:
    for method, path in [("GET", "/v1/foo"), ("POST", "/v2/chat"), ("GET", "/")]:
        resp = await gw.client.request(method, path, json={} if method == "POST" else None)
        assert resp.status_code == 404, (method, path)
        err = error_of(resp)
        assert err["code"] == "not_found" and err["type"] == "invalid_request_error"
        message = str(err["message"])
        assert message.startswith(f"No endpoint {method} {path}. The endpoints under /v1: ")
        for endpoint in (
            "POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models",
            "GET /v1/models/{model_id}",
        ):  # fmt: skip
            assert endpoint in message
        assert "/admin" in message and "/dashboard" in message  # the other families, named

    # Under a prefix with endpoints of its own, those are the ones named.
    admin = error_of(await gw.client.get("/admin/nope"))["message"]
    assert "The endpoints under /admin: " in str(admin) and "GET /admin/keys" in str(admin)
    assert "POST /v1/chat/completions" not in str(admin)
    # A hostile path is echoed back only in part.
    long = error_of(await gw.client.get("/v9/" + "x" * 5000))["message"]
    assert len(str(long)) < 2000


async def test_a_new_route_is_listed_without_editing_any_list(gw: InProcessGateway) -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({})

    gw.app.router.add_route("/v1/embeddings", echo, methods=["POST"])
    message = str(error_of(await gw.client.get("/v1/nothing"))["message"])
    assert "POST /v1/embeddings" in message
    wrong = await gw.client.get("/v1/embeddings")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


async def test_the_openai_sdk_sees_an_unknown_path_as_not_found(gw: InProcessGateway) -> None:
    client = gw.openai()
    with pytest.raises(openai.NotFoundError) as exc:
        await client.get("/nowhere", cast_to=object)
    assert exc.value.body["code"] == "not_found"  # type: ignore[index]
    assert "POST /v1/chat/completions" in exc.value.body["message"]  # type: ignore[index]


async def test_a_wrong_method_is_a_405_naming_the_allowed_ones(gw: InProcessGateway) -> None:
    resp = await gw.client.get("/v1/chat/completions")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    err = error_of(resp)
    assert err["code"] == "method_not_allowed"
    assert err["message"] == "Method GET is not allowed on /v1/chat/completions; it takes POST"

    deleted = await gw.client.delete("/v1/models")
    assert deleted.status_code == 405 and deleted.headers["allow"] == "GET"
    # Two routes share /dashboard/login (GET the form, POST the key): both are named.
    put = await gw.client.put("/dashboard/login")
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST"
    assert error_of(put)["message"].endswith("it takes GET, POST")  # type: ignore[union-attr]


async def test_a_file_missing_under_a_mount_keeps_its_own_404(gw: InProcessGateway) -> None:
    resp = await gw.client.get("/dashboard/static/dashboard/nope.js")
    assert resp.status_code == 404
    assert error_of(resp)["message"] == "Not Found: GET /dashboard/static/dashboard/nope.js"
    assert (await gw.client.get("/dashboard/static/dashboard/dashboard.js")).status_code == 200


def test_other_http_exceptions_keep_status_detail_and_headers() -> None:
    from starlette.exceptions import HTTPException

    exc = HTTPException(418, "teapot", headers={"x-why": "short and stout"})
    err = http_error([], {"type": "http", "path": "/", "method": "GET"}, exc)
    assert (err.status, err.message, err.headers) == (418, "teapot", {"x-why": "short and stout"})


async def test_retrieve_gives_the_listed_entry_for_models_and_routes(gw: InProcessGateway) -> None:
    client = gw.openai()
    listed = {m.id: m for m in (await client.models.list()).data}
    assert set(listed) == {"openai/gpt-4o", "small", "cheap", "vendor/auto"}
    for name in listed:
        got = await client.models.retrieve(name)  # "/" is sent as %2F
        assert got.model_dump() == listed[name].model_dump()
    small = (await client.models.retrieve("small")).model_dump()
    assert small["routegate"] == {
        "kind": "model", "provider": "vllm", "description": "the cheap one", "healthy": True,
    }  # fmt: skip
    auto = (await client.models.retrieve("vendor/auto")).model_dump()
    assert auto["routegate"]["kind"] == "route"
    assert auto["routegate"]["models"] == ["small", "openai/gpt-4o"]
    # A plain "/" in the path works as well as the SDK's %2F.
    raw = await gw.client.get("/v1/models/openai/gpt-4o")
    assert raw.status_code == 200 and raw.json()["id"] == "openai/gpt-4o"


async def test_retrieve_of_an_unknown_model_is_model_not_found(gw: InProcessGateway) -> None:
    client = gw.openai()
    for name in ("nope", "openai/nope", "small/"):
        with pytest.raises(openai.NotFoundError) as exc:
            await client.models.retrieve(name)
        body = exc.value.body
        assert body["code"] == "model_not_found" and body["param"] == "model"  # type: ignore[index]
        assert f"'{name}' does not exist" in body["message"]  # type: ignore[index]


async def test_retrieve_shows_a_key_only_what_it_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTEGATE_MASTER_KEY", MASTER)
    async with in_process_gateway(POLICY, tmp_path) as gw:
        made = await gw.client.post(
            "/admin/keys",
            json={"team": "t", "routes": ["cheap"]},
            headers={"authorization": f"Bearer {MASTER}"},
        )
        secret = made.json()["secret"]
        client = gw.openai(api_key=secret)
        assert (await client.models.retrieve("cheap")).id == "cheap"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("small")  # exists, but not for this key
        with pytest.raises(openai.AuthenticationError):
            await gw.openai(api_key="wrong").models.retrieve("cheap")
