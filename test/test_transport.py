"""Frames lost before the node (camera header stamp gaps) and DDS configuration files named in the
environment: ``bisenet_ros.transport``, driven with stamp sequences."""
from __future__ import annotations

import numpy as np
import pytest

from bisenet_ros.outputs import WARN, diagnostic_level, diagnostic_values
from bisenet_ros.transport import (
    FrameGapEstimator, cyclonedds_uri_files, dds_config_problems)

PERIOD_NS = 33_333_333  # a 30 Hz camera
T0 = 1_700_000_000 * 10**9


def _feed(estimator: FrameGapEstimator, frame_indices: list[int], jitter_ns: np.ndarray | None = None,
          period_ns: int = PERIOD_NS) -> list:
    reports = []
    for k, index in enumerate(frame_indices):
        stamp = T0 + index * period_ns + (0 if jitter_ns is None else int(jitter_ns[k]))
        reports.append(estimator.observe(stamp))
    return reports


def test_every_frame_received_counts_nothing_and_finds_the_rate() -> None:
    est = FrameGapEstimator()
    jitter = np.random.default_rng(0).normal(0, 1.5e6, 200)  # 1.5 ms driver jitter
    reports = _feed(est, list(range(200)), jitter)
    assert all(r is None for r in reports)
    assert est.frames_missing == 0 and est.gaps == 0
    assert est.rate_hz == pytest.approx(30.0, rel=0.02)


def test_four_of_five_frames_lost_at_random_are_counted() -> None:
    # The 1080p case of issue 10: 8 of 40 arrive. Here 20% of 400 frames arrive, at random.
    rng = np.random.default_rng(1)
    kept = sorted(rng.choice(400, size=80, replace=False).tolist())
    est = FrameGapEstimator()
    reports = _feed(est, kept, rng.normal(0, 1e6, len(kept)))
    assert est.rate_hz == pytest.approx(30.0, rel=0.05)
    # Counted only after the warm-up: what was lost after the 9th received frame.
    truly_lost = (kept[-1] - kept[8]) - (len(kept) - 9)
    assert est.frames_missing == pytest.approx(truly_lost, rel=0.05)
    assert est.gaps == sum(r is not None for r in reports) > 30
    snap = est.snapshot()
    assert snap["frames_lost_upstream"] == est.frames_missing
    assert snap["recent_arrival_ratio"] == pytest.approx(0.2, abs=0.05)
    assert est.snapshot()["recent_lost_upstream"] == 0  # "recent" restarts at each snapshot


def test_one_gap_reports_the_missing_frames_and_the_period() -> None:
    est = FrameGapEstimator()
    _feed(est, list(range(20)))
    report = est.observe(T0 + 24 * PERIOD_NS)  # frames 20..23 lost
    assert report is not None and report.missing == 4
    assert report.period_s == pytest.approx(PERIOD_NS / 1e9, rel=1e-3)
    assert report.gap_s == pytest.approx(5 * PERIOD_NS / 1e9)


@pytest.mark.parametrize("stamps", [
    [0] * 30,                                                     # driver without stamps
    [T0 + i * PERIOD_NS for i in range(20)] * 2,                  # bag played in a loop
    [T0 + i * PERIOD_NS for i in range(20)] + [T0 + 20 * PERIOD_NS + 10**10 + i * PERIOD_NS
                                               for i in range(20)],  # camera paused 10 s
    [T0 + i * PERIOD_NS for i in range(5)] + [T0 + 30 * PERIOD_NS],  # a gap during the warm-up
])
def test_no_false_losses(stamps: list[int]) -> None:
    est = FrameGapEstimator()
    for stamp in stamps:
        assert est.observe(stamp) is None
    assert est.frames_missing == 0


def test_diagnostics_report_the_losses_and_warn() -> None:
    est = FrameGapEstimator()
    _feed(est, list(range(20)) + list(range(30, 40)))
    stats = {"frames_received": 30, "recent": {}, **est.snapshot()}
    values = dict(diagnostic_values(stats))
    assert values["frames_lost_upstream"] == "10" and values["frame_gaps"] == "1"
    assert values["camera_rate_hz"] == "30.00"
    level, message = diagnostic_level(stats)
    assert level == WARN and "lost before the node" in message and "docs/node.md" in message


def test_cyclonedds_uri_entries(tmp_path) -> None:
    config = tmp_path / "dds.xml"
    config.write_text("<CycloneDDS/>")
    value = (f"file://{config}, <Internal><SocketReceiveBufferSize min=\"4MB\"/></Internal>,"
             f"${{CFG_DIR}}/other.xml,<Tracing><Category>a,b</Category></Tracing>")
    assert cyclonedds_uri_files(value, {"CFG_DIR": "/etc/dds"}) == [str(config), "/etc/dds/other.xml"]
    assert dds_config_problems({"CYCLONEDDS_URI": f"file://{config}"}) == []
    assert dds_config_problems({"CYCLONEDDS_URI": "<Internal></Internal>"}) == []
    problems = dds_config_problems({"CYCLONEDDS_URI": f"file://{tmp_path}/missing.xml",
                                    "FASTRTPS_DEFAULT_PROFILES_FILE": str(config)})
    assert len(problems) == 1
    variable, line = problems[0]
    assert variable == "CYCLONEDDS_URI" and "missing.xml" in line and "\n" not in line
    assert "cyclonedds.xml" in line  # names the fix
    (variable, line), = dds_config_problems({"FASTRTPS_DEFAULT_PROFILES_FILE": "/nope.xml"})
    assert variable == "FASTRTPS_DEFAULT_PROFILES_FILE" and "/nope.xml" in line
