"""One request through the gateway, a module a phase, in the order they run:

- `admit.identify`: the caller's key, the body, the route and the key's permission for it;
- `cache.lookup`: the route's response cache (a hit goes straight to `respond.cached`);
- `route`: pacing's price multiplier and the router's chain (or the route's cascade);
- `admit.reserve`: rate limits and the worst case reserved on every budget;
- `run`: the fallback chain or the cascade calls the models;
- `respond`: the answer, error or stream, with the x-routegate-* headers;
- account: `gateway/accounting/charge.py` settles the budgets, writes the request log row
  and the metrics, once.

`context.RequestContext` carries one request between them; `handler.handle` runs them.
"""

from gateway.pipeline.context import RequestContext, Services
from gateway.pipeline.handler import handle

__all__ = ["RequestContext", "Services", "handle"]
