"""Several cameras on one machine: N separate single-camera processes against one batched process
(``bisenet-ros bench --cameras N``, ``benchmarks/bench_multicam.py``).

For each variant x precision x camera count N, in one run and on the same generated frames:

- **separate**: N processes side by side, each a single-camera pipeline (newest frame -> engine,
  as ``multi_camera.launch.py mode:=separate`` runs one node per camera), with the cores split
  fairly: ``num_threads = max(1, cores // N)`` each;
- **batched**: one process serving all N cameras: :class:`bisenet_ros.scheduler.BatchScheduler`
  (newest frame per camera, round-robin, no sync barrier) -> :meth:`Segmenter.segment_batch`
  on all cores, as the batched node does.

Every camera publishes generated frames at the same rate, above what the machine can process
(saturation), from a thread in the process that serves it. After ``settle_s`` (warm-up, arenas
grown) every process counts, for ``duration_s``, the frames it finishes: total processed
frames/s, per-camera latency (publication to result, p50/p99), the processed-frame share per
camera (its count / the mean count), and RSS (current and peak, summed over the processes).
Both sides run the same code path (:func:`serve`): a separate process is a scheduler with one
camera, whose batches of one take the engine's single-frame path.

Each child process prints one JSON line ("ready") once its engine is built and warmed up, waits
for "go" on stdin so that all processes of a side start publishing together, and prints its
figures as a last JSON line.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

NUM_FRAMES = 4  # distinct generated frames per camera, cycled
READY_TIMEOUT_S = 600.0
#: What each frame computes besides the labels: the drivable mask (what the surround grid needs).
OUTPUTS = ("drivable",)


@dataclass
class MulticamOptions:
    """What ``bisenet-ros bench --cameras`` measures.

    Attributes:
        cameras: Camera counts N to compare at.
        variants: Model variants.
        precisions: ``fp32`` and/or ``int8`` (a static QDQ file: ``int8`` or quantized on the fly);
            on a GPU ``fp32``, and on TensorRT ``fp16`` (built from the fp32 file).
        backend: ``onnxruntime`` or ``openvino`` (each process runs the exported file).
        device: ``cpu``; or ``cuda``/``tensorrt`` (onnxruntime), where the batched side runs a
            ``--batch dynamic`` export (max batch N) as one run per batch and the separate side
            the batch-1 file, one engine per process (``benchmarks/gpu_check.sh``).
        weights: ``.pth`` checkpoint for a single variant (exported here); None = random weights.
        int8: An int8 ``.onnx`` for a single variant; None = quantize on generated frames.
        camera: Camera frame ``(width, height)``, pixels.
        network: Network input ``(width, height)``, pixels.
        rate_hz: Frames per second each camera publishes (the same for all; pick it above what
            the machine can process, so that both sides are saturated).
        settle_s: Seconds of publishing before counting starts (warm-up).
        duration_s: Seconds counted.
        rounds: Repetitions of every comparison, the side that runs first alternating.
    """

    cameras: list[int] = field(default_factory=lambda: [2, 4])
    variants: list[str] = field(default_factory=lambda: ["stdc1", "bisenetv2"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    backend: str = "onnxruntime"
    device: str = "cpu"
    weights: str | None = None
    int8: str | None = None
    camera: tuple[int, int] = (1024, 512)
    network: tuple[int, int] = (1024, 512)
    rate_hz: float = 10.0
    settle_s: float = 5.0
    duration_s: float = 20.0
    rounds: int = 1

    def __post_init__(self) -> None:
        if not self.cameras or min(self.cameras) < 1:
            raise ValueError(f"cameras={self.cameras}: expected camera counts >= 1, e.g. 2,4")
        if self.backend not in ("onnxruntime", "openvino"):
            raise ValueError(f"backend={self.backend!r}: the multi-camera bench runs onnxruntime or openvino "
                             "(torch cannot run single-thread executions side by side in one process)")
        # GPUs: fp32, and fp16 on TensorRT (int8 there needs symmetric activations: bisenet-ros quantize).
        allowed = {"fp32", "int8"} if self.device == "cpu" else {"fp32"} | (
            {"fp16"} if self.device == "tensorrt" else set())
        unknown = sorted(set(self.precisions) - allowed)
        if unknown:
            raise ValueError(f"precisions {unknown}: the multi-camera bench compares {', '.join(sorted(allowed))} "
                             f"on device {self.device}")
        if self.device != "cpu" and self.backend != "onnxruntime":
            raise ValueError(f"device={self.device!r}: the multi-camera bench runs GPUs through onnxruntime")
        if (self.weights or self.int8) and len(self.variants) > 1:
            raise ValueError("weights/int8: a file belongs to one variant; benchmark a single variant with it")
        if self.rate_hz <= 0 or self.duration_s <= 0 or self.settle_s < 0 or self.rounds < 1:
            raise ValueError(f"rate_hz={self.rate_hz}, duration_s={self.duration_s}, settle_s={self.settle_s}, "
                             f"rounds={self.rounds}: expected a positive rate and duration, settle >= 0, rounds >= 1")


# ----------------------------------------------------------------------------- one process

def serve(engine: Any, scheduler: Any, frames: Sequence[np.ndarray], window: tuple[float, float],
          on_result: Callable[[str, float, float], None]) -> None:
    """Run batches from ``scheduler`` through ``engine`` until the window closes.

    The one place the benchmark schedules: the newest frame of every camera with a new one
    (:meth:`BatchScheduler.next_batch`) as one :meth:`Segmenter.segment_batch` call.

    Args:
        engine: A :class:`~bisenet_ros.inference.Segmenter`.
        scheduler: A :class:`~bisenet_ros.scheduler.BatchScheduler` whose items are
            ``(frame index, publication time.monotonic())``.
        frames: The frames the indices refer to.
        window: ``(start, end)`` in ``time.monotonic()`` seconds; serving stops at ``end``.
        on_result: Called per finished frame with ``(camera, published, finished)``.
    """
    while time.monotonic() < window[1]:
        batch = scheduler.next_batch(timeout=0.05)
        if batch is None or not batch.frames:
            continue
        images = [frames[frame.item[0]] for frame in batch.frames]
        engine.segment_batch(images, "bgr", outputs=OUTPUTS)
        finished = time.monotonic()
        for frame in batch.frames:
            on_result(frame.camera, frame.item[1], finished)


def _publish(scheduler: Any, camera: str, first_frame: int, frame_count: int, start: float, end: float,
             rate_hz: float) -> None:
    # A camera: a new frame every 1/rate s (no catching up after a stall, like a real driver).
    period = 1.0 / rate_hz
    tick, index = start, first_frame
    while tick < end:
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        scheduler.put(camera, (index % frame_count, time.monotonic()))
        index += 1
        tick = max(tick + period, time.monotonic() - period)


def _child(spec: dict[str, Any]) -> int:
    """A child process: one engine serving ``spec["cameras"]``; prints "ready", waits for "go",
    publishes and serves, prints its figures."""
    from bisenet_ros.benchmark import _memory_mb
    from bisenet_ros.inference import Segmenter
    from bisenet_ros.inference.frames import street_frame
    from bisenet_ros.scheduler import BatchScheduler

    cameras = list(spec["cameras"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = Segmenter(weights=spec["weights"], backend=spec["backend"], precision=spec["precision"],
                           device=spec["device"], trt_cache_dir=spec["trt_cache_dir"],
                           resolution=tuple(spec["network"]), num_threads=spec["num_threads"])
    width, height = spec["camera"]
    frames = [street_frame(width, height, seed=i) for i in range(NUM_FRAMES)]
    # Warm-up: the single-frame path, and the batch path (built on the first batch).
    engine.segment_batch(frames[:1], "bgr", outputs=OUTPUTS)
    if len(cameras) > 1:
        engine.segment_batch([frames[i % NUM_FRAMES] for i in range(len(cameras))], "bgr", outputs=OUTPUTS)
    print(json.dumps({"ready": True, "engine": engine.provenance()["runtime"]}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    start = time.monotonic()
    window = (start + spec["settle_s"], start + spec["settle_s"] + spec["duration_s"])
    scheduler = BatchScheduler(cameras)
    rate, total_cameras = spec["rate_hz"], spec["total_cameras"]
    publishers = []
    for camera, position in zip(cameras, spec["positions"]):
        # Cameras are spread over one period (as unsynchronised cameras are), the same way on both sides.
        phase = start + position / (rate * total_cameras)
        thread = threading.Thread(target=_publish, args=(scheduler, camera, position, NUM_FRAMES, phase, window[1], rate),
                                  daemon=True)
        thread.start()
        publishers.append(thread)
    latencies: dict[str, list[float]] = {camera: [] for camera in cameras}

    def on_result(camera: str, published: float, finished: float) -> None:
        if window[0] <= finished <= window[1]:
            latencies[camera].append((finished - published) * 1e3)

    serve(engine, scheduler, frames, window, on_result)
    scheduler.close()
    for thread in publishers:
        thread.join()
    counters = scheduler.counters()
    out = {"cameras": {camera: {"processed": len(latencies[camera]), "latency_ms": latencies[camera],
                                "received": counters[camera].received, "replaced": counters[camera].replaced}
                       for camera in cameras},
           **_memory_mb()}
    print(json.dumps(out), flush=True)
    return 0


# ----------------------------------------------------------------------------- the run

def _run_side(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start one child per spec, start them together once all are ready, collect their figures."""
    from bisenet_ros.benchmark import _worker_env

    procs = [subprocess.Popen([sys.executable, "-m", "bisenet_ros.benchmark_multicam", json.dumps(spec)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_worker_env()) for spec in specs]
    try:
        engines = []
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""   # "ready" (blocks until built)
            if not line.startswith("{"):
                raise RuntimeError(f"bench child failed: {_tail(proc)}")
            engines.append(json.loads(line)["engine"])
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc, engine in zip(procs, engines):
            out, err = proc.communicate(timeout=READY_TIMEOUT_S)
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"bench child failed (exit {proc.returncode}): "
                                   f"{(err.strip().splitlines() or ['no output'])[-1]}")
            results.append({**json.loads(lines[-1]), "engine": engine})
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _tail(proc: subprocess.Popen) -> str:
    proc.kill()
    _, err = proc.communicate()
    return (err.strip().splitlines() or ["no output"])[-1]


def _percentile(samples: list[float], q: float) -> float | None:
    return float(np.percentile(samples, q)) if samples else None


def _side_row(results: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    cameras = {name: figures for result in results for name, figures in result["cameras"].items()}
    counts = [figures["processed"] for figures in cameras.values()]
    mean = statistics.fmean(counts) if counts else 0.0
    per_camera = {
        name: {"processed": figures["processed"], "frames_per_s": figures["processed"] / duration_s,
               "share": figures["processed"] / mean if mean else None,
               "latency_p50_ms": _percentile(figures["latency_ms"], 50),
               "latency_p99_ms": _percentile(figures["latency_ms"], 99),
               "received": figures["received"], "replaced": figures["replaced"]}
        for name, figures in cameras.items()}
    shares = [c["share"] for c in per_camera.values() if c["share"] is not None]
    p99 = [c["latency_p99_ms"] for c in per_camera.values() if c["latency_p99_ms"] is not None]
    p50 = [c["latency_p50_ms"] for c in per_camera.values() if c["latency_p50_ms"] is not None]
    return {
        "processes": len(results), "engines": sorted({r["engine"] for r in results}),
        "total_frames_per_s": sum(counts) / duration_s, "per_camera": per_camera,
        "share_min": min(shares) if shares else None, "share_max": max(shares) if shares else None,
        "latency_p50_ms_median": statistics.median(p50) if p50 else None,
        "latency_p99_ms_worst": max(p99) if p99 else None,
        "rss_mb_total": sum(r["rss_mb"] for r in results),
        "peak_rss_mb_total": sum(r["peak_rss_mb"] for r in results),
    }


def _specs(mode: str, count: int, files: dict[str, str], precision: str, options: MulticamOptions,
           directory: str) -> list[dict[str, Any]]:
    from bisenet_ros.runtime import available_cores

    source = "int8" if precision == "int8" else "fp32"   # fp16: TensorRT builds it from the fp32 file
    if mode == "batched" and options.device != "cpu":
        source += f"_batch{count}"
    base = {"weights": files[source], "backend": options.backend, "precision": precision,
            "device": options.device, "trt_cache_dir": os.path.join(directory, "tensorrt"),
            "network": list(options.network), "camera": list(options.camera), "rate_hz": options.rate_hz,
            "settle_s": options.settle_s, "duration_s": options.duration_s, "total_cameras": count}
    names = [f"camera{i}" for i in range(count)]
    if mode == "batched":
        return [{**base, "cameras": names, "positions": list(range(count)), "num_threads": 0}]
    threads = max(1, available_cores() // count)   # the cores split fairly
    return [{**base, "cameras": [name], "positions": [i], "num_threads": threads} for i, name in enumerate(names)]


def _model_files(variant: str, options: MulticamOptions, directory: str,
                 log: Callable[..., None]) -> dict[str, str]:
    from bisenet_ros.benchmark import BenchOptions, _export, _quantize, _random_checkpoint
    from bisenet_ros.config import SegmenterConfig
    from bisenet_ros.inference.segmenter import export_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weights = options.weights or _random_checkpoint(variant, directory)
        files = {"fp32": _export(weights, variant, options.network, directory)}
        if "int8" in options.precisions:
            if options.int8:
                files["int8"] = options.int8
            else:
                start = time.perf_counter()
                files["int8"] = _quantize(files["fp32"], BenchOptions(variants=[variant], camera=options.camera,
                                                                      network=options.network), directory)
                log(f"  {variant}: quantized to int8 on generated frames in {time.perf_counter() - start:.1f} s",
                    flush=True)
        if options.device != "cpu":   # GPU: the batched side runs batch-dynamic files, one Run per batch
            config = SegmenterConfig(variant=variant, weights=weights, resolution=options.network)
            for count in options.cameras:
                files[f"fp32_batch{count}"] = export_checkpoint(
                    config, os.path.join(directory, f"{variant}_batch{count}.onnx"), confidence=True,
                    batch=None, max_batch=count)
    return files


def run_multicam(options: MulticamOptions, log: Callable[..., None] = print) -> dict[str, Any]:
    """Compare separate and batched processes for every variant x precision x camera count.

    Returns:
        The report: ``meta`` (machine, CPU flags, load averages, method) and ``results``, one row
        per variant x precision x N with both sides and the batched/separate ratios.
    """
    from bisenet_ros.benchmark import _cpu_name, _versions
    from bisenet_ros.inference.precision import cpu_flags, relevant_flags
    from bisenet_ros.runtime import available_cores

    flags = relevant_flags(cpu_flags())
    load_before = os.getloadavg()
    log(f"bench --cameras {','.join(map(str, options.cameras))}: {', '.join(options.variants)} on "
        f"{options.backend} {','.join(options.precisions)} | camera {options.camera[0]}x{options.camera[1]} -> "
        f"network {options.network[0]}x{options.network[1]} | {options.rate_hz:g} Hz per camera | "
        f"{_cpu_name()}, {available_cores()} cores | CPU flags: {' '.join(flags) or 'none'} | "
        f"load {load_before[0]:.2f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bisenet_multicam_") as tmp:
        for variant in options.variants:
            files = _model_files(variant, options, tmp, log)
            for precision in options.precisions:
                for count in options.cameras:
                    sides: dict[str, list[dict[str, Any]]] = {"separate": [], "batched": []}
                    loads = []
                    for round_index in range(options.rounds):
                        order = ["separate", "batched"] if round_index % 2 == 0 else ["batched", "separate"]
                        for mode in order:
                            log(f"  {variant} {precision} N={count} {mode} ...", end=" ", flush=True)
                            side = _side_row(_run_side(_specs(mode, count, files, precision, options, tmp)),
                                             options.duration_s)
                            loads.append(round(os.getloadavg()[0], 2))
                            log(f"{side['total_frames_per_s']:.2f} frames/s, RSS {side['rss_mb_total']:.0f} MB, "
                                f"p99 {_fmt(side['latency_p99_ms_worst'], '{:.0f}')} ms, shares "
                                f"{_fmt(side['share_min'], '{:.2f}')}-{_fmt(side['share_max'], '{:.2f}')}", flush=True)
                            sides[mode].append(side)
                    row = {"variant": variant, "precision": precision, "cameras": count,
                           "separate": _merge_rounds(sides["separate"]), "batched": _merge_rounds(sides["batched"]),
                           "load_average_during": loads}
                    row.update(_ratios(row["separate"], row["batched"]))
                    results.append(row)
    load_after = os.getloadavg()
    return {
        "meta": {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": _cpu_name(),
            "cores": available_cores(), "cpu_flags": flags, "versions": _versions(),
            "backend": options.backend, "device": options.device, "camera": list(options.camera), "network": list(options.network),
            "rate_hz_per_camera": options.rate_hz, "settle_s": options.settle_s, "duration_s": options.duration_s,
            "rounds": options.rounds, "outputs": ["labels", *OUTPUTS],
            "weights": options.weights or "random (timings do not depend on the weights)",
            "method": "separate: N processes, one camera each, num_threads = max(1, cores // N); batched: one "
                      "process, BatchScheduler -> Segmenter.segment_batch, num_threads 0 (all cores); all "
                      "cameras publish at the same rate from threads in their process; figures counted over "
                      "duration_s after settle_s",
            "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "results": results,
    }


def _merge_rounds(sides: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over the rounds: the round with the median total frames/s, with the
    total of every round kept."""
    ordered = sorted(sides, key=lambda side: side["total_frames_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["total_frames_per_s_rounds"] = [side["total_frames_per_s"] for side in sides]
    return chosen


def _ratios(separate: dict[str, Any], batched: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: Any, b: Any) -> float | None:
        return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None

    return {
        "frames_per_s_ratio": ratio(batched["total_frames_per_s"], separate["total_frames_per_s"]),
        "rss_ratio": ratio(batched["rss_mb_total"], separate["rss_mb_total"]),
        "p99_ratio": ratio(batched["latency_p99_ms_worst"], separate["latency_p99_ms_worst"]),
    }


def _fmt(value: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def format_multicam_table(report: dict[str, Any]) -> str:
    """The comparison as a markdown table (one line per variant x precision x N and side)."""
    meta = report["meta"]
    lines = [
        f"{meta['cpu']}, {meta['cores']} cores, CPU flags: {' '.join(meta['cpu_flags']) or 'none'}; "
        f"{meta['backend']}; camera {meta['camera'][0]}x{meta['camera'][1]} -> network "
        f"{meta['network'][0]}x{meta['network'][1]}; every camera at {meta['rate_hz_per_camera']:g} Hz; "
        f"{meta['duration_s']:g} s counted after {meta['settle_s']:g} s; load average "
        f"{meta['load_average_before_after'][0]} -> {meta['load_average_before_after'][1]}",
        "",
        "| variant | precision | N | side | processes | total frames/s | per-camera p50 ms (median) | "
        "per-camera p99 ms (worst) | total RSS MB | share per camera (min-max) | batched / separate |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["results"]:
        for side in ("separate", "batched"):
            figures = row[side]
            versus = "-"
            if side == "batched":
                versus = (f"frames/s {_fmt(row['frames_per_s_ratio'])}x, RSS {_fmt(row['rss_ratio'], '{:.0%}')}, "
                          f"p99 {_fmt(row['p99_ratio'])}x")
            lines.append(
                f"| {row['variant']} | {row['precision']} | {row['cameras']} | {side} | {figures['processes']} | "
                f"{_fmt(figures['total_frames_per_s'])} | {_fmt(figures['latency_p50_ms_median'], '{:.0f}')} | "
                f"{_fmt(figures['latency_p99_ms_worst'], '{:.0f}')} | {_fmt(figures['rss_mb_total'], '{:.0f}')} | "
                f"{_fmt(figures['share_min'])}-{_fmt(figures['share_max'])} | {versus} |")
    return "\n".join(lines)


if __name__ == "__main__":
    # One process of a side (see _run_side): argv[1] is its JSON spec.
    sys.exit(_child(json.loads(sys.argv[1])))
