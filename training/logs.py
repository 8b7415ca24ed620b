"""Run logging: progress line, CSV and JSON-lines logs, TensorBoard scalars.

Files in the run directory::

    train.csv     step, lr, loss, loss_out, loss_aux0.., loss_detail_bce, loss_detail_dice, sec_per_step
    eval.csv      step, miou, pixel_acc, then one IoU column per class
    log.jsonl     one JSON object per train/eval record ({"kind": "train"|"eval", ...})
    tb/           TensorBoard event files (loss per head, lr, mIoU)

On ``--resume`` rows for steps after the checkpoint are dropped (those steps run again), so
the logs of a resumed run read exactly like those of an uninterrupted one.
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence


def _truncate_csv(path: Path, after_step: int) -> None:
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= after_step]
    with open(path, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows(kept)


def _truncate_jsonl(path: Path, after_step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= after_step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut by SIGKILL
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class RunLogger:
    """Writes the logs of one run (rank 0 only; other ranks get a disabled logger).

    Args:
        run_dir: the run directory.
        total_steps: for the progress line and ETA.
        start_step: first step of this process (0, or the resumed checkpoint's step).
        class_names: for the eval CSV columns.
        tensorboard: write TensorBoard scalars.
        enabled: False on non-zero ranks.
    """

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, class_names: Sequence[str],
                 tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.start_step = start_step
        self.class_names = list(class_names)
        self.run_dir = run_dir
        self.tty = sys.stderr.isatty()
        self._t0 = time.time()
        self._last_progress = 0.0
        self.tb = None
        if not enabled:
            return
        for name in ("train.csv", "eval.csv"):
            _truncate_csv(run_dir / name, start_step)
        _truncate_jsonl(run_dir / "log.jsonl", start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step hides events a killed run wrote after its last checkpoint.
                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
            except ImportError:
                print("tensorboard is not installed: no TensorBoard scalars", file=sys.stderr)

    def _append_csv(self, name: str, header: list[str], row: list[Any]) -> None:
        path = self.run_dir / name
        new = not path.is_file() or path.stat().st_size == 0
        with open(path, "a", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            if new:
                writer.writerow(header)
            writer.writerow(row)

    def _append_json(self, record: Mapping[str, Any]) -> None:
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")

    def train(self, step: int, lr: float, loss: float, parts: Mapping[str, float], sec_per_step: float) -> None:
        """Record the training losses after ``step`` steps."""
        if not self.enabled:
            return
        names = sorted(parts, key=lambda k: (k != "out", k))
        header = ["step", "lr", "loss"] + [f"loss_{k}" for k in names] + ["sec_per_step"]
        self._append_csv("train.csv", header, [step, f"{lr:.8g}", f"{loss:.6f}"]
                         + [f"{parts[k]:.6f}" for k in names] + [f"{sec_per_step:.4f}"])
        self._append_json({"kind": "train", "step": step, "lr": lr, "loss": loss,
                           **{f"loss_{k}": v for k, v in parts.items()}, "sec_per_step": sec_per_step,
                           "time": time.time()})
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            for k, v in parts.items():
                self.tb.add_scalar(f"train/loss_{k}", v, step)

    def eval(self, step: int, miou: float, pixel_acc: float, iou: Sequence[float]) -> None:
        """Record a validation result after ``step`` steps."""
        if not self.enabled:
            return
        header = ["step", "miou", "pixel_acc"] + [f"iou_{n.replace(' ', '_')}" for n in self.class_names]
        self._append_csv("eval.csv", header, [step, f"{miou:.6f}", f"{pixel_acc:.6f}"]
                         + ["" if math.isnan(v) else f"{v:.6f}" for v in iou])
        self._append_json({"kind": "eval", "step": step, "miou": miou, "pixel_acc": pixel_acc,
                           "iou": {n: (None if math.isnan(v) else v) for n, v in zip(self.class_names, iou)},
                           "time": time.time()})
        if self.tb is not None:
            self.tb.add_scalar("val/miou", miou, step)
            self.tb.add_scalar("val/pixel_acc", pixel_acc, step)
        self.message(f"step {step}: val mIoU {100 * miou:.2f}%  pixel acc {100 * pixel_acc:.2f}%")

    def progress(self, step: int, loss: float, lr: float, force: bool = False) -> None:
        """The progress line: a bar rewritten in place on a terminal, plain lines otherwise."""
        if not self.enabled:
            return
        now = time.time()
        if not force and now - self._last_progress < (0.5 if self.tty else 30.0):
            return
        self._last_progress = now
        done = step - self.start_step
        rate = done / max(now - self._t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        frac = step / max(self.total, 1)
        bar = "#" * int(frac * 24) + "-" * (24 - int(frac * 24))
        eta_s = "?" if math.isinf(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        line = f"[{bar}] {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {rate:.2f} it/s eta {eta_s}"
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(("\n" if self.tty else "") + text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.enabled and self.tty:
            print(file=sys.stderr)
