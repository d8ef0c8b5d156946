"""Running a unit module's State-contract tests again on another store (the system tier's redis).

A test function imported into a module is collected there and takes that folder's fixtures, so
tests/system can rerun the unit tier's tests that take the `state` fixture on a real redis-server.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any


def state_tests(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The module's test functions that take the `state` fixture, by name."""
    return {
        name: fn
        for name, fn in vars(module).items()
        if name.startswith("test_")
        and inspect.isfunction(fn)
        and "state" in inspect.signature(fn).parameters
    }
