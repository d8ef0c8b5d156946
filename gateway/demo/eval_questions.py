"""The built-in question set of `routegate demo eval`: checkable questions, generated from a seed.

Four tasks, each easy enough that a 135M-270M model is sometimes right:

- `arithmetic`: small-number sums, differences (never negative) and products;
- `units`: km/m, m/cm, hours/minutes, minutes/seconds, kg/g with round numbers;
- `capitals`: the capital of one of `CAPITALS`, a list of well-known countries;
- `multiple_choice`: the same facts as four options, A-D.

Nothing is downloaded: the same seed always gives the same questions, in the same order, with
the same ids (a hash of the prompt, so a question keeps its id whatever else the set holds).

The checkers are tolerant of how small models answer, since the point is whether the model
knew, not whether it followed the format: a number is what the first line's last "=" gives
("12 + 7 = 19"), else the first one after any echo of the question's own numbers ("3 km is
3000 m"), a capital counts where its name appears,
and a choice is the first standalone option letter or else the first option text named.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

TASKS = ("arithmetic", "units", "capitals", "multiple_choice")
# How many of each task a full set holds (300 in all); capitals asks each country once.
DEFAULT_COUNTS: Mapping[str, int] = MappingProxyType(
    {"arithmetic": 100, "units": 80, "capitals": 40, "multiple_choice": 80}
)
LETTERS = ("A", "B", "C", "D")

# (country, capital, other accepted spellings of the capital)
CAPITALS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("France", "Paris", ()),
    ("Germany", "Berlin", ()),
    ("Italy", "Rome", ("Roma",)),
    ("Spain", "Madrid", ()),
    ("Portugal", "Lisbon", ("Lisboa",)),
    ("the United Kingdom", "London", ()),
    ("Ireland", "Dublin", ()),
    ("the Netherlands", "Amsterdam", ()),
    ("Belgium", "Brussels", ("Bruxelles",)),
    ("Switzerland", "Bern", ("Berne",)),
    ("Austria", "Vienna", ("Wien",)),
    ("Poland", "Warsaw", ("Warszawa",)),
    ("Sweden", "Stockholm", ()),
    ("Norway", "Oslo", ()),
    ("Denmark", "Copenhagen", ()),
    ("Finland", "Helsinki", ()),
    ("Greece", "Athens", ()),
    ("Russia", "Moscow", ()),
    ("Ukraine", "Kyiv", ("Kiev",)),
    ("Turkey", "Ankara", ()),
    ("Egypt", "Cairo", ()),
    ("Kenya", "Nairobi", ()),
    ("Nigeria", "Abuja", ()),
    ("South Korea", "Seoul", ()),
    ("Japan", "Tokyo", ()),
    ("China", "Beijing", ("Peking",)),
    ("India", "New Delhi", ("Delhi",)),
    ("Thailand", "Bangkok", ()),
    ("Vietnam", "Hanoi", ()),
    ("Indonesia", "Jakarta", ()),
    ("the Philippines", "Manila", ()),
    ("Australia", "Canberra", ()),
    ("New Zealand", "Wellington", ()),
    ("Canada", "Ottawa", ()),
    ("the United States", "Washington", ("Washington, D.C.",)),
    ("Mexico", "Mexico City", ()),
    ("Brazil", "Brasilia", ("Brasília",)),
    ("Argentina", "Buenos Aires", ()),
    ("Peru", "Lima", ()),
    ("Chile", "Santiago", ()),
)

# (larger unit, smaller unit, smaller per larger): asked both ways, "How many meters are in 3
# kilometers?" (3000) and "How many kilometers are in 3000 meters?" (3).
_CONVERSIONS: tuple[tuple[str, str, int], ...] = (
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("kilograms", "grams", 1000),
)

_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_NUMBER_HINT = "Answer with just the number."


class Answer(Protocol):
    """What a question expects, and whether a model's reply gives it."""

    @property
    def expected(self) -> str: ...

    def matches(self, reply: str) -> bool: ...


def numbers_in(text: str) -> list[float]:
    """The unsigned numbers in `text`, in order ("3,000" is 3000; "12, 7" is 12 and 7)."""
    return [float(m.group().replace(",", "")) for m in _NUMBER.finditer(text)]


def _fold(text: str) -> str:
    """Lower case without accents, for name matching ("Brasília" == "brasilia")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _names(name: str, text: str) -> re.Match[str] | None:
    return re.search(rf"(?<!\w){re.escape(_fold(name))}(?!\w)", _fold(text))


@dataclass(frozen=True, slots=True)
class NumberAnswer:
    value: float
    operands: tuple[float, ...] = ()  # the question's own numbers, which a reply may echo

    @property
    def expected(self) -> str:
        return f"{self.value:g}"

    def given(self, reply: str) -> float | None:
        """The reply's number. Where its first line works a sum ("2 m is 2 * 100 = 200 cm"),
        the first number after the line's last "="; else the reply's first number after a
        leading echo of the question's own numbers ("3 km is 3000 m")."""
        first = next((line for line in reply.splitlines() if line.strip()), "")
        if "=" in first and (result := numbers_in(first.rsplit("=", 1)[1])):
            return result[0]
        found = numbers_in(reply)
        echo = 0
        for number, operand in zip(found, self.operands, strict=False):
            if number != operand:
                break
            echo += 1
        # A lone "7" (for 12 - 5) is an answer, not an echo.
        found = found[echo:] if echo < len(found) else found[-1:]
        return found[0] if found else None

    def matches(self, reply: str) -> bool:
        return self.given(reply) == self.value


@dataclass(frozen=True, slots=True)
class NameAnswer:
    names: tuple[str, ...]  # the capital and its other accepted spellings

    @property
    def expected(self) -> str:
        return self.names[0]

    def matches(self, reply: str) -> bool:
        return any(_names(name, reply) for name in self.names)


# A letter on its own ("B", "(B)", "B.", "Answer: B"); `_ARTICLE` tells "A" from the article.
_LETTER = re.compile(r"(?<![A-Za-z'])[ABCD](?![A-Za-z'])")
_ARTICLE = re.compile(r"A [a-z]")


@dataclass(frozen=True, slots=True)
class ChoiceAnswer:
    letter: str
    options: tuple[str, ...]  # texts of A, B, C, D

    @property
    def expected(self) -> str:
        return self.letter

    def chosen(self, reply: str) -> str | None:
        """The first standalone option letter; without one, the option whose text comes first."""
        for letter in _LETTER.finditer(reply):
            if not _ARTICLE.match(reply, letter.start()):  # "A good guess is B": B
                return letter.group()
        placed = [
            (m.start(), LETTERS[i])
            for i, text in enumerate(self.options)
            if (m := _names(text, reply)) is not None
        ]
        return min(placed)[1] if placed else None

    def matches(self, reply: str) -> bool:
        return self.chosen(reply) == self.letter


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    task: str
    prompt: str
    answer: Answer

    def check(self, reply: str) -> bool:
        return self.answer.matches(reply)


def question_id(task: str, prompt: str) -> str:
    return f"{task}-{hashlib.sha256(prompt.encode()).hexdigest()[:10]}"


def _question(task: str, prompt: str, answer: Answer) -> Question:
    return Question(question_id(task, prompt), task, prompt, answer)


# A fact: (question text without the format hint, right answer text, wrong answers to offer).
_Fact = tuple[str, str, list[str]]


def _arithmetic_fact(rng: random.Random) -> tuple[str, int, tuple[int, int]]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} * {b}?", a * b, (a, b)
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    if op == "-":
        a, b = max(a, b), min(a, b)  # never a negative answer
        return f"What is {a} - {b}?", a - b, (a, b)
    return f"What is {a} + {b}?", a + b, (a, b)


def _units_fact(rng: random.Random) -> tuple[str, int, tuple[int]]:
    big, small, factor = rng.choice(_CONVERSIONS)
    n = rng.randint(1, 12)
    if rng.random() < 0.5:
        return f"How many {small} are in {n} {big}?", n * factor, (n,)
    return f"How many {big} are in {n * factor} {small}?", n, (n * factor,)


def _near_misses(value: int, rng: random.Random) -> list[str]:
    """Three wrong numbers near `value`, the kind a guess lands on."""
    wrong: set[int] = set()
    while len(wrong) < 3:
        candidate = value + rng.choice((-10, -2, -1, 1, 2, 10, value or 1))
        if candidate >= 0 and candidate != value:
            wrong.add(candidate)
    return [str(w) for w in sorted(wrong)]


def _choice_fact(rng: random.Random) -> _Fact:
    kind = rng.choice(("capitals", "capitals", "arithmetic", "units"))
    if kind == "capitals":
        country, capital, _ = rng.choice(CAPITALS)
        others = [c for _, c, _ in CAPITALS if c != capital]
        return f"What is the capital of {country}?", capital, rng.sample(others, 3)
    text, value, _ = (_arithmetic_fact if kind == "arithmetic" else _units_fact)(rng)
    return text, str(value), _near_misses(value, rng)


def _multiple_choice(rng: random.Random) -> Question:
    text, right, wrong = _choice_fact(rng)
    options = [right, *wrong]
    rng.shuffle(options)
    letter = LETTERS[options.index(right)]
    lines = "\n".join(f"{L}. {o}" for L, o in zip(LETTERS, options, strict=True))
    prompt = f"{text}\n{lines}\nAnswer with just the letter."
    return _question("multiple_choice", prompt, ChoiceAnswer(letter, tuple(options)))


_Make = Callable[[random.Random], tuple[str, int, tuple[int, ...]]]


def _numeric(task: str, make: _Make) -> Callable[[random.Random], Question]:
    def build(rng: random.Random) -> Question:
        text, value, operands = make(rng)
        answer = NumberAnswer(float(value), tuple(float(o) for o in operands))
        return _question(task, f"{text} {_NUMBER_HINT}", answer)

    return build


def _capitals(rng: random.Random, count: int) -> list[Question]:
    """Each country once (in a seeded order), then round again if more are asked for."""
    out: list[Question] = []
    while len(out) < count:
        for country, capital, aliases in rng.sample(CAPITALS, len(CAPITALS)):
            prompt = f"What is the capital of {country}? Answer with just the city name."
            out.append(_question("capitals", prompt, NameAnswer((capital, *aliases))))
    return out[:count]


def build_questions(seed: int = 0, counts: Mapping[str, int] | None = None) -> list[Question]:
    """The question set: `counts[task]` distinct questions per task, in TASKS order."""
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = set(counts) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s): {', '.join(sorted(unknown))}")
    rng = random.Random(seed)
    builders: dict[str, Callable[[random.Random], Question]] = {
        "arithmetic": _numeric("arithmetic", _arithmetic_fact),
        "units": _numeric("units", _units_fact),
        "multiple_choice": _multiple_choice,
    }
    questions: list[Question] = []
    for task in TASKS:
        want = counts.get(task, 0)
        if task == "capitals":
            questions += _capitals(rng, want)
            continue
        seen: set[str] = set()
        for _ in range(want * 50):  # distinct questions; the pools hold far more than asked
            if len(seen) == want:
                break
            q = builders[task](rng)
            if q.id not in seen:
                seen.add(q.id)
                questions.append(q)
        if len(seen) < want:
            raise ValueError(f"{task}: only {len(seen)} distinct questions, {want} asked")
    return questions


def interleaved(questions: list[Question]) -> list[Question]:
    """The tasks taken in turn, so that `--limit N` samples every task."""
    by_task: dict[str, list[Question]] = {}
    for q in questions:
        by_task.setdefault(q.task, []).append(q)
    out: list[Question] = []
    queues = list(by_task.values())
    for i in range(max((len(q) for q in queues), default=0)):
        out += [queue[i] for queue in queues if i < len(queue)]
    return out
