"""The suite keeps itself honest: every test asserts something, and its randomness is seeded."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from conftest import SEED, SEED_VARIABLE, seed_for, session_seed
from hypothesis import settings

TESTS = Path(__file__).parent

# Calls that assert: pytest.raises / warns / fail, and helpers named for it (leading underscores
# aside), such as check_returns_data() in tests/dashboards.
_PYTEST_ASSERTIONS = frozenset({"raises", "warns", "fail"})
_HELPER_PREFIXES = ("assert_", "expect_", "check_")

# Tests that assert in a way the checker cannot see (through a fixture, say), each with the
# reason; "path/to/test_file.py::test_name": "why". An entry nothing needs any more fails.
ASSERTS_ELSEWHERE: dict[str, str] = {}


def _asserts(node: ast.AST) -> bool:
    if isinstance(node, ast.Assert):
        # `assert True` (or any truthy constant) checks nothing; `assert False` always fails.
        return not (isinstance(node.test, ast.Constant) and node.test.value)
    if isinstance(node, ast.Call):
        function = node.func
        if isinstance(function, ast.Attribute):
            if isinstance(function.value, ast.Name) and function.value.id == "pytest":
                return function.attr in _PYTEST_ASSERTIONS
            name = function.attr
        elif isinstance(function, ast.Name):
            name = function.id
        else:
            return False
        return name.lstrip("_").startswith(_HELPER_PREFIXES)
    return False


def unasserted(source: str) -> list[str]:
    """Test functions in `source` whose bodies (nested functions included) assert nothing."""
    tree = ast.parse(source)
    candidates: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            candidates.extend(
                item
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            candidates.append(node)
    return [
        function.name
        for function in candidates
        if function.name.startswith("test") and not any(map(_asserts, ast.walk(function)))
    ]


def test_every_test_asserts_something() -> None:
    found = [
        f"{path.relative_to(TESTS.parent)}::{name}"
        for path in sorted(TESTS.rglob("test_*.py"))
        for name in unasserted(path.read_text(encoding="utf-8"))
    ]
    # A test that only shows that nothing raised passes while the code does the wrong thing:
    # assert on what it wrote, logged, returned or counted, or add it to ASSERTS_ELSEWHERE.
    assert [test for test in found if test not in ASSERTS_ELSEWHERE] == []
    assert sorted(set(ASSERTS_ELSEWHERE) - set(found)) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def test_a():\n    f()\n", ["test_a"]),
        ("def test_a():\n    assert True\n", ["test_a"]),
        ("def test_a():\n    assert 1, 'always'\n", ["test_a"]),
        ("async def test_a():\n    await f()\n", ["test_a"]),
        ("class TestA:\n    def test_b(self):\n        f()\n", ["test_b"]),
        ("def test_a():\n    assert f() == 1\n", []),
        ("def test_a():\n    assert False, 'unreachable'\n", []),
        ("def test_a():\n    with pytest.raises(E):\n        f()\n", []),
        ("def test_a():\n    with pytest.warns(W):\n        f()\n", []),
        ("def test_a():\n    if f():\n        pytest.fail('no')\n", []),
        ("def test_a():\n    check_returns_data(x)\n", []),
        ("def test_a():\n    _assert_no_hole(x)\n", []),
        ("def test_a():\n    self.expect_rows(x)\n", []),
        ("def test_a():\n    async def main():\n        assert await f()\n    run(main())\n", []),
        ("def helper():\n    f()\n\nclass Other:\n    def test_b(self):\n        f()\n", []),
        ("def test_a():\n    other.raises(E)\n", ["test_a"]),
    ],
)
def test_the_checker(source: str, expected: list[str]) -> None:
    assert unasserted(source) == expected


def test_random_is_seeded_per_test(request: pytest.FixtureRequest) -> None:
    # The autouse fixture in conftest.py seeded `random` for this test, and nothing drew since.
    expected = random.Random(seed_for(request.node.nodeid)).random()
    assert random.random() == expected
    assert seed_for(request.node.nodeid).startswith(f"{SEED}:")


def test_the_seed_comes_from_the_environment() -> None:
    assert session_seed({SEED_VARIABLE: " 1234 "}) == 1234
    with pytest.raises(pytest.UsageError, match=SEED_VARIABLE):
        session_seed({SEED_VARIABLE: "twelve"})


def test_hypothesis_draws_the_same_examples_every_run() -> None:
    # HYPOTHESIS_PROFILE=explore (or one's own) is for looking further on purpose.
    profile = settings.get_current_profile_name()
    if profile != "fieldmon":
        pytest.skip(f"Hypothesis profile {profile!r} chosen")
    assert settings.default.derandomize
    assert settings.default.database is None
