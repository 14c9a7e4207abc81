"""InfluxDB line protocol from Samples: one line per sample, nanosecond timestamps.

Escaping follows the line-protocol reference and matches influxdb-client's `Point` byte for byte
(a hypothesis test holds us to it) except for these deliberate differences. Tags are sorted by
key, as InfluxDB recommends; fields keep the sample's order (`Point` sorts them).

- Integral floats keep their `.0` (`2.0`; `Point` writes `2`). Both are floats to InfluxDB, as
  only integers carry the `i` suffix; floats are written with `repr`, the shortest text that
  reads back to the same double, so no precision is lost.
- A backslash is literal, but influxd (1.6.7, tested) cannot carry every one: a backslash at
  the very end of a tag key, tag value or field key swallows the delimiter after it, and in a
  field key, where `\\x` is read as a pair for any x, an *odd* run of backslashes right before
  a comma, space or equals sign swallows our escape of that character. `Point` writes those lines
  as they are (they fail to parse or parse into other tags), or appends a space to a tag value.
  We write the last backslash of such a run as U+FF3C (FULLWIDTH REVERSE SOLIDUS, which looks
  the same on a dashboard), so the line stays well formed. One rule serves keys and tag values
  alike; in tags an odd run before `,`/`=`/space would have survived, so there it costs one
  character that was representable (fieldmon's identifiers never contain a backslash).
- A newline in a string field value is written as the two characters `\\n` (InfluxDB stores a
  backslash and an `n`), as `Point` already does for tag keys and values. Line protocol has no
  newline inside a value, and the collector counts and isolates points by line, so one sample
  must be exactly one line. Newlines, carriage returns and tabs in the measurement, keys and tag
  values become `\\n`, `\\r`, `\\t`, exactly as `Point` writes them.
- A lone surrogate (legal in JSON, never in UTF-8) becomes `?` in the request body.

Two influxd 1.6.7 losses neither we nor `Point` can avoid: it unescapes `\\"` in field keys (a
backslash before a double quote there is dropped), and it skips NUL bytes before the field set
(a first field key starting with NUL loses it). fieldmon's own keys are plain identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from fieldmon.core.wire.models import FieldValue, Sample

_MEASUREMENT_TABLE = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_KEY_TABLE = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_STRING_TABLE = str.maketrans({'"': r"\"", "\\": r"\\", "\n": r"\n"})
# Backslashes influxd cannot carry (see the module docs): the last one of a token, and the last
# of an odd run before a character we escape.
_KEY_BAD_BACKSLASH = re.compile(r"(?<!\\)((?:\\\\)*)\\(?=[,= ])|\\\Z")
_MEASUREMENT_BAD_BACKSLASH = re.compile(r"(?<!\\)((?:\\\\)*)\\(?=[, ])|\\\Z")
_BACKSLASH_LOOKALIKE = "\uff3c"

Converter = Callable[[FieldValue], object]
_Template = tuple[str, tuple[Converter, ...]]


def _lookalike(match: re.Match[str]) -> str:
    return (match.group(1) or "") + _BACKSLASH_LOOKALIKE


def escape_key(text: str) -> str:
    """A tag key, tag value or field key, escaped for line protocol."""
    if "\\" in text:
        text = _KEY_BAD_BACKSLASH.sub(_lookalike, text)
    return text.translate(_KEY_TABLE)


def escape_measurement(text: str) -> str:
    """A measurement name, escaped for line protocol."""
    if "\\" in text:
        text = _MEASUREMENT_BAD_BACKSLASH.sub(_lookalike, text)
    return text.translate(_MEASUREMENT_TABLE)


def escape_string(text: str) -> str:
    """A string field value, quoted and escaped for line protocol."""
    return f'"{text.translate(_STRING_TABLE)}"'


def _bool_text(value: FieldValue) -> str:
    return "true" if value else "false"


def _string_text(value: FieldValue) -> str:
    return escape_string(str(value))


def _unchanged(value: FieldValue) -> object:
    return value


# Per value type: its %-spec in the template, and what turns the value into that spec's input.
_FORMATS: dict[type, tuple[str, Converter]] = {
    float: ("%r", _unchanged),
    int: ("%di", _unchanged),
    bool: ("%s", _bool_text),
    str: ("%s", _string_text),
}


def format_field_value(value: FieldValue) -> str:
    """One field value in line-protocol syntax: true, 3i, 2.5, "text"."""
    spec, convert = _FORMATS[type(value)]
    return spec % (convert(value),)


class LineEncoder:
    """Samples to line protocol, fast: one per component that writes lines (ingest, alerts).

    Each line is one %-format of a cached template. The series prefix (measurement and sorted
    tags) is cached per tag set, the field template per (keys, value types); numbers go in
    through C-level %r / %d, which is most of the gain over a per-field loop (about 2x) and over
    `Point` (about 4x). Bools and strings are turned into text first. Both caches are bounded so
    a stream of unique tag values (a bug upstream) cannot grow memory without limit; past the
    bound they are cleared and rebuilt, which is only slower.
    """

    def __init__(self, *, prefix_limit: int = 50_000, template_limit: int = 1_000) -> None:
        self._prefix_limit = prefix_limit
        self._template_limit = template_limit
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._templates: dict[tuple[tuple[str, ...], tuple[type, ...]], _Template] = {}

    def encode(self, sample: Sample) -> str:
        """One line of line protocol for `sample`, without the trailing newline."""
        fields = sample.fields
        values: tuple[object, ...] = tuple(fields.values())
        template, converters = self._template(tuple(fields), tuple(map(type, values)))
        if converters:
            values = tuple(
                convert(value)  # type: ignore[arg-type]
                for convert, value in zip(converters, values, strict=True)
            )
        return (self._prefix(sample.measurement, sample.tags) + template) % (*values, sample.time)

    def body(self, samples: Iterable[Sample]) -> bytes:
        """A request body: one line per sample, joined by newlines (no trailing newline)."""
        return "\n".join([self.encode(sample) for sample in samples]).encode("utf-8", "replace")

    @property
    def cached(self) -> int:
        """Prefixes and templates held now (bounded by the limits)."""
        return len(self._prefixes) + len(self._templates)

    def _prefix(self, measurement: str, tags: dict[str, str]) -> str:
        """`measurement,k1=v1,k2=v2 ` with tags sorted by key, ready for a %-template."""
        cache_key = (measurement, tuple(tags.items()))
        prefix = self._prefixes.get(cache_key)
        if prefix is None:
            prefix = _series_prefix(measurement, tags)
            if len(self._prefixes) >= self._prefix_limit:
                self._prefixes.clear()
            self._prefixes[cache_key] = prefix
        return prefix

    def _template(self, keys: tuple[str, ...], types: tuple[type, ...]) -> _Template:
        cache_key = (keys, types)
        template = self._templates.get(cache_key)
        if template is None:
            template = _field_template(keys, types)
            if len(self._templates) >= self._template_limit:
                self._templates.clear()
            self._templates[cache_key] = template
        return template


def _series_prefix(measurement: str, tags: dict[str, str]) -> str:
    parts = [escape_measurement(measurement)]
    parts.extend(f"{escape_key(key)}={escape_key(tags[key])}" for key in sorted(tags))
    return (",".join(parts) + " ").replace("%", "%%")


def _field_template(keys: tuple[str, ...], types: tuple[type, ...]) -> _Template:
    """`k1=%r,k2=%di %d` for these field keys and value types, and the converters to apply
    (empty when every value goes in as it is)."""
    parts: list[str] = []
    converters: list[Converter] = []
    for key, value_type in zip(keys, types, strict=True):
        if value_type not in _FORMATS:
            raise TypeError(
                f"field {key!r}: line protocol has no type for {value_type.__name__} values"
            )
        spec, convert = _FORMATS[value_type]
        parts.append(f"{escape_key(key).replace('%', '%%')}={spec}")
        converters.append(convert)
    if all(convert is _unchanged for convert in converters):
        converters = []
    return (",".join(parts) + " %d", tuple(converters))


def encode_sample(sample: Sample) -> str:
    """One line for one sample, without caching (tests, one-off writes)."""
    return LineEncoder().encode(sample)


def encode_samples(samples: Iterable[Sample]) -> bytes:
    """A one-off request body (tests, benchmarks); a long-lived writer keeps a `LineEncoder`."""
    return LineEncoder().body(samples)
