"""Adds the dashboard (its pages, the policy page and their static files) to the gateway app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from gateway.dashboard.common import PACKAGE_DIR
from gateway.dashboard.history import PolicyHistory
from gateway.dashboard.policy_edit import PolicyEditor
from gateway.dashboard.policy_routes import router as policy_router
from gateway.dashboard.routes import router


def mount_dashboard(app: FastAPI, settings: Any) -> None:
    """Add the dashboard to the gateway app; `settings` is gateway.app.Settings."""
    history_path = getattr(settings, "policy_history_path", None) or (
        Path(settings.log_path).parent / "routegate-policy-history.sqlite"
    )
    # The request log the traffic panels read: its Postgres URL, or its SQLite file.
    app.state.dashboard_log_path = getattr(settings, "log_url", None) or Path(settings.log_path)
    app.state.policy_editor = PolicyEditor(PolicyHistory(Path(history_path)), settings.watch_policy)
    app.include_router(router)
    app.include_router(policy_router)
    static = StaticFiles(directory=str(PACKAGE_DIR / "static"))
    app.mount("/dashboard/static", static, name="dashboard-static")
