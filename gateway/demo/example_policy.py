"""The bundled example policy pointed at other servers or other models than the real demo pair.

`policies/example.yaml` names the real pair (smollm2-135m on :8101, gemma3-270m on :8102) by
their served names. `routegate demo up --tiny` serves the tiny random-weight pair under other
names, and tests start servers on free ports: both need the same routes on other endpoints."""

from __future__ import annotations

from gateway.demo.vllm_servers import DEMO_MODELS, DEMO_PORTS
from policies.loader import example_policy_path

SMALL, LARGE = DEMO_MODELS
SMALL_URL, LARGE_URL = (f"http://127.0.0.1:{port}/v1" for port in DEMO_PORTS)


def example_policy_text(
    small_url: str = SMALL_URL,
    large_url: str = LARGE_URL,
    small_served: str = SMALL,
    large_served: str = LARGE,
) -> str:
    """The example's text with the pair's URLs and served names replaced; its relative router
    path made absolute, so the text works from any folder."""
    example = example_policy_path()
    return (
        example.read_text()
        .replace(SMALL_URL, small_url)
        .replace(LARGE_URL, large_url)
        .replace(f"served_name: {SMALL}", f"served_name: {small_served}")
        .replace(f"served_name: {LARGE}", f"served_name: {large_served}")
        .replace(f"model: openai/{LARGE}", f"model: openai/{large_served}")
        .replace("router: ../routers/", f"router: {example.parent.parent}/routers/")
    )
