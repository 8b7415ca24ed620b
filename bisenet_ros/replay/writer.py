"""The output bag: the node's topics and types, written with ``rosbags`` (no ROS needed).

Topic names resolve the node's private names the way rclpy does: ``~/mask`` of a node
``segmentation`` in namespace ``/front`` is ``/front/segmentation/mask``. QoS
profiles recorded with each topic match the node's publishers (``label_info`` is
transient-local), so ``ros2 bag play`` offers them the way the live node does.

The ``rosbags`` sqlite3 writer holds a thread-bound ``sqlite3`` connection: an
:class:`OutputBag` must be opened, written and closed by one thread.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bisenet_ros.replay.bag import TopicInfo
from bisenet_ros.replay.messages import IMAGE, LABEL_INFO, serialize, typestore

# Output name -> message type, in the order the node declares its publishers.
OUTPUT_TYPES: dict[str, str] = {
    "mask": IMAGE,
    "color_mask": IMAGE,
    "overlay": IMAGE,
    "drivable_mask": IMAGE,
    "confidence": IMAGE,
    "label_info": LABEL_INFO,
}
STORAGES = ("mcap", "sqlite3")
DEFAULT_NODE_NAME = "segmentation"  # the node's default name (bisenet_ros/node.py)


class OutputExistsError(FileExistsError):
    """The output path exists and ``--overwrite`` was not given (or it is not a bag)."""


def resolve_topic(name: str, *, namespace: str = "", node_name: str = DEFAULT_NODE_NAME) -> str:
    """Fully qualified topic of the node's private name ``~/<name>``.

    Args:
        name: Output name, e.g. ``"mask"``.
        namespace: Node namespace, e.g. ``"/front"`` or ``"front"`` (empty: root).
        node_name: Node name.
    """
    parts = [p for p in namespace.strip("/").split("/") if p] + [node_name, name]
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
    if path.is_dir() and _looks_like_bag(path):
        shutil.rmtree(path)
        return path
    raise OutputExistsError(
        f"output {path} exists and is not a rosbag2 directory (no metadata.yaml/.mcap/.db3 only "
        "content); refusing to delete it even with --overwrite. Choose another path")


def _looks_like_bag(path: Path) -> bool:
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

    def topic(self, name: str) -> str:
        """Fully qualified topic for the output ``name``."""
        return resolve_topic(name, namespace=self.namespace, node_name=self.node_name)

    def open(self, outputs: list[str]) -> None:
        """Create the bag and declare the output topics (in ``outputs`` order)."""
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        writer.open()
        self._writer = writer
        store = typestore()
        for name in outputs:
            if name not in OUTPUT_TYPES:
                raise ValueError(f"unknown output {name!r}; expected one of {', '.join(OUTPUT_TYPES)}")
            latched = name == "label_info"
            # As the node's publishers: reliable keep-last 1; label_info also transient-local.
            self._connections[name] = writer.add_connection(
                self.topic(name), OUTPUT_TYPES[name], typestore=store,
                offered_qos_profiles=[_qos(latched=latched, depth=1)])
            self.counts[self.topic(name)] = 0

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

    def write(self, name: str, msg: Any, timestamp: int) -> None:
        """Serialize and write ``msg`` on output ``name`` at bag time ``timestamp`` (ns)."""
        self._writer.write(self._connections[name], int(timestamp), serialize(msg))
        self.counts[self.topic(name)] += 1

    def write_raw(self, topic: str, data: bytes | memoryview, timestamp: int) -> None:
        """Write an already serialized message on a copied topic."""
        self._writer.write(self._connections[topic], int(timestamp), data)
        self.counts[topic] += 1

    def close(self) -> None:
        """Write the index, footer and ``metadata.yaml``; the bag is complete afterwards."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
