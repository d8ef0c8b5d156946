"""The policy page: see, validate, apply and roll back the serving policy."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from gateway.admission.admin_api import MASTER_KEY_ENV
from gateway.dashboard import auth
from gateway.dashboard.common import (
    api_guard,
    editor_of,
    holder_of,
    json_response,
    page_guard,
    templates,
)
from gateway.errors import ApiError
from gateway.reloader import PolicyHolder
from gateway.state import StateUnavailable
from policies.diff import diff_policies
from policies.loader import PolicyError, PolicyTooLarge, Problem, parse_policy

router = APIRouter(prefix="/dashboard/policy")
MAX_WHO = 100
MAX_VERSION_ID = 2**63 - 1  # SQLite's INTEGER
VersionId = Annotated[int, Path(ge=1, le=MAX_VERSION_ID)]


def _problem(p: Problem) -> dict[str, Any]:
    return {"line": p.line, "col": p.col, "field": p.field, "message": p.message, "text": str(p)}


async def _body(request: Request) -> dict[str, Any]:
    # JSON only: a cross-site HTML form cannot send it, one more guard beside SameSite cookies.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, "Send application/json", code="invalid_content_type")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(400, "The body is not JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object", code="invalid_json")
    return body


async def _require_master(request: Request) -> None:
    if auth.master_key() is None:
        raise ApiError(403, f"Applying a policy needs {MASTER_KEY_ENV} set on the gateway",
                       code="admin_disabled")  # fmt: skip
    if not await auth.has_master(request):
        raise ApiError(401, "Applying a policy needs the master key", code="invalid_master_key")


def _who(body: dict[str, Any]) -> str:
    who = str(body.get("who") or "").strip()
    if not who:
        raise ApiError(400, "Say who you are: 'who' is required", param="who", code="missing_who")
    return who[:MAX_WHO]


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "'text' must be the policy YAML", param="text", code="invalid_value")
    return text


def _diff(old: str, new: str, source: str) -> list[str]:
    """policies/diff.py's sentences for the change."""
    try:
        changes = diff_policies(parse_policy(old, source), parse_policy(new, source))
    except Exception as exc:  # a diff must never break validation; say why there is none
        return [f"(no diff: {exc})"]
    return [change.text for change in changes]


def _history(request: Request, versions: list[Any]) -> list[dict[str, Any]]:
    runtime = holder_of(request).current
    assert runtime is not None
    latest_id = versions[0].id if versions else None
    return [
        {**v.summary(), "live": v.id == latest_id and v.version == runtime.version}
        for v in versions
    ]


async def _fleet(holder: PolicyHolder, policy_id: int | None = None) -> dict[str, Any]:
    """Which replica serves which version, and each one's outcome for the latest (or the given)
    published version: rejections included. Empty lists while the file is the source."""
    here = {
        "replica": holder.replica, "source": holder.source, "policy_id": holder.policy_id,
        "policy_version": holder.current.version if holder.current else None,
        "last_reload_error": str(holder.last_error) if holder.last_error else None,
    }  # fmt: skip
    state = holder.state
    if not holder.following or state is None:
        return {**here, "latest": None, "replicas": [], "reports": []}
    try:
        latest_id = await state.policy_latest_id()
        wanted = policy_id or latest_id
        latest = await state.policy_get(latest_id) if latest_id else None
        replicas = await state.policy_replicas()
        reports = await state.policy_reports(wanted) if wanted else []
    except StateUnavailable as exc:  # the page still shows what serves here
        return {**here, "latest": None, "replicas": [], "reports": [], "store_error": str(exc)}
    return {
        **here,
        "latest": latest.summary() if latest else None,
        "reports_for": wanted or None,
        "replicas": [r.as_dict() for r in replicas],
        "reports": [r.as_dict() for r in reports],
    }


@router.get("/replicas.json")
async def replicas_json(request: Request, id: int | None = None) -> Response:
    """The fleet's view of the policy (see `_fleet`); `?id=N`: the outcomes for version N."""
    await api_guard(request)
    if id is not None and not 1 <= id <= MAX_VERSION_ID:
        raise ApiError(400, "'id' must be a version number", param="id", code="invalid_value")
    return json_response(await _fleet(holder_of(request), id))


@router.get("")
async def policy_page(request: Request) -> Response:
    if (redirect := await page_guard(request)) is not None:
        return redirect
    holder, editor = holder_of(request), editor_of(request)
    text = await editor.current_text(holder)
    versions = await asyncio.to_thread(editor.history.recent)
    return templates.TemplateResponse(
        request,
        "dashboard/policy.html",
        {
            "text": text,
            "runtime": holder.current,
            "path": str(holder.path),
            "history": _history(request, versions),
            "fleet": await _fleet(holder),
            "is_master": await auth.has_master(request),
        },
    )


@router.get("/history.json")
async def history_json(request: Request) -> Response:
    await api_guard(request)
    editor = editor_of(request)
    await editor.sync(holder_of(request))
    versions = await asyncio.to_thread(editor.history.recent)
    return json_response({"data": _history(request, versions)})


@router.get("/versions/{version_id}")
async def version_text(request: Request, version_id: VersionId) -> Response:
    await api_guard(request)
    found = await asyncio.to_thread(editor_of(request).history.get, version_id)
    if found is None:
        raise ApiError(404, f"No policy version v{version_id}", code="version_not_found")
    return json_response({**found.summary(), "text": found.text})


@router.post("/validate")
async def validate_text(request: Request) -> Response:
    await api_guard(request)
    text = _text(await _body(request))
    holder, editor = holder_of(request), editor_of(request)
    source = str(holder.path)
    found = await editor.rejection(text, source)
    if isinstance(found, PolicyTooLarge):
        return _rejected(found)
    current = await editor.current_text(holder)
    return json_response(
        {
            "ok": found is None,
            "problems": [_problem(p) for p in found.problems] if found else [],
            "diff": await editor.run_parsing(_diff, current, text, source) if not found else None,
            "changed": text != current,
        }
    )


def _applied(request: Request, version: Any) -> Response:
    holder = holder_of(request)
    runtime = holder.current
    assert runtime is not None
    return json_response(
        {
            "ok": True,
            **version.summary(),
            "loaded_at": runtime.loaded_at,
            # The shared store's number for it (the other replicas' /readyz policy_id), or None
            # when the file is the source.
            "policy_id": holder.policy_id,
            "policy_source": holder.source,
        }
    )


def _rejected(exc: PolicyError) -> Response:
    """400: OpenAI's error shape, and the problems with their lines for the page."""
    if isinstance(exc, PolicyTooLarge):
        err = ApiError(
            400,
            f"The policy text is refused: {exc.problems[0].message}",
            code="policy_too_large",
            param="text",
        )
    else:
        err = ApiError(
            400,
            "The policy was rejected; the previous one keeps serving",
            code="policy_rejected",
            param="text",
        )
    return json_response(
        {"ok": False, **orjson.loads(err.body()), "problems": [_problem(p) for p in exc.problems]},
        400,
    )


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


@router.post("/apply")
async def apply(request: Request) -> Response:
    await _require_master(request)
    body = await _body(request)
    text, who = _text(body), _who(body)
    try:
        version = await editor_of(request).apply(
            holder_of(request), text, who, _client(request), "apply"
        )
    except PolicyError as exc:
        return _rejected(exc)
    return _applied(request, version)


@router.post("/rollback")
async def rollback(request: Request) -> Response:
    await _require_master(request)
    body = await _body(request)
    who = _who(body)
    raw = body.get("id")
    try:
        version_id = int(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else 0
    except ValueError:
        version_id = 0
    if not 1 <= version_id <= MAX_VERSION_ID:
        raise ApiError(400, "'id' must be a version number", param="id", code="invalid_value")
    try:
        version = await editor_of(request).rollback(
            holder_of(request), version_id, who, _client(request)
        )
    except KeyError:
        raise ApiError(404, f"No policy version v{version_id}", code="version_not_found") from None
    except PolicyError as exc:
        return _rejected(exc)
    return _applied(request, version)
