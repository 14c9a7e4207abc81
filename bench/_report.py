"""How every benchmark prints its result: an aligned key/value table, then the same as JSON."""

from __future__ import annotations

import json
from typing import Any


def print_result(result: dict[str, Any]) -> None:
    """The table for people, then one JSON line for tools and the README."""
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
