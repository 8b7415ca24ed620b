"""Reading ROS 2 bags (sqlite3 and MCAP) without ROS, including damaged ones.

:class:`InputBag` opens a bag with the ``rosbags`` reader. When that reader refuses the bag or
fails part-way (a recording cut off by a crash or a full disk has no MCAP footer or summary, a
sqlite3 file may end mid-page, a directory may lack ``metadata.yaml``), it falls back to a
salvage reader that walks the storage files record by record and yields every message that can
still be read. Whatever was lost is described in :attr:`InputBag.damage`, so the caller can
finish the run and still exit non-zero with a clear message.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sqlite3
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from bisenet_ros.replay.messages import IMAGE, IMAGE_TYPES
from bisenet_ros.runtime import UserError

LOG = logging.getLogger(__name__)

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}


def looks_like_bag(path: str | os.PathLike[str] | Path) -> bool:
    """Whether ``path`` is something a rosbag2 reader could open: a ``.mcap``/``.db3`` file, or a
    folder with ``metadata.yaml`` or such files (a bag without metadata can be reindexed)."""
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").exists() or any(
            p.suffix in (".mcap", ".db3") for p in path.iterdir())
    return path.suffix in (".mcap", ".db3")


class BagError(RuntimeError, UserError):
    """The input bag cannot be used at all (missing, not a bag, no image topic, ...)."""


@dataclasses.dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag."""

    name: str
    msgtype: str
    count: int
    msgdef: str = ""
    msgdef_format: str = ""  # "ros2msg", "ros2idl" or "" (unknown)
    digest: str = ""


@dataclasses.dataclass(frozen=True)
class RawMessage:
    """A serialized message as stored in the bag."""

    topic: str
    msgtype: str
    timestamp: int  # bag (receive) time, ns
    data: bytes | memoryview


def detect_storage(path: str | Path) -> str:
    """Return ``"mcap"`` or ``"sqlite3"`` for a bag directory or storage file.

    Raises:
        BagError: The path does not exist or holds no rosbag2 storage file.
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"input bag {str(path)!r} does not exist")
    if path.is_dir():
        meta = path / "metadata.yaml"
        if meta.exists():
            try:
                import yaml

                info = yaml.safe_load(meta.read_text(encoding="utf-8"))
                storage = info["rosbag2_bagfile_information"]["storage_identifier"]
                if storage in ("mcap", "sqlite3"):
                    return str(storage)
            except Exception:  # a damaged metadata file: fall back to the files themselves
                pass
        files = storage_files(path)
        if not files:
            raise BagError(
                f"{path} holds no .mcap or .db3 file; expected a rosbag2 directory "
                "(as written by 'ros2 bag record -o DIR') or a single .mcap/.db3 file")
        return _storage_of_file(files[0])
    return _storage_of_file(path)


def _storage_of_file(path: Path) -> str:
    with path.open("rb") as stream:
        head = stream.read(16)
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite3"
    if path.suffix in STORAGE_SUFFIXES:
        return STORAGE_SUFFIXES[path.suffix]
    raise BagError(f"{path} is neither an MCAP nor a sqlite3 (.db3) rosbag2 file")


def storage_files(path: Path) -> list[Path]:
    """The storage files of a bag (a directory: its .mcap/.db3 files in split order)."""
    if path.is_file():
        return [path]
    meta = path / "metadata.yaml"
    if meta.exists():
        try:
            import yaml

            info = yaml.safe_load(meta.read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
            files = [path / Path(p).name for p in info["relative_file_paths"]]
            # A file-compressed bag lists 'x.mcap.zstd'; the salvage reader does not read those.
            return [f for f in files if f.exists() and f.suffix in STORAGE_SUFFIXES]
        except Exception:
            pass
    return sorted((p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES),
                  key=lambda p: _split_index(p))


def _split_index(path: Path) -> tuple[str, int]:
    # rosbag2 splits are named NAME_0.mcap, NAME_1.mcap, ...; sort them numerically.
    stem, _, idx = path.stem.rpartition("_")
    return (stem, int(idx)) if idx.isdigit() else (path.stem, -1)


class InputBag:
    """A rosbag2 bag opened for reading, tolerant of damage.

    Use as a context manager. :attr:`topics` lists the topics; :meth:`messages` yields raw
    messages in bag order; :attr:`damage` collects what could not be read.

    Args:
        path: A bag directory or a single ``.mcap``/``.db3`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.storage = detect_storage(self.path)
        self.damage: list[str] = []
        self.warnings: list[str] = []
        self.topics: dict[str, TopicInfo] = {}
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self._reader: Any = None
        self._salvage = False
        self._sqlite_files = _SqliteFiles()

    # -- opening -------------------------------------------------------------------------------
    def __enter__(self) -> "InputBag":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Open with the ``rosbags`` reader, or index the bag with the salvage reader."""
        from rosbags.rosbag2 import Reader

        target = self.path
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            # A recorder that did not shut down cleanly leaves no metadata.yaml; the storage
            # file itself may still be complete and indexed (MCAP) or intact (sqlite3).
            files = storage_files(self.path)
            if len(files) == 1:
                target = files[0]
                self.warnings.append(f"{self.path} has no metadata.yaml (recording not closed "
                                     "cleanly?); read its storage file directly. "
                                     "'ros2 bag reindex' can rebuild the metadata")
        try:
            reader = Reader(target)
            reader.open()
        except Exception as err:  # noqa: BLE001 - any failure means: try to salvage
            self.damage.append(f"the bag index could not be read ({_describe(err)}); "
                               "messages were recovered by scanning the storage files")
            self._open_salvage()
            return
        self._reader = reader
        for conn in reader.connections:
            previous = self.topics.get(conn.topic)
            count = conn.msgcount + (previous.count if previous else 0)
            self.topics[conn.topic] = TopicInfo(
                conn.topic, conn.msgtype, count, conn.msgdef.data,
                _msgdef_format(conn.msgdef.format), conn.digest)
        if reader.message_count:
            self.start_ns, self.end_ns = reader.start_time, reader.end_time

    def _open_salvage(self) -> None:
        self._salvage = True
        files = storage_files(self.path)
        if not files:
            raise BagError(f"{self.path}: no readable .mcap or .db3 file")
        # One pass to learn the topics and counts; the messages are read again by messages().
        for info in _salvage_topics(files, self.storage, self._sqlite_files):
            previous = self.topics.get(info.name)
            if previous is None or not previous.msgdef:
                self.topics[info.name] = dataclasses.replace(
                    info, count=info.count + (previous.count if previous else 0))
            else:
                self.topics[info.name] = dataclasses.replace(
                    previous, count=previous.count + info.count)

    def close(self) -> None:
        """Close the reader and remove any salvage copies."""
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001 - closing a damaged bag must not mask the run's result
                pass
            self._reader = None
        self._sqlite_files.cleanup()

    # -- queries -------------------------------------------------------------------------------
    def image_topics(self) -> list[TopicInfo]:
        """Topics of type sensor_msgs/Image or sensor_msgs/CompressedImage."""
        return [t for t in self.topics.values() if t.msgtype in IMAGE_TYPES]

    def pick_image_topic(self, requested: str | None, *, exclude: Iterable[str] = ()) -> TopicInfo:
        """The camera topic to replay: ``requested``, or the only image topic of the bag.

        Args:
            requested: Topic given with ``--image-topic`` (None: find it).
            exclude: Image topics that are not the camera (e.g. the ground-truth labels topic).

        Raises:
            BagError: With the list of image topics, when the choice is missing or ambiguous.
        """
        images = self.image_topics()
        listing = _listing(images) or "  (none)"
        if requested:
            info = self.topics.get(requested)
            if info is None:
                raise BagError(f"topic {requested!r} is not in {self.path}; image topics:\n{listing}")
            if info.msgtype not in IMAGE_TYPES:
                raise BagError(f"topic {requested!r} has type {info.msgtype}, expected "
                               f"sensor_msgs/msg/Image or CompressedImage; image topics:\n{listing}")
            return info
        candidates = [t for t in images if t.name not in set(exclude)]
        if len(candidates) == 1:
            return candidates[0]
        # One camera recorded both raw and through image_transport ("<topic>/compressed"):
        # take the raw one, which is lossless and needs no JPEG decoding.
        bases = {t.name[: -len("/compressed")] if t.name.endswith("/compressed") else t.name
                 for t in candidates}
        raw = [t for t in candidates if t.name in bases and t.msgtype == IMAGE]
        if len(bases) == 1 and len(raw) == 1:
            self.warnings.append(f"{raw[0].name} is recorded raw and compressed; replaying the raw "
                                 f"topic (use --image-topic {raw[0].name}/compressed for the other)")
            return raw[0]
        if not candidates:
            raise BagError(f"{self.path} has no sensor_msgs/Image or CompressedImage topic; "
                           f"topics:\n{_listing(list(self.topics.values())) or '  (none)'}")
        raise BagError(f"{self.path} has {len(candidates)} image topics; choose one with "
                       f"--image-topic:\n{_listing(candidates)}")

    # -- reading -------------------------------------------------------------------------------
    def messages(self, topics: Iterable[str]) -> Iterator[RawMessage]:
        """Yield the messages of ``topics`` in bag order; never raises for damaged data.

        A read failure part-way through switches to the salvage reader, which continues with
        the messages not yet yielded; every loss is appended to :attr:`damage`.
        """
        wanted = set(topics)
        seen: set[tuple[str, int]] = set()
        counts: dict[str, int] = {}
        if not self._salvage:
            assert self._reader is not None, "open() the bag first"
            conns = [c for c in self._reader.connections if c.topic in wanted]
            if not conns:  # rosbags reads every topic for an empty list: none of them is wanted
                return
            try:
                for conn, timestamp, data in self._reader.messages(connections=conns):
                    seen.add((conn.topic, timestamp))
                    counts[conn.topic] = counts.get(conn.topic, 0) + 1
                    yield RawMessage(conn.topic, conn.msgtype, timestamp, data)
                if not self._missing(wanted, counts):
                    return
                # Fewer messages than the bag's index announces: records inside a chunk were
                # damaged (rosbags' writer stores no chunk CRC, so nothing else notices).
            except GeneratorExit:
                raise
            except Exception as err:  # noqa: BLE001 - damaged storage: salvage the rest
                self.damage.append(f"reading stopped after {len(seen)} messages "
                                   f"({_describe(err)}); the rest was recovered by scanning")
        for message in _salvage_messages(storage_files(self.path), self.storage, wanted,
                                         self.damage, self._sqlite_files):
            key = (message.topic, message.timestamp)
            if key in seen:
                continue
            seen.add(key)
            counts[message.topic] = counts.get(message.topic, 0) + 1
            yield message
        for topic, (have, announced) in self._missing(wanted, counts).items():
            self.damage.append(f"{topic}: {announced - have} of {announced} messages listed in "
                               "the bag index could not be read")

    def _missing(self, wanted: set[str], counts: dict[str, int]) -> dict[str, tuple[int, int]]:
        """Topics that yielded fewer messages than the index announced: topic -> (read, listed)."""
        return {t: (counts.get(t, 0), self.topics[t].count) for t in wanted
                if t in self.topics and counts.get(t, 0) < self.topics[t].count}


def _listing(topics: list[TopicInfo]) -> str:
    return "\n".join(f"  {t.name}  [{t.msgtype}, {t.count} messages]" for t in topics)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _msgdef_format(fmt: Any) -> str:
    name = getattr(fmt, "name", str(fmt)).upper()
    return {"MSG": "ros2msg", "IDL": "ros2idl"}.get(name, "")


# ---------------------------------------------------------------------------------------------
# Salvage readers: walk the storage files record by record.
# ---------------------------------------------------------------------------------------------
def _salvage_topics(files: list[Path], storage: str, sqlite_files: _SqliteFiles) -> list[TopicInfo]:
    infos: dict[str, TopicInfo] = {}
    counts: dict[str, int] = {}
    for path in files:
        if storage == "mcap":
            scanner = _McapScanner(path, want=None, damage=[])
            for message in scanner:
                counts[message.topic] = counts.get(message.topic, 0) + 1
            for topic, info in scanner.topics().items():
                infos.setdefault(topic, info)
        else:
            for info in _sqlite_topics(path, sqlite_files):
                infos.setdefault(info.name, info)
                counts[info.name] = counts.get(info.name, 0) + info.count
    return [dataclasses.replace(info, count=counts.get(name, 0)) for name, info in infos.items()]


def _salvage_messages(files: list[Path], storage: str, wanted: set[str], damage: list[str],
                      sqlite_files: _SqliteFiles) -> Iterator[RawMessage]:
    for path in files:
        if storage == "mcap":
            yield from _McapScanner(path, want=wanted, damage=damage)
        else:
            yield from _sqlite_salvage(path, wanted, damage, sqlite_files)


class _McapScanner:
    """Sequential MCAP record reader that stops cleanly at the first unreadable byte.

    Only what the salvage needs: schema, channel, message and chunk records (chunks with
    ``""``, ``zstd`` or ``lz4`` compression; a chunk failing its CRC is skipped and reported).
    """

    def __init__(self, path: Path, *, want: set[str] | None, damage: list[str]) -> None:
        self.path = path
        self.want = want
        self.damage = damage
        self.schemas: dict[int, tuple[str, str, str]] = {}  # id -> (name, encoding, text)
        self.channels: dict[int, tuple[str, int]] = {}  # id -> (topic, schema id)

    def topics(self) -> dict[str, TopicInfo]:
        out = {}
        for topic, schema_id in self.channels.values():
            name, encoding, text = self.schemas.get(schema_id, ("", "", ""))
            out[topic] = TopicInfo(topic, name, 0, text, encoding if text else "")
        return out

    def __iter__(self) -> Iterator[RawMessage]:
        with self.path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if stream.read(8) != MCAP_MAGIC:
                self.damage.append(f"{self.path.name}: not an MCAP file (bad magic)")
                return
            while True:
                start = stream.tell()
                head = stream.read(9)
                if not head:
                    self.damage.append(f"{self.path.name}: file ends without an MCAP footer "
                                       f"(truncated at byte {start})")
                    return
                if len(head) < 9:
                    self.damage.append(f"{self.path.name}: truncated record at byte {start}")
                    return
                op, length = head[0], struct.unpack_from("<Q", head, 1)[0]
                # A garbage length (a corrupt or non-MCAP file) must not allocate exabytes:
                # read at most what the file still holds; the check below reports it.
                body = stream.read(min(length, max(size - stream.tell(), 0)))
                if len(body) < length:
                    self.damage.append(f"{self.path.name}: truncated record at byte {start} "
                                       f"(needs {length} bytes, {len(body)} left)")
                    if op == 0x06:
                        # A recorder killed mid-chunk leaves a partial chunk: its complete
                        # records are still readable (compressed ones by streaming).
                        try:
                            records = self._chunk_records(body, partial=True)
                        except Exception:  # noqa: BLE001 - nothing more to recover
                            return
                        yield from self._records(records, partial=True)
                    return
                if op == 0x02:  # footer: a complete file
                    return
                if op == 0x06:
                    try:
                        records = self._chunk_records(body)
                    except Exception as err:  # noqa: BLE001 - skip the damaged chunk only
                        self.damage.append(f"{self.path.name}: skipped a damaged chunk at byte "
                                           f"{start} ({_describe(err)})")
                        continue
                    yield from self._records(records)
                else:
                    message = self._record(op, body)
                    if message is not None:
                        yield message

    def _records(self, data: bytes, *, partial: bool = False) -> Iterator[RawMessage]:
        """The records of a chunk's data; resynchronises after a damaged stretch."""
        size = len(data)
        pos = 0
        reported = False
        while pos + 9 <= size:
            op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
            if self._plausible(data, pos, op, length):
                message = self._record(op, data[pos + 9:pos + 9 + length])
                if message is not None:
                    yield message
                pos += 9 + length
                continue
            if partial and op in _MCAP_OPS and pos + 9 + length > size:
                return  # the cut of a truncated chunk: nothing after it
            if not reported:
                self.damage.append(f"{self.path.name}: damaged records inside a chunk at offset "
                                   f"{pos}; resynchronised on the next intact message")
                reported = True
            resync = self._resync(data, pos + 1)
            if resync is None:
                return
            pos = resync

    def _plausible(self, data: bytes, pos: int, op: int, length: int) -> bool:
        if op not in _MCAP_OPS or pos + 9 + length > len(data):
            return False
        if op != 0x05:
            return True
        if length < 22:
            return False
        (cid,) = struct.unpack_from("<H", data, pos + 9)
        return cid in self.channels

    def _resync(self, data: bytes, start: int) -> int | None:
        # The next offset holding a plausible message record that is followed by another
        # plausible record or by the end of the chunk (two in a row rule out most false hits
        # inside image bytes).
        pos = data.find(b"\x05", start)
        while pos != -1 and pos + 9 <= len(data):
            length = struct.unpack_from("<Q", data, pos + 1)[0]
            if self._plausible(data, pos, 0x05, length):
                after = pos + 9 + length
                if after == len(data) or (after + 9 <= len(data) and self._plausible(
                        data, after, data[after], struct.unpack_from("<Q", data, after + 1)[0])):
                    return pos
            pos = data.find(b"\x05", pos + 1)
        return None

    def _record(self, op: int, body: bytes) -> RawMessage | None:
        if op == 0x03:  # schema
            (sid,) = struct.unpack_from("<H", body, 0)
            name, pos = _mcap_string(body, 2)
            encoding, pos = _mcap_string(body, pos)
            (size,) = struct.unpack_from("<I", body, pos)
            text = body[pos + 4:pos + 4 + size].decode("utf-8", "replace")
            self.schemas[sid] = (name, encoding, text)
        elif op == 0x04:  # channel
            cid, sid = struct.unpack_from("<HH", body, 0)
            topic, _ = _mcap_string(body, 4)
            self.channels[cid] = (topic, sid)
        elif op == 0x05:  # message
            cid, _seq, log_time = struct.unpack_from("<HIQ", body, 0)
            channel = self.channels.get(cid)
            if channel is None:
                return None
            topic, sid = channel
            if self.want is not None and topic not in self.want:
                return None
            msgtype = self.schemas.get(sid, ("",))[0]
            return RawMessage(topic, msgtype, log_time, body[22:])
        return None

    @staticmethod
    def _chunk_records(body: bytes, *, partial: bool = False) -> bytes:
        _start, _end, size, crc = struct.unpack_from("<QQQI", body, 0)
        compression, pos = _mcap_string(body, 28)
        (csize,) = struct.unpack_from("<Q", body, pos)
        data = body[pos + 8:pos + 8 + csize]
        if len(data) < csize and not partial:
            raise ValueError("chunk data shorter than declared")
        if compression == "zstd":
            try:
                from compression import zstd  # type: ignore[import-not-found]  # Python 3.14
            except ImportError:
                from backports import zstd  # type: ignore[no-redef]
            # The streaming decompressor returns whatever a partial frame holds.
            raw = zstd.ZstdDecompressor().decompress(data) if partial else zstd.decompress(data)
        elif compression == "lz4":
            import lz4.frame

            raw = (lz4.frame.LZ4FrameDecompressor().decompress(data) if partial
                   else lz4.frame.decompress(data))
        elif compression == "":
            raw = data
        else:
            raise ValueError(f"unsupported chunk compression {compression!r}")
        if partial:
            return raw
        if len(raw) != size:
            raise ValueError(f"chunk size {len(raw)} != declared {size}")
        if crc and zlib.crc32(raw) != crc:
            raise ValueError("chunk CRC mismatch")
        return raw


# Record opcodes that may appear inside a chunk (schema, channel, message) or between chunks.
_MCAP_OPS = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C,
                       0x0D, 0x0E, 0x0F})


def _mcap_string(body: bytes, pos: int) -> tuple[str, int]:
    (size,) = struct.unpack_from("<I", body, pos)
    return body[pos + 4:pos + 4 + size].decode("utf-8", "replace"), pos + 4 + size


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    # immutable=1: never write, never create a journal next to someone's recording.
    return sqlite3.connect(f"file:{path}?immutable=1", uri=True)


class _SqliteFiles:
    """Readable versions of damaged sqlite3 storage files, made at most once per file.

    SQLite rejects a whole file ("database disk image is malformed") when the page count in its
    header exceeds the file, which is what a recording cut off mid-write looks like. Such a file
    is copied, cut to whole pages and its header count set to match, so the rows on the
    surviving pages become readable again. Intact files are used in place (read-only).
    """

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._paths: dict[Path, Path] = {}

    def readable(self, path: Path) -> Path:
        if path not in self._paths:
            self._paths[path] = self._make(path)
        return self._paths[path]

    def _make(self, path: Path) -> Path:
        with path.open("rb") as stream:
            header = stream.read(100)
        if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
            return path
        (page_size,) = struct.unpack_from(">H", header, 16)
        page_size = 65536 if page_size == 1 else page_size
        (declared,) = struct.unpack_from(">I", header, 28)
        size = path.stat().st_size
        pages = size // page_size
        if declared <= pages and size % page_size == 0:
            return path
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="bisenet_salvage_")
        copy = Path(self._tmp.name) / path.name
        shutil.copyfile(path, copy)
        with copy.open("r+b") as stream:
            stream.truncate(pages * page_size)
            stream.seek(28)
            stream.write(struct.pack(">I", pages))
        return copy

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._paths.clear()


def _sqlite_topics(path: Path, files: _SqliteFiles) -> list[TopicInfo]:
    try:
        conn = _sqlite_connect(files.readable(path))
    except (OSError, sqlite3.Error):
        return []
    try:
        defs: dict[str, tuple[str, str]] = {}
        try:
            for name, encoding, text in conn.execute(
                    "SELECT topic_type, encoding, encoded_message_definition "
                    "FROM message_definitions"):
                defs[name] = (encoding, text)
        except sqlite3.Error:
            pass  # schema < 4: no definitions stored
        out = []
        for tid, name, msgtype in conn.execute("SELECT id, name, type FROM topics"):
            encoding, text = defs.get(msgtype, ("", ""))
            out.append(TopicInfo(name, msgtype, 0, text, encoding if text else ""))
        counts = _sqlite_counts(conn)
        return [dataclasses.replace(t, count=counts.get(i, 0))
                for i, t in zip(_topic_ids(conn), out)]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _topic_ids(conn: sqlite3.Connection) -> list[int]:
    return [tid for (tid,) in conn.execute("SELECT id FROM topics")]


def _sqlite_counts(conn: sqlite3.Connection) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _rowid, tid, _ts, _data in _sqlite_rows(conn, "topic_id", None):
        counts[tid] = counts.get(tid, 0) + 1
    return counts


def _sqlite_rows(conn: sqlite3.Connection, columns: str,
                 damage: list[str] | None) -> Iterator[tuple[int, int, int, Any]]:
    """Rows of the messages table by rowid, probing past pages that cannot be read."""
    select = ("SELECT id, topic_id, timestamp, data" if columns == "all"
              else "SELECT id, topic_id, 0, NULL")
    last = 0
    misses = 0
    while True:
        try:
            for row in conn.execute(f"{select} FROM messages WHERE id > ? ORDER BY id", (last,)):
                last = row[0]
                misses = 0
                yield row
            return
        except sqlite3.Error as err:
            # One unreadable page holds a run of rows: probe ahead 1, 2, 4, ... rows.
            if misses == 0 and damage is not None:
                damage.append(f"rows after message id {last} are damaged or missing ({err})")
            if misses > 24:
                return
            last += 2 ** misses
            misses += 1


def _sqlite_salvage(path: Path, wanted: set[str], damage: list[str],
                    files: _SqliteFiles) -> Iterator[RawMessage]:
    """Every readable message of a damaged sqlite3 storage file, in rowid order."""
    try:
        conn = _sqlite_connect(files.readable(path))
        topics = {tid: (name, msgtype) for tid, name, msgtype in
                  conn.execute("SELECT id, name, type FROM topics")}
    except (OSError, sqlite3.Error) as err:
        damage.append(f"{path.name}: the topics table cannot be read ({err})")
        return
    try:
        wanted_ids = {tid for tid, (name, _) in topics.items() if name in wanted}
        local: list[str] = []
        for _rowid, tid, timestamp, data in _sqlite_rows(conn, "all", local):
            if tid in wanted_ids:
                name, msgtype = topics[tid]
                yield RawMessage(name, msgtype, int(timestamp), data)
        damage.extend(f"{path.name}: {text}" for text in local)
    finally:
        conn.close()
