#!/usr/bin/env bash
# Quick start 1: set up, then run the whole job end to end on synthetic data, nothing downloaded.
#
#   1. generate synthetic Cityscapes-layout street scenes        (python -m training synth)
#   2. train a small STDC1 model on them on the CPU              (python -m training train)
#      -- reused on later runs: delete demo_output/run to retrain
#   3. export it to ONNX with its metadata and the argmax inside (python -m training export)
#   4. record a synthetic drive with ground truth as a ROS 2 bag (python -m training drive)
#   5. quantize the model to int8, calibrated on the drive bag, checked against fp32 on the
#      synthetic validation scenes                               (bisenet-ros quantize)
#   6. replay the bag through the node's engine and message codec, writing the node's topics to
#      an output bag and an evaluation report, with the fp32 and with the int8 model (bisenet-ros replay)
#
# Environment (for the test that runs a shortened demo): DEMO_DIR (default demo_output),
# DEMO_TRAIN_ITERS (default: the synthetic recipe's), DEMO_SCENES / DEMO_VAL_SCENES (default 240 / 40 scenes),
# DEMO_FRAMES (default 80 drive frames), DEMO_QUANT_METHOD (default auto: try each calibration method);
# PYTHON and VENV as in scripts/setup_env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh

OUT=${DEMO_DIR:-demo_output}
BIN=${VENV:-.venv}/bin   # the environment scripts/setup_env.sh made
PY=$BIN/python
# PyTorch's OpenMP threads spin-wait by default, which is slow when other processes share the
# cores; passive waiting costs nothing on an idle machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p "$OUT"
start=$SECONDS

if [ ! -f "$OUT/synth/.complete" ]; then
    echo "== 1/6 synthetic street scenes"
    rm -rf "$OUT/synth"
    $PY -m training synth --out "$OUT/synth" --train "${DEMO_SCENES:-240}" --val "${DEMO_VAL_SCENES:-40}"
    touch "$OUT/synth/.complete"
fi

if [ -f "$OUT/run/best.pth" ]; then
    echo "== 2/6 reusing the model trained on an earlier run ($OUT/run; delete it to retrain)"
else
    echo "== 2/6 training STDC1 on the synthetic scenes (CPU, a few minutes)"
    iters=()
    [ -n "${DEMO_TRAIN_ITERS:-}" ] && iters=(--iters "$DEMO_TRAIN_ITERS")
    if [ -f "$OUT/run/last.pth" ]; then
        # An interrupted earlier demo: continue it instead of starting again.
        $PY -m training train --resume --run-dir "$OUT/run" --data-root "$OUT/synth" "${iters[@]}"
    else
        $PY -m training train --config synthetic --data-root "$OUT/synth" --run-dir "$OUT/run" "${iters[@]}"
    fi
fi

echo "== 3/6 export to ONNX"
$PY -m training export "$OUT/run" --out "$OUT/stdc1_synthetic.onnx"

echo "== 4/6 synthetic drive bag"
$PY -m training drive --out "$OUT/drive_bag" --frames "${DEMO_FRAMES:-80}" --overwrite

echo "== 5/6 int8 model: calibrated on the drive bag, checked on the synthetic validation scenes"
"$BIN/bisenet-ros" quantize "$OUT/stdc1_synthetic.onnx" --calibration "$OUT/drive_bag" --image-topic /camera/image_raw \
    --check "$OUT/synth" --split val --method "${DEMO_QUANT_METHOD:-auto}" \
    -o "$OUT/stdc1_synthetic_int8.onnx" --overwrite

echo "== 6/6 replay through the engine and message codec, with the evaluation report;"
echo "       then fp32 against int8 on the same frames (time per frame, mIoU, label agreement)"
"$BIN/bisenet-ros" replay "$OUT/drive_bag" --output "$OUT/segmented_bag" --overwrite \
    --weights "$OUT/stdc1_synthetic.onnx" --backend onnxruntime \
    --labels-topic /camera/labels --report "$OUT/report"
rm -rf "$OUT/report_int8"   # a fresh comparison each run (evaluate would reuse its cached results)
"$BIN/bisenet-ros" evaluate "$OUT/drive_bag" --weights "$OUT/stdc1_synthetic.onnx" \
    --compare "$OUT/stdc1_synthetic_int8.onnx" --image-topic /camera/image_raw \
    --labels-topic /camera/labels --no-progress --report "$OUT/report_int8"

echo
echo "Demo finished in $((SECONDS - start)) s."
echo "Report:        $OUT/report/report.html (metrics: $OUT/report/metrics.json)"
echo "Output bag:    $OUT/segmented_bag (ros2 bag play $OUT/segmented_bag)"
echo "int8 model:    $OUT/stdc1_synthetic_int8.onnx (quality check: $OUT/stdc1_synthetic_int8.quality.json;"
echo "               fp32 vs int8: $OUT/report_int8/report.html)"
