"""Where the published checkpoints' key layouts live (``../shared/reference`` beside the clone)."""
from __future__ import annotations

from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
MANIFESTS = {
    "bisenetv1": "coincheung_bisenetv1.json",
    "bisenetv2": "coincheung_bisenetv2.json",
    "stdc1": "stdc1_seg.json",
    "stdc2": "stdc2_seg.json",
}
