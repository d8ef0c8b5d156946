"""Cheap lexical features of a query: a fixed-length float vector a router can add to the
sentence embedding (length, code, maths, kind of question, multiple choice).

Every feature is a ratio, a log count or a 0/1 flag, so values stay small without fitted
scaling, and none depends on a task name: a router trained on some subjects can use them on any
prompt. Words are split once and looked up in sets; only a few regular expressions scan the
text, which keeps a typical prompt well under 0.1 ms.
"""

from __future__ import annotations

import math
import re

import numpy as np

_WORD = re.compile(r"\w+")
_FENCE = re.compile(r"```|~~~")
_CODE_SYNTAX = re.compile(r"[{};]|=>|->|::|[=!<>]=|\+\+|&&|\|\||\w\(\)|^ {4,}\S", re.M)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)?%?")
# ASCII operators plus times, divide, plus-minus, <=, >=, root, sum, integral, pi.
_OPERATOR = re.compile("[+*/=^<>%\u00d7\u00f7\u00b1\u2264\u2265\u221a\u2211\u222b\u03c0]")
# "3x + 5", "x = 2", "a^2", "(4 - 1)": numbers or single letters around an operator.
_EQUATION = re.compile(r"(?<![a-z])(?:\d|[a-z]\b)\s*[-+*/^=]\s*\(?(?:\d|[a-z](?![a-z]))")
_LATEX = re.compile(r"\\[a-zA-Z]+|\$[^$\n]+\$|\^\{|_\{")
# Options on their own lines, "A. ...", "(B) ...", "C) ...", or inline "(a) ... (b) ...".
_CHOICE = re.compile(r"^\s*\(?([A-Ja-j])[.):]\s+\S|(?:^|\s)\(([A-Ea-e])\)\s+\S", re.M)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.M)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_UPPER = re.compile(r"[A-Z]")
_DIGITS = str.maketrans("", "", "0123456789")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CODE_WORDS = _words(
    "def class return import lambda elif async await function const let var public private "
    "static void int bool struct typedef include printf println console nullptr "
    "while try catch except raise throw namespace"
)
_CODE_ASK = _words(
    "code coding program programming function script implement debug compile compiler python "
    "javascript java typescript rust golang sql regex algorithm bug api"
)
_MATH_WORDS = _words(
    "calculate compute solve evaluate simplify derivative integral equation equations "
    "probability sum product average mean median percent percentage ratio prove theorem "
    "matrix vector polynomial factor logarithm"
)

# Kind of question: 0/1 flags from whole words (and a few phrases) of the lower-cased prompt.
_KIND_WORDS: dict[str, frozenset[str]] = {
    "what": _words("what"),
    "why": _words("why"),
    "how": _words("how"),
    "which": _words("which"),
    "who_when_where": _words("who whom whose when where"),
    "yes_no": frozenset(),  # the first word only, below
    "calculate": _words("calculate compute solve evaluate determine"),
    "compare": _words("compare comparison contrast difference differences versus vs"),
    "explain": _words("explain describe discuss elaborate justify analyse analyze"),
    "write": _words("write draft compose generate create implement"),
    "summarise": _words("summarise summarize summary tldr outline"),
    "translate": _words("translate translation"),
    "prove": _words("prove proof derive"),
    "true_false": frozenset(),  # phrases only
}
_YES_NO_START = _words("is are was were do does did can could should would will")
_PHRASES = re.compile(
    r"\b(find the|show that|true or false|how many|how much|value of|number of|statement \d)\b"
)
_PHRASE_KIND = {
    "find the": "calculate",
    "show that": "prove",
    "true or false": "true_false",
}
_MATH_PHRASES = frozenset({"how many", "how much", "value of", "number of", "find the"})
_KINDS = list(_KIND_WORDS)

FEATURE_NAMES: list[str] = [
    "log_chars",
    "log_words",
    "log_lines",
    "log_sentences",
    "mean_word_len",
    "question_marks",
    "upper_ratio",
    "non_ascii_ratio",
    "has_url",
    "bullet_lines",
    "code_fence",
    "code_keywords",
    "code_syntax",
    "code_ask",
    "digit_ratio",
    "log_numbers",
    "operator_ratio",
    "equation",
    "latex",
    "math_words",
    "choice_options",
    "multiple_choice",
    *(f"kind_{k}" for k in _KINDS),
]


def _one(text: str) -> list[float]:
    log = math.log1p
    chars = len(text)
    inv = 1.0 / max(chars, 1)
    lower = text.lower()
    words = _WORD.findall(lower)
    n_words = len(words)
    vocab = set(words)
    phrases = _PHRASES.findall(lower)
    choices = {(a or b).upper() for a, b in _CHOICE.findall(text)}
    kinds = {k for k, ws in _KIND_WORDS.items() if not ws.isdisjoint(vocab)}
    kinds.update(_PHRASE_KIND[p] for p in phrases if p in _PHRASE_KIND)
    if any(p.startswith("statement") for p in phrases):
        kinds.add("true_false")
    if words and words[0] in _YES_NO_START:
        kinds.add("yes_no")
    row = [
        log(chars),
        log(n_words),
        log(text.count("\n") + 1 if text else 0),
        log(len(_SENTENCE_END.findall(text))),
        min(sum(map(len, words)) / n_words, 20.0) / 10.0 if n_words else 0.0,
        log(text.count("?")),
        len(_UPPER.findall(text)) * inv,
        (chars - len(text.encode("ascii", "ignore"))) * inv,
        float("http://" in lower or "https://" in lower or "www." in lower),
        log(len(_BULLET.findall(text))),
        float(_FENCE.search(text) is not None),
        log(sum(w in _CODE_WORDS for w in words)),
        log(len(_CODE_SYNTAX.findall(text))),
        float(not _CODE_ASK.isdisjoint(vocab) or "c++" in lower),
        (chars - len(text.translate(_DIGITS))) * inv,
        log(len(_NUMBER.findall(text))),
        len(_OPERATOR.findall(text)) * inv,
        float(_EQUATION.search(lower) is not None),
        float(_LATEX.search(text) is not None),
        log(sum(w in _MATH_WORDS for w in words) + sum(p in _MATH_PHRASES for p in phrases)),
        len(choices) / 4.0,
        float(len(choices) >= 2),
    ]
    row.extend(float(k in kinds) for k in _KINDS)
    return row


def lexical_features(texts: list[str]) -> np.ndarray:
    """[len(texts), len(FEATURE_NAMES)] float32, one row per text."""
    out = np.zeros((len(texts), len(FEATURE_NAMES)), np.float32)
    for i, text in enumerate(texts):
        out[i] = _one(text)
    return out
