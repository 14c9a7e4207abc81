"""The boundaries import-linter cannot state alone, checked on the real import graph."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
WIRE = "fieldmon.core.wire"
# pydantic_core is pydantic's own compiled half.
WIRE_MAY_IMPORT = {"pydantic", "pydantic_core"}


def _third_party_imports(graph: grimp.ImportGraph, package: str) -> dict[str, tuple[str, ...]]:
    """Every non-stdlib, non-`package` module `package` imports, with one import chain each."""
    inside = {module for module in graph.modules if module.startswith(package)}
    found: dict[str, tuple[str, ...]] = {}
    for module in sorted(inside):
        for imported in graph.find_upstream_modules(module):
            top = imported.split(".")[0]
            if imported in inside or imported.startswith(package) or top in sys.stdlib_module_names:
                continue
            chain = graph.find_shortest_chain(importer=module, imported=imported)
            found.setdefault(imported, chain or (module, imported))
    return found


def test_the_wire_contract_imports_only_pydantic_and_the_standard_library() -> None:
    graph = grimp.build_graph("fieldmon.core", include_external_packages=True)
    offending = {
        name: chain
        for name, chain in _third_party_imports(graph, WIRE).items()
        if name.split(".")[0] not in WIRE_MAY_IMPORT
    }
    assert not offending, "the wire contract imports more than pydantic: " + "; ".join(
        " -> ".join(chain) for chain in offending.values()
    )


def test_the_import_contracts_name_every_part_of_the_workspace() -> None:
    """A new member must be in the contracts too, or its imports go unchecked."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    members = root["tool"]["uv"]["workspace"]["members"]
    packages = {
        f"fieldmon.{path.name}"
        for member in members
        for path in (REPO / member / "src" / "fieldmon").iterdir()
        if path.is_dir() and (path / "__init__.py").is_file()
    }
    assert packages == set(root["tool"]["importlinter"]["root_packages"])
