#!/usr/bin/env bash
# GPU check (NVIDIA), prepared for a machine with a CUDA GPU; about 8-15 minutes (TensorRT builds engines the first time). Not a test: it
# prints a table (and writes it as JSON) of what runs on the GPU and how fast:
#
#   engine, BiSeNetV2 1024x512 network, 1920x1080 camera frames, all outputs:
#     torch CUDA fp32 / fp16, onnxruntime CUDA EP fp32, TensorRT EP fp16 and int8 (QDQ file)
#     - ms per frame (median), start time (TensorRT: first start builds the engine, the second
#       loads it from the engine cache), label agreement with CPU fp32 (onnxruntime)
#   several cameras (issue 19): batched TensorRT (one engine, batch-dynamic export, profile
#     min 1 / opt = max = N) against N engines (N processes, batch-1 file), N = 2 and 4: engine-only
#     frames/s (target >= 1.5x), then the whole pipeline with `bisenet-ros bench --cameras`
#   training: one AMP (fp16 autocast) step of `python -m training train` on CUDA
#
# Packages: onnxruntime-gpu and TensorRT are installed from the package index into a separate
# folder ($GPU_SITE, put first on PYTHONPATH) when missing, so the CPU onnxruntime of .venv stays
# as it is. The node never installs anything at run time; this is a one-off check.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default gpu_check_output/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_output}
PY=${PYTHON:-.venv/bin/python}
GPU_SITE=${GPU_SITE:-$OUT/gpu_site}
mkdir -p "$OUT"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi -L failed); run this on a machine with one" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# onnxruntime-gpu with the TensorRT/CUDA providers (and the TensorRT + cuDNN libraries as wheels).
if ! "$PY" -c "import onnxruntime as o; import sys; sys.exit('TensorrtExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
    echo "== installing onnxruntime-gpu and TensorRT into $GPU_SITE (one-off)"
    "$PY" -m pip install --quiet --target "$GPU_SITE" "onnxruntime-gpu>=1.18" "tensorrt-cu12>=10.0" \
        "nvidia-cudnn-cu12>=9.0" "nvidia-cuda-runtime-cu12" "nvidia-cublas-cu12" "nvidia-cufft-cu12" \
        "nvidia-curand-cu12"
    export PYTHONPATH="$GPU_SITE:$PYTHONPATH"
    # The provider libraries dlopen CUDA/cuDNN/TensorRT by soname: make the wheels' lib folders visible.
    libs=$(find "$GPU_SITE" -type d \( -path "*/nvidia/*/lib" -o -name "tensorrt_libs" \) | tr '\n' ':')
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
fi
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: this torch ($("$PY" -c 'import torch; print(torch.__version__)')) has no CUDA; the torch rows" \
         "will be reported unavailable (install the CUDA build of torch==2.13.0 to include them)"
fi

timeout 280 "$PY" - "$OUT" <<'EOF'
import json, os, statistics, subprocess, sys, tempfile, time, warnings
import numpy as np

warnings.simplefilter("ignore")
out = sys.argv[1]
from bisenet_ros.benchmark import _export, _random_checkpoint
from bisenet_ros.inference import Segmenter
from bisenet_ros.inference.frames import street_frame
from bisenet_ros.inference.quantize import QuantizeSettings, quantize_model

tmp = tempfile.mkdtemp(prefix="gpu_check_", dir=out)
weights = _random_checkpoint("bisenetv2", tmp)
fp32_onnx = _export(weights, "bisenetv2", (1024, 512), tmp)
frames = [street_frame(1920, 1080, seed=i) for i in range(3)]
cpu = Segmenter(weights=fp32_onnx, backend="onnxruntime", confidence=True)
reference = [cpu(f).labels for f in frames]
# TensorRT takes symmetric int8 activations only.
blobs = [cpu.preprocess(street_frame(1920, 1080, seed=100 + i))[1].copy() for i in range(8)]
int8_onnx = os.path.join(tmp, "bisenetv2_int8.onnx")
with open(fp32_onnx, "rb") as f:
    data = quantize_model(f.read(), blobs, QuantizeSettings("minmax", "int8"), {"source": "gpu_check"})
with open(int8_onnx, "wb") as f:
    f.write(data)

rows = [
    ("torch cuda fp32", dict(variant="bisenetv2", weights=weights, backend="torch", device="cuda", precision="fp32",
                                 resolution=[1024, 512])),
    ("torch cuda fp16", dict(variant="bisenetv2", weights=weights, backend="torch", device="cuda", precision="fp16",
                                 resolution=[1024, 512])),
    ("onnxruntime cuda fp32", dict(weights=fp32_onnx, backend="onnxruntime", device="cuda")),
    ("onnxruntime tensorrt fp16", dict(weights=fp32_onnx, backend="onnxruntime", device="tensorrt", precision="fp16")),
    ("onnxruntime tensorrt int8 (QDQ)", dict(weights=int8_onnx, backend="onnxruntime", device="tensorrt")),
]
cache = os.path.join(tmp, "trt_cache")
results = []
for name, options in rows:
    options.update(confidence=True, trt_cache_dir=cache)
    # Each start in its own process: the second TensorRT start then really loads the cached engine.
    probe = (
        "import json, statistics, sys, time, warnings; warnings.simplefilter('ignore');"
        "from bisenet_ros.inference import Segmenter; from bisenet_ros.inference.frames import street_frame;"
        "import numpy as np; o = json.loads(sys.argv[1]); t = time.perf_counter(); s = Segmenter(**o);"
        "s.warmup((1920, 1080), 2); start = time.perf_counter() - t; fr = [street_frame(1920, 1080, seed=i) for i in range(3)];"
        "ms = []; labels = []\n"
        "for i in range(20):\n"
        "    r = s(fr[i % 3]); ms.append(r.timings['total'])\n"
        "    labels.append(r.labels) if i < 3 else None\n"
        "np.savez(sys.argv[2], *labels); print(json.dumps({'start_s': start, 'ms': statistics.median(ms), 'engine': s.describe()}))"
    )
    row = {"config": name}
    for attempt in ("first", "second"):
        path = os.path.join(tmp, f"labels_{len(results)}.npz")
        proc = subprocess.run([sys.executable, "-c", probe, json.dumps(options), path], capture_output=True, text=True,
                              timeout=200)
        if proc.returncode != 0:
            row["status"] = "unavailable: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
            break
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        row[f"start_s_{attempt}"] = round(measured["start_s"], 2)
        row["ms_per_frame"] = round(measured["ms"], 2)
        row["engine"] = measured["engine"]
        with np.load(path) as got:
            row["agreement_vs_cpu_fp32"] = float(np.mean([np.mean(got[k] == ref) for k, ref in zip(got.files, reference)]))
        row["status"] = "ok"
        if "tensorrt" not in name:
            break
    results.append(row)
    print(json.dumps(row), flush=True)
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(results, f, indent=2)
print("\n| configuration | ms/frame (e2e, 1080p in) | start s (first / cached) | labels = CPU fp32 | status |")
print("|---|---:|---:|---:|---|")
for r in results:
    starts = " / ".join(str(r[k]) for k in ("start_s_first", "start_s_second") if k in r)
    agree = f"{r['agreement_vs_cpu_fp32'] * 100:.2f}%" if "agreement_vs_cpu_fp32" in r else "-"
    print(f"| {r['config']} | {r.get('ms_per_frame', '-')} | {starts or '-'} | {agree} | {r['status']} |")
EOF

echo "== several cameras: batched TensorRT (one engine, batch-dynamic export) against N engines (issue 19)"
# Engine only (the network on prepared inputs: what batching changes on a GPU): N processes, each
# with its own TensorRT engine of the batch-1 file, against one process running the batch-dynamic
# file (optimization profile min 1, opt = max = N) on N frames per run; all processes start
# together (ready / go on stdin) and count runs for 20 s. Target: batched >= 1.5x the frames/s.
timeout 900 "$PY" - "$OUT" <<'EOF'
import json, os, subprocess, sys, tempfile, warnings
warnings.simplefilter("ignore")
out = sys.argv[1]
from bisenet_ros.benchmark import _random_checkpoint
from bisenet_ros.config import SegmenterConfig
from bisenet_ros.inference.export import export_onnx
from bisenet_ros.inference.segmenter import load_torch_model, resolve_class_set

tmp = tempfile.mkdtemp(prefix="gpu_multicam_", dir=out)
cache = os.path.join(tmp, "trt_cache")
config = SegmenterConfig(variant="bisenetv2", weights=_random_checkpoint("bisenetv2", tmp), resolution=(1024, 512))
model = load_torch_model(config)
classes = resolve_class_set(config, model)
single = os.path.join(tmp, "bisenetv2_b1.onnx")
export_onnx(model, single, resolution=(1024, 512), class_set=classes)
probe = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
from bisenet_ros.inference import Segmenter
weights, count, cache, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
engine = Segmenter(weights=weights, backend="onnxruntime", device="tensorrt", precision="fp16", trt_cache_dir=cache)
blob = np.random.default_rng(0).standard_normal((count, 3, 512, 1024)).astype(np.float32)
run = (lambda: engine.backend.run(blob)) if count == 1 else (lambda: engine.backend.run_batch(blob))
for _ in range(5):
    run()
print(json.dumps({"ready": engine.backend.describe()}), flush=True)
sys.stdin.readline()
runs, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    run()
    runs += 1
print(json.dumps({"frames": runs * count, "seconds": time.perf_counter() - start}), flush=True)
"""


def side(weights, processes, count, seconds=20.0):
    procs = [subprocess.Popen([sys.executable, "-c", probe, weights, str(count), cache, str(seconds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    engines = [json.loads(p.stdout.readline())["ready"] for p in procs]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    figures = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return sum(f["frames"] / f["seconds"] for f in figures), engines[0]


rows = []
side(single, 1, 1, seconds=1.0)   # builds the batch-1 engine into the cache (minutes the first time)
for cameras in (2, 4):
    dynamic = os.path.join(tmp, f"bisenetv2_dynamic{cameras}.onnx")
    export_onnx(model, dynamic, resolution=(1024, 512), class_set=classes, batch=None, max_batch=cameras)
    side(dynamic, 1, cameras, seconds=1.0)   # builds the profile's engine
    separate, _ = side(single, cameras, 1)
    batched, engine = side(dynamic, 1, cameras)
    row = {"cameras": cameras, "separate_frames_per_s": round(separate, 1), "batched_frames_per_s": round(batched, 1),
           "ratio": round(batched / separate, 2), "engine": engine}
    rows.append(row)
    print(json.dumps(row), flush=True)
with open(os.path.join(out, "gpu_multicam.json"), "w") as f:
    json.dump(rows, f, indent=2)
print("\n| BiSeNetV2 1024x512 TensorRT fp16, engine only | N engines frames/s | batched frames/s | batched / N engines (target >= 1.5) |")
print("|---|---:|---:|---:|")
for r in rows:
    print(f"| N = {r['cameras']} | {r['separate_frames_per_s']} | {r['batched_frames_per_s']} | {r['ratio']}x |")
EOF

# The whole pipeline (scheduler, pre/post-processing, per-camera latency and share, RSS), as on the CPU.
timeout 900 "$PY" -m bisenet_ros.cli bench --cameras 2,4 --variants bisenetv2 --device tensorrt --precisions fp16 \
    --camera 1024x512 --resolution 1024x512 --rate 200 --settle 5 --duration 20 \
    --output "$OUT/gpu_multicam_pipeline.json" --markdown "$OUT/gpu_multicam_pipeline.md" \
    || echo "gpu_check: the multi-camera pipeline rows failed (see above)"

echo "== one AMP training step on CUDA"
"$PY" -m training synth --out "$OUT/synth" --train 8 --val 2 >/dev/null
timeout 120 "$PY" -m training train --config synthetic --data-root "$OUT/synth" --run-dir "$OUT/amp_run" \
    --device cuda --iters 2 --batch-size 2 --set train.amp=true --set train.eval_every=1000 --quiet \
    && echo "AMP training step: ok ($OUT/amp_run)"
