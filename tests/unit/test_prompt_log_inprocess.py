"""`log_prompts: true` on a route keeps the router's text, redacted, in the request log's
`prompt` column (through the in-process app); a route without it keeps nothing."""

from __future__ import annotations

from pathlib import Path

from tests.support.inprocess import in_process_gateway

POLICY = """
version: 1
defaults: {max_tokens: 16, retries: 0}
models:
  small:
    provider: vllm
    endpoints: [http://small.invalid/v1]
    pricing: {input_per_1m: 1.0, output_per_1m: 2.0}
routes:
  logged:
    models: [small]
    log_prompts: true
  raw:
    models: [small]
    log_prompts: true
    prompt_redaction: none
  quiet:
    models: [small]
"""

PROMPT = "mail jo@example.com about order 998877, in 2 days"


async def test_log_prompts_stores_the_redacted_prompt_and_only_there(tmp_path: Path) -> None:
    async with in_process_gateway(POLICY, tmp_path) as gw:
        rows = {}
        for route in ("logged", "raw", "quiet"):
            resp = await gw.client.post(
                "/v1/chat/completions",
                json={
                    "model": route,
                    "messages": [
                        {"role": "system", "content": "be brief 1234567"},
                        {"role": "user", "content": PROMPT},
                    ],
                },
            )
            assert resp.status_code == 200, resp.text
            rows[route] = await gw.record(resp.headers["x-routegate-request-id"])
        completion = await gw.client.post(
            "/v1/completions", json={"model": "logged", "prompt": "ring 0800 123 456"}
        )
        assert completion.status_code == 200, completion.text
        rows["completion"] = await gw.record(completion.headers["x-routegate-request-id"])
    # The last user message only (what the router reads), not the system message.
    assert rows["logged"]["prompt"] == "mail [email] about order [digits], in 2 days"
    assert rows["raw"]["prompt"] == PROMPT
    assert rows["quiet"]["prompt"] is None
    assert rows["completion"]["prompt"] == "ring [digits]"
