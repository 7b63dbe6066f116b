"""Reading raw documents from the configured sources.

A source resolves to a sorted list of files (so the documents read, and `max_docs`, never depend
on directory listing order, see frontier.data.discover); each file yields documents by its
format. Bad input never stops the stage: binary files, unreadable files, invalid UTF-8 and bad
records are counted in the source's stats and the first few are logged as ``file:line: why``.
A bad record (malformed JSON, an integer too long to convert, nesting too deep for the parser, a
non-object line, a missing or non-string text field, a lone surrogate escape, a Parquet null or a
line over ``max_doc_bytes``) is that record's problem alone: the rest of its file is still read.
With ``prepare.strict`` a bad record ends the stage in one DataError naming file, line and why.
Only a missing path (or a glob matching nothing) is always an error, since it is almost always a typo.

Hostile files: anything but a regular file (a FIFO, a device, a socket) is skipped unopened for
reading (opened non-blocking, checked with fstat) and counted; compressed files are decompressed as
a stream, never whole, and a document or JSONL line longer than ``max_doc_bytes`` is skipped after
reading at most that much of it; a truncated gzip / xz / zstd file is detected (zstd by walking its
frame and block headers, since its stream reader stops silently) and counted, or fails the stage
with ``prepare.corrupt_files: fail``. A compressed Parquet file (spooled to disk, since Parquet
needs seeking) that inflates past ``_MAX_INFLATE`` times its size is a bomb: counted and skipped
(or fatal with ``corrupt_files: fail``) after at most that much was spooled.
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import os
import stat
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from frontier.config.data import SourceConfig
from frontier.data.discover import resolve_files, stdlib_root  # noqa: F401  (stdlib_root: re-exported)
from frontier.errors import DataError
from frontier.utils.jsonl import BadJson, parse_json

log = logging.getLogger("frontier.data.sources")

MAX_PROBLEMS = 5  # problems kept (and logged) per source; the rest are only counted
_BINARY_PROBE = 8192  # like git: a NUL byte in the first 8 KiB marks a binary file
_COMPRESSION_SUFFIX = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".xz": "xz"}
_JSONL_SUFFIX = {".jsonl", ".ndjson", ".json"}
# Parquet needs seeking, so a compressed Parquet file is spooled to disk to be read. Parquet pages are
# compressed already, so gzip & co. on top gain little: inflating past this ratio (and the floor) is
# taken for a decompression bomb, which would otherwise fill the disk.
_MAX_INFLATE = 100
_SPOOL_FLOOR = 64 << 20
_STRICT_HINT = "prepare.strict is true; false counts and skips bad records"


@dataclass
class RawDoc:
    text: str
    where: str  # "file" or "file:line" / "file:row", for messages
    invalid_utf8: bool = False


@dataclass
class ReadStats:
    """Per-source counts of what was read and what was skipped while reading."""

    files: int = 0
    docs_read: int = 0
    bytes_read: int = 0  # UTF-8 bytes of the decoded documents
    binary_files: int = 0
    non_regular_files: int = 0  # FIFOs, devices, sockets: never read
    truncated_files: int = 0  # compressed files that end early (what came before is kept)
    oversized_docs: int = 0  # documents / lines longer than max_doc_bytes, skipped
    unreadable_files: int = 0
    oversized_files: int = 0  # compressed Parquet files inflating past the spool cap (bombs), skipped
    malformed_records: int = 0
    invalid_utf8_docs: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
            log.warning("%s", message)


class ByteCounter:
    """On-disk bytes consumed so far across a source's files (drives the progress bar)."""

    def __init__(self) -> None:
        self.done = 0  # bytes of finished files
        self._raw: IO[bytes] | None = None

    @property
    def value(self) -> int:
        if self._raw is None:
            return self.done
        try:
            return self.done + self._raw.tell()
        except (OSError, ValueError):
            return self.done


def _read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "this file cannot be read": I/O, truncated or corrupt compression, bad Parquet."""
    errors: list[type[BaseException]] = [OSError, EOFError, ValueError, lzma.LZMAError, zlib.error]
    # Only libraries already imported can have raised; checking sys.modules avoids importing them.
    if "zstandard" in sys.modules:
        errors.append(sys.modules["zstandard"].ZstdError)
    if "pyarrow" in sys.modules:
        errors.append(sys.modules["pyarrow"].ArrowException)
    return tuple(errors)


def detect(path: Path, src: SourceConfig) -> tuple[str, str]:
    """(format, compression) of a file: configured values, or guessed from its suffixes."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = src.compression
    if compression == "auto":
        compression = _COMPRESSION_SUFFIX.get(suffixes[-1], "none") if suffixes else "none"
    if compression != "none" and suffixes and suffixes[-1] in _COMPRESSION_SUFFIX:
        suffixes = suffixes[:-1]
    fmt = src.format
    if fmt == "auto":
        last = suffixes[-1] if suffixes else ""
        fmt = "jsonl" if last in _JSONL_SUFFIX else "parquet" if last == ".parquet" else "text"
    return fmt, compression


def _open_stream(raw: IO[bytes], compression: str) -> IO[bytes]:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if compression == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[return-value]
    return raw


class Truncated(EOFError):
    """A compressed file ends before its end-of-stream marker."""


def zstd_truncated(path: Path) -> bool:
    """True when a .zst file ends inside a frame: walks frame and block headers, decompressing nothing."""
    with open(path, "rb") as f:
        data = f.read(4)
        while data:
            if len(data) < 4:
                return True
            magic = int.from_bytes(data, "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame: 4-byte size, then that many bytes
                size = f.read(4)
                if len(size) < 4 or len(f.read(int.from_bytes(size, "little"))) < int.from_bytes(size, "little"):
                    return True
            elif magic == 0xFD2FB528:
                fhd = f.read(1)
                if not fhd:
                    return True
                d = fhd[0]
                single, checksum, fcs_flag, did_flag = d >> 5 & 1, d >> 2 & 1, d >> 6, d & 3
                header = (0 if single else 1) + (0, 1, 2, 4)[did_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
                if len(f.read(header)) < header:
                    return True
                last = False
                while not last:
                    block = f.read(3)
                    if len(block) < 3:
                        return True
                    value = int.from_bytes(block, "little")
                    last, kind, size = bool(value & 1), value >> 1 & 3, value >> 3
                    payload = 1 if kind == 1 else size
                    if kind == 3 or len(f.read(payload)) < payload:
                        return True
                if checksum and len(f.read(4)) < 4:
                    return True
            else:
                return True  # not a zstd frame: garbage after the data, or not zstd at all
            data = f.read(4)
    return False


def _open_regular(path: Path) -> IO[bytes] | None:
    """Open `path` for reading if it is a regular file (never blocks on a FIFO); None otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class SourceReader:
    """Iterate the documents of one source; counts land in `stats`, progress in `counter`."""

    def __init__(
        self,
        src: SourceConfig,
        *,
        encoding_errors: str,
        max_docs: int | None = None,
        max_doc_bytes: int = 1 << 30,
        corrupt_files: str = "count",
        strict: bool = False,
    ) -> None:
        self.src = src
        self.skip_invalid = encoding_errors == "skip"
        self.max_docs = max_docs
        self.max_doc_bytes = max_doc_bytes
        self.fail_on_corrupt = corrupt_files == "fail"
        self.strict = strict  # a bad record (malformed, over-long line) raises DataError instead of being counted
        self.stats = ReadStats()
        self.counter = ByteCounter()
        self.files = resolve_files(src)

    def total_bytes(self) -> int:
        total = 0
        for f in self.files:
            try:
                total += f.stat().st_size
            except OSError:
                pass
        return total

    def __iter__(self) -> Iterator[RawDoc]:
        for path in self.files:
            if self.max_docs is not None and self.stats.docs_read >= self.max_docs:
                return
            self.stats.files += 1
            fmt, compression = detect(path, self.src)
            try:
                raw = _open_regular(path)
                if raw is None:
                    self.stats.non_regular_files += 1
                    self.stats.problem(f"{path}: not a regular file (a FIFO, device or socket), skipped")
                    continue
                with raw:
                    self.counter._raw = raw
                    yield from self._read_file(path, raw, fmt, compression)
                if compression == "zstd" and zstd_truncated(path):
                    raise Truncated("the zstd stream ends inside a frame")
            except EOFError as exc:  # gzip / xz raise it at the cut; zstd is checked above
                self._corrupt(path, f"truncated {compression} file, documents after the cut are lost ({exc})")
            except _read_errors() as exc:
                if self.fail_on_corrupt and compression != "none":
                    self._corrupt(path, f"corrupt {compression} file ({exc.__class__.__name__}: {exc})")
                self.stats.unreadable_files += 1
                self.stats.problem(f"{path}: unreadable, skipped ({exc.__class__.__name__}: {exc})")
            finally:
                self.counter._raw = None
                try:
                    self.counter.done += path.stat().st_size
                except OSError:
                    pass

    def _corrupt(self, path: Path, why: str) -> None:
        if self.fail_on_corrupt:
            raise DataError(f"{path}: {why}; set prepare.corrupt_files: count to keep what is readable")
        self.stats.truncated_files += 1
        self.stats.problem(f"{path}: {why}")

    def _oversized(self, where: str, *, record: bool) -> None:
        """A document or line past max_doc_bytes. A JSONL line is a bad record (it cannot even be parsed,
        so strict ends the stage); a whole text file is one document too long, dropped like max_chars does."""
        why = f"{where}: longer than {self.max_doc_bytes} bytes (prepare.clean.max_chars)"
        if record and self.strict:
            raise DataError(f"{why}; {_STRICT_HINT}")
        self.stats.oversized_docs += 1
        self.stats.problem(f"{why}, skipped")

    def _malformed(self, where: str, why: str, skipped: str = "line") -> None:
        """A record that cannot be a document: counted and skipped, or the end of the stage under strict."""
        if self.strict:
            raise DataError(f"{where}: {why}; {_STRICT_HINT}")
        self.stats.malformed_records += 1
        self.stats.problem(f"{where}: {why}, {skipped} skipped")

    def _bomb(self, path: Path, limit: int) -> None:
        why = (f"inflates past {limit} bytes ({_MAX_INFLATE}x its size), taken for a decompression bomb; "
               "store Parquet uncompressed (its pages are compressed already)")  # fmt: skip
        if self.fail_on_corrupt:
            raise DataError(f"{path}: {why}")
        self.stats.oversized_files += 1
        self.stats.problem(f"{path}: {why}; skipped")

    def _take(self) -> bool:
        """Whether another document may be read (max_docs)."""
        return self.max_docs is None or self.stats.docs_read < self.max_docs

    def _decode(self, data: bytes, where: str) -> RawDoc | None:
        try:
            return RawDoc(data.decode("utf-8"), where)
        except UnicodeDecodeError as exc:
            self.stats.invalid_utf8_docs += 1
            if self.skip_invalid:
                self.stats.problem(f"{where}: invalid UTF-8 at byte {exc.start}, document skipped")
                return None
            self.stats.problem(f"{where}: invalid UTF-8 at byte {exc.start}, replaced with U+FFFD")
            return RawDoc(data.decode("utf-8", errors="replace"), where, invalid_utf8=True)

    def _emit(self, doc: RawDoc, nbytes: int | None = None) -> RawDoc:
        self.stats.docs_read += 1
        self.stats.bytes_read += len(doc.text.encode("utf-8")) if nbytes is None else nbytes
        return doc

    def _read_file(self, path: Path, raw: IO[bytes], fmt: str, compression: str) -> Iterator[RawDoc]:
        stream = _open_stream(raw, compression)
        if fmt == "parquet":
            if compression == "none":
                yield from self._read_parquet(path, stream)
                return
            limit = max(_SPOOL_FLOOR, _MAX_INFLATE * os.fstat(raw.fileno()).st_size)
            with tempfile.TemporaryFile() as spool:  # Parquet needs seeking: spool to disk, not memory
                while chunk := stream.read(1 << 20):
                    if spool.tell() + len(chunk) > limit:
                        self._bomb(path, limit)  # stops here: at most `limit` bytes were ever spooled
                        return
                    spool.write(chunk)
                spool.seek(0)
                yield from self._read_parquet(path, spool)
            return
        buffered = io.BufferedReader(stream) if compression == "zstd" else stream  # zstd reader lacks peek
        head = buffered.peek(_BINARY_PROBE)[:_BINARY_PROBE] if hasattr(buffered, "peek") else b""
        # A JSONL file opening with an object is text whatever follows: a NUL there is one bad record,
        # counted on its line, not a reason to drop every record of the file as binary.
        if b"\x00" in head and not (fmt == "jsonl" and head.lstrip().startswith(b"{")):
            self.stats.binary_files += 1
            self.stats.problem(f"{path}: binary file (NUL byte in the first {_BINARY_PROBE} bytes), skipped")
            return
        if fmt == "text":
            data = buffered.read(self.max_doc_bytes + 1)
            if len(data) > self.max_doc_bytes:
                self._oversized(str(path), record=False)  # the rest is never decompressed
                return
            doc = self._decode(data, str(path))
            if doc is not None and self._take():
                yield self._emit(doc)
            return
        yield from self._read_jsonl(path, buffered)

    def _lines(self, stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
        """(line number, line) with lines cut at max_doc_bytes: an over-long line comes as None."""
        lineno = 0
        while True:
            line = stream.readline(self.max_doc_bytes + 1)
            if not line:
                return
            lineno += 1
            if len(line) > self.max_doc_bytes and not line.endswith(b"\n"):
                while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # skip to the end of the line, a bounded piece at a time
                yield lineno, None
                continue
            yield lineno, line

    def _read_jsonl(self, path: Path, stream: IO[bytes]) -> Iterator[RawDoc]:
        field_name = self.src.text_field
        for lineno, line in self._lines(stream):
            if not self._take():
                return
            where = f"{path}:{lineno}"
            if line is None:
                self._oversized(where, record=True)
                continue
            if not line.strip():
                continue
            doc = self._decode(line, where)
            if doc is None:
                continue
            # Every failure of one line is that line's: an escaping exception would be taken for the
            # file's (the rest of the file dropped as unreadable) or end the stage in a traceback.
            try:
                record = parse_json(doc.text)
            except BadJson as exc:
                self._malformed(where, f"malformed JSON ({exc})")
                continue
            text = record.get(field_name) if isinstance(record, dict) else None
            if not isinstance(text, str):
                why = "missing" if not isinstance(record, dict) or field_name not in record else "not a string"
                self._malformed(where, f"field {field_name!r} {why}")
                continue
            try:
                nbytes = len(text.encode("utf-8"))
            except UnicodeEncodeError as exc:  # "\ud800": JSON escapes any code unit, UTF-8 refuses a lone surrogate
                self._malformed(where, f"field {field_name!r} holds a lone surrogate at character {exc.start}")
                continue
            yield self._emit(RawDoc(text, where, doc.invalid_utf8), nbytes)

    def _read_parquet(self, path: Path, stream: Any) -> Iterator[RawDoc]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(stream)
        column = self.src.text_field
        if column not in pf.schema_arrow.names:
            self._malformed(str(path), f"no column {column!r} (columns: {', '.join(pf.schema_arrow.names)})", "file")
            return
        row = 0
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            values = batch.column(0)
            # Strings come as bytes, decoded here: Arrow does not check UTF-8, so one bad value would
            # fail to_pylist() for its whole batch and the file's rest; _decode counts it alone.
            strings = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
            if strings:
                values = values.view(pa.large_binary() if pa.types.is_large_string(values.type) else pa.binary())
            for value in values.to_pylist():
                row += 1
                if not self._take():
                    return
                where = f"{path}:row {row}"
                if strings and value is not None:
                    doc = self._decode(value, where)
                    if doc is not None:
                        yield self._emit(doc, len(value))  # the bytes are at hand: no second encode
                    continue
                self._malformed(where, f"column {column!r} is {type(value).__name__}", "row")
