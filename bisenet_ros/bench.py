"""``bisenet-ros bench``: backends and post-processing against the reference pipeline, in one run.

For each variant x backend x precision it measures, on the same frames and interleaved
round-robin (so a noisy machine slows every configuration alike and ratios hold):

- **model ms**: the backend alone on a prepared input (network + argmax, labels to the host);
- **e2e ms**: uint8 camera frame in, all outputs out (labels, colour mask, overlay, drivable
  mask, confidence) at camera resolution;
- **peak RSS**: of a separate process that builds the configuration and segments a few frames;
- **agreement** of the label map with the baseline's (and for bf16, with fp32 on the same backend).

The **baseline** does what the reference demo scripts do: eager PyTorch fp32, normalize the full
frame in torch, bilinear resize to the network size, bilinear upsampling of the *logits* to the
camera size, argmax there, NumPy palette indexing and blending.

Results: a table on stdout, JSON (``--output``) and optionally a markdown table (``--markdown``).
"""
from __future__ import annotations

import argparse
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
from typing import Any

import numpy as np

from bisenet_ros.config import parse_resolution

DEFAULT_OUTPUT = os.path.join("bench_results", "bench.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bisenet-ros bench``."""
    parser.add_argument("--variants", default="bisenetv2", help="comma-separated model variants (default bisenetv2)")
    parser.add_argument("--backends", default="torch,onnxruntime,openvino", help="comma-separated backends")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated precisions; combinations a backend/CPU lacks are reported "
                             "as unavailable (default fp32,bf16)")
    parser.add_argument("--device", default="cpu", help="device for all backends (default cpu)")
    parser.add_argument("--weights", default=None,
                        help="checkpoint for the (single) variant; default random weights")
    parser.add_argument("--camera", default="1920x1080", help="camera frame size WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--resolution", default="1024x512", help="network input WIDTHxHEIGHT (default 1024x512)")
    parser.add_argument("--resize", default="stretch", choices=("stretch", "letterbox"))
    parser.add_argument("--frames", type=int, default=8, help="timed iterations per configuration (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    parser.add_argument("--num-threads", dest="num_threads", type=int, default=0,
                        help="CPU threads per backend; 0 = backend default")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the reference pipeline")
    parser.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-RSS subprocesses")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"JSON results (default {DEFAULT_OUTPUT})")
    parser.add_argument("--markdown", default=None, help="also write the table as markdown to this file")
    parser.add_argument("--rss-probe", dest="rss_probe", default=None, help=argparse.SUPPRESS)


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


def _segmenter_options(args: argparse.Namespace, variant: str, weights: str, backend: str,
                       precision: str) -> dict[str, Any]:
    return {"variant": variant, "weights": weights, "backend": backend, "precision": precision,
            "device": args.device, "resolution": parse_resolution(args.resolution), "resize": args.resize,
            "confidence": True, "num_threads": args.num_threads}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "onnxruntime", "openvino", "cv2"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "?"))
    return out


def _rss_probe(spec: str) -> int:
    """Child process: build one configuration, segment a few frames, print the peak RSS in MB."""
    options = json.loads(spec)
    baseline = options.pop("baseline", False)
    frames = options.pop("frames")
    camera = tuple(options.pop("camera"))
    from bisenet_ros.inference.frames import street_frame

    frame = street_frame(*camera)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if baseline:
            from bisenet_ros.labels import cityscapes
            from bisenet_ros.models import build_model

            model = build_model(options["variant"], weights=options["weights"])
            pipeline: Any = Baseline(model, tuple(options["resolution"]), cityscapes().palette, [0], 0.5)
        else:
            from bisenet_ros.inference import Segmenter

            pipeline = Segmenter(**options)
        for _ in range(frames):
            pipeline(frame)
    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))
    return 0


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image. getrusage's ru_maxrss would not do: Linux carries it
    # across fork+exec, so a child of a large parent reports the parent's peak.
    try:
        with open("/proc/self/status", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure_rss(options: dict[str, Any], camera: tuple[int, int], baseline: bool = False) -> float | None:
    spec = json.dumps({**options, "frames": 3, "camera": list(camera), "baseline": baseline})
    try:
        proc = subprocess.run([sys.executable, "-m", "bisenet_ros.cli", "bench", "--rss-probe", spec],
                              capture_output=True, text=True, timeout=600, check=False)
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"])
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError):
        return None


# ----------------------------------------------------------------------------- the run

def run(args: argparse.Namespace) -> int:
    """Entry point of ``bisenet-ros bench``."""
    if args.rss_probe:
        return _rss_probe(args.rss_probe)
    import torch

    from bisenet_ros.inference import BackendError, Segmenter
    from bisenet_ros.inference.frames import street_frame
    from bisenet_ros.models import build_model

    camera = parse_resolution(args.camera)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.weights and len(variants) > 1:
        print("bisenet-ros bench: error: --weights needs a single variant")
        return 2
    frames = [street_frame(*camera, seed=i) for i in range(3)]
    load_before = os.getloadavg()
    print(f"bench: {', '.join(variants)} | camera {camera[0]}x{camera[1]} -> network {args.resolution} | "
          f"{args.frames} timed iterations | {_cpu_name()}, {os.cpu_count()} CPUs | "
          f"load {load_before[0]:.2f}", flush=True)

    results: list[dict[str, Any]] = []
    tmp = tempfile.TemporaryDirectory(prefix="bisenet_bench_")
    for variant in variants:
        weights = args.weights or _random_checkpoint(variant, tmp.name)
        configs: list[dict[str, Any]] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random-weight warnings: stated in the report instead
            for backend in backends:
                for precision in precisions:
                    options = _segmenter_options(args, variant, weights, backend, precision)
                    row: dict[str, Any] = {"variant": variant, "backend": backend, "precision": precision,
                                           "device": args.device}
                    try:
                        t0 = time.perf_counter()
                        seg = Segmenter(**options)
                        row["build_s"] = time.perf_counter() - t0
                    except (ImportError, BackendError, ValueError) as exc:
                        row.update(status="unavailable", reason=str(exc).splitlines()[0])
                        print(f"  {variant} {backend} {precision}: unavailable ({row['reason']})", flush=True)
                        results.append(row)
                        continue
                    row.update(status="ok", engine=seg.describe())
                    configs.append({"row": row, "seg": seg, "options": options, "model": [], "e2e": [],
                                    "stages": {"preprocess": [], "inference": [], "postprocess": []},
                                    "labels": {}})
            baseline = None
            if args.baseline:
                model = build_model(variant, weights=weights)
                palette = configs[0]["seg"].palette if configs else None
                if palette is not None:
                    drivable = [configs[0]["seg"].class_set.class_id(c)
                                for c in configs[0]["seg"].config.drivable_classes]
                    baseline = {"pipe": Baseline(model, parse_resolution(args.resolution), palette, drivable,
                                                 configs[0]["seg"].config.overlay_alpha),
                                "model": [], "e2e": [], "labels": {}}

        # Prepared inputs for the model-only timings (identical work to what e2e feeds the backend).
        for cfg in configs:
            _, blob, _ = cfg["seg"].preprocess(frames[0])
            cfg["blob"] = blob.copy()
        if baseline is not None:
            baseline["x"] = baseline["pipe"].prepare(frames[0])

        total = args.warmup + args.frames
        for iteration in range(total):
            timed = iteration >= args.warmup
            frame_index = iteration % len(frames)
            frame = frames[frame_index]
            for cfg in configs:
                ms_model, _ = _timed(cfg["seg"].backend.run, cfg["blob"])
                ms_e2e, result = _timed(cfg["seg"], frame)
                if timed:
                    cfg["model"].append(ms_model)
                    cfg["e2e"].append(ms_e2e)
                    for stage in cfg["stages"]:
                        cfg["stages"][stage].append(result.timings[stage])
                cfg["labels"][frame_index] = result.labels
            if baseline is not None:
                ms_model, _ = _timed(baseline["pipe"].model_only, baseline["x"])
                ms_e2e, out = _timed(baseline["pipe"], frame)
                if timed:
                    baseline["model"].append(ms_model)
                    baseline["e2e"].append(ms_e2e)
                baseline["labels"][frame_index] = out["labels"]
            print(f"  iteration {iteration + 1}/{total}{'' if timed else ' (warm-up)'}", flush=True)

        base_row = None
        if baseline is not None:
            base_row = {"variant": variant, "backend": "baseline (eager torch, NumPy post)", "precision": "fp32",
                        "device": "cpu", "status": "ok", "model_ms": _summary(baseline["model"]),
                        "e2e_ms": _summary(baseline["e2e"])}
            base_row["overhead_ms"] = base_row["e2e_ms"]["median"] - base_row["model_ms"]["median"]
            if args.rss:
                base_row["peak_rss_mb"] = _measure_rss(
                    {"variant": variant, "weights": weights,
                     "resolution": list(parse_resolution(args.resolution))}, camera, baseline=True)
        fp32_labels = {cfg["row"]["backend"]: cfg["labels"] for cfg in configs if cfg["row"]["precision"] == "fp32"}
        for cfg in configs:
            row = cfg["row"]
            row["model_ms"] = _summary(cfg["model"])
            row["e2e_ms"] = _summary(cfg["e2e"])
            row["overhead_ms"] = row["e2e_ms"]["median"] - row["model_ms"]["median"]
            row["stages_ms"] = {k: statistics.median(v) for k, v in cfg["stages"].items()}
            if baseline is not None:
                row["speedup_vs_baseline"] = base_row["e2e_ms"]["median"] / row["e2e_ms"]["median"]  # type: ignore[index]
                row["agreement_vs_baseline"] = float(np.mean(
                    [np.mean(cfg["labels"][i] == baseline["labels"][i]) for i in cfg["labels"]]))
            if row["precision"] != "fp32":
                reference = fp32_labels.get(row["backend"]) or fp32_labels.get("torch")
                if reference:
                    row["agreement_vs_fp32"] = float(np.mean(
                        [np.mean(cfg["labels"][i] == reference[i]) for i in cfg["labels"]]))
            if args.rss:
                row["peak_rss_mb"] = _measure_rss(cfg["options"], camera)
            results.append(row)
        if base_row is not None:
            results.append(base_row)
        del configs, baseline
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    tmp.cleanup()
    load_after = os.getloadavg()
    report = {
        "meta": {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": _cpu_name(),
            "cpus": os.cpu_count(), "versions": _versions(), "camera": list(camera),
            "network": list(parse_resolution(args.resolution)), "resize": args.resize,
            "frames": args.frames, "warmup": args.warmup,
            "weights": args.weights or "random (no published weights offline; timings are unaffected, "
                                       "agreement figures are only indicative)",
            "outputs": "labels, color, overlay, drivable, confidence at camera resolution",
            "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as stream:
        json.dump(report, stream, indent=2)
    table = format_table(report)
    print(table)
    print(f"wrote {args.output}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as stream:
            stream.write(table + "\n")
        print(f"wrote {args.markdown}")
    return 0


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
        f"load average {meta['load_average_before_after'][0]} -> {meta['load_average_before_after'][1]}",
        "",
        "| variant | backend | precision | model ms | e2e ms | e2e - model ms | peak RSS MB | speed-up vs baseline "
        "| labels = baseline | labels = fp32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | {row['backend']} | {row['precision']} | unavailable: "
                         f"{row['reason'][:90]} | | | | | | |")
            continue
        lines.append(
            f"| {row['variant']} | {row['backend']} | {row['precision']} | {num(row['model_ms']['median'])} | "
            f"{num(row['e2e_ms']['median'])} | {num(row['overhead_ms'])} | {num(row.get('peak_rss_mb'), '{:.0f}')} | "
            f"{num(row.get('speedup_vs_baseline'), '{:.2f}x')} | {pct(row.get('agreement_vs_baseline'))} | "
            f"{pct(row.get('agreement_vs_fp32'))} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="bisenet-ros bench")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
