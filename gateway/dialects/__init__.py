"""APIs other than OpenAI's, spoken to clients over the same pipeline: a dialect turns its
request into a chat body, and the chat answer, stream and errors back into its own shapes.

The pipeline itself only ever sees OpenAI chat bodies and chunks, so routing, cascades, the
cache, budgets and the request log work the same for every API. OpenAI's own endpoints (chat,
completions, embeddings) need no dialect.
"""

from gateway.dialects.base import Dialect, StreamEncoder

__all__ = ["Dialect", "StreamEncoder"]
