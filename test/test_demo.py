"""The README's first quick-start command, shortened: scripts/demo.sh end to end (synthetic data,
training, export, drive bag, replay, report) with a few training steps and frames."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"), DEMO_TRAIN_ITERS="6", DEMO_SCENES="16", DEMO_VAL_SCENES="4",
               DEMO_FRAMES="12", DEMO_QUANT_METHOD="minmax")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    demo = tmp_path / "demo"
    assert f"Report:        {demo}/report/report.html" in done.stdout
    metrics = json.loads((demo / "report" / "metrics.json").read_text())
    assert metrics["frames"]["processed"] == 12
    assert 0.0 <= metrics["evaluation"]["miou"] <= 1.0
    # The drive records camera_info and /tf_static: the replay writes the grid and its IoU.
    birds_eye = metrics["birds_eye"]
    assert birds_eye["topic_messages"] == 12 and birds_eye["frames_evaluated"] == 12
    assert 0.0 <= birds_eye["drivable_iou"] <= 1.0
    assert "alt='drivable grid'" in (demo / "report" / "report.html").read_text()
    assert (demo / "segmented_bag" / "metadata.yaml").is_file()
    assert (demo / "stdc1_synthetic.onnx").is_file()
    # The int8 model: calibrated on the drive, checked on the validation scenes, then compared
    # with fp32 on the drive's frames, side by side (time per frame, mIoU, label agreement).
    quality = json.loads((demo / "stdc1_synthetic_int8.quality.json").read_text())
    assert quality["held_out_frames"] == 4 and quality["checked_on"].endswith("(val)")
    assert 0.0 <= quality["agreement"] <= 1.0 and quality["miou_fp32"] is not None
    compared = json.loads((demo / "report_int8" / "metrics.json").read_text())
    fp32, int8 = compared["models"]
    assert fp32["provenance"]["precision"] == "fp32" and int8["provenance"]["precision"] == "int8"
    assert fp32["evaluation"]["frames_evaluated"] == int8["evaluation"]["frames_evaluated"] == 12
    assert fp32["engine_ms_per_frame"] > 0 and int8["engine_ms_per_frame"] > 0
    assert 0.0 <= compared["comparison"]["disagreement"]["rate"] <= 1.0
    assert "engine ms per frame" in (demo / "report_int8" / "report.html").read_text()
    # A second run reuses the trained model instead of training again.
    again = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the model trained on an earlier run" in again.stdout
