"""The collector's disk spool: batches the database cannot take now, kept durably until it can.

A batch is acknowledged (to the broker and to its agents) once it is in InfluxDB *or* here, so
the spool must hold it through a kill -9 or a power cut. Append-only segment files rather than
SQLite, because a spooled batch is one large blob (up to `batch_size` lines, about 1 MB) that is
written once and read once, oldest first: appending it is one write and one fsync, and a drained
segment is freed by unlinking it, so the spool's size on disk is the sum of its files and a
drained spool takes no space (SQLite keeps freed pages inside its file until a VACUUM rewrites
it, and would add a WAL and a checkpoint to every large blob).

Layout of `directory`:
- `0000000000000001.seg`, ...: segments, oldest first. A segment is a run of records; a record is
  a 16-byte header (magic `FMSP`, payload length, line count, CRC-32 of the payload) and the
  payload, the batch's line-protocol lines joined by newlines (UTF-8; a sample is always exactly
  one line). A new segment starts when the current one would pass `segment_bytes`, and at every
  start-up, so a record torn by a crash is never followed by new ones in the same file.
- `cursor`: the segment and offset of the oldest record not yet in the database.

Durability: `append` returns only after the record and (for a new segment) the directory entry
are fsync'd. A record cut short by a crash was never acknowledged, so its broker or agent still
holds the batch; reading finds it by its length or CRC, logs it, skips it and keeps every record
before it (and any valid record after it). The cursor is replaced atomically but not fsync'd: after
a power cut it may lag, and the records it then names again are written to the database again,
which changes nothing there (same measurement, tags and time; the same values).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MAGIC = b"FMSP"
HEADER = struct.Struct("<4sIII")  # magic, payload length, line count, crc32(payload)
SEGMENT_SUFFIX = ".seg"
CURSOR_NAME = "cursor"
MIB = 1024 * 1024


class SpoolError(Exception):
    """The spool directory cannot be used (not writable, or a file in it cannot be read)."""


@dataclass(frozen=True)
class SpooledBatch:
    """One record read back from the spool; `release` it once the database has its lines."""

    segment: int
    offset: int
    end: int
    lines: list[str]


@dataclass
class _Segment:
    number: int
    size: int  # bytes on disk (for the segment being appended to: what has been fsync'd)

    def name(self) -> str:
        return f"{self.number:016d}{SEGMENT_SUFFIX}"


class Spool:
    """Append-only, fsync'd segment files read back in order; safe to call from several threads.

    Every method blocks on disk I/O: call them from a worker thread, never the event loop.
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 16 * MIB) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.torn_records = 0  # records found cut short or corrupt, and skipped
        self._lock = threading.Lock()
        self._segments: deque[_Segment] = deque()
        self._appending: _Segment | None = None
        self._append_fd: int | None = None
        self._cursor = 0  # offset of the next record to read in the oldest segment
        self._total = 0  # bytes of every segment
        self._next_number = 1
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise SpoolError(f"spool directory {directory}: {exc.strerror or exc}") from exc

    # -- start-up ---------------------------------------------------------------------------

    def _recover(self) -> None:
        numbers = sorted(
            int(path.stem)
            for path in self.directory.iterdir()
            if path.suffix == SEGMENT_SUFFIX and path.stem.isdigit()
        )
        cursor_segment, cursor_offset = self._read_cursor()
        for number in numbers:
            segment = _Segment(number, (self.directory / _Segment(number, 0).name()).stat().st_size)
            if number < cursor_segment:
                # Drained before a crash that came between the cursor update and the unlink.
                self._unlink(segment)
                continue
            self._segments.append(segment)
            self._total += segment.size
        if self._segments and self._segments[0].number == cursor_segment:
            self._cursor = min(cursor_offset, self._segments[0].size)
        self._next_number = max([cursor_segment, *numbers], default=0) + 1
        if self._segments:
            logger.info(
                "spool holds batches from before the restart; draining them",
                extra={"spool": str(self.directory), "bytes": self.bytes},
            )

    def _read_cursor(self) -> tuple[int, int]:
        try:
            text = (self.directory / CURSOR_NAME).read_text(encoding="ascii")
            segment, offset = (int(part) for part in text.split())
        except FileNotFoundError:
            return 0, 0
        except (ValueError, UnicodeDecodeError):
            # A garbled cursor only costs re-writing records the database already has.
            logger.warning("spool cursor unreadable; draining from the oldest segment")
            return 0, 0
        return segment, offset

    # -- state ------------------------------------------------------------------------------

    # Read without the lock (an int and a deque length), so the event loop may ask at any time
    # without waiting for an fsync in a worker thread.
    @property
    def bytes(self) -> int:
        """Bytes the spool's segments take on disk."""
        return self._total

    @property
    def empty(self) -> bool:
        """True when no record waits to be drained."""
        return not self._segments

    # -- writing ----------------------------------------------------------------------------

    def append(self, lines: list[str]) -> bool:
        """Store one batch durably; False (nothing stored) when the spool is full or the disk fails.

        Returns only after fsync, so the caller may acknowledge the batch on True.
        """
        if not lines:
            raise ValueError("an empty batch has nothing to spool")
        payload = "\n".join(lines).encode("utf-8", "replace")
        record = HEADER.pack(MAGIC, len(payload), len(lines), zlib.crc32(payload)) + payload
        with self._lock:
            if self._total + len(record) > self.max_bytes:
                return False
            try:
                segment, fd = self._segment_for(len(record))
            except OSError as exc:
                logger.error("cannot create a spool segment", extra={"error": str(exc)})
                return False
            try:
                _write_all(fd, record)
                os.fsync(fd)
            except OSError as exc:
                self._abandon_append(segment, fd, exc)
                return False
            segment.size += len(record)
            self._total += len(record)
            return True

    def _segment_for(self, record_bytes: int) -> tuple[_Segment, int]:
        segment, fd = self._appending, self._append_fd
        if segment is not None and fd is not None:
            if segment.size == 0 or segment.size + record_bytes <= self.segment_bytes:
                return segment, fd
            self._close_append()
        segment = _Segment(self._next_number, 0)
        self._next_number += 1
        path = self.directory / segment.name()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _fsync_directory(self.directory)  # the new name must survive a power cut too
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._segments.append(segment)
        self._appending, self._append_fd = segment, fd
        return segment, fd

    def _abandon_append(self, segment: _Segment, fd: int, exc: OSError) -> None:
        """A failed write or fsync: cut the segment back to its last good record, append no more.

        After a failed fsync the kernel may have dropped the dirty pages, so the same file
        descriptor cannot be trusted again; the next batch starts a new segment.
        """
        logger.error(
            "spool write failed; the batch stays unacknowledged",
            extra={"segment": segment.name(), "error": str(exc)},
        )
        with contextlib.suppress(OSError):  # the reader's checks skip whatever is left
            os.ftruncate(fd, segment.size)
        self._close_append()

    def _close_append(self) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
        self._appending, self._append_fd = None, None

    # -- reading ----------------------------------------------------------------------------

    def peek(self) -> SpooledBatch | None:
        """The oldest batch not yet drained, or None when there is none."""
        with self._lock:
            while self._segments:
                segment = self._segments[0]
                if self._cursor >= segment.size:
                    if segment is self._appending:
                        return None  # drained up to the write position; more may come
                    self._retire_oldest()
                    continue
                batch = self._read_record(segment)
                if batch is not None:
                    return batch
            return None

    def release(self, batch: SpooledBatch) -> None:
        """Mark `batch` as written to the database; its segment goes once fully drained."""
        with self._lock:
            if not self._segments or self._segments[0].number != batch.segment:
                return  # already released (a retry after a crash of the caller)
            self._cursor = max(self._cursor, batch.end)
            segment = self._segments[0]
            if self._cursor >= segment.size:
                self._retire_oldest()
            else:
                self._write_cursor(segment.number, self._cursor)

    def _read_record(self, segment: _Segment) -> SpooledBatch | None:
        """The record at the cursor; past a torn or corrupt one, the next valid record, if any."""
        path = self.directory / segment.name()
        try:
            with path.open("rb") as handle:
                handle.seek(self._cursor)
                header = handle.read(HEADER.size)
                if len(header) == HEADER.size:
                    magic, length, _count, _crc = HEADER.unpack(header)
                    if magic == MAGIC and self._cursor + HEADER.size + length <= segment.size:
                        lines = _decode_record(header + handle.read(length), 0)
                        if lines is not None:
                            start = self._cursor
                            return SpooledBatch(segment.number, start, handle.tell(), lines)
                # Damaged: look for the next intact record in the rest of the segment.
                handle.seek(self._cursor)
                rest = handle.read(segment.size - self._cursor)
        except OSError as exc:
            raise SpoolError(f"reading spool segment {path}: {exc.strerror or exc}") from exc
        position = rest.find(MAGIC, 1)
        while position >= 0:
            lines = _decode_record(rest, position)
            if lines is not None:
                self._skipped(segment, self._cursor, position)
                start = self._cursor + position
                self._cursor = start
                length = HEADER.unpack_from(rest, position)[1]
                return SpooledBatch(segment.number, start, start + HEADER.size + length, lines)
            position = rest.find(MAGIC, position + 1)
        self._skipped(segment, self._cursor, len(rest))
        self._cursor = segment.size
        return None

    def _skipped(self, segment: _Segment, offset: int, length: int) -> None:
        self.torn_records += 1
        logger.warning(
            "spool: skipped a torn or corrupt record (a batch never acknowledged; its sender "
            "still has it); the records before it are kept",
            extra={"segment": segment.name(), "offset": offset, "bytes": length},
        )

    def _retire_oldest(self) -> None:
        segment = self._segments.popleft()
        self._total -= segment.size
        if segment is self._appending:
            self._close_append()
        self._cursor = 0
        # Cursor first: a crash before the unlink then finds a segment older than the cursor,
        # which start-up deletes; the other order could re-drain a whole segment.
        self._write_cursor(segment.number + 1, 0)
        self._unlink(segment)

    def _unlink(self, segment: _Segment) -> None:
        (self.directory / segment.name()).unlink(missing_ok=True)

    def _write_cursor(self, segment: int, offset: int) -> None:
        temporary = self.directory / (CURSOR_NAME + ".tmp")
        temporary.write_text(f"{segment} {offset}\n", encoding="ascii")
        os.replace(temporary, self.directory / CURSOR_NAME)

    def close(self) -> None:
        """Close the file being appended to; waits for an append in progress."""
        with self._lock:
            self._close_append()


def _decode_record(data: bytes, position: int) -> list[str] | None:
    """The lines of the record at `position`, or None when it is torn or corrupt."""
    if len(data) - position < HEADER.size:
        return None
    magic, length, count, crc = HEADER.unpack_from(data, position)
    start = position + HEADER.size
    if magic != MAGIC or start + length > len(data):
        return None
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        return None
    lines = payload.decode("utf-8", "replace").split("\n")
    return lines if len(lines) == count else None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot fsync a directory; their entries are durable another way.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
