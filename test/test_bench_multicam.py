"""`bisenet-ros bench --cameras N`: a smoke run (tiny network, seconds) of N separate
single-camera processes against one batched process, and the figures it derives.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from bisenet_ros.benchmark_multicam import _ratios, _side_row, serve
from bisenet_ros.cli import main as cli_main
from bisenet_ros.scheduler import BatchScheduler


def test_bench_cameras_smoke(tmp_path, capsys) -> None:
    output = tmp_path / "multicam.json"
    code = cli_main(["bench", "--cameras", "2", "--variants", "bisenetv2", "--precisions", "fp32",
                     "--camera", "80x40", "--resolution", "64x32", "--rate", "20", "--settle", "0.5",
                     "--duration", "1.5", "--output", str(output), "--markdown", str(tmp_path / "multicam.md")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "CPU flags:" in printed
    report = json.loads(output.read_text())
    assert report["meta"]["cpu_flags"] is not None and len(report["meta"]["load_average_before_after"]) == 2
    (row,) = report["results"]
    assert (row["variant"], row["precision"], row["cameras"]) == ("bisenetv2", "fp32", 2)
    assert row["separate"]["processes"] == 2 and row["batched"]["processes"] == 1
    for side in ("separate", "batched"):
        figures = row[side]
        assert sorted(figures["per_camera"]) == ["camera0", "camera1"]
        assert figures["total_frames_per_s"] > 0 and figures["rss_mb_total"] > 50
        for camera in figures["per_camera"].values():
            assert camera["processed"] > 0 and camera["latency_p99_ms"] >= camera["latency_p50_ms"] > 0
            assert camera["received"] >= camera["processed"]
    # The batched side: one process (one engine) served both cameras, as checked above.
    assert row["batched"]["engines"] and row["frames_per_s_ratio"] > 0 and row["rss_ratio"] > 0
    assert "| bisenetv2 | fp32 | 2 | batched | 1 |" in (tmp_path / "multicam.md").read_text()
    assert cli_main(["bench", "--cameras", "two"]) == 2
    assert "expected camera counts" in capsys.readouterr().err
    assert cli_main(["bench", "--cameras", "2", "--backends", "torch"]) == 2


def test_serve_runs_the_newest_frame_of_every_camera_as_one_batch() -> None:
    calls = []

    class Engine:
        def segment_batch(self, frames, color_orders, outputs):
            calls.append(len(frames))
            time.sleep(0.02)
            return [None] * len(frames)

    scheduler = BatchScheduler(["a", "b", "c"])
    frames = [np.zeros((2, 2, 3), np.uint8)]
    finished = []
    now = time.monotonic()
    for _ in range(3):   # older frames of "a" are replaced by its newest
        scheduler.put("a", (0, now))
    scheduler.put("b", (0, now))
    scheduler.put("c", (0, now))
    end = now + 0.2
    worker = threading.Thread(target=serve, args=(Engine(), scheduler, frames, (now, end),
                                                  lambda camera, published, done: finished.append(camera)))
    worker.start()
    worker.join()
    assert calls == [3] and sorted(finished) == ["a", "b", "c"]
    assert scheduler.counters()["a"].replaced == 2


def test_side_figures_and_ratios() -> None:
    results = [{"cameras": {"a": {"processed": 10, "latency_ms": [100.0] * 10, "received": 40, "replaced": 30}},
                "rss_mb": 300.0, "peak_rss_mb": 320.0, "engine": "e"},
               {"cameras": {"b": {"processed": 30, "latency_ms": [float(v) for v in range(100, 130)],
                                  "received": 40, "replaced": 10}},
                "rss_mb": 300.0, "peak_rss_mb": 330.0, "engine": "e"}]
    side = _side_row(results, duration_s=10.0)
    assert side["total_frames_per_s"] == 4.0 and side["rss_mb_total"] == 600.0
    assert side["per_camera"]["a"]["share"] == 0.5 and side["per_camera"]["b"]["share"] == 1.5
    assert side["latency_p99_ms_worst"] == pytest.approx(np.percentile(range(100, 130), 99))
    batched = dict(side, total_frames_per_s=5.0, rss_mb_total=240.0)
    ratios = _ratios(side, batched)
    assert ratios["frames_per_s_ratio"] == 1.25 and ratios["rss_ratio"] == 0.4 and ratios["p99_ratio"] == 1.0


def test_gpu_runs_get_a_batch_dynamic_export_per_camera_count(tmp_path) -> None:
    # The batched side on a GPU runs one Run per batch: files made here, no GPU needed.
    from bisenet_ros.benchmark_multicam import MulticamOptions, _model_files
    from bisenet_ros.inference.export import read_onnx_info

    options = MulticamOptions(cameras=[2, 3], variants=["stdc1"], precisions=["fp32"], device="cuda",
                              network=(64, 32))
    files = _model_files("stdc1", options, str(tmp_path), print)
    assert sorted(files) == ["fp32", "fp32_batch2", "fp32_batch3"]
    assert (read_onnx_info(files["fp32"]).batch, read_onnx_info(files["fp32"]).max_batch) == (1, 1)
    for count in (2, 3):
        info = read_onnx_info(files[f"fp32_batch{count}"])
        assert (info.batch, info.max_batch, info.input_size) == (None, count, (64, 32))
        assert info.variant == "stdc1" and "confidence" in info.outputs
