"""The policy reloader (gateway/reloader.py) in the in-process app: a changed policy file is
picked up (by reload, as SIGHUP does, and by the file watcher); a broken one is rejected with
its problems and the old policy keeps serving. (Through `routegate serve`:
tests/system/test_gateway_http.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.inprocess import InProcessGateway, in_process_gateway

POLICY = """
version: 1
models:
  alpha:
    provider: vllm
    endpoints: [http://alpha.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
  beta:
    provider: vllm
    endpoints: [http://beta.invalid/v1]
    pricing: {input_per_1m: 3.0, output_per_1m: 6.0}
routes:
  main: {models: [alpha]}
"""
EDITED = POLICY.replace("main: {models: [alpha]}", "main: {models: [beta]}")


async def answering_model(gw: InProcessGateway) -> str:
    resp = await gw.chat("main")
    assert resp.status_code == 200, resp.text
    return resp.headers["x-routegate-model"]


async def test_a_changed_policy_is_picked_up_on_reload(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path) as gw:
        old = gw.holder.current
        assert old is not None and await answering_model(gw) == "alpha"
        gw.settings.policy_path.write_text(EDITED)
        assert await gw.holder.reload() is True
        new = gw.holder.current
        assert new is not None and new is not old and new.version != old.version
        assert await answering_model(gw) == "beta"
        ready = (await gw.client.get("/readyz")).json()
    assert ready["policy_version"] == new.version and ready["last_reload_error"] is None


async def test_a_broken_policy_is_rejected_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path) as gw:
        serving = gw.holder.current
        assert serving is not None
        # A route naming a model the policy does not have: a validation problem, not a crash.
        gw.settings.policy_path.write_text(POLICY.replace("[alpha]}", "[gamma]}"))
        assert await gw.holder.reload() is False
        assert gw.holder.current is serving
        assert "routes.main.models" in str(gw.holder.last_error)
        assert await answering_model(gw) == "alpha"
        ready = (await gw.client.get("/readyz")).json()
        assert "routes.main.models" in ready["last_reload_error"]
        assert ready["policy_version"] == serving.version

        gw.settings.policy_path.write_bytes(b"version: 1\nmodels: [\xff\n")  # not even UTF-8
        assert await gw.holder.reload() is False and gw.holder.current is serving

        gw.settings.policy_path.write_text(EDITED)  # a good edit after bad ones still applies
        assert await gw.holder.reload() is True
        assert await answering_model(gw) == "beta"
        assert gw.holder.last_error is None


async def test_the_watcher_picks_up_an_edited_file(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path, watch=True) as gw:
        old = gw.holder.current
        assert old is not None
        await asyncio.sleep(0.2)  # let the watcher start watching
        gw.settings.policy_path.write_text(EDITED)
        deadline = time.monotonic() + 10
        while gw.holder.current is old and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert gw.holder.current is not old, "the watcher never reloaded the edited policy"
        assert await answering_model(gw) == "beta"
