"""The built-in question set of `routegate demo eval` (gateway/demo/eval_questions.py): seeded,
the counts asked, distinct ids, and checkers that accept how small models answer. The eval
through a real gateway: tests/system/test_demo_eval.py."""

from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.demo.eval_questions import (
    CAPITALS,
    DEFAULT_COUNTS,
    TASKS,
    ChoiceAnswer,
    NameAnswer,
    NumberAnswer,
    build_questions,
    interleaved,
    numbers_in,
)
from tests.support.upstream import free_port


def test_same_seed_same_questions_other_seed_others() -> None:
    first, again = build_questions(0), build_questions(0)
    assert [(q.id, q.prompt, q.answer) for q in first] == [
        (q.id, q.prompt, q.answer) for q in again
    ]
    other = build_questions(1)
    assert [q.prompt for q in other] != [q.prompt for q in first]
    # Ids come from the prompt: a question asked by both seeds has the same id in both.
    both = {q.prompt: q.id for q in first}
    assert all(both[q.prompt] == q.id for q in other if q.prompt in both)


def test_counts_tasks_and_distinct_ids() -> None:
    questions = build_questions()
    assert len(questions) == sum(DEFAULT_COUNTS.values()) == 300
    assert Counter(q.task for q in questions) == dict(DEFAULT_COUNTS)
    assert len({q.id for q in questions}) == len(questions)
    assert all(q.id.startswith(q.task + "-") for q in questions)
    assert len(CAPITALS) == 40
    assert {q.answer.expected for q in questions if q.task == "capitals"} == {
        c for _, c, _ in CAPITALS
    }
    small = build_questions(3, {"arithmetic": 5, "multiple_choice": 7})
    assert Counter(q.task for q in small) == {"arithmetic": 5, "multiple_choice": 7}
    with pytest.raises(ValueError, match="unknown task"):
        build_questions(0, {"poetry": 1})


def test_every_question_is_right_about_itself() -> None:
    """The expected answer passes its own checker; numbers are whole, non-negative and small."""
    for q in build_questions():
        assert q.check(q.answer.expected), q
        if isinstance(q.answer, NumberAnswer):
            assert q.answer.value == int(q.answer.value) >= 0
            assert q.prompt.endswith("Answer with just the number.")
        if isinstance(q.answer, ChoiceAnswer):
            assert len(set(q.answer.options)) == 4
            assert q.prompt.count("\n") == 5 and q.prompt.endswith("Answer with just the letter.")


def test_multiple_choice_letters_spread_and_interleaving() -> None:
    letters = Counter(
        q.answer.expected for q in build_questions() if isinstance(q.answer, ChoiceAnswer)
    )
    assert set(letters) == {"A", "B", "C", "D"} and min(letters.values()) >= 10
    first = interleaved(build_questions())[:8]
    assert [q.task for q in first] == [*TASKS, *TASKS]


@pytest.mark.parametrize(
    ("reply", "right"),
    [
        ("19", True),
        ("19.", True),
        (" The answer is 19", True),
        ("12 + 7 = 19", True),
        ("12 + 7 is 19.\nQuestion: What is 3 + 4?", True),
        ("12 + 7 = 9", False),
        ("12", False),  # the echo alone is no answer
        ("The sum is nineteen", False),
        ("", False),
        ("20 or 19", False),
    ],
)
def test_number_checker(reply: str, right: bool) -> None:
    assert NumberAnswer(19, (12, 7)).matches(reply) is right


def test_number_checker_units_and_lone_operand_answers() -> None:
    km = NumberAnswer(3000, (3,))
    assert km.matches("3 kilometers is 3,000 meters") and km.matches("3000 m")
    assert not km.matches("300")
    assert NumberAnswer(7, (12, 5)).matches("7")
    assert NumberAnswer(5, (5, 1)).matches("5")  # 5 * 1: the answer is also an operand
    assert NumberAnswer(5, (5, 1)).matches("5 * 1 = 5")
    assert numbers_in("12, 7 and 3,000.5") == [12, 7, 3000.5]


def test_name_checker() -> None:
    paris = NameAnswer(("Paris",))
    assert paris.matches("Paris") and paris.matches("The capital of France is paris.")
    assert not paris.matches("Parisian") and not paris.matches("Lyon")
    brasilia = NameAnswer(("Brasilia", "Brasília"))
    assert brasilia.matches("Brasília") and brasilia.matches("BRASILIA")
    assert NameAnswer(("New Delhi", "Delhi")).matches("Delhi")


@pytest.mark.parametrize(
    ("reply", "right"),
    [
        ("B", True),
        ("B.", True),
        ("(B)", True),
        ("Answer: B", True),
        ("B. Tokyo", True),
        ("The answer is B", True),
        ("A good guess is B", True),  # the article is no letter
        ("Tokyo", True),  # no letter: the option named
        ("It is Tokyo, not Osaka", True),
        ("A", False),
        ("A. Osaka", False),
        ("Osaka", False),
        ("Boston", False),  # a word that starts with B is no letter
        ("I don't know", False),
    ],
)
def test_choice_checker(reply: str, right: bool) -> None:
    answer = ChoiceAnswer("B", ("Osaka", "Tokyo", "Kyoto", "Seoul"))
    assert answer.matches(reply) is right


def test_eval_without_a_gateway_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    result = CliRunner().invoke(app, ["demo", "eval", "--base-url", url, "--limit", "2"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: cannot reach the gateway at {url}"
