"""The bundled example policy pointed at the test's own vLLM servers.

The example names the real demo pair (smollm2-135m on :8101, gemma3-270m on :8102). A test
gives the URLs of its servers, and the names they serve when those are not the real pair
(the tiny random-weight models, for tests that need speed rather than sense)."""

from __future__ import annotations

from policies.loader import example_policy_path

SMALL, LARGE = "smollm2-135m", "gemma3-270m"


def example_policy_text(
    small_url: str, large_url: str, small_served: str = SMALL, large_served: str = LARGE
) -> str:
    example = example_policy_path()
    return (
        example.read_text()
        .replace("http://127.0.0.1:8101/v1", small_url)
        .replace("http://127.0.0.1:8102/v1", large_url)
        .replace(f"served_name: {SMALL}", f"served_name: {small_served}")
        .replace(f"served_name: {LARGE}", f"served_name: {large_served}")
        .replace(f"model: openai/{LARGE}", f"model: openai/{large_served}")
        .replace("router: ../routers/", f"router: {example.parent.parent}/routers/")
    )


def example_policy_on_tiny(servers: dict[str, str]) -> str:
    """The example on the tiny pair (`vllm_servers` fixture): same routes, gibberish answers."""
    return example_policy_text(
        servers["tiny-small"], servers["tiny-large"], "tiny-small", "tiny-large"
    )
