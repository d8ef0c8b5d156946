"""Pooled OpenAI SDK clients for text completions to OpenAI-like servers.

litellm builds a fresh HTTP client for every text completion to an OpenAI-like server (no
connection reuse, and an "Unclosed connector" warning each time); we hand it a pooled one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gateway.backends.base import UpstreamCall

# Process-wide and never closed, like the gateway's shared client: requests of an old policy
# may still use it after a reload.
_clients: dict[tuple[int, str, str | None, float, float], Any] = {}


def timeouts(call: UpstreamCall) -> httpx.Timeout:
    """The timeouts litellm passes on: the connect timeout apart (OpenAI-like providers, Azure
    and Bedrock take an httpx.Timeout; litellm gives the others the total alone)."""
    return httpx.Timeout(call.timeout_s, connect=call.connect_timeout_s)


def openai_client(api_base: str, api_key: str | None, timeout: httpx.Timeout) -> Any:
    loop_id = id(asyncio.get_running_loop())  # an httpx client is bound to its event loop
    key = (loop_id, api_base, api_key, timeout.read or 0.0, timeout.connect or 0.0)
    client = _clients.get(key)
    if client is None:
        base = _clients.get((loop_id, api_base, api_key, 0.0, 0.0))
        if base is None:
            import openai

            base = openai.AsyncOpenAI(api_key=api_key, base_url=api_base, max_retries=0)
            _clients[(loop_id, api_base, api_key, 0.0, 0.0)] = base
        client = base.with_options(timeout=timeout)  # shares base's connection pool
        _clients[key] = client
    return client
