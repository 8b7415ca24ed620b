"""The output bag: the node's topics and types, written with ``rosbags`` (no ROS needed).

Topic names resolve the node's private names the way rclpy does: ``~/mask`` of a node
``segmentation`` in namespace ``/front`` is ``/front/segmentation/mask``. QoS
profiles recorded with each topic match the node's publishers (``label_info`` is
transient-local), so ``ros2 bag play`` offers them the way the live node does.

The ``rosbags`` sqlite3 writer holds a thread-bound ``sqlite3`` connection: an
:class:`OutputBag` must be opened, written and closed by one thread.
"""
from __future__ import annotations

import functools
import shutil
import struct
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Any, Sequence

from bisenet_ros.replay.bag import TopicInfo
from bisenet_ros.replay.messages import (
    IMAGE, LABEL_INFO, OCCUPANCY_GRID, serialize, serialize_image_parts, typestore,
)

# Output name -> message type, in the order the node declares its publishers.
OUTPUT_TYPES: dict[str, str] = {
    "mask": IMAGE,
    "color_mask": IMAGE,
    "overlay": IMAGE,
    "drivable_mask": IMAGE,
    "confidence": IMAGE,
    "label_info": LABEL_INFO,
    "drivable_grid": OCCUPANCY_GRID,
}
STORAGES = ("mcap", "sqlite3")
DEFAULT_NODE_NAME = "segmentation"  # the node's default name (bisenet_ros/node.py)


# rosbags' MCAP writer closes a chunk once it holds more than this many bytes.
_CHUNK_LIMIT = 2**20
_MESSAGE_HEADER = struct.Struct("<BQHIQQ")  # opcode, record length, channel, sequence, times
_CHUNK_HEADER = struct.Struct("<BQQQQIIQ")  # opcode, length, start, end, size, crc, "", size


class _Parts:
    """A serialized message in pieces (head + pixel buffer), only for :class:`_McapStorage`."""

    __slots__ = ("parts", "size")

    def __init__(self, *parts: Any) -> None:
        self.parts = parts
        self.size = sum(memoryview(p).nbytes for p in parts)

    def join(self) -> bytes:
        return b"".join(self.parts)


@functools.lru_cache(maxsize=None)
def _mcap_writer_class() -> Any:
    """The ``rosbags`` writer with :class:`_McapStorage` (built on first use: lazy import)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.storage_mcap import McapWriter

    class _McapStorage(McapWriter):  # type: ignore[misc, valid-type]
        """rosbags' MCAP storage writer, writing big messages without copying them.

        rosbags builds each message record in a ``BytesIO``, copies it into the chunk's
        ``BytesIO``, and on closing the chunk (once it exceeds 1 MiB) copies the chunk again twice
        before the file write: five copies of every camera-sized image, each into freshly
        ``mmap``'d memory (page faults), 15-34 ms per 6 MB image here. A message that would close
        the chunk is written here straight to the file instead, with the pending chunk's bytes in
        front of it: the same chunk record, message index, chunk index and statistics, byte
        for byte, that rosbags writes (see test_replay). Uncompressed chunks only; anything
        else goes through rosbags unchanged.
        """

        # The rosbags internals relied on (checked; rosbags 0.11 has them).
        _ATTRS = ("bio", "chunk", "chunks", "compression", "channel_stats",
                  "message_start_time", "message_end_time")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            chunk = getattr(self, "chunk", None)
            self.direct = (all(hasattr(self, a) for a in self._ATTRS)
                           and isinstance(self.chunks, list)
                           and isinstance(getattr(chunk, "bio", None), BytesIO)
                           and isinstance(getattr(chunk, "msgs", None), dict))

        def write(self, connection: Any, timestamp: int, data: Any) -> None:
            parts = data.parts if isinstance(data, _Parts) else (data,)
            size = data.size if isinstance(data, _Parts) else memoryview(data).nbytes
            chunk = self.chunk
            pending = chunk.bio.tell() if self.direct else 0
            if not self.direct or self.compression or pending + 31 + size <= _CHUNK_LIMIT:
                if isinstance(data, _Parts):
                    data = data.join()
                super().write(connection, timestamp, data)
                return
            # As McapWriter.write ...
            self.message_start_time = min(timestamp, self.message_start_time)
            self.message_end_time = max(timestamp, self.message_end_time)
            self.channel_stats[connection.id] += 1
            chunk.message_start_time = min(timestamp, chunk.message_start_time)
            chunk.message_end_time = max(timestamp, chunk.message_end_time)
            chunk.msgs[connection.id].append((timestamp, pending))
            # ... then McapWriter.close_chunk, uncompressed, without building the chunk in memory.
            chunk_size = pending + 31 + size
            bio = self.bio
            chunk_start = bio.tell()
            bio.write(_CHUNK_HEADER.pack(0x06, 40 + chunk_size, chunk.message_start_time,
                                         chunk.message_end_time, chunk_size, 0, 0, chunk_size))
            with chunk.bio.getbuffer() as view:
                bio.write(view)
            bio.write(_MESSAGE_HEADER.pack(0x05, 22 + size, connection.id, 0, timestamp, timestamp))
            for part in parts:
                bio.write(part)
            chunk_end = bio.tell()
            offsets = []
            for cid, msgs in chunk.msgs.items():
                offsets.append((cid, bio.tell()))
                index = [struct.pack("<BQHI", 0x07, 6 + 16 * len(msgs), cid, 16 * len(msgs))]
                index += [struct.pack("<QQ", ts, offset) for ts, offset in msgs]
                bio.write(b"".join(index))
            rec = BytesIO()
            rec.write(struct.pack("<QQQQI", chunk.message_start_time, chunk.message_end_time,
                                  chunk_start, chunk_end - chunk_start, 10 * len(offsets)))
            for cid, offset in offsets:
                rec.write(struct.pack("<HQ", cid, offset))
            rec.write(struct.pack("<QIQQ", bio.tell() - chunk_end, 0, chunk_size, chunk_size))
            self.chunks.append(rec)
            self.chunk = type(chunk)(2**63 - 1, 0, BytesIO(), defaultdict(list))

    class _Writer(Writer):  # type: ignore[misc, valid-type]
        STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: _McapStorage}

    return _Writer


class OutputExistsError(FileExistsError):
    """The output path exists and ``--overwrite`` was not given (or it is not a bag)."""


def resolve_topic(name: str, *, namespace: str = "", node_name: str = DEFAULT_NODE_NAME,
                  camera: str = "") -> str:
    """Fully qualified topic of the node's private name ``~/<name>``.

    Args:
        name: Output name, e.g. ``"mask"``.
        namespace: Node namespace, e.g. ``"/front"`` or ``"front"`` (empty: root).
        node_name: Node name.
        camera: Camera of a multi-camera node: its outputs are ``<namespace>/<camera>/<node_name>/
            <name>``, the names ``multi_camera.launch.py`` gives one node per camera (empty: none).
    """
    parts = [p for p in f"{namespace}/{camera}".strip("/").split("/") if p] + [node_name, name]
    return "/" + "/".join(parts)


def prepare_output_path(path: str | Path, *, overwrite: bool) -> Path:
    """Check the output path; with ``overwrite`` remove an existing *bag* there.

    Raises:
        OutputExistsError: The path exists and overwrite is False, or it is something other
            than a rosbag2 bag (never deleted: a typo must not wipe a data folder).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return path
    if not overwrite:
        raise OutputExistsError(
            f"output {path} exists already; pass --overwrite to replace it, or choose another path")
    if path.is_dir() and _only_bag_files(path):
        shutil.rmtree(path)
        return path
    raise OutputExistsError(
        f"output {path} exists and is not a rosbag2 directory (no metadata.yaml/.mcap/.db3 only "
        "content); refusing to delete it even with --overwrite. Choose another path")


def _only_bag_files(path: Path) -> bool:
    # Stricter than replay.bag.looks_like_bag: nothing but bag files, so --overwrite never deletes data.
    entries = list(path.iterdir())
    if not entries:
        return True
    allowed = {".mcap", ".db3", ".yaml", ".zstd", ".db3-shm", ".db3-wal", ".db3-journal"}
    has_storage = any(e.suffix in (".mcap", ".db3") for e in entries)
    return has_storage and all(e.is_file() and e.suffix in allowed for e in entries)


def _qos(*, latched: bool, depth: int) -> Any:
    from rosbags.interfaces import (
        Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime,
    )

    zero = QosTime(0, 0)  # "default", i.e. infinite deadline / lifespan / lease
    return Qos(QosHistory.KEEP_LAST, depth, QosReliability.RELIABLE,
               QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


class OutputBag:
    """Writes the node's output topics (and optionally copies input topics) to a new bag.

    Args:
        path: Bag directory to create (must not exist: see :func:`prepare_output_path`).
        storage: ``"mcap"`` (default, ROS 2 Iron and later) or ``"sqlite3"`` (Humble's default).
        namespace: Namespace of the simulated node.
        node_name: Name of the simulated node.
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap", namespace: str = "",
                 node_name: str = DEFAULT_NODE_NAME) -> None:
        if storage not in STORAGES:
            raise ValueError(f"output storage {storage!r}: expected one of {', '.join(STORAGES)}")
        self.path = Path(path)
        self.storage = storage
        self.namespace = namespace
        self.node_name = node_name
        self.counts: dict[str, int] = {}
        self._writer: Any = None
        self._connections: dict[str, Any] = {}
        self._fast = False

    def topic(self, name: str, camera: str = "") -> str:
        """Fully qualified topic for the output ``name`` (of ``camera``, see :func:`resolve_topic`)."""
        return resolve_topic(name, namespace=self.namespace, node_name=self.node_name, camera=camera)

    def open(self, outputs: list[str], *, cameras: Sequence[str] = ("",),
             shared: Sequence[str] = ()) -> None:
        """Create the bag and declare the output topics (in ``outputs`` order, camera by camera).

        Args:
            outputs: Output names declared for each camera.
            cameras: Camera names (``""``: the single-camera node's topics).
            shared: Output names of the node itself, not of a camera (the fused grid).
        """
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        if plugin == StoragePlugin.MCAP:
            Writer = _mcap_writer_class()  # noqa: N806
        writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        writer.open()
        self._writer = writer
        # _Parts only where nothing but _McapStorage.write sees them (no per-message compression).
        from rosbags.rosbag2.enums import CompressionMode
        self._fast = (getattr(getattr(writer, "storage", None), "direct", False) is True
                      and getattr(writer, "compression_mode", None) == CompressionMode.NONE)
        store = typestore()
        declared = [(camera, name) for camera in cameras for name in outputs]
        for camera, name in declared + [("", name) for name in shared]:
            if name not in OUTPUT_TYPES:
                raise ValueError(f"unknown output {name!r}; expected one of {', '.join(OUTPUT_TYPES)}")
            latched = name == "label_info"
            # As the node's publishers: reliable keep-last 1; label_info also transient-local.
            connection = writer.add_connection(
                self.topic(name, camera), OUTPUT_TYPES[name], typestore=store,
                offered_qos_profiles=[_qos(latched=latched, depth=1)])
            self._connections[(camera, name)] = connection
            self.counts[connection.topic] = 0

    def add_copy_topic(self, info: TopicInfo) -> bool:
        """Declare an input topic to be copied through unchanged; False if its type is unknown.

        The input's own message definition is reused when the bag carries one, so types this
        typestore does not know (custom messages) are copied too.
        """
        assert self._writer is not None, "open() first"
        if info.name in self._connections:
            return True
        store = typestore()
        kwargs: dict[str, Any]
        if info.msgtype in store.types:
            kwargs = {"typestore": store}
        elif info.msgdef and info.digest:
            kwargs = {"msgdef": info.msgdef, "rihs01": info.digest}
        else:
            return False
        self._connections[info.name] = self._writer.add_connection(info.name, info.msgtype, **kwargs)
        self.counts[info.name] = 0
        return True

    def write(self, name: str, msg: Any, timestamp: int, camera: str = "") -> None:
        """Serialize and write ``msg`` on output ``name`` (of ``camera``) at bag time
        ``timestamp`` (ns)."""
        data: Any = None
        if self._fast:  # an image's pixels go to the MCAP file as they are, not copied
            parts = serialize_image_parts(msg)
            if parts is not None:
                data = _Parts(*parts)
        if data is None:
            data = serialize(msg)
        connection = self._connections[(camera, name)]
        self._writer.write(connection, int(timestamp), data)
        self.counts[connection.topic] += 1  # the topic's name, not built again per message

    def write_raw(self, topic: str, data: bytes | memoryview, timestamp: int) -> None:
        """Write an already serialized message on a copied topic."""
        self._writer.write(self._connections[topic], int(timestamp), data)
        self.counts[topic] += 1

    def close(self) -> None:
        """Write the index, footer and ``metadata.yaml``; the bag is complete afterwards."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
