"""What happens to camera frames before the node sees them: ROS-free checks of the DDS transport.

* :class:`FrameGapEstimator` estimates the camera's frame period from the header stamps of the
  messages that do arrive (their common period grid) and bounds the frames that never did.
  Large uncompressed images lost in the DDS layer (a socket receive buffer too small for a 6 MB
  frame; see ``docs/node.md``, "Large images and DDS") look exactly like this: at 1080p with
  CycloneDDS's defaults 35 of 40 frames vanish before rclpy hands anything over, so the node's
  own ``frames_received`` cannot reveal them, only the stamps can.
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
from typing import Deque, Iterator, Mapping

__all__ = ["FrameGapEstimator", "GapReport", "LOSS_WARNING_FRACTION", "DDS_DOCS", "dds_config_problems",
           "cyclonedds_uri_files"]

#: Where the fixes are explained (log lines point here).
DDS_DOCS = "docs/node.md#large-images-and-dds"


@dataclass(frozen=True)
class GapReport:
    """Frames found missing when one frame arrived.

    Attributes:
        missing: estimated number of frames that never arrived (just before this one; with sparse
            arrivals, also in the earlier gaps the period was just inferred from).
        gap_s: time between this frame's header stamp and the previous one's, in seconds.
        period_s: the camera's estimated frame period, in seconds.
    """

    missing: int
    gap_s: float
    period_s: float


#: Warn when at least this fraction of the camera's recent frames never arrived.
LOSS_WARNING_FRACTION = 0.2


class FrameGapEstimator:
    """Camera rate and frames lost before the node, from the header stamps of received frames.

    The rule (a lower bound: frames are only counted where the stamps prove them missing):

    * **Period.** The stamps of a camera lie on a grid of its frame period T, so every interval
      between received stamps is a whole multiple of T plus jitter. T is the largest period that
      puts the recent intervals on one grid: first the robust estimate for dense arrivals (a low
      quantile of the intervals as a guess, then the median of each interval divided by its
      nearest multiple of the guess), else the approximate greatest common divisor of the
      intervals (the shortest interval divided by 1, 2, ... ``max_multiple``, refined, down to
      four times ``jitter_s``), accepted when all but a tenth of the intervals (all of them,
      below ten) sit within ``tolerance`` x T (at least ``jitter_s``) of a multiple. The largest
      such period is never shorter than the camera's, so the count below never exceeds the
      frames really lost.
    * **Lost frames.** An interval of k periods (k >= 2, above ``gap_factor`` periods) hides
      k - 1 frames. Dense arrivals (``min_intervals`` intervals before ``sparse_after_s`` of
      stamps): the first ``min_intervals`` intervals are a warm-up and not counted. Sparse arrivals
      (fewer intervals than that over ``sparse_after_s``, e.g. 5 of 40 frames of a 2.5 Hz camera):
      from 3 intervals that use at least two different multiples, the period is their approximate
      GCD and every interval seen so far is counted (re-counted whenever a new interval refines
      the period): nothing else would ever reveal those frames.
    * **Not loss.** Unstamped frames (stamp 0); a stamp that goes backwards or repeats (bag looped,
      clock reset); a pause longer than ``max_gap_s`` and ``pause_periods`` periods (a camera or
      bag that stopped; ``sparse_max_gap_s`` while the period is unknown); an interval off the
      period grid (more than ``phase_tolerance`` periods from a multiple: the camera's timing
      restarted, as when a driver changes its rate); in each case the history restarts. A camera
      that switches to a whole divisor of its rate on the same clock (10 Hz -> 5 Hz) looks like
      regular loss at first: ``rate_change_run`` equal multiples in a row right after
      consecutive frames are a new rate, and what they counted is taken back (the warning,
      :attr:`loss_warning`, needs 20% of the recent frames and ``rate_change_run`` frames lost,
      which the first gaps of a halved rate never reach). Replay speed does not matter: only
      header stamps are used, never arrival times.

    Args:
        window: number of recent intervals the period is estimated from.
        min_intervals: intervals of the warm-up with dense arrivals.
        gap_factor: an interval counts as a gap above this many periods (jitter tolerance).
        max_gap_s: intervals longer than this and than ``pause_periods`` periods are pauses.
        pause_periods: see ``max_gap_s``.
        sparse_after_s: stamp span after which few intervals are treated as sparse arrivals.
        sparse_max_gap_s: intervals longer than this are pauses while the period is unknown.
        tolerance: how far (in periods) an interval may sit from a multiple of the period.
        jitter_s: the least distance from a multiple still on the grid (stamp jitter of fast
            cameras), seconds.
        phase_tolerance: farther than this (in periods) from the grid is a timing restart.
        max_multiple: the largest divisor of the shortest interval tried for the period.
        rate_change_run: equal multiples in a row (after consecutive frames) that mean a new rate.
    """

    def __init__(self, window: int = 60, min_intervals: int = 8, gap_factor: float = 1.6,
                 max_gap_s: float = 2.0, *, pause_periods: int = 64, sparse_after_s: float = 2.0,
                 sparse_max_gap_s: float = 30.0, tolerance: float = 0.1, jitter_s: float = 0.005,
                 phase_tolerance: float = 0.35, max_multiple: int = 16,
                 rate_change_run: int = 3) -> None:
        if min_intervals < 2 or window < min_intervals:
            raise ValueError("FrameGapEstimator needs 2 <= min_intervals <= window")
        self._window = window
        self._min_intervals = min_intervals
        self._gap_factor = gap_factor
        self._max_gap_ns = int(max_gap_s * 1e9)
        self._pause_periods = pause_periods
        self._sparse_after_ns = int(sparse_after_s * 1e9)
        self._sparse_max_gap_ns = int(sparse_max_gap_s * 1e9)
        self._tolerance = tolerance
        self._jitter_ns = jitter_s * 1e9
        self._phase_tolerance = phase_tolerance
        self._max_multiple = max_multiple
        self._rate_change_run = rate_change_run
        self._lock = threading.Lock()
        self._last_ns: int | None = None
        self.frames_missing = 0
        self.gaps = 0
        self._recent_missing = 0
        self._recent_seen = 0
        self._restart()

    def _restart(self) -> None:
        # A new stretch of the stream: what was counted stays counted.
        self._intervals: Deque[int] = deque(maxlen=self._window)
        self._missing: Deque[int] = deque(maxlen=self._window)  # counted per interval
        self._period_ns: float | None = None
        self._counting = False
        self._sparse = False

    @property
    def period_s(self) -> float | None:
        """The estimated camera period in seconds (None while unknown)."""
        return None if self._period_ns is None else self._period_ns / 1e9

    @property
    def rate_hz(self) -> float | None:
        """The estimated camera rate in Hz (None while unknown)."""
        return None if self._period_ns is None else 1e9 / self._period_ns

    @property
    def recent_loss_fraction(self) -> float:
        """Frames lost / frames the camera sent, over the recent ``window`` intervals."""
        with self._lock:
            return self._loss_fraction()

    @property
    def loss_warning(self) -> bool:
        """Whether to warn: at least :data:`LOSS_WARNING_FRACTION` of the recent frames lost,
        and more frames than the first gaps of a camera halving its rate on the same clock
        count before they are recognised as its new rate (``rate_change_run`` - 1)."""
        with self._lock:
            return (self._loss_fraction() >= LOSS_WARNING_FRACTION
                    and sum(self._missing) >= self._rate_change_run)

    def _loss_fraction(self) -> float:
        lost = sum(self._missing)
        return lost / (lost + len(self._missing)) if self._missing else 0.0

    # -- period ---------------------------------------------------------------------------

    def _fits(self, period: float, needed: float) -> bool:
        if period <= 0:
            return False
        tolerance = max(self._tolerance * period, self._jitter_ns)
        on_grid = sum(1 for i in self._intervals
                      if abs(i - round(i / period) * period) <= tolerance)
        return on_grid >= needed

    def _estimate_period(self) -> float | None:
        n = len(self._intervals)
        if n < 3:
            return None
        needed = n if n < 10 else 0.9 * n
        # The first candidate that fits wins: the later ones are only computed when needed (this
        # runs for every received frame, in the subscription callback).
        return next((p for p in self._period_candidates() if self._fits(p, needed)), None)

    def _period_candidates(self) -> Iterator[float]:
        """Candidate periods, in the order they are tried (see the class docstring)."""
        intervals = self._intervals
        if len(intervals) >= self._min_intervals:
            ordered = sorted(intervals)
            guess = ordered[len(ordered) // 10]  # 10th percentile: consecutive frames, jitter
            samples = sorted(i / max(1, round(i / guess)) for i in ordered)
            yield samples[len(samples) // 2]
        shortest = min(intervals)
        for divisor in range(1, self._max_multiple + 1):
            first = shortest / divisor
            if first < 4 * self._jitter_ns:
                break  # the jitter allowance would put any interval on so fine a grid
            # refine on all intervals: each one divided by its nearest multiple of the guess
            samples = sorted(i / max(1, round(i / first)) for i in intervals)
            yield samples[len(samples) // 2]

    def _multiple(self, interval: int) -> int:
        assert self._period_ns is not None
        return max(1, round(interval / self._period_ns))

    def _off_grid(self, interval: int) -> bool:
        assert self._period_ns is not None
        ratio = interval / self._period_ns
        return ratio > self._gap_factor and abs(ratio - round(ratio)) > self._phase_tolerance

    # -- counting -------------------------------------------------------------------------

    def _count(self, missing: int, gaps: int) -> None:
        self.frames_missing += missing
        self._recent_missing += missing
        self.gaps += gaps

    def _recount(self) -> int:
        """Sparse arrivals: count every interval of this stretch with the current period;
        returns the change."""
        before = sum(self._missing)
        gaps_before = sum(1 for m in self._missing if m)
        counted = [self._multiple(i) - 1 if i > self._gap_factor * self._period_ns else 0
                   for i in self._intervals]
        self._missing = deque(counted, maxlen=self._window)
        self._count(sum(counted) - before, sum(1 for m in counted if m) - gaps_before)
        return sum(counted) - before

    def _take_back_rate_change(self) -> bool:
        """Equal multiples in a row right after consecutive frames are the camera's new rate:
        take back what they counted and start afresh from them; returns whether they were."""
        run = self._rate_change_run
        if self._period_ns is None or len(self._intervals) <= run:
            return False
        tail = [self._multiple(i) for i in list(self._intervals)[-run - 1:]]
        if tail[0] != 1 or tail[1] < 2 or any(k != tail[1] for k in tail[1:]):
            return False
        taken = list(self._missing)[-run:]
        self._count(-sum(taken), -sum(1 for m in taken if m))
        kept = list(self._intervals)[-run:]
        self._restart()
        self._intervals.extend(kept)
        self._missing.extend([0] * len(kept))
        return True

    def observe(self, stamp_ns: int) -> GapReport | None:
        """Account for one received frame's header stamp (nanoseconds).

        Returns:
            A :class:`GapReport` when frames were found missing, else None.
        """
        with self._lock:
            self._recent_seen += 1
            if stamp_ns <= 0:
                return None
            last, self._last_ns = self._last_ns, stamp_ns
            if last is None:
                return None
            interval = stamp_ns - last
            period = self._period_ns
            pause = (interval > max(self._max_gap_ns, self._pause_periods * period)
                     if period is not None else interval > self._sparse_max_gap_ns)
            restarted = (self._counting and not self._sparse and period is not None
                         and self._off_grid(interval))
            if interval <= 0 or pause or restarted:
                self._restart()  # the stream restarted (or changed its timing): start afresh
                return None
            missing = 0
            if (self._counting and not self._sparse and period is not None
                    and interval > self._gap_factor * period):
                missing = self._multiple(interval) - 1
                self._count(missing, 1)
            self._intervals.append(interval)
            self._missing.append(missing)
            self._period_ns = self._estimate_period()
            if not self._counting and self._period_ns is not None:
                if len(self._intervals) >= self._min_intervals:
                    self._counting = True  # dense arrivals: the warm-up is over
                elif sum(self._intervals) >= self._sparse_after_ns:
                    self._counting = self._sparse = True
            if self._sparse and self._period_ns is not None:
                if len(self._intervals) >= self._min_intervals:
                    self._sparse = False  # enough intervals: count one by one from here
                multiples = {self._multiple(i) for i in self._intervals}
                if len(multiples) >= 2:
                    # at least two different multiples pin the grid (equal ones: a slower camera)
                    missing = self._recount()
            if self._missing[-1] > 0 and self._take_back_rate_change():
                self._period_ns = self._estimate_period()  # a new rate, not loss
                return None
            if missing > 0:
                # The interval just counted can be the one that takes the recent intervals off
                # one grid (no period now): report the period the frames were counted with.
                period_ns = self._period_ns if self._period_ns is not None else period
                assert period_ns is not None  # missing > 0 is only ever counted with a period
                return GapReport(missing, interval / 1e9, period_ns / 1e9)
            return None

    def snapshot(self) -> dict[str, float | int | None]:
        """Values for ``/diagnostics``; ``recent_*`` count since the previous snapshot.

        Keys: ``camera_rate_hz`` (None while unknown), ``frames_lost_upstream`` (frames that never
        reached the node, a lower bound from the stamps), ``frame_gaps``, ``recent_lost_upstream``
        and ``recent_arrival_ratio`` (received / (received + lost) since the last snapshot).
        """
        with self._lock:
            # (a rate change taken back can make the recent count negative: nothing was lost)
            seen, missing = self._recent_seen, max(0, self._recent_missing)
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
