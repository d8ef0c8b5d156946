"""The policy page in headless Chromium against a real gateway process: validate shows the
validator's FILE:LINE:COL errors, apply hot-reloads the gateway, history keeps who and when,
and rollback brings the old policy back. Applying needs the master key."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support.browser import browser_page, screenshot
from tests.support.gateway import GatewayProcess
from tests.support.upstream import Upstream
from tests.unit.test_policy_apply import POLICY  # the in-process half of this module

if TYPE_CHECKING:
    from playwright.sync_api import Page

MASTER = "master-policy-key"
AUTH = {"authorization": f"Bearer {MASTER}"}  # a master key means /v1 and /readyz details need one
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    a, b = Upstream("alpha").start(), Upstream("beta").start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def gateway(upstreams: tuple[Upstream, Upstream], tmp_path: Path) -> Iterator[GatewayProcess]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(a=upstreams[0].base_url, b=upstreams[1].base_url))
    gw = GatewayProcess(policy, tmp_path, env={"ROUTEGATE_MASTER_KEY": MASTER}).start()
    yield gw
    gw.stop()


def route_models(gw: GatewayProcess, route: str) -> list[str]:
    data = httpx.get(gw.url + "/v1/models", headers=AUTH).json()["data"]
    return next(m["routegate"]["models"] for m in data if m["id"] == route)


def served_by(gw: GatewayProcess, route: str) -> str:
    resp = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": route, "messages": MESSAGES}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def version(gw: GatewayProcess) -> str:
    return httpx.get(gw.url + "/readyz", headers=AUTH).json()["policy_version"]


def log_in(page: Page, gw: GatewayProcess, target: str) -> None:
    page.goto(gw.url + target)
    page.fill("#master-key", MASTER)
    page.click("#login-submit")
    page.wait_for_url(gw.url + target)


def history(page: Page) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#history-table tbody tr",
        """rows => rows.map(r => ({
            id: r.dataset.id, version: r.dataset.version,
            who: r.querySelector('.who').textContent, note: r.querySelector('.note').textContent,
            when: r.children[2].textContent, client: r.children[4].textContent,
            live: r.children[0].textContent.includes('live'),
        }))""",
    )


def test_validate_apply_history_and_rollback(gateway: GatewayProcess, tmp_path: Path) -> None:
    original = gateway.policy.read_text()
    first_version = version(gateway)
    assert route_models(gateway, "cheap") == ["alpha"]

    with browser_page() as page:
        log_in(page, gateway, "/dashboard/policy")
        assert page.input_value("#policy-text") == original
        assert page.inner_text("#policy-version") == first_version

        # An unknown model: the validator's FILE:LINE:COL message, nothing applied.
        broken = original.replace("cheap: {models: [alpha]}", "cheap: {models: [gamma]}")
        line = broken.splitlines().index("  cheap: {models: [gamma]}") + 1
        col = "  cheap: {models: [gamma]}".index("gamma") + 1
        page.fill("#policy-text", broken)
        page.click("#policy-validate")
        problems = page.locator("#policy-problems")
        problems.wait_for(state="visible")
        assert problems.inner_text() == (
            f"{gateway.policy}:{line}:{col} routes.cheap.models[0]: unknown model 'gamma'"
        )
        # Apply refuses it too, and the file and the serving policy stay as they were.
        page.fill("#policy-who", "alice")
        page.click("#policy-apply")
        page.wait_for_function(
            "() => document.getElementById('policy-status').className === 'error'"
        )
        assert gateway.policy.read_text() == original and version(gateway) == first_version

        # A valid edit: the route moves to beta, and the gateway serves it at once.
        edited = original.replace("cheap: {models: [alpha]}", "cheap: {models: [beta]}")
        page.fill("#policy-text", edited)
        page.click("#policy-validate")
        page.wait_for_function(
            "() => document.getElementById('policy-status').textContent === 'valid'"
        )
        assert page.locator("#policy-problems").is_hidden()
        if importlib.util.find_spec("policies.diff") is not None:  # it words the change
            diff = page.inner_text("#policy-diff")
            assert "Route cheap" in diff and "beta" in diff and "alpha" in diff
        page.click("#policy-apply")
        page.wait_for_function(
            "() => document.getElementById('policy-status').textContent.startsWith('applied')"
        )
        second_version = version(gateway)
        assert second_version != first_version
        assert page.inner_text("#policy-version") == second_version
        assert route_models(gateway, "cheap") == ["beta"]
        assert served_by(gateway, "cheap") == "hi from beta"
        assert gateway.policy.read_text() == edited

        rows = history(page)
        assert [(r["id"], r["who"], r["note"], r["version"]) for r in rows] == [
            ("2", "alice", "apply", second_version),
            ("1", "file", "loaded from file", first_version),
        ]
        assert rows[0]["live"] and not rows[1]["live"]
        assert rows[0]["client"] == "127.0.0.1" and rows[0]["when"].endswith("UTC")
        screenshot(page, tmp_path, "policy-page.png")

        # Roll back to v1: the old policy serves again, recorded as a new version.
        page.click("button.rollback[data-id='1']")
        page.wait_for_function(
            "() => document.getElementById('policy-status').textContent.startsWith('applied')"
        )
        assert version(gateway) == first_version
        assert route_models(gateway, "cheap") == ["alpha"]
        assert served_by(gateway, "cheap") == "hi from alpha"
        rows = history(page)
        assert (rows[0]["id"], rows[0]["who"], rows[0]["note"]) == ("3", "alice", "rollback to v1")
        assert rows[0]["live"] and rows[0]["version"] == first_version

        # After a reload the page shows the serving text and the same history.
        page.reload()
        assert page.input_value("#policy-text") == original
        assert [r["id"] for r in history(page)] == ["3", "2", "1"]
        screenshot(page, tmp_path, "policy-page-rolled-back.png")


def test_only_the_master_key_may_apply(gateway: GatewayProcess) -> None:
    original = gateway.policy.read_text()
    edited = original.replace("cheap: {models: [alpha]}", "cheap: {models: [beta]}")
    made = httpx.post(
        gateway.url + "/admin/keys",
        json={"team": "t"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    secret = made.json()["secret"]

    def post(path: str, headers: dict[str, str], **kw: object) -> httpx.Response:
        return httpx.post(gateway.url + "/dashboard/policy/" + path, headers=headers, **kw)

    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {secret}"}):
        assert post("apply", headers, json={"text": edited, "who": "mallory"}).status_code == 401
        assert post("rollback", headers, json={"id": 1, "who": "mallory"}).status_code == 401
        # Reading and validating need the master key as well.
        assert post("validate", headers, json={"text": edited}).status_code == 401
        history = httpx.get(gateway.url + "/dashboard/policy/history.json", headers=headers)
        assert history.status_code == 401
    assert gateway.policy.read_text() == original
    assert route_models(gateway, "cheap") == ["alpha"]

    master = {"authorization": f"Bearer {MASTER}"}
    nameless = post("apply", master, json={"text": edited})
    assert nameless.status_code == 400 and nameless.json()["error"]["param"] == "who"
    form = post("apply", master, data={"text": edited, "who": "x"})
    assert form.status_code == 415  # JSON only: a cross-site form post cannot apply
    ok = post("apply", master, json={"text": edited, "who": "ci"})
    assert ok.status_code == 200 and ok.json()["version"] == version(gateway)
    assert route_models(gateway, "cheap") == ["beta"]
