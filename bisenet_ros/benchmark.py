"""Benchmark of backends and post-processing against the reference pipeline, in one run
(``bisenet-ros bench``, :mod:`bisenet_ros.commands.bench`).

For each variant x backend x precision it measures, in one run and on the same generated frames:

- **model ms**: the backend alone on a prepared input (network + argmax, labels to the host);
- **e2e ms**: uint8 camera frame in, all outputs out (labels, colour mask, overlay, drivable
  mask, confidence) at camera resolution;
- **peak RSS** of the process that built and ran the configuration;
- **agreement** of the label map with the baseline's (and for bf16/int8, with fp32 on the same backend);
- **GOP/s**: the network's operations (2 x multiply-accumulates of its convolutions at the network
  size) per second of model time, and their **fraction of the CPU's peak** for that precision
  (:func:`peak_gops`: cores x clock x operations per cycle of the instruction set the CPU flags show).

int8 rows run a static QDQ file (:mod:`bisenet_ros.inference.quantize`): ``--int8 FILE``, or one
quantized on the fly from the benchmarked weights, calibrated on :data:`CALIBRATION_FRAMES`
generated street frames that are not the timed ones (MinMax, uint8 activations).

The **baseline** does what the reference demo scripts do: eager PyTorch fp32, normalize the full
frame in torch, bilinear resize to the network size, bilinear upsampling of the *logits* to the
camera size, argmax there, NumPy palette indexing and blending.

Each configuration runs in its own process, one after the other: mixing PyTorch, ONNX Runtime and
OpenVINO in one process makes their thread pools fight over the cores (measured here on 2 cores:
an ORT run followed by a torch run took 4x the sum of the two alone), and a separate process also
gives each configuration its own peak RSS. ONNX backends run an exported ``.onnx`` file, as
deployed; without ``--weights`` all configurations share one set of random weights.

Results: a table on stdout, JSON (``--output``) and optionally a markdown table (``--markdown``).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

NUM_FRAMES = 3  # distinct generated frames, cycled
CALIBRATION_FRAMES = 8  # generated frames (other seeds than the timed ones) for on-the-fly int8


@dataclass
class BenchOptions:
    """What ``bisenet-ros bench`` measures (defaults as on its command line).

    Attributes:
        variants: Model variants to benchmark.
        backends: Engine backends (``torch``, ``onnxruntime``, ``openvino``).
        precisions: Precisions; combinations a backend/CPU lacks are reported as unavailable.
        device: Device for all backends.
        weights: Checkpoint for a single variant; None = shared random weights.
        camera: Camera frame ``(width, height)`` in pixels.
        network: Network input ``(width, height)`` in pixels.
        resize: ``stretch`` or ``letterbox``.
        frames: Timed frames per configuration.
        warmup: Untimed frames per process first.
        rounds: Rounds over all configurations, in alternating order.
        num_threads: CPU threads per backend; 0 = backend default.
        baseline: Whether to run the reference pipeline.
        int8: An int8 ``.onnx`` (``bisenet-ros quantize``) for the int8 rows of a single variant;
            None = quantize the benchmarked weights on the fly.
    """

    variants: list[str] = field(default_factory=lambda: ["bisenetv2"])
    backends: list[str] = field(default_factory=lambda: ["torch", "onnxruntime", "openvino"])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16", "int8"])
    device: str = "cpu"
    weights: str | None = None
    camera: tuple[int, int] = (1920, 1080)
    network: tuple[int, int] = (1024, 512)
    resize: str = "stretch"
    frames: int = 8
    warmup: int = 2
    rounds: int = 2
    num_threads: int = 0
    baseline: bool = True
    int8: str | None = None

    def __post_init__(self) -> None:
        if self.weights and len(self.variants) > 1:
            raise ValueError("weights: a checkpoint belongs to one variant; benchmark a single variant with it")
        if self.int8 and len(self.variants) > 1:
            raise ValueError("int8: a quantized file belongs to one variant; benchmark a single variant with it")
        if self.int8 and not os.path.isfile(self.int8):
            raise ValueError(f"int8: {self.int8}: no such file (make one with bisenet-ros quantize)")
        if self.frames < 1 or self.warmup < 0 or self.rounds < 1:
            raise ValueError(f"frames={self.frames}, warmup={self.warmup}, rounds={self.rounds}: expected "
                             "frames >= 1, warmup >= 0, rounds >= 1")


# ----------------------------------------------------------------------------- the baseline

class Baseline:
    """The reference demo pipeline (CoinCheung/BiSeNet ``tools/demo.py`` style), eager fp32."""

    def __init__(self, model: Any, network_size: tuple[int, int], palette: np.ndarray,
                 drivable_ids: list[int], alpha: float) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()
        self.network_size = network_size
        mean, std = model.normalization.mean, model.normalization.std
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.palette = palette
        self.drivable_ids = drivable_ids
        self.alpha = alpha

    def prepare(self, frame_bgr: np.ndarray) -> Any:
        torch = self.torch
        rgb = frame_bgr[:, :, ::-1].copy()
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
        x = ((x - self.mean) / self.std).unsqueeze(0)
        width, height = self.network_size
        return torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)

    def model_only(self, x: Any) -> Any:
        with self.torch.inference_mode():
            return self.model(x)

    def __call__(self, frame_bgr: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            logits = self.model(self.prepare(frame_bgr))
            logits = torch.nn.functional.interpolate(logits, size=frame_bgr.shape[:2], mode="bilinear",
                                                     align_corners=False)
            labels = logits.argmax(dim=1)[0].numpy().astype(np.uint8)
        color = self.palette[labels][:, :, ::-1]                    # RGB palette -> BGR like the frame
        overlay = (frame_bgr * (1 - self.alpha) + color * self.alpha).astype(np.uint8)
        drivable = np.isin(labels, self.drivable_ids).astype(np.uint8) * 255
        # No confidence: the demo scripts compute none (the engine's e2e includes it: conservative).
        return {"labels": labels, "color": color, "overlay": overlay, "drivable": drivable}


# ----------------------------------------------------------------------------- helpers

def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": statistics.median(ordered), "mean": statistics.fmean(ordered), "p90": p90,
            "min": ordered[0], "n": len(ordered)}


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - start) * 1e3, out


def _random_checkpoint(variant: str, directory: str) -> str:
    # One set of random weights per variant, shared by every backend, the baseline and the RSS
    # probes: otherwise each would draw its own and the label agreements would compare nothing.
    import torch

    from bisenet_ros.models import build_model, make_checkpoint

    torch.manual_seed(0)
    path = os.path.join(directory, f"{variant}_random.pth")
    torch.save(make_checkpoint(build_model(variant)), path)
    return path


def _export(weights: str, variant: str, resolution: tuple[int, int], directory: str) -> str:
    from bisenet_ros.config import SegmenterConfig
    from bisenet_ros.inference.segmenter import export_checkpoint

    config = SegmenterConfig(variant=variant, weights=weights, resolution=resolution)
    return export_checkpoint(config, os.path.join(directory, f"{variant}_{resolution[0]}x{resolution[1]}.onnx"),
                             confidence=True)


def _quantize(onnx_weights: str, options: BenchOptions, directory: str) -> str:
    """An int8 version of the exported file, calibrated on generated frames (not the timed ones)."""
    from bisenet_ros.inference import Segmenter
    from bisenet_ros.inference.frames import street_frame
    from bisenet_ros.inference.quantize import QuantizeSettings, quantize_model

    engine = Segmenter(weights=onnx_weights, backend="onnxruntime", resize=options.resize)
    blobs = [engine.preprocess(street_frame(*options.camera, seed=100 + i))[1].copy()
             for i in range(CALIBRATION_FRAMES)]
    with open(onnx_weights, "rb") as stream:
        data = quantize_model(stream.read(), blobs, QuantizeSettings("minmax", "uint8"),
                              {"source": f"{CALIBRATION_FRAMES} generated street frames (bench)"})
    path = onnx_weights.replace(".onnx", "_int8.onnx")
    with open(path, "wb") as stream:
        stream.write(data)
    return path


def model_gops(weights: str, variant: str, network: tuple[int, int]) -> float:
    """Giga-operations (2 x multiply-accumulates) of one forward pass at ``network`` size.

    Counts the convolutions and linear layers, which are all but a fraction of a percent of the
    arithmetic of these networks (pooling, additions, upsampling and argmax are not counted). A
    forward hook per layer is all it takes; a FLOP-counting package would add a dependency for this.
    """
    import torch

    from bisenet_ros.config import SegmenterConfig
    from bisenet_ros.inference.segmenter import load_torch_model

    model = load_torch_model(SegmenterConfig(variant=variant, weights=weights)).eval()
    macs = [0]

    def count(module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs[0] += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:  # Linear
            macs[0] += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, 3, network[1], network[0]))
    for hook in hooks:
        hook.remove()
    return 2 * macs[0] / 1e9


def _cpu_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def peak_gops(precision: str, flags: Any, cores: int, ghz: float, vendor: str = "", family: str = "") -> dict[str, Any]:
    """Nominal peak GOP/s of the CPU for a precision, and how it was computed.

    ``cores x GHz x operations per cycle per core``, with two vector multiply-add pipes per core:

    - fp32: FMA, 2 ops per lane (8 lanes per 256 bits);
    - bf16: ``VDPBF16PS`` (avx512_bf16), 2 bf16 MACs per 32-bit lane; without it, the fp32 peak;
    - int8: ``VPDPBUSD`` (avx512_vnni/avx_vnni), 4 MACs per lane; plain AVX2 needs three
      instructions for the same (``VPMADDUBSW``, ``VPMADDWD``, ``VPADDD``): a third of that.

    Vector width: 512 bits with AVX-512, except AMD family 25 (Zen 3/4), whose pipes are 256 bits
    wide (Zen 4 splits 512-bit instructions in two); 256 bits with AVX2. AMX is not modelled (its
    tile units would raise the bf16/int8 peak by an order of magnitude). ``cores`` is the logical
    CPU count the backends use: on SMT machines the physical peak is lower than this.
    """
    bits = 512 if "avx512f" in flags and not (vendor == "AuthenticAMD" and family == "25") else 256
    lanes = bits // 32  # 32-bit lanes per pipe
    fp32 = 2 * lanes * 2
    if precision == "int8":
        vnni = "avx512_vnni" in flags or "avx_vnni" in flags
        per_cycle = 2 * lanes * 4 * 2 // (1 if vnni else 3)
        isa = "VNNI" if vnni else "AVX2 (3-instruction int8 dot product)"
    elif precision == "bf16" and "avx512_bf16" in flags:
        per_cycle, isa = 2 * lanes * 2 * 2, "AVX512_BF16"
    else:
        per_cycle, isa = fp32, "FMA"
    return {"gops": cores * ghz * per_cycle, "ops_per_cycle_per_core": per_cycle, "vector_bits": bits,
            "isa": isa, "cores": cores, "ghz": ghz}


def _segmenter_options(options: BenchOptions, variant: str, weights: str, backend: str,
                       precision: str) -> dict[str, Any]:
    return {"variant": variant, "weights": weights, "backend": backend, "precision": precision,
            "device": options.device, "resolution": options.network, "resize": options.resize,
            "confidence": True, "num_threads": options.num_threads}


def _cpu_name() -> str:
    return _cpu_field("model name") or platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "onnxruntime", "openvino", "cv2"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "?"))
    return out


def _worker(spec_json: str) -> int:
    """Child process: build one configuration, time it on the frames, save its labels.

    Prints one JSON line: model/e2e samples (ms), stage samples, peak RSS, or an error.
    """
    spec = json.loads(spec_json)
    from bisenet_ros.inference.frames import street_frame

    camera = tuple(spec["camera"])
    frames = [street_frame(*camera, seed=i) for i in range(NUM_FRAMES)]
    out: dict[str, Any] = {"model": [], "e2e": [], "stages": {"preprocess": [], "inference": [], "postprocess": []}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-weight warnings: stated in the report instead
        start = time.perf_counter()
        try:
            if spec["kind"] == "baseline":
                from bisenet_ros.inference.segmenter import load_torch_model, resolve_class_set
                from bisenet_ros.config import SegmenterConfig

                config = SegmenterConfig(variant=spec["options"]["variant"], weights=spec["options"]["weights"])
                model = load_torch_model(config)
                classes = resolve_class_set(config, model)
                pipeline: Any = Baseline(model, tuple(spec["options"]["resolution"]), classes.palette,
                                         [classes.class_id(c) for c in config.drivable_classes],
                                         config.overlay_alpha)
                prepared = pipeline.prepare(frames[0])
                model_only: Any = lambda: pipeline.model_only(prepared)  # noqa: E731
            else:
                from bisenet_ros.inference import BackendError, Segmenter

                try:
                    pipeline = Segmenter(**spec["options"])
                except (ImportError, BackendError, ValueError) as exc:
                    print(json.dumps({"status": "unavailable", "reason": str(exc).splitlines()[0]}))
                    return 0
                out["engine"] = pipeline.provenance()
                _, blob, _ = pipeline.preprocess(frames[0])
                blob = blob.copy()
                model_only = lambda: pipeline.backend.run(blob)  # noqa: E731
        except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
            print(json.dumps({"status": "error", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}))
            return 0
        out["build_s"] = time.perf_counter() - start
        labels: dict[str, np.ndarray] = {}
        for iteration in range(spec["warmup"] + spec["frames"]):
            index = iteration % NUM_FRAMES
            ms_model, _ = _timed(model_only)
            ms_e2e, result = _timed(pipeline, frames[index])
            if iteration >= spec["warmup"]:
                out["model"].append(ms_model)
                out["e2e"].append(ms_e2e)
                if not isinstance(result, dict):
                    for stage in out["stages"]:
                        out["stages"][stage].append(result.timings[stage])
                    out.setdefault("engine_ms", []).append(
                        result.timings["preprocess"] + result.timings["postprocess"])
            labels[str(index)] = result["labels"] if isinstance(result, dict) else result.labels
    np.savez_compressed(spec["labels_path"], **labels)
    out.update(status="ok", peak_rss_mb=_memory_mb()["peak_rss_mb"])
    print(json.dumps(out))
    return 0


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # PyTorch's OpenMP threads spin-wait at barriers by default; on a machine whose cores are
    # busy with other work that is catastrophic (measured here with 2 threads and a load of 5:
    # 2.5 s instead of 25 ms for a 128x64 BiSeNetV2). PASSIVE makes them sleep. It must be set
    # before torch is imported, hence in the worker's environment. An explicit setting wins.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, "-m", "bisenet_ros.benchmark", json.dumps(spec)],
                              capture_output=True, text=True, timeout=1800, check=False, env=_worker_env())
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": "timed out after 30 minutes"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "reason": f"worker failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def _memory_mb() -> dict[str, float]:
    """This process's ``rss_mb`` (now) and ``peak_rss_mb``, MB (``VmRSS``/``VmHWM``)."""
    # VmHWM belongs to this process image. getrusage's ru_maxrss would not do: Linux carries it
    # across fork+exec, so a child of a large parent reports the parent's peak.
    values: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="utf-8") as stream:
            for line in stream:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if "VmHWM" not in values:   # no /proc (not Linux)
        values["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"rss_mb": values.get("VmRSS", 0.0), "peak_rss_mb": values["VmHWM"]}


# ----------------------------------------------------------------------------- the run

def run_benchmark(options: BenchOptions, log: Callable[..., None] = print) -> dict[str, Any]:
    """Measure every configuration of ``options``; returns the report (``meta`` and ``results``).

    Args:
        options: What to measure.
        log: Progress printer (``print``-like; it gets ``end`` and ``flush`` keywords).
    """
    camera, network = options.camera, options.network
    variants, backends, precisions = options.variants, options.backends, options.precisions
    from bisenet_ros.inference.precision import RELEVANT_FLAGS, cpu_flags, relevant_flags

    load_before = os.getloadavg()
    flags = relevant_flags(cpu_flags())
    log(f"bench: {', '.join(variants)} | camera {camera[0]}x{camera[1]} -> network {network[0]}x{network[1]} | "
        f"{options.frames} timed frames per configuration | {_cpu_name()}, {os.cpu_count()} CPUs | "
        f"CPU flags: {' '.join(flags) or 'none of ' + ', '.join(RELEVANT_FLAGS)} | "
        f"load {load_before[0]:.2f}", flush=True)
    ghz = float(_cpu_field("cpu MHz") or 0) / 1e3
    vendor, family = _cpu_field("vendor_id"), _cpu_field("cpu family")
    gops: dict[str, float] = {}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bisenet_bench_") as tmp:
        for variant in variants:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                weights = options.weights or _random_checkpoint(variant, tmp)
                onnx_weights = None
                gops[variant] = model_gops(weights, variant, network)
                int8_weights = options.int8
                if any(b != "torch" for b in backends):
                    # The deploy path: ONNX backends run an exported file, without torch in the process.
                    onnx_weights = _export(weights, variant, network, tmp)
                    if "int8" in precisions and int8_weights is None:
                        start = time.perf_counter()
                        int8_weights = _quantize(onnx_weights, options, tmp)
                        log(f"  {variant}: quantized to int8 on {CALIBRATION_FRAMES} generated frames in "
                            f"{time.perf_counter() - start:.1f} s", flush=True)
            jobs: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for backend in backends:
                for precision in precisions:
                    engine_options = _segmenter_options(options, variant, weights, backend, precision)
                    if backend != "torch":
                        engine_options["weights"] = int8_weights if precision == "int8" else onnx_weights
                    row = {"variant": variant, "backend": backend, "precision": precision, "device": options.device}
                    jobs.append((row, {"kind": "engine", "options": engine_options}))
            if options.baseline:
                row = {"variant": variant, "backend": "baseline (eager torch, NumPy post)", "precision": "fp32",
                       "device": "cpu"}
                jobs.append((row, {"kind": "baseline", "options": {"variant": variant, "weights": weights,
                                                                   "resolution": list(network)}}))
            labels: dict[int, dict[str, np.ndarray]] = {}
            measured_all: dict[int, dict[str, Any]] = {}
            rounds = max(1, options.rounds)
            per_round = max(1, -(-options.frames // rounds))
            for round_index in range(rounds):
                # Alternate the order (A B C, C B A, ...) so that a load drift on the machine does
                # not favour whichever configuration happens to run first.
                order = list(enumerate(jobs))
                if round_index % 2:
                    order.reverse()
                for number, (row, spec) in order:
                    if number in measured_all and measured_all[number]["status"] != "ok":
                        continue
                    spec.update(camera=list(camera), frames=per_round, warmup=options.warmup,
                                labels_path=os.path.join(tmp, f"labels_{variant}_{number}.npz"))
                    log(f"  [{round_index + 1}/{rounds}] {row['variant']} {row['backend']} {row['precision']} ...",
                          end=" ", flush=True)
                    measured = _run_worker(spec)
                    if measured["status"] != "ok":
                        log(f"{measured['status']}: {measured['reason']}", flush=True)
                        measured_all[number] = measured
                        continue
                    log(f"model {statistics.median(measured['model']):.1f} ms, "
                          f"e2e {statistics.median(measured['e2e']):.1f} ms", flush=True)
                    if number not in measured_all:
                        measured_all[number] = measured
                        with np.load(spec["labels_path"]) as data:
                            labels[number] = {k: data[k] for k in data.files}
                    else:
                        total = measured_all[number]
                        total["model"] += measured["model"]
                        total["e2e"] += measured["e2e"]
                        for stage, samples in measured["stages"].items():
                            total["stages"][stage] += samples
                        total["engine_ms"] = total.get("engine_ms", []) + measured.get("engine_ms", [])
                        total["peak_rss_mb"] = max(total["peak_rss_mb"], measured["peak_rss_mb"])
            for number, (row, spec) in enumerate(jobs):
                measured = measured_all[number]
                row.update(status=measured["status"])
                if measured["status"] != "ok":
                    row["reason"] = measured["reason"]
                    results.append(row)
                    continue
                row["model_ms"] = _summary(measured["model"])
                row["gops_per_s"] = gops[variant] / (row["model_ms"]["median"] / 1e3)
                peak = peak_gops(row["precision"], flags, os.cpu_count() or 1, ghz, vendor, family)
                row["fraction_of_peak"] = row["gops_per_s"] / peak["gops"] if peak["gops"] else None
                row["peak"] = peak
                row["e2e_ms"] = _summary(measured["e2e"])
                row["overhead_ms"] = row["e2e_ms"]["median"] - row["model_ms"]["median"]
                row["peak_rss_mb"] = measured["peak_rss_mb"]
                row["build_s"] = measured["build_s"]
                if measured["stages"]["preprocess"]:
                    row["engine"] = measured.get("engine")
                    row["stages_ms"] = {k: statistics.median(v) for k, v in measured["stages"].items()}
                    # What the engine adds, timed inside the same calls (robust to the machine's
                    # noise, unlike the difference of two separately timed medians).
                    row["engine_ms"] = _summary(measured["engine_ms"])
                row["_job"] = number
                results.append(row)
            _agreements([r for r in results if r["variant"] == variant], labels)
    for row in results:
        row.pop("_job", None)
    load_after = os.getloadavg()
    report = {
        "meta": {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": _cpu_name(),
            "cpus": os.cpu_count(), "cpu_flags": flags, "cpu_mhz": ghz * 1e3, "versions": _versions(),
            "model_gops": gops,
            "peak_method": "cores x cpu MHz x ops/cycle/core for the precision's instruction set (peak_gops)", "camera": list(camera),
            "network": list(network), "resize": options.resize, "frames": options.frames, "warmup": options.warmup,
            "rounds": options.rounds,
            "weights": options.weights or "random (no published weights offline; timings are unaffected, "
                                       "agreement figures are only indicative)",
            "outputs": "labels, color, overlay, drivable, confidence at camera resolution",
            "method": "one process per configuration and round, rounds in alternating order (runtimes' thread pools "
                      "interfere when mixed in one process on few cores)",
            "omp_wait_policy": _worker_env()["OMP_WAIT_POLICY"],
            "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "results": results,
    }
    return report


def _agreements(rows: list[dict[str, Any]], labels: dict[int, dict[str, np.ndarray]]) -> None:
    def agree(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
        keys = sorted(set(a) & set(b))
        return float(np.mean([np.mean(a[k] == b[k]) for k in keys])) if keys else float("nan")

    ok = [r for r in rows if r["status"] == "ok"]
    base = next((r for r in ok if r["backend"].startswith("baseline")), None)
    fp32 = {r["backend"]: r for r in ok if r["precision"] == "fp32"}
    for row in ok:
        if row is base:
            continue
        if base is not None:
            row["speedup_vs_baseline"] = base["e2e_ms"]["median"] / row["e2e_ms"]["median"]
            row["agreement_vs_baseline"] = agree(labels[row["_job"]], labels[base["_job"]])
        if row["precision"] != "fp32":
            if row["backend"] in fp32:
                row["speedup_vs_fp32"] = fp32[row["backend"]]["e2e_ms"]["median"] / row["e2e_ms"]["median"]
            reference = fp32.get(row["backend"]) or fp32.get("torch")
            if reference is not None:
                row["agreement_vs_fp32"] = agree(labels[row["_job"]], labels[reference["_job"]])


def format_table(report: dict[str, Any]) -> str:
    """The results as a markdown table (also readable on a terminal)."""
    def pct(value: Any) -> str:
        return f"{value * 100:.2f}%" if isinstance(value, float) else "-"

    def num(value: Any, fmt: str = "{:.1f}") -> str:
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    meta = report["meta"]
    lines = [
        f"Camera {meta['camera'][0]}x{meta['camera'][1]} -> network {meta['network'][0]}x{meta['network'][1]} "
        f"({meta['resize']}), {meta['cpu']} x{meta['cpus']}, median of {meta['frames']} frames; "
        f"load average {meta['load_average_before_after'][0]} -> {meta['load_average_before_after'][1]}"
        + (f"; CPU flags: {' '.join(meta['cpu_flags'])}" if meta.get("cpu_flags") is not None else ""),
        "",
        "| variant | backend | precision | model ms | e2e ms | e2e - model ms | pre + post ms (min) | peak RSS MB "
        "| speed-up vs baseline | e2e vs same backend fp32 | GOP/s | of peak | labels = baseline | labels = fp32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | {row['backend']} | {row['precision']} | unavailable: "
                         f"{row['reason'][:90]} | | | | | | | | | | |")
            continue
        engine = "-"
        if isinstance(row.get("engine_ms"), dict):
            engine = f"{row['engine_ms']['median']:.1f} ({row['engine_ms']['min']:.1f})"
        elif isinstance(row.get("engine_ms"), (int, float)):  # results written before the min was kept
            engine = f"{row['engine_ms']:.1f}"
        lines.append(
            f"| {row['variant']} | {row['backend']} | {row['precision']} | {num(row['model_ms']['median'])} | "
            f"{num(row['e2e_ms']['median'])} | {num(row['overhead_ms'])} | {engine} | "
            f"{num(row.get('peak_rss_mb'), '{:.0f}')} | "
            f"{num(row.get('speedup_vs_baseline'), '{:.2f}x')} | {num(row.get('speedup_vs_fp32'), '{:.2f}x')} | "
            f"{num(row.get('gops_per_s'), '{:.0f}')} | {pct(row.get('fraction_of_peak'))} | "
            f"{pct(row.get('agreement_vs_baseline'))} | "
            f"{pct(row.get('agreement_vs_fp32'))} |")
    return "\n".join(lines)


if __name__ == "__main__":
    # One benchmark configuration in a child process (see _run_worker): argv[1] is its JSON spec.
    sys.exit(_worker(sys.argv[1]))
