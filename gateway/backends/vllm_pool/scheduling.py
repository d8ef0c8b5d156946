"""Which of a pool's endpoints a call tries first: a preset, or weighted scorers.

- `least_outstanding` (the default): fewest requests outstanding from this process, ties
  shuffled (EndpointHealth.order).
- `round_robin`: the usable endpoints in turn.
- scorers, each 0..1 per usable endpoint, summed by weight: `prefix` (the share of the
  prompt's leading text blocks this pool last sent to that endpoint: its prefix cache likely
  holds them; chained block hashes as in vLLM's own block hashing), `queue` (vLLM's running +
  waiting from its /metrics with this process's part of it brought up to date, see
  `queue_load`; this process's outstanding count where it has none), `kv` (free KV cache from
  its /metrics), `outstanding` (this process's count); the two load scorers
  give (least + 1) / (load + 1), the shortest queue's length against the one the call joins.
  An endpoint whose load passes `max_imbalance` times the least-loaded one's (at least 1)
  gets no prefix score, so one hot prefix cannot pile every request onto one endpoint.
  `prefix_aware` is {prefix: 2, queue: 1, kv: 1, outstanding: 1}.

A call with an affinity key (`scheduling.sticky`, or EAD's per request) goes to the endpoint
its key last went to while that one is usable; both maps are bounded LRUs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gateway.backends.base import UpstreamCall
from gateway.backends.vllm_pool.endpoints import Endpoint, EndpointHealth
from policies.schema import Scheduling, SchedulingConfig, ScorerWeights

PREFIX_AWARE = SchedulingConfig(scorers=ScorerWeights(prefix=2, queue=1, kv=1, outstanding=1))
STICKY_KEYS = 10_000  # session keys remembered per pool
PREFIX_BLOCKS = 50_000  # block hashes remembered per pool
MAX_BLOCKS = 512  # blocks hashed per request: bounds the work on a huge prompt


@dataclass(slots=True)
class Choice:
    """The endpoints to try, in order, and what to remember of the one that is sent the call."""

    order: list[Endpoint]
    blocks: list[int] | None = None  # the prompt's chained block hashes (prefix scorer only)


def prompt_text(body: dict[str, Any]) -> str:
    """The request's leading text as the server will see it, roughly: the prompt, or the chat
    messages' roles and text in order (what a chat template renders, give or take markup)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    parts: list[str] = []
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        parts.append(str(m.get("role", "")))
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\x00".join(parts)


def block_hashes(text: str, block: int) -> list[int]:
    """Chained hashes of the text's full blocks: block i's hash covers blocks 0..i, so a match
    at i means the whole prefix up to it matches (as vLLM's prefix-cache block hashes)."""
    out: list[int] = []
    h = 0
    for start in range(0, min(len(text) // block, MAX_BLOCKS) * block, block):
        h = hash((h, text[start : start + block]))
        out.append(h)
    return out


class Scheduler:
    """One pool's endpoint choice under its model's `scheduling:` policy."""

    def __init__(self, health: EndpointHealth, scheduling: Scheduling):
        self.health = health
        self.endpoints = health.endpoints
        self.preset = scheduling if isinstance(scheduling, str) else None
        config = PREFIX_AWARE if scheduling == "prefix_aware" else scheduling
        self.config = config if isinstance(config, SchedulingConfig) else None
        self._turn = 0  # round robin's next
        self._sticky: OrderedDict[str, Endpoint] = OrderedDict()
        self._blocks: OrderedDict[int, set[str]] = OrderedDict()  # block hash -> endpoints

    def choose(self, call: UpstreamCall) -> Choice:
        if self.config is not None:
            choice = self._scored(call)
        elif self.preset == "round_robin":
            choice = Choice(self._round_robin())
        else:
            choice = Choice(self.health.order())
        if call.affinity is not None and len(choice.order) > 1:
            pinned = self._sticky.get(call.affinity)
            if pinned is not None and pinned.usable(time.monotonic()) and pinned in choice.order:
                choice.order.remove(pinned)
                choice.order.insert(0, pinned)
        return choice

    def sent(self, endpoint: Endpoint, call: UpstreamCall, choice: Choice) -> None:
        """The call goes to `endpoint`: its session key and prompt blocks now point there."""
        if call.affinity is not None:
            self._sticky[call.affinity] = endpoint
            self._sticky.move_to_end(call.affinity)
            if len(self._sticky) > STICKY_KEYS:
                self._sticky.popitem(last=False)
        if choice.blocks:
            for h in choice.blocks:
                where = self._blocks.get(h)
                if where is None:
                    self._blocks[h] = {endpoint.base_url}
                else:
                    where.add(endpoint.base_url)
                    self._blocks.move_to_end(h)
            while len(self._blocks) > PREFIX_BLOCKS:
                self._blocks.popitem(last=False)

    def _round_robin(self) -> list[Endpoint]:
        now = time.monotonic()
        usable = [e for e in self.endpoints if e.usable(now)]
        cooling = [e for e in self.endpoints if not e.usable(now)]
        cooling.sort(key=lambda e: e.down_until)
        if usable:
            i = self._turn % len(usable)
            self._turn += 1
            usable = usable[i:] + usable[:i]
        return usable + cooling

    def _scored(self, call: UpstreamCall) -> Choice:
        config = self.config
        assert config is not None
        w = config.scorers
        order = self.health.order()  # usable by outstanding (ties shuffled), then cooling
        now = time.monotonic()
        usable = [e for e in order if e.usable(now)]
        if len(usable) < 2 and not w.prefix:
            return Choice(order)
        loads = [queue_load(e) for e in usable]
        min_load = min(loads)
        min_out = min(e.outstanding for e in usable)
        blocks = None
        matched = [0.0] * len(usable)
        if w.prefix:
            blocks = block_hashes(prompt_text(call.body), config.prefix_block_chars)
            if blocks and len(usable) > 1:
                bound = config.max_imbalance * max(min(loads), 1.0)
                for i, e in enumerate(usable):
                    if loads[i] > bound:
                        continue  # too loaded to be preferred for its cache
                    n = 0
                    for h in blocks:
                        where = self._blocks.get(h)
                        if where is None or e.base_url not in where:
                            break
                        n += 1
                    matched[i] = n / len(blocks)
        scores = {}
        for i, e in enumerate(usable):
            kv = e.engine.kv_usage
            scores[e.base_url] = (
                w.prefix * matched[i]
                + w.queue * _shortest_share(loads[i], min_load)
                + w.kv * (1 - kv if kv is not None else 0.5)
                + w.outstanding * _shortest_share(e.outstanding, min_out)
            )
        # A stable sort: equal scores keep the fewest-outstanding order.
        usable.sort(key=lambda e: -scores[e.base_url])
        return Choice(usable + order[len(usable) :], blocks)


def _shortest_share(load: float, least: float) -> float:
    """1 for the least-loaded endpoint, less as the queue this call would join grows past the
    shortest one: (least + 1) / (load + 1). Scaled by the call itself, so one request more
    (1 against 0) costs half a point, not the whole point that a 1-vs-0 "relative to the
    busiest" gave: that let two load scorers outvote a full prefix match whenever the other
    endpoint was idle, on a pool of any size and any load."""
    return (least + 1.0) / (load + 1.0)


def queue_load(e: Endpoint) -> float:
    """The queue the call would join: every other client's requests as vLLM last counted
    them, plus this process's own as they are now.

    vLLM's running + waiting is read every `metrics_interval_s` (1 s by default), and in that
    second this process may have sent the endpoint several requests: scored on the bare
    figure, every call of a burst saw the endpoint as idle and piled onto it. So the part of
    the figure that was ours when it was read (`own_at_read`) is swapped for the live
    outstanding count: the other replicas' and direct callers' load stays the shared truth
    from the metrics, ours is never stale. Without vLLM figures: this process's count."""
    running, waiting = e.engine.running, e.engine.waiting
    if running is None and waiting is None:
        return float(e.outstanding)
    others = max(0.0, (running or 0.0) + (waiting or 0.0) - e.own_at_read)
    return others + e.outstanding
