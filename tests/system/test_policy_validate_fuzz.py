"""Hostile policy text through `routegate policy validate` in-process (typer's CliRunner):
hundreds of mutated policies (broken bytes, invalid UTF-8, deep nesting, alias bombs, huge
numbers) give FILE:LINE:COL problems, never a traceback. The same through a real process and the
dashboard's endpoint: tests/system/test_policy_validate_hostile.py."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app
from policies.loader import example_policy_path

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
# One problem per line: FILE:LINE:COL field: message.
PROBLEM = re.compile(r"^F:\d+:\d+ \S+: .+$")


def example_bytes() -> bytes:
    # The learned route's artifact path is relative to policies/: make it absolute so the
    # copy in tmp_path is valid as it stands.
    text = example_policy_path().read_text(encoding="utf-8")
    return text.replace("../routers/artifacts", str(REPO / "routers" / "artifacts")).encode()


def nested(rng: random.Random) -> bytes:
    depth = rng.choice([200, 1000, 5000, 20000])
    opener = rng.choice(["[", "{a: ", "- "])
    return b"\nextra: " + (opener * depth).encode() + b"\n"


def alias_bomb() -> bytes:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return ("\n" + "\n".join(lines) + "\n").encode()


def mutate(rng: random.Random, base: bytes) -> tuple[str, bytes, bool]:
    """(what, the mutated file, whether it must be invalid)."""
    kind = rng.choice(["flip", "truncate", "utf8", "nest", "number", "bomb"])
    data = bytearray(base)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return kind, bytes(data), False
    if kind == "truncate":
        return kind, bytes(data[: rng.randrange(len(data))]), False
    if kind == "utf8":
        at = rng.randrange(len(data))
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88"])
        return kind, bytes(data[:at] + bad + data[at:]), True
    if kind == "nest":
        return kind, base + nested(rng), True
    if kind == "number":
        numbers = list(re.finditer(rb"(?<=: )\d+(\.\d+)?(?=\n)", base))
        m = rng.choice(numbers)
        huge = rng.choice([b"9" * 5000, b"1" * 100000, b"-" + b"7" * 4400, b"1" + b"0" * 400])
        return kind, base[: m.start()] + huge + base[m.end() :], True
    return kind, base + alias_bomb(), True


def check_cli(path: Path, must_fail: bool, what: str) -> None:
    result = runner.invoke(app, ["policy", "validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{what}: {result.exception!r}"
    )
    assert "Traceback" not in result.output, what
    lines = [line.replace(str(path), "F") for line in result.output.splitlines()]
    if result.exit_code == 0:
        assert not must_fail, f"{what} was accepted: {lines}"
        # An accepted policy: the ok line, then warnings only (FILE:LINE:COL field: warning:).
        assert lines[0].startswith("F: ok"), (what, lines)
        assert all(PROBLEM.match(line) and ": warning: " in line for line in lines[1:]), (
            what,
            lines,
        )
        return
    assert result.exit_code == 1, (what, result.exit_code, lines)
    assert lines and all(PROBLEM.match(line) for line in lines), (what, lines)


def test_hundreds_of_mutated_policies_give_problems_never_a_traceback(tmp_path: Path) -> None:
    rng = random.Random(11)
    base = example_bytes()
    (tmp_path / "base.yaml").write_bytes(base)
    check_cli(tmp_path / "base.yaml", False, "the example")  # the base itself is valid
    seen: dict[str, int] = {}
    for i in range(300):
        what, data, must_fail = mutate(rng, base)
        seen[what] = seen.get(what, 0) + 1
        path = tmp_path / f"m{i}.yaml"
        path.write_bytes(data)
        t0 = time.perf_counter()
        check_cli(path, must_fail, f"mutation {i} ({what})")
        assert time.perf_counter() - t0 < 5, f"mutation {i} ({what}) took too long"
    assert len(seen) == 6  # every kind of mutation was tried
