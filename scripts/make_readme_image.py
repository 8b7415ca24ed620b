"""Compose docs/images/demo.jpg from a finished demo (run scripts/demo.sh first).

Reads the demo's output bag (what the node would have published) and its input bag, and lays out
camera frame | ~/overlay | ~/drivable_mask for a few frames.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.image import message_to_cvimage

DEMO = Path(sys.argv[1] if len(sys.argv) > 1 else "demo_output")
FRAMES = (5, 33, 58)


def read_topic(bag: Path, topic: str) -> list[np.ndarray]:
    with AnyReader([bag]) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [message_to_cvimage(reader.deserialize(raw, c.msgtype))
                for c, _, raw in reader.messages(connections=connections)]


def main() -> None:
    camera = read_topic(DEMO / "drive_bag", "/camera/image_raw")
    overlay = read_topic(DEMO / "segmented_bag", "/segmentation/overlay")
    drivable = read_topic(DEMO / "segmented_bag", "/segmentation/drivable_mask")
    rows = []
    for i in FRAMES:
        mask = cv2.cvtColor(drivable[i], cv2.COLOR_GRAY2BGR)
        rows.append(np.hstack([camera[i], overlay[i], mask]))
    out = Path("docs/images/demo.jpg")
    cv2.imwrite(str(out), np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
