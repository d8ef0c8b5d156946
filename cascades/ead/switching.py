"""The switching rule: where a small call hands over to the large model, and where the answer
ends (a stop sequence may be split between two calls, which vLLM sees in neither)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cascades.ead.entropy import RollingMean, token_entropy


@dataclass(slots=True)
class Piece:
    """What one completions call gave: its text, token offsets and entropies."""

    text: str
    offsets: list[int]
    entropies: list[float]
    finish: str | None


def piece_of(body: dict[str, Any]) -> Piece:
    """A completions answer read as a Piece (raises on a malformed one)."""
    choice = body["choices"][0]
    text = choice.get("text") or ""
    lp = choice.get("logprobs") or {}
    offsets = [min(int(o), len(text)) for o in lp.get("text_offset") or []]
    entropies = [token_entropy(t) for t in lp.get("top_logprobs") or []]
    if not offsets:  # no logprobs at all: count the call's tokens from its usage
        n = int((body.get("usage") or {}).get("completion_tokens") or 0)
        offsets, entropies = [0] * n, [0.0] * n
    return Piece(text, offsets, entropies, choice.get("finish_reason"))


def stop_at(stops: list[str], text: str, start: int) -> int | None:
    """Where the first stop sequence that ends past `start` begins in `text`, or None: one
    split across two calls, which vLLM saw as a stop in neither."""
    found = [at for s in stops if (at := text.find(s, max(0, start - len(s) + 1))) >= 0]
    return min(found, default=None)


def handover_at(
    piece: Piece, window: RollingMean, threshold: float, stops: list[str], text: str
) -> int | None:
    """The first token of a small call at which the rolling entropy reaches the threshold;
    `text` is the answer before this call."""
    last = len(piece.entropies) - 1
    for i, h in enumerate(piece.entropies):
        if window.push(h) >= threshold:
            # The answer ended before the hand-over when: the token is past the end of the
            # text, not the last (EOS is), so vLLM cut the text at a stop sequence before
            # it; or the text kept up to it completes a stop split across two calls.
            at = piece.offsets[i]
            past_stop = piece.finish == "stop" and i < last and at >= len(piece.text)
            split_stop = (
                bool(stops) and stop_at(stops, text + piece.text[:at], len(text)) is not None
            )
            if past_stop or split_stop:
                return None
            return i
    return None
