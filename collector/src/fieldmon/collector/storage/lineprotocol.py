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
from typing import NamedTuple

import msgspec

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
# msgspec writes a tuple of numbers as JSON in C, several times faster than a %r per float, and
# its text for a float is Python's repr (the shortest that reads back the same) except where repr
# would use an exponent: msgspec writes `1e16` for `1e+16` and `0.00001` for `1e-05`, and `null`
# for a non-finite float (which a Sample cannot hold). Text with `e`, `n` or `0.0000` in it goes
# the %r way, so every line is the same either way (a test holds the two to it).
_NUMBERS_JSON = msgspec.json.Encoder().encode


class _Template(NamedTuple):
    """How one (field keys, value types) is written."""

    text: str  # `k1=%r,k2=%di %d` (after the series prefix, once cached)
    converters: tuple[Converter, ...]  # empty when every value goes in as it is
    # `k1=%s,k2=%si %d` for the numbers' JSON text, when every value is an int or a float
    numeric: str | None


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

    Each line is one %-format of a cached format string: the series prefix (measurement and
    sorted tags) and the field template for the sample's field keys and value types, cached
    together per (series, keys, types), one look-up per sample. When every value is a number,
    msgspec writes them all in one C call and the format takes their text (about twice as fast
    as a %r per float, which was most of the cost); bools and strings are turned into text in
    Python. The cache is bounded so a stream of unique tag values (a bug upstream) cannot grow
    memory without limit; past the bound it is cleared and rebuilt, which is only slower.
    """

    def __init__(self, *, limit: int = 50_000) -> None:
        self._limit = limit
        self._lines: dict[
            tuple[str, tuple[tuple[str, str], ...], tuple[str, ...], tuple[type, ...]], _Template
        ] = {}

    def encode(self, sample: Sample) -> str:
        """One line of line protocol for `sample`, without the trailing newline."""
        fields = sample.fields
        values: tuple[object, ...] = tuple(fields.values())
        key = (
            sample.measurement,
            tuple(sample.tags.items()),
            tuple(fields),
            tuple(map(type, values)),
        )
        template = self._lines.get(key)
        if template is None:
            template = self._template(key[0], sample.tags, key[2], key[3])
        if template.numeric is not None:
            text = _NUMBERS_JSON(values)
            if b"e" not in text and b"n" not in text and b"0.0000" not in text:
                return template.numeric % (*text[1:-1].decode().split(","), sample.time)
        if template.converters:
            values = tuple(
                convert(value)  # type: ignore[arg-type]
                for convert, value in zip(template.converters, values, strict=True)
            )
        return template.text % (*values, sample.time)

    def body(self, samples: Iterable[Sample]) -> bytes:
        """A request body: one line per sample, joined by newlines (no trailing newline)."""
        return "\n".join([self.encode(sample) for sample in samples]).encode("utf-8", "replace")

    @property
    def cached(self) -> int:
        """Formats held now (bounded by the limit)."""
        return len(self._lines)

    def _template(
        self,
        measurement: str,
        tags: dict[str, str],
        keys: tuple[str, ...],
        types: tuple[type, ...],
    ) -> _Template:
        fields = _field_template(keys, types)
        prefix = _series_prefix(measurement, tags)
        template = _Template(
            prefix + fields.text,
            fields.converters,
            None if fields.numeric is None else prefix + fields.numeric,
        )
        if len(self._lines) >= self._limit:
            self._lines.clear()
        self._lines[(measurement, tuple(tags.items()), keys, types)] = template
        return template


def _series_prefix(measurement: str, tags: dict[str, str]) -> str:
    parts = [escape_measurement(measurement)]
    parts.extend(f"{escape_key(key)}={escape_key(tags[key])}" for key in sorted(tags))
    return (",".join(parts) + " ").replace("%", "%%")


def _field_template(keys: tuple[str, ...], types: tuple[type, ...]) -> _Template:
    """`k1=%r,k2=%di %d` for these field keys and value types, and the converters to apply
    (empty when every value goes in as it is)."""
    parts: list[str] = []
    numeric: list[str] = []
    converters: list[Converter] = []
    for key, value_type in zip(keys, types, strict=True):
        if value_type not in _FORMATS:
            raise TypeError(
                f"field {key!r}: line protocol has no type for {value_type.__name__} values"
            )
        spec, convert = _FORMATS[value_type]
        escaped = escape_key(key).replace("%", "%%")
        parts.append(f"{escaped}={spec}")
        numeric.append(f"{escaped}=%s{'i' if value_type is int else ''}")
        converters.append(convert)
    if all(convert is _unchanged for convert in converters):
        converters = []
    return _Template(
        ",".join(parts) + " %d",
        tuple(converters),
        ",".join(numeric) + " %d" if set(types) <= {int, float} else None,
    )


def encode_sample(sample: Sample) -> str:
    """One line for one sample, without caching (tests, one-off writes)."""
    return LineEncoder().encode(sample)


def encode_samples(samples: Iterable[Sample]) -> bytes:
    """A one-off request body (tests, benchmarks); a long-lived writer keeps a `LineEncoder`."""
    return LineEncoder().body(samples)
