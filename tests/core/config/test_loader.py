"""The loader's field paths and line numbers, on tiny models and on the real config models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, model_validator

from fieldmon.collector.config import CollectorConfig
from fieldmon.core.config.errors import ConfigError, ConfigIssue, FieldValueError
from fieldmon.core.config.loader import load_model, validate_document
from fieldmon.core.config.types import SecretFile, StrictModel
from fieldmon.core.site.config import SiteConfig
from fieldmon.lab.secretfiles import write_secret


class _Leaf(StrictModel):
    low: int = 0
    high: int = 10

    @model_validator(mode="after")
    def _ordered(self) -> _Leaf:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


class _Pointing(StrictModel):
    start: int = 0
    end: int | None = None

    @model_validator(mode="after")
    def _end_after_start(self) -> _Pointing:
        if self.end is not None and self.end < self.start:
            raise FieldValueError(("end",), "must not be before start")
        if self.end is None and self.start > 100:
            raise FieldValueError(("end",), "is needed when start is past 100")
        return self


class _Cat(StrictModel):
    kind: Literal["cat"]
    lives: int = 9


class _Dog(StrictModel):
    kind: Literal["dog"]
    good: bool = True


class _Root(StrictModel):
    name: str
    leaf: _Leaf = Field(default_factory=_Leaf)
    leaves: list[_Leaf] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    span: _Pointing = Field(default_factory=_Pointing)
    pet: Annotated[_Cat | _Dog, Field(discriminator="kind")] | None = None
    secret: SecretFile | None = None

    @model_validator(mode="after")
    def _not_both(self) -> _Root:
        if self.name == "forbidden":
            raise ValueError("this name is forbidden")
        return self


def _issues(tmp_path: Path, text: str, model: type[StrictModel] = _Root) -> list[ConfigIssue]:
    path = tmp_path / "case.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_model(path, model)
    return raised.value.issues


def _where(issues: list[ConfigIssue]) -> list[tuple[int | None, str]]:
    return [(issue.line, issue.path) for issue in issues]


def test_nested_key_block_and_flow(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\nleaf:\n  low: 1\n  high: lots\nspan: {start: 1, end: z}\n")
    assert _where(issues) == [(4, "leaf.high"), (5, "span.end")]


def test_list_items(tmp_path: Path) -> None:
    text = "name: x\nleaves:\n  - {low: 1}\n  - {low: 2}\n  -\n    high: no\ntags: [a, b, [c]]\n"
    assert _where(_issues(tmp_path, text)) == [(6, "leaves[2].high"), (7, "tags[2]")]


def test_unknown_key_points_at_its_own_line(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\nleaf:\n  low: 1\n\n  hihg: 3\n")
    assert _where(issues) == [(5, "leaf.hihg")]
    assert issues[0].message == "unknown key 'hihg' (did you mean 'high'?)"


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\nleaf: {colour: red}\n")
    assert issues[0].message == "unknown key 'colour'; allowed here: low, high"


def test_missing_key_points_at_the_parent_mapping(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "# comment\n\nleaf: {low: 1}\npet:\n  lives: 3\n")
    assert _where(issues) == [(3, "name"), (4, "pet.kind")]
    assert issues[0].message == "required key is missing"
    assert issues[1].message == "required key is missing; one of: cat, dog"


def test_model_validator_points_at_the_model(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\nleaves:\n  - {}\n  - {low: 5, high: 1}\n")
    assert _where(issues) == [(4, "leaves[1]")]
    assert issues[0].message == "low must not exceed high"


def test_root_model_validator_points_at_the_first_key(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "# about this file\n\nname: forbidden\n")
    assert _where(issues) == [(3, "")]
    assert str(issues[0]).endswith("case.yaml:3: this name is forbidden")


def test_field_value_error_points_at_the_key(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\nspan:\n  start: 5\n  end: 1\n")
    assert _where(issues) == [(4, "span.end")]
    assert issues[0].message == "must not be before start"


def test_field_value_error_about_a_missing_key(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\nspan:\n  start: 500\n")
    assert _where(issues) == [(2, "span.end")]


def test_discriminated_union_member_is_not_in_the_path(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\npet:\n  kind: dog\n  good: maybe\n  lives: 3\n")
    assert _where(issues) == [(4, "pet.good"), (5, "pet.lives")]
    assert issues[1].message.startswith("unknown key 'lives'; allowed here: kind, good")


def test_unknown_discriminator_value(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "name: x\npet:\n  kind: bird\n")
    assert _where(issues) == [(3, "pet.kind")]
    assert issues[0].message == "'bird' is not one of: cat, dog"


def test_issues_come_in_file_order(tmp_path: Path) -> None:
    issues = _issues(tmp_path, "span: {end: x}\nleaf: {low: y}\nname: [1]\n")
    assert [issue.line for issue in issues] == [1, 2, 3]


def test_relative_secret_is_resolved_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "site"
    (folder / "keys").mkdir(parents=True)
    write_secret(folder / "keys" / "token", "example-token")
    (folder / "case.yaml").write_text("name: x\nsecret: keys/token\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    loaded = load_model(Path("site/case.yaml"), _Root)
    assert loaded.secret == (folder / "keys" / "token")
    assert loaded.secret is not None and loaded.secret.is_absolute()


def test_missing_secret_can_be_skipped_for_inventory_reads(tmp_path: Path) -> None:
    (tmp_path / "case.yaml").write_text("name: x\nsecret: /no/such/file\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="secret: secret file '/no/such/file' does not exist"):
        load_model(tmp_path / "case.yaml", _Root)
    loaded = load_model(tmp_path / "case.yaml", _Root, check_files=False)
    assert loaded.secret == Path("/no/such/file")


@pytest.mark.parametrize(
    "secret",
    ["x" * 5000, "~no-such-user-anywhere/key", "a\0b"],
    ids=["name-too-long", "unknown-home", "nul-byte"],
)
def test_unusable_secret_path_is_an_issue_not_a_crash(tmp_path: Path, secret: str) -> None:
    document = {"name": "x", "secret": secret}
    with pytest.raises(ConfigError) as raised:
        validate_document(tmp_path / "case.yaml", document, _Root)
    assert [issue.path for issue in raised.value.issues] == ["secret"]


def test_collector_union_and_alias_paths(tmp_path: Path) -> None:
    text = (
        "broker: {host: 127.0.0.1}\n"
        "influxdb:\n"
        "  api: v1\n"
        "  url: http://127.0.0.1:8086\n"
        "site_configs: .\n"
        "notify:\n"
        "  email: {smtp_host: smtp.example.org, form: a@example.org, to: [b@example.org]}\n"
    )
    issues = _issues(tmp_path, text, CollectorConfig)
    assert _where(issues) == [
        (2, "influxdb.database"),
        (7, "notify.email.from"),
        (7, "notify.email.form"),
    ]
    assert issues[2].message == "unknown key 'form' (did you mean 'from'?)"


def test_collector_unknown_influx_api(tmp_path: Path) -> None:
    text = "broker: {host: h}\ninfluxdb: {api: v3, url: 'http://h'}\nsite_configs: .\n"
    issues = _issues(tmp_path, text, CollectorConfig)
    assert _where(issues) == [(2, "influxdb.api")]
    assert issues[0].message == "'v3' is not one of: v1, v2"


_KEYS = st.sampled_from(
    [
        "site",
        "name",
        "parent_hospital",
        "agent",
        "id",
        "broker",
        "host",
        "links",
        "address",
        "role",
        "interval",
        "snmp_devices",
        "snmp",
        "version",
        "profile",
        "hooks",
        "dir",
        "other",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["pavilion-2", "10s", "192.0.2.1", "parent", "2c", "if-mib"]),
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _DOCUMENTS, max_size=8))
def test_arbitrary_documents_give_issues_not_exceptions(document: dict[str, Any]) -> None:
    try:
        validate_document(Path("fuzz.yaml"), document, SiteConfig)
    except ConfigError as exc:
        assert exc.issues
        assert all(str(issue).startswith("fuzz.yaml") for issue in exc.issues)


@pytest.mark.parametrize(
    "text",
    ["name: 2001-02-30\n", "name: !!int x\n", "name: !!bool maybe\n", "? [a, {b: 1}]\n: 2\n"],
    ids=["impossible-date", "bad-int-tag", "bad-bool-tag", "mapping-as-key"],
)
def test_values_the_yaml_library_cannot_build(tmp_path: Path, text: str) -> None:
    issues = _issues(tmp_path, text)
    assert len(issues) == 1
    assert issues[0].message.startswith("YAML value cannot be read: ")


def test_keys_from_a_merge_still_get_a_path(tmp_path: Path) -> None:
    text = "name: x\nleaves:\n  - &base {low: 1}\n  - <<: *base\n    high: lots\n"
    issues = _issues(tmp_path, text)
    assert _where(issues) == [(5, "leaves[1].high")]
