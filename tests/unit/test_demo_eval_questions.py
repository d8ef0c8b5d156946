"""The built-in question set of `routegate demo eval` (gateway/demo/eval_questions.py): seeded,
the counts asked, distinct ids, and checkers that accept how small models answer; then what
gateway/demo/evaluation.py makes of replies (summaries, records). The eval through a real
gateway: tests/system/test_demo_eval.py."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gateway.cli import app
from gateway.demo.eval_questions import (
    CAPITALS,
    DEFAULT_COUNTS,
    TASKS,
    ChoiceAnswer,
    NameAnswer,
    NumberAnswer,
    Question,
    build_questions,
    interleaved,
    numbers_in,
)
from gateway.demo.eval_tables import summary_table, task_table
from gateway.demo.evaluation import EvalConfig, EvalResult, Reply, Target, record_rows, summarize
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
        ("12 + 7 = 38 - 19 = 19", True),  # the first line's last "="
        ("12 + 7 = \n19", True),  # nothing after it: the echo rule
        ("12 + 7 = 20\nNo, 12 + 7 = 19", False),  # only the first line is worked
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
    cm = NumberAnswer(200, (2,))
    assert cm.matches("2 meters is equal to 2 * 100 = 200 centimeters.")
    assert not NumberAnswer(660, (11,)).matches("11 minutes is equal to 11 * 60 = 66 seconds.")
    assert not NumberAnswer(5, (300,)).matches("300 minutes is 300 / 60 = 0.5 hours.")
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


def _reply(target: str, q: Question, model: str, correct: bool, **kw: Any) -> Reply:
    fields: dict[str, Any] = {
        "text": "",
        "steps": (),
        "cost_usd": 0.001,
        "latency_s": 0.1,
        "input_tokens": 9,
        "output_tokens": 2,
        "model_tokens": {},
        "cache": None,
        "error": None,
    }
    fields.update(kw)
    return Reply(target=target, question=q, correct=correct, model=model, **fields)


def test_summaries_and_records_from_replies() -> None:
    """Shares, escalations and the strong-route ratio; records only what a model answered."""
    q1, q2 = build_questions(0, {"arithmetic": 1, "capitals": 1})
    targets = [
        Target("best", "route", "fixed", ("big",)),
        Target("cascade", "route", "cascade", ("small", "big")),
        Target("ead", "route", "ead", ("small", "big")),
        Target("small", "model", "model", ("small",)),
        Target("big", "model", "model", ("big",)),
    ]
    replies = [
        _reply("best", q1, "big", True, cost_usd=0.01),
        _reply("best", q2, "big", True, cost_usd=0.01),
        _reply("cascade", q1, "small", False, steps=("small",)),
        _reply("cascade", q2, "big", True, steps=("small", "big"), cost_usd=0.011),
        _reply("ead", q1, "small+big", True, model_tokens={"small": 3, "big": 1}),
        _reply("ead", q2, "small+big", False, model_tokens={"small": 0, "big": 4}),
        _reply("small", q1, "small", False),
        _reply("small", q2, "big", True),  # its fallback answered: no record of "small"
        _reply("big", q1, "big", True),
        _reply("big", q2, "", False, error="503: down"),
    ]
    s = summarize(targets, replies, "best")
    assert s["best"].cost_vs_strong == 1.0 and s["best"].accuracy == 1.0
    assert s["cascade"].shares() == {"small": 0.5, "big": 0.5} and s["cascade"].escalated == 1
    assert s["cascade"].cost_vs_strong == pytest.approx(0.012 / 0.02)
    assert s["ead"].shares() == {"big": 5 / 8, "small": 3 / 8}
    assert s["ead"].as_json()["share_by"] == "completion_tokens"
    assert s["ead"].as_json()["escalated"] is None and s["cascade"].as_json()["escalated"] == 1
    assert s["big"].errors == 1 and s["big"].accuracy == 0.5
    assert s["big"].as_json()["tasks"] == {
        "arithmetic": {"correct": 1, "asked": 1, "accuracy": 1.0},
        "capitals": {"correct": 0, "asked": 1, "accuracy": 0.0},
    }
    config = EvalConfig("http://gw/v1", None, ("best", "cascade", "ead"), None, "best")
    result = EvalResult(config, [q1, q2], targets, replies, s, 1.0, 7)
    rows = list(record_rows(result))
    assert [(r["model"], r["query_id"], r["quality"]) for r in rows] == [
        ("small", q1.id, 0.0),
        ("big", q1.id, 1.0),
    ]
    assert rows[0]["task"] == "demo/arithmetic" and rows[0]["query"] == q1.prompt

    console = Console(record=True, width=200, file=io.StringIO())
    console.print(task_table(result))
    assert "100.0% (1/1)" in console.export_text()  # (export clears the record)
    console.print(summary_table(result))
    lines = {line.split("│")[1].strip(): line for line in console.export_text().splitlines()
             if line.count("│") > 2}  # fmt: skip
    assert "small 50%, big 50%; escalated 50%" in lines["cascade"]
    assert "tokens: big 62%, small 38%" in lines["ead"] and "0.60x" in lines["cascade"]
    assert "small 50%, big 50%" in lines["small (model)"]  # its fallback answered once
    assert "50.0% (1/2), 1 error " in lines["big (model)"]
