"""Access-point profiles: data files mapping numeric OIDs to `ap` fields, loaded and checked.

A profile (`profiles/NAME.yaml`) names the table columns to walk, how a row becomes a radio
(its `radio` tag template, an optional filter and grouping) and how each `ap` field is made
from a column (value map, transform, aggregate). A new vendor is one such file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from fieldmon.agent.snmp.errors import ProfileError
from fieldmon.core.config.errors import ConfigError
from fieldmon.core.config.loader import load_model
from fieldmon.core.config.types import StrictModel

PROFILES_DIR = Path(__file__).parent / "profiles"
AP_FIELDS = ("up", "clients", "channel", "channel_util_pct", "noise_dbm")
NumericOid = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)+$")]
ColumnName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
_TEMPLATE_NAME = re.compile(r"{([a-z_][a-z0-9_]*)}")


class ParentTable(StrictModel):
    """Columns of a parent table (e.g. per AP) indexed by the first `index_length` sub-ids."""

    index_length: Annotated[int, Field(ge=1, le=32)]
    columns: dict[ColumnName, NumericOid]


class RowFilter(StrictModel):
    """Keep rows whose column value is in `keep` (or not in `drop`)."""

    column: ColumnName
    keep: list[int] | None = None
    drop: list[int] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> RowFilter:
        if (self.keep is None) == (self.drop is None):
            raise ValueError("a filter has exactly one of `keep` or `drop`")
        return self


class FieldSpec(StrictModel):
    """How one `ap` field is made: first present column, then map or transform, then aggregate."""

    column: ColumnName | None = None
    first_of: list[ColumnName] | None = None
    map: dict[int, int] | None = None  # raw value -> field value
    otherwise: int | None = None  # for values the map does not list (None: leave out)
    transform: Literal["mhz_to_channel"] | None = None
    aggregate: Literal["first", "sum", "max", "min"] = "first"  # over rows of a group

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.column is None) == (self.first_of is None):
            raise ValueError("a field has exactly one of `column` or `first_of`")
        return self

    @property
    def sources(self) -> list[str]:
        """The columns tried in order."""
        return [self.column] if self.column is not None else list(self.first_of or [])


class ApProfile(StrictModel):
    """One access-point profile file."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")]
    description: str
    sources: list[str] = Field(min_length=1)  # where each OID was checked
    columns: dict[ColumnName, NumericOid] = Field(min_length=1)  # walked; rows join by index
    rows_from: ColumnName  # the column whose indexes are the radios
    parent: ParentTable | None = None
    filter: RowFilter | None = None
    group_by: ColumnName | None = None  # one radio per distinct value of this column
    radio: str  # tag template: {column}, {index}, {index_last}, {group}
    fields: dict[Literal["up", "clients", "channel", "channel_util_pct", "noise_dbm"], FieldSpec]
    not_polled: dict[str, str] = Field(default_factory=dict)  # field -> why (for readers)

    @model_validator(mode="after")
    def _names_exist(self) -> ApProfile:
        known = set(self.columns) | set(self.parent.columns if self.parent else {})
        used = {self.rows_from, *_TEMPLATE_NAME.findall(self.radio)}
        used |= {self.filter.column} if self.filter else set()
        used |= {self.group_by} if self.group_by else set()
        for spec in self.fields.values():
            used |= set(spec.sources)
        unknown = used - known - {"index", "index_last", "group"}
        if unknown:
            raise ValueError(f"unknown column names: {', '.join(sorted(unknown))}")
        if self.rows_from not in self.columns:
            raise ValueError("rows_from must name a column of the row table, not the parent")
        return self


def available_profiles(directory: Path = PROFILES_DIR) -> list[str]:
    """Names of the profile files in `directory` (plus `if-mib`, which is code)."""
    return sorted(["if-mib", *(path.stem for path in directory.glob("*.yaml"))])


def load_profile(name: str, directory: Path = PROFILES_DIR) -> ApProfile:
    """Read and check `directory/NAME.yaml`; ProfileError names the file, line and problem."""
    path = directory / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(available_profiles(directory))
        raise ProfileError(f"no SNMP profile {name!r} ({path}); known: {choices}")
    try:
        profile = load_model(path, ApProfile)
    except ConfigError as exc:
        raise ProfileError(str(exc)) from exc
    if profile.name != name:
        raise ProfileError(f"{path}: `name: {profile.name}` does not match the file name")
    return profile
