"""A remote model through litellm: OpenAI, Anthropic, any OpenAI-compatible server.

litellm is imported lazily (it takes seconds): `start()` warms it in a thread at policy load,
and the first call imports it if `start()` was skipped. Importing this module stays cheap.

What the backend does on top of litellm:
- The client's OpenAI parameters go to litellm as OpenAI parameters; every other key travels in
  `extra_body`, so it reaches the upstream untouched but litellm never reads it. Client keys
  must not reach litellm's own kwargs: `api_base`, `api_key`, `mock_response`, `metadata` or a
  logging callback's settings would redirect the call (and our API key) or change its handling.
- Retries are ours (litellm's and the OpenAI SDK's are off): only connection errors, timeouts and
  5xx are retried, against the same model, before any byte was streamed.
- Responses are litellm's objects dumped to plain JSON, trimmed of litellm-only empty fields.
- Streams are re-shaped to what OpenAI sends with `include_usage`: the usage arrives as a final
  chunk with `choices: []` (litellm hangs it on a chunk with an empty choice).

Known litellm limits (1.106): text-completion streams lose `logprobs` and, with n > 1, the choice
indices (everything arrives as index 0); chat streams with n > 1 lose the finish chunks of all but
the first choice. Non-streaming calls keep both. Use a `vllm` model for full fidelity there.
"""

from gateway.backends.remote.backend import LitellmBackend
from gateway.backends.remote.stream import LitellmStream

__all__ = ["LitellmBackend", "LitellmStream"]
