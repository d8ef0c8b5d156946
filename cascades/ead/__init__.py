"""Entropy Adaptive Decoding (EAD): token-level switching between a small and a large model.

After "Entropy Adaptive Decoding" (the small model drafts, the large model takes over while the
small one is unsure). The loop runs over vLLM's completions API, so any two vLLM-served models
pair up, whatever their tokenizers:

- the small model writes `chunk` tokens a call, with `logprobs: top_k`. Each token's entropy is
  that of its top-k distribution, renormalised (the tail beyond k is unknown; renormalising keeps
  the measure in [0, ln k] nats for every model alike). The rolling mean over the last `window`
  tokens is taken after each token;
- at the first token where rolling mean >= threshold, the small model's text is kept up to but
  excluding that token (its distribution there is the uncertain one, so, as in the paper, the
  large model writes it), and the rest of that call is dropped (paid for all the same);
- the large model continues from the text so far for `span` tokens, again with logprobs, and
  keeps control for another span while its own rolling entropy stays >= threshold; once it
  falls, the small model continues. The window restarts at each hand-over: the two models'
  entropies are not comparable.

`>=` makes threshold 0 mean "always the large model" (a peaked distribution has entropy exactly
0), and a threshold no entropy reaches (ln k is the most there is) means "never".

Each call sends the prompt plus the text so far as text: chat is rendered with each model's own
chat template (the backend's `ChatRendering` capability: vLLM's /tokenize + /detokenize), once
per model per request; a model with no template gets the plain one in `plain_chat_prompt`.
`max_tokens` caps the tokens kept in the answer. Text is streamed as each call returns, holding
back just enough characters to catch a stop sequence split between two calls, so streamed and
whole answers are the same text.

Modules: `entropy` (the measure), `switching` (where a call hands over or ends), `decoder` (the
loop and its tally), `stream` (the OpenAI stream), `cascade` (limits, bounds, entry points).
"""

from cascades.ead.cascade import DEFAULT_MAX_TOKENS, EadCascade
from cascades.ead.decoder import BYTES_PER_TOKEN
from cascades.ead.entropy import RollingMean, token_entropy
from cascades.ead.prompts import plain_chat_prompt
from cascades.ead.stream import EadStream

__all__ = [
    "BYTES_PER_TOKEN",
    "DEFAULT_MAX_TOKENS",
    "EadCascade",
    "EadStream",
    "RollingMean",
    "plain_chat_prompt",
    "token_entropy",
]
