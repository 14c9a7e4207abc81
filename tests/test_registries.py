"""Every registered probe kind, notifier and AP profile is complete: schema, docs, test, example.

A probe kind needs its config model in the site schema (fieldmon.core.site, a SiteConfig
field), a module docstring ending with what it emits, its measurements in docs/contract.md, a
test module and a use in an example site file that loads. A notifier needs its config model in
the `notify` section, a module docstring ending with what it sends and a use in
deploy/collector.example.yaml. An AP profile needs to load, say what it is and where its OIDs
come from, and have a recorded walk that a test polls. The checkers return problems in words;
the last tests feed them fake entries to show that each gap is caught.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sys
import typing
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from fieldmon.agent.probes import icmp, tcp
from fieldmon.agent.probes.base import ProbeKind
from fieldmon.agent.probes.registry import PROBE_KINDS
from fieldmon.agent.snmp.errors import ProfileError
from fieldmon.agent.snmp.profiles import PROFILES_DIR, available_profiles, load_profile
from fieldmon.collector.config import NotifyConfig, load_collector_config
from fieldmon.collector.notify import alertmanager
from fieldmon.collector.notify.base import NotifierKind
from fieldmon.collector.notify.registry import NOTIFIER_KINDS
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.config.loader import load_yaml
from fieldmon.core.site.config import SiteConfig, load_site_config
from fieldmon.core.wire import AGENT_MEASUREMENTS
from fieldmon.lab.simap import WALKS_DIR

REPO = Path(__file__).resolve().parents[1]
CONTRACT = REPO / "docs" / "contract.md"
COLLECTOR_EXAMPLE = REPO / "deploy" / "collector.example.yaml"
SITE_EXAMPLES = sorted((REPO / "site_configs").glob("*.yaml"))
SIMULATED_APS = "fieldmon.lab.simap"  # a test that polls a recorded walk imports this

# SiteConfig and NotifyConfig fields that are not a probe kind's or a notifier's section.
NOT_PROBE_SECTIONS = {"site", "name", "parent_hospital", "agent", "hooks", "alerting"}
NOT_NOTIFIER_SECTIONS = {"dashboard_url", "queue_size", "max_attempts", "backoff_max"}

Document = dict[str, Any]


# -- what the checkers read --------------------------------------------------------------------


def last_paragraph(docstring: str | None) -> str:
    """The last paragraph of a docstring, as one line."""
    paragraphs = [p for p in inspect.cleandoc(docstring or "").split("\n\n") if p.strip()]
    return " ".join(paragraphs[-1].split()) if paragraphs else ""


def types_in(annotation: Any) -> set[Any]:
    """Every type an annotation names, through lists, unions and Annotated."""
    found = {annotation}
    for argument in typing.get_args(annotation):
        found |= types_in(argument)
    return found


@cache
def repo_test_modules() -> tuple[Path, ...]:
    """Every test module of the repository but this one."""
    return tuple(
        path
        for path in sorted((REPO / "tests").rglob("test_*.py"))
        if path.name != Path(__file__).name
    )


@cache
def imported_modules(path: Path) -> frozenset[str]:
    """Dotted names a module imports, including `from package import module` as package.module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return frozenset(names)


@cache
def string_constants(path: Path) -> frozenset[str]:
    """Every string literal in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def entry_tag(model: type[BaseModel]) -> str | None:
    """The `kind` a model's entries carry in a section that kinds share (`services`), if any."""
    field = model.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        return None
    return str(typing.get_args(field.annotation)[0])


def uses_kind(document: Document, kind: ProbeKind[Any]) -> bool:
    """True when a site file's YAML has a target of this kind."""
    section = document.get(kind.site_section)
    tag = entry_tag(kind.config_model)
    if not section or tag is None:
        return bool(section)
    return any(isinstance(entry, dict) and entry.get("kind") == tag for entry in section)


def loaded_site_examples() -> list[tuple[Path, Document]]:
    """The example site files that load, each with its YAML as written (defaults not filled in)."""
    examples = []
    for path in SITE_EXAMPLES:
        try:
            load_site_config(path, shape_only=True)  # the examples' secrets are placeholders
        except ConfigError:
            continue  # tests/core/config/test_examples.py says why
        examples.append((path, load_yaml(path)))
    return examples


# -- the checkers ------------------------------------------------------------------------------


def probe_kind_problems(
    kind: ProbeKind[Any],
    *,
    examples: Iterable[tuple[Path, Document]],
    tests: Iterable[Path],
    contract: str,
) -> list[str]:
    """What a registered probe kind lacks, in words; [] when it is complete."""
    problems = []
    model = kind.config_model
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        problems.append(f"{kind.name}: its config model {model!r} is not a pydantic model")
    elif not model.__module__.startswith("fieldmon.core.site."):
        problems.append(
            f"{kind.name}: its config model {model.__name__} is in {model.__module__}, not in "
            "fieldmon.core.site (the site schema the collector reads too)"
        )
    field = SiteConfig.model_fields.get(kind.site_section)
    if field is None:
        problems.append(f"{kind.name}: SiteConfig has no field {kind.site_section!r}")
    elif model not in types_in(field.annotation):
        problems.append(
            f"{kind.name}: SiteConfig.{kind.site_section} does not hold {model.__name__}"
        )

    module_name = kind.probe.__module__
    emits = last_paragraph(sys.modules[module_name].__doc__)
    if not emits.startswith("Emits"):
        problems.append(
            f"{kind.name}: the docstring of {module_name} does not end with an 'Emits' paragraph"
        )
    else:
        missing = [m for m in kind.measurements if f"`{m}`" not in emits]
        if missing or not kind.measurements:
            problems.append(
                f"{kind.name}: the 'Emits' paragraph of {module_name} does not name "
                f"{', '.join(f'`{m}`' for m in missing) or 'any measurement'}"
            )
        if "tags" not in emits or "fields" not in emits:
            problems.append(f"{kind.name}: the 'Emits' paragraph does not list tags and fields")
    for measurement in kind.measurements:
        if not re.search(rf"^- `{re.escape(measurement)}`", contract, re.MULTILINE):
            problems.append(
                f"{kind.name}: docs/contract.md (InfluxDB) does not document `{measurement}`"
            )
    problems.extend(
        f"{kind.name}: `{measurement}` is not in fieldmon.core.wire.AGENT_MEASUREMENTS "
        "(the collector refuses it from agents)"
        for measurement in kind.measurements
        if measurement not in AGENT_MEASUREMENTS
    )

    if not any(module_name in imported_modules(path) for path in tests):
        problems.append(f"{kind.name}: no test module under tests/ imports {module_name}")
    if not any(uses_kind(document, kind) for _path, document in examples):
        tag = entry_tag(kind.config_model)
        problems.append(
            f"{kind.name}: no example under site_configs/ that loads uses `{kind.site_section}`"
            + (f" with kind: {tag}" if tag else "")
        )
    return problems


def notifier_problems(kind: NotifierKind, *, example: Document) -> list[str]:
    """What a registered notifier lacks, in words; [] when it is complete."""
    problems = []
    model = kind.config_model
    field = NotifyConfig.model_fields.get(kind.section)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        problems.append(f"{kind.name}: its config model {model!r} is not a pydantic model")
    elif field is None or model not in types_in(field.annotation):
        problems.append(
            f"{kind.name}: NotifyConfig has no field {kind.section!r} holding {model.__name__}"
        )
    module_name = kind.notifier.__module__
    if not last_paragraph(sys.modules[module_name].__doc__).startswith("Sends"):
        problems.append(
            f"{kind.name}: the docstring of {module_name} does not end with a 'Sends' paragraph"
        )
    if not inspect.getdoc(kind.notifier):
        problems.append(f"{kind.name}: {kind.notifier.__name__} has no docstring")
    if kind.section not in (example.get("notify") or {}):
        problems.append(
            f"{kind.name}: deploy/collector.example.yaml does not show `notify.{kind.section}`"
        )
    return problems


def profile_problems(
    name: str, *, profiles_dir: Path, walks_dir: Path, tests: Iterable[Path]
) -> list[str]:
    """What a shipped AP profile lacks, in words; [] when it is complete."""
    problems = []
    try:
        profile = load_profile(name, profiles_dir)
    except ProfileError as exc:
        problems.append(f"{name}: does not load: {exc}")
    else:
        if not profile.description.strip():
            problems.append(f"{name}: has no description")
        if not all(source.strip() for source in profile.sources):
            problems.append(f"{name}: a source is empty (say where each OID was checked)")
    if not (walks_dir / f"{name}.walk").is_file():
        problems.append(f"{name}: no recorded walk {name}.walk in {walks_dir}")
    polled = [
        path
        for path in tests
        if SIMULATED_APS in imported_modules(path) and name in string_constants(path)
    ]
    if not polled:
        problems.append(f"{name}: no test that imports {SIMULATED_APS} names this profile")
    return problems


# -- the registries as they are ----------------------------------------------------------------


@pytest.mark.parametrize("kind", PROBE_KINDS, ids=lambda kind: kind.name)
def test_every_probe_kind_is_complete(kind: ProbeKind[Any]) -> None:
    contract = CONTRACT.read_text(encoding="utf-8")
    problems = probe_kind_problems(
        kind, examples=loaded_site_examples(), tests=repo_test_modules(), contract=contract
    )
    assert problems == []


def test_every_probe_section_of_the_site_file_is_registered_once() -> None:
    sections = [kind.site_section for kind in PROBE_KINDS]
    names = [kind.name for kind in PROBE_KINDS]
    assert len(set(names)) == len(names)
    unregistered = set(SiteConfig.model_fields) - NOT_PROBE_SECTIONS - set(sections)
    assert not unregistered, f"site-file sections no probe kind reads: {sorted(unregistered)}"
    # Kinds share a section only as members of its tagged union (`services`: dns, http, tcp):
    # each model read by exactly one kind, each with its own `kind` tag, none left unread.
    for section in set(sections):
        sharing = [kind for kind in PROBE_KINDS if kind.site_section == section]
        if len(sharing) == 1:
            continue
        models = [kind.config_model for kind in sharing]
        tags = [entry_tag(model) for model in models]
        assert None not in tags and len(set(tags)) == len(tags), (section, tags)
        held = {
            leaf
            for leaf in types_in(SiteConfig.model_fields[section].annotation)
            if isinstance(leaf, type) and issubclass(leaf, BaseModel)
        }
        assert held == set(models), f"`{section}` holds {held}, its kinds read {models}"


@pytest.mark.parametrize("kind", NOTIFIER_KINDS, ids=lambda kind: kind.name)
def test_every_notifier_is_complete(kind: NotifierKind) -> None:
    load_collector_config(COLLECTOR_EXAMPLE, shape_only=True)  # the example loads
    assert notifier_problems(kind, example=load_yaml(COLLECTOR_EXAMPLE)) == []


def test_every_notify_section_is_registered_once() -> None:
    sections = [kind.section for kind in NOTIFIER_KINDS]
    assert len(set(sections)) == len(sections)
    unregistered = set(NotifyConfig.model_fields) - NOT_NOTIFIER_SECTIONS - set(sections)
    assert not unregistered, f"notify sections no notifier reads: {sorted(unregistered)}"


@pytest.mark.parametrize("name", [n for n in available_profiles() if n != "if-mib"])
def test_every_ap_profile_is_complete(name: str) -> None:
    problems = profile_problems(
        name, profiles_dir=PROFILES_DIR, walks_dir=WALKS_DIR, tests=repo_test_modules()
    )
    assert problems == []


# -- the checkers catch what a new entry forgot -------------------------------------------------


class GadgetConfig(BaseModel):
    """A probe kind's settings that never made it into the site schema."""

    address: str


class GadgetProbe:
    """A probe whose module (this one) says nothing about what it emits."""


def test_a_new_probe_kind_with_nothing_but_its_registry_line_fails_on_every_point() -> None:
    gadget = dataclasses.replace(
        icmp.KIND,
        name="gadget",
        config_model=GadgetConfig,
        site_section="gadgets",
        probe=GadgetProbe,
        measurements=("gadget",),
    )
    problems = probe_kind_problems(
        gadget, examples=loaded_site_examples(), tests=repo_test_modules(), contract=""
    )
    expected = [
        f"config model GadgetConfig is in {__name__}, not in fieldmon.core.site",
        "SiteConfig has no field 'gadgets'",
        f"the docstring of {__name__} does not end with an 'Emits' paragraph",
        "docs/contract.md (InfluxDB) does not document `gadget`",
        "`gadget` is not in fieldmon.core.wire.AGENT_MEASUREMENTS",
        f"no test module under tests/ imports {__name__}",
        "no example under site_configs/ that loads uses `gadgets`",
    ]
    assert len(problems) == len(expected), problems
    for problem, words in zip(problems, expected, strict=True):
        assert problem.startswith("gadget: ") and words in problem, (problem, words)


def test_a_probe_kind_without_an_example_or_a_documented_measurement_fails() -> None:
    complete = probe_kind_problems(
        icmp.KIND,
        examples=loaded_site_examples(),
        tests=repo_test_modules(),
        contract=CONTRACT.read_text(encoding="utf-8"),
    )
    assert complete == []
    unused = probe_kind_problems(
        dataclasses.replace(icmp.KIND, measurements=("link", "trace")),
        examples=[(path, {**doc, "links": []}) for path, doc in loaded_site_examples()],
        tests=[],
        contract=CONTRACT.read_text(encoding="utf-8"),
    )
    assert unused == [
        "icmp: the 'Emits' paragraph of fieldmon.agent.probes.icmp does not name `trace`",
        "icmp: docs/contract.md (InfluxDB) does not document `trace`",
        "icmp: `trace` is not in fieldmon.core.wire.AGENT_MEASUREMENTS (the collector refuses "
        "it from agents)",
        "icmp: no test module under tests/ imports fieldmon.agent.probes.icmp",
        "icmp: no example under site_configs/ that loads uses `links`",
    ]


def test_a_kind_that_shares_services_needs_an_example_of_its_own_kind() -> None:
    contract = CONTRACT.read_text(encoding="utf-8")
    assert (
        probe_kind_problems(
            tcp.KIND, examples=loaded_site_examples(), tests=repo_test_modules(), contract=contract
        )
        == []
    )
    without_tcp = [
        (path, {**doc, "services": [s for s in doc.get("services") or [] if s["kind"] != "tcp"]})
        for path, doc in loaded_site_examples()
    ]
    assert any(doc["services"] for _path, doc in without_tcp)  # other kinds remain
    assert probe_kind_problems(
        tcp.KIND, examples=without_tcp, tests=repo_test_modules(), contract=contract
    ) == ["tcp: no example under site_configs/ that loads uses `services` with kind: tcp"]


def test_a_new_notifier_without_schema_docs_or_example_fails_on_every_point() -> None:
    pager = NotifierKind(
        name="pager",
        config_model=GadgetConfig,
        section="pager",
        notifier=GadgetProbe,
        build=alertmanager.KIND.build,
    )
    assert notifier_problems(pager, example=load_yaml(COLLECTOR_EXAMPLE)) == [
        "pager: NotifyConfig has no field 'pager' holding GadgetConfig",
        f"pager: the docstring of {__name__} does not end with a 'Sends' paragraph",
        "pager: deploy/collector.example.yaml does not show `notify.pager`",
    ]


def test_a_new_ap_profile_without_description_walk_or_test_fails(tmp_path: Path) -> None:
    # A copy of a shipped profile under a new name, its description blanked.
    text = (PROFILES_DIR / "generic-ap.yaml").read_text(encoding="utf-8")
    text = text.replace("name: generic-ap", "name: acme-ap")
    before, _description, after = re.split(r"(?ms)^(description:.*?)^(?=sources:)", text)
    acme = before + 'description: " "\n' + after
    (tmp_path / "acme-ap.yaml").write_text(acme, encoding="utf-8")
    (tmp_path / "broken-ap.yaml").write_text("name: broken-ap\n", encoding="utf-8")
    problems = profile_problems(
        "acme-ap", profiles_dir=tmp_path, walks_dir=WALKS_DIR, tests=repo_test_modules()
    )
    assert problems == [
        "acme-ap: has no description",
        f"acme-ap: no recorded walk acme-ap.walk in {WALKS_DIR}",
        "acme-ap: no test that imports fieldmon.lab.simap names this profile",
    ]
    broken = profile_problems(
        "broken-ap", profiles_dir=tmp_path, walks_dir=tmp_path, tests=repo_test_modules()
    )
    assert broken[0].startswith("broken-ap: does not load: ")
    assert len(broken) == 3
