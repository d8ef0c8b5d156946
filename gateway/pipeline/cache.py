"""The route's response cache, looked up after admission and before routing: a hit calls
no model and costs nothing."""

from __future__ import annotations

import logging
import time

from gateway.accounting.request_log import CacheOutcome
from gateway.cache.response_cache import ResponseCache, scope_id
from gateway.pipeline.context import CacheUse, RequestContext

log = logging.getLogger("routegate.pipeline")


async def lookup(ctx: RequestContext) -> CacheUse | None:
    """The route's cache entry for this request, with the hit if any (also in `ctx.cache`);
    None when the route has no cache or the request may not be cached (sampled, n > 1)."""
    config, rec = ctx.config, ctx.record
    if config is None or config.cache is None or rec.route is None:
        return None
    cache = ResponseCache(ctx.services.access.state, rec.route, config.cache)
    key = cache.key_for(ctx.kind, ctx.body, scope_id(config.cache, rec.api_key_id, rec.team))
    if key is None:
        return None
    ctx.cache = use = CacheUse(cache, key)
    with ctx.services.tracing.span("routegate.cache") as span:
        try:
            use.hit = await cache.get(key, time.time())
        except Exception:  # a cache that cannot answer is a miss, not a failed request
            log.exception("looking up the %s cache failed", rec.route)
        if span is not None:
            span.set_attribute("routegate.cache.hit", use.hit is not None)
    if use.hit is None:
        ctx.notes.cache = CacheOutcome(hit=False)
    return use
