"""What happens to camera frames before the node sees them: ROS-free checks of the DDS transport.

* :class:`FrameGapEstimator` estimates the camera's frame period from the header stamps of the
  messages that do arrive and counts the frames that never did (gaps much larger than that
  period). Large uncompressed images lost in the DDS layer (a socket receive buffer too small
  for a 6 MB frame; see ``docs/node.md``, "Large images and DDS") look exactly like this: at
  1080p with CycloneDDS's defaults four of five frames vanish before rclpy hands anything over,
  so the node's own ``frames_received`` cannot reveal them, only the stamps can.
* :func:`dds_config_problems` finds DDS configuration files named in the environment
  (``CYCLONEDDS_URI``, the Fast DDS profile variables) that do not exist, so the node can say so
  in one line at start instead of running with the defaults or failing inside the middleware.
"""
from __future__ import annotations

import os
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Deque, Mapping

__all__ = ["FrameGapEstimator", "GapReport", "DDS_DOCS", "dds_config_problems",
           "cyclonedds_uri_files"]

#: Where the fixes are explained (log lines point here).
DDS_DOCS = "docs/node.md#large-images-and-dds"


@dataclass(frozen=True)
class GapReport:
    """One gap between two received frames that hides frames lost upstream.

    Attributes:
        missing: estimated number of frames that never arrived between the two.
        gap_s: time between the two header stamps, in seconds.
        period_s: the camera's estimated frame period, in seconds.
    """

    missing: int
    gap_s: float
    period_s: float


class FrameGapEstimator:
    """Camera rate and frames lost before the node, from the header stamps of received frames.

    The camera period is estimated robustly even when most frames are lost: the intervals
    between received stamps are whole multiples of the period plus jitter, so a low quantile of
    the recent intervals gives a first guess, and each interval divided by its nearest whole
    multiple of that guess gives one period sample; the median of those is the estimate. With
    four of five frames lost at random, some consecutive frames still arrive and the estimate
    holds. An interval longer than ``gap_factor`` periods counts ``round(interval / period) - 1``
    missing frames.

    Not counted: unstamped frames (stamp 0), a stamp that goes backwards or repeats (bag looped,
    clock reset: the history restarts), and pauses longer than ``max_gap_s`` (a camera or bag
    that stopped is not a transport loss).

    Args:
        window: number of recent intervals the period is estimated from.
        min_intervals: intervals needed before any gap is counted (a warm-up).
        gap_factor: an interval counts as a gap above this many periods (jitter tolerance).
        max_gap_s: longer intervals are pauses, not losses; the history restarts after one.
    """

    def __init__(self, window: int = 60, min_intervals: int = 8, gap_factor: float = 1.6,
                 max_gap_s: float = 2.0) -> None:
        if min_intervals < 2 or window < min_intervals:
            raise ValueError("FrameGapEstimator needs 2 <= min_intervals <= window")
        self._intervals: Deque[int] = deque(maxlen=window)
        self._min_intervals = min_intervals
        self._gap_factor = gap_factor
        self._max_gap_ns = int(max_gap_s * 1e9)
        self._last_ns: int | None = None
        self._period_ns: float | None = None
        self._lock = threading.Lock()
        self.frames_missing = 0
        self.gaps = 0
        self._recent_missing = 0
        self._recent_seen = 0

    @property
    def period_s(self) -> float | None:
        """The estimated camera period in seconds (None during the warm-up)."""
        return None if self._period_ns is None else self._period_ns / 1e9

    @property
    def rate_hz(self) -> float | None:
        """The estimated camera rate in Hz (None during the warm-up)."""
        return None if self._period_ns is None else 1e9 / self._period_ns

    def _estimate_period(self) -> float | None:
        if len(self._intervals) < self._min_intervals:
            return None
        ordered = sorted(self._intervals)
        guess = ordered[len(ordered) // 10]  # 10th percentile: consecutive frames, some jitter
        samples = sorted(i / max(1, round(i / guess)) for i in ordered)
        return samples[len(samples) // 2]

    def observe(self, stamp_ns: int) -> GapReport | None:
        """Account for one received frame's header stamp (nanoseconds).

        Returns:
            A :class:`GapReport` when frames are missing just before this one, else None.
        """
        with self._lock:
            self._recent_seen += 1
            if stamp_ns <= 0:
                return None
            last, self._last_ns = self._last_ns, stamp_ns
            if last is None:
                return None
            interval = stamp_ns - last
            if interval <= 0 or interval > self._max_gap_ns:
                self._intervals.clear()  # the stream restarted: estimate afresh
                self._period_ns = None
                return None
            period = self._period_ns
            report = None
            if period is not None and interval > self._gap_factor * period:
                missing = max(1, round(interval / period) - 1)
                self.frames_missing += missing
                self._recent_missing += missing
                self.gaps += 1
                report = GapReport(missing, interval / 1e9, period / 1e9)
            self._intervals.append(interval)
            self._period_ns = self._estimate_period()
            return report

    def snapshot(self) -> dict[str, float | int | None]:
        """Values for ``/diagnostics``; ``recent_*`` count since the previous snapshot.

        Keys: ``camera_rate_hz`` (None during the warm-up), ``frames_lost_upstream`` (estimated
        frames that never reached the node), ``frame_gaps``, ``recent_lost_upstream`` and
        ``recent_arrival_ratio`` (received / (received + lost) since the last snapshot).
        """
        with self._lock:
            seen, missing = self._recent_seen, self._recent_missing
            self._recent_seen = self._recent_missing = 0
            return {
                "camera_rate_hz": self.rate_hz,
                "frames_lost_upstream": self.frames_missing,
                "frame_gaps": self.gaps,
                "recent_lost_upstream": missing,
                "recent_arrival_ratio": seen / (seen + missing) if seen + missing else None,
            }


# ---------------------------------------------------------------------------------------------
# DDS configuration named in the environment
# ---------------------------------------------------------------------------------------------

#: Environment variables holding one Fast DDS XML profile file path each (Fast DDS 2.x, ROS 2
#: Humble/Jazzy, reads the first; Fast DDS 3 the second).
FASTDDS_PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def _split_uri_list(value: str) -> list[str]:
    # CYCLONEDDS_URI is a comma-separated list of files (file://path or a plain path) and inline
    # XML fragments; a comma inside an XML element's text must not split, so track the element
    # depth: <Tag ...> opens, </Tag> and CycloneDDS's short </> close, <Tag/> does neither.
    items, depth, start = [], 0, 0
    for match in re.finditer(r"<(/?)[^<>]*?(/?)>|,", value):
        token = match.group(0)
        if token == ",":
            if depth == 0:
                items.append(value[start:match.start()])
                start = match.end()
        elif match.group(1):
            depth = max(0, depth - 1)
        elif not match.group(2):
            depth += 1
    items.append(value[start:])
    return [item.strip() for item in items if item.strip()]


def cyclonedds_uri_files(value: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The configuration files a ``CYCLONEDDS_URI`` value names (inline XML is skipped).

    ``${VAR}`` references are expanded as CycloneDDS does, from ``environ``.

    Args:
        value: the ``CYCLONEDDS_URI`` value, e.g. ``"file:///etc/dds.xml,<Tracing>...</>"``.
        environ: variables for the expansion (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    files = []
    for item in _split_uri_list(value):
        if item.startswith("<"):
            continue  # inline configuration
        item = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                      lambda m: env.get(m.group(1) or m.group(2), ""), item)
        if item.startswith("file://"):
            item = item[len("file://"):]
        files.append(item)
    return files


def dds_config_problems(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """One line per DDS configuration file named in the environment that does not exist.

    Args:
        environ: the environment to inspect (default ``os.environ``).

    Returns:
        ``(variable, message)`` pairs, the message naming the variable, the missing file and the
        fix; empty when all is well.
    """
    env = os.environ if environ is None else environ
    problems = []
    shipped = "$(ros2 pkg prefix bisenet_ros)/share/bisenet_ros/config"
    for path in cyclonedds_uri_files(env.get("CYCLONEDDS_URI", ""), env):
        if not os.path.isfile(path):
            problems.append(("CYCLONEDDS_URI",
                f"CYCLONEDDS_URI names {path!r}, which is not a readable file: CycloneDDS "
                f"cannot start with it. Fix the path (e.g. CYCLONEDDS_URI=file://{shipped}/"
                f"cyclonedds.xml) or unset CYCLONEDDS_URI; see {DDS_DOCS}"))
    for name in FASTDDS_PROFILE_VARIABLES:
        path = env.get(name, "")
        if path and not os.path.isfile(path):
            problems.append((name,
                f"{name} names {path!r}, which is not a readable file: Fast DDS reports an "
                f"error and runs with its defaults. Fix the path (e.g. {name}={shipped}/fastdds.xml) or "
                f"unset it; see {DDS_DOCS}"))
    return problems
