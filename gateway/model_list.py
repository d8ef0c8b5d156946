"""What GET /v1/models lists and GET /v1/models/{id} gives: one OpenAI model object for each
policy model and route, with what Routegate knows of it under `routegate`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.admission.guard import authorization, client_address
from gateway.errors import ApiError
from gateway.pipeline import Services
from gateway.runtime import Runtime


def model_entries(runtime: Runtime) -> dict[str, dict[str, Any]]:
    """Name -> its model object: the policy's models first, then its routes."""
    created = int(runtime.loaded_at)

    def entry(name: str, about: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "routegate",
            "routegate": about,
        }

    entries = {
        name: entry(
            name,
            {
                "kind": "model",
                "provider": cfg.provider,
                "description": cfg.description,
                "healthy": runtime.backends[name].healthy(),
            },
        )
        for name, cfg in runtime.policy.models.items()
    }
    for name, route in runtime.policy.routes.items():
        entries[name] = entry(
            name,
            {
                "kind": "route",
                "strategy": route.kind,
                "models": list(route.models),
                "description": route.description,
            },
        )
    return entries


async def visible_names(request: Request, runtime: Runtime) -> list[str] | None:
    """The names the caller may see; None: all of them. Where the policy guards the list, the
    same check as a completion: a key is needed, and it sees what it may use."""
    rules = runtime.access
    if not rules.models_guarded:
        return None
    services: Services = request.app.state.services
    key = await services.access.authenticate(authorization(request), rules, client_address(request))
    return key.routes if key is not None else None


def not_found(model_id: str) -> ApiError:
    # As OpenAI words it: a model the caller may not see is not told apart from none at all.
    return ApiError(
        404,
        f"The model '{model_id}' does not exist or you do not have access to it "
        "(see GET /v1/models)",
        code="model_not_found",
        param="model",
    )
