"""The evaluation report of a replay: ``metrics.json``, ``frames.csv`` and a self-contained HTML page.

The HTML page embeds its PNG plots and sample overlays as base64 data URIs, so it can be mailed
or attached to a ticket as one file. ``metrics.json`` holds every number shown on the page.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bisenet_ros.fileio import NewOutputs
from bisenet_ros.inference.segmenter import model_summary
from bisenet_ros.replay import metrics as M
from bisenet_ros.replay.cameras import CameraResult
from bisenet_ros.replay.pipeline import ReplayResult
from bisenet_ros.replay.writer import OutputExistsError

REPORT_FILES = ("report.html", "metrics.json", "frames.csv")


def prepare_report_dir(path: str | Path, *, overwrite: bool) -> Path:
    """Check the report folder before the run: refuse to replace an earlier report unless
    ``overwrite``. Nothing is created (:func:`write_report` makes the folder), so a run that fails
    leaves no empty folder behind.

    Raises:
        OutputExistsError: A report is already there and ``overwrite`` is False, or ``path`` is a
            file.
    """
    path = Path(path)
    existing = [name for name in REPORT_FILES if (path / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"report folder {path} already holds {', '.join(existing)}; pass "
                                "--overwrite to replace it, or choose another --report folder")
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"--report {path} is a file; expected a folder")
    return path


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None and arrays by lists, recursively (JSON has neither)."""
    # JSON has no NaN/inf; an undefined metric is null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def build_metrics(result: ReplayResult) -> dict[str, Any]:
    """Every figure of the report as a JSON-ready dict."""
    opts = result.options
    frames = result.frames
    names = result.class_names or [str(i) for i in range(len(frames[0].shares) if frames else 0)]
    shares = (np.stack([f.shares for f in frames]) if frames
              else np.zeros((0, len(names))))
    changes = [f.change_fraction for f in frames if f.change_fraction is not None]
    drivable = [f.drivable_fraction for f in frames]
    throughput = result.throughput_fps()
    evaluation = _evaluation(result.confusion, names, result.unmatched_predictions,
                             result.unmatched_labels,
                             ", ".join(c.ground_truth for c in result.cameras if c.ground_truth))
    image = result.image_topic
    data = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "bag": str(opts.input), "storage": result.input_storage,
            "image_topic": image.name if image else None,
            "image_type": image.msgtype if image else None,
            "messages_in_topic": image.count if image else None,
            "frame_rate_hz": result.bag_fps(),
        },
        "output": {"bag": str(opts.output), "storage": opts.storage, "closed": result.output_closed,
                   "messages": result.output_counts},
        # What ran (from the engine built), and the options it was built from.
        "engine": result.engine,
        "config": result.config,
        "status": {
            "exit_code": result.exit_code,
            "interrupted": result.interrupted,
            "fatal_error": result.fatal,
            "input_damage": result.damage,
            "warnings": result.warnings,
        },
        "frames": {
            "read": result.frames_read,
            "processed": result.frames_processed,
            "skipped_corrupt": len(result.corrupt),
            "corrupt": result.corrupt,
            "corrupt_labels": result.corrupt_labels,
        },
        "timing": {
            "wall_s": result.wall_s,
            "throughput_fps": throughput,
            "engine_fps": _engine_fps(frames),
            "real_time_factor": result.real_time_factor(),
            "latency_ms": M.latency_summary([f.timings for f in frames]),
        },
        "content": {
            "class_share_mean": {n: float(v) for n, v in zip(names, shares.mean(0))} if frames else {},
            "drivable_fraction": M.percentiles(drivable) if drivable else None,
            "drivable_classes": [names[i] if i < len(names) else str(i) for i in result.drivable_ids],
            "label_change_fraction": M.percentiles(changes) if changes else None,
        },
        "evaluation": evaluation,
        "birds_eye": result.grid.summary() if result.grid is not None else None,
    }
    if opts.multi_camera:  # the figures above are the totals over the cameras
        data["input"]["image_topics"] = [c.image_topic.name for c in result.cameras]
        data["input"]["messages_in_topic"] = result.messages_in_topics
        data["timing"]["mean_batch_size"] = (float(np.mean([f.batch_size for f in frames]))
                                             if frames else None)
        data["cameras"] = {c.name: _camera_metrics(result, c, names) for c in result.cameras}
    return json_safe(data)


def _engine_fps(frames: Sequence[Any]) -> float | None:
    """Frames per second of engine time (a batch's time shared by its frames)."""
    call = [f.timings["engine_call"] / f.batch_size for f in frames if "engine_call" in f.timings]
    return (1000.0 / float(np.mean(call))) if call else None


def _evaluation(confusion: M.ConfusionMatrix | None, names: list[str], unmatched_predictions: int,
                unmatched_labels: int, ground_truth: str) -> dict[str, Any] | None:
    if confusion is None:
        return None
    evaluation = confusion.summary(names)
    evaluation["unmatched_predictions"] = unmatched_predictions
    evaluation["unmatched_labels"] = unmatched_labels
    evaluation["ground_truth"] = ground_truth
    return evaluation


def _camera_metrics(result: ReplayResult, camera: CameraResult, names: list[str]) -> dict[str, Any]:
    """One camera's figures in a multi-camera replay."""
    frames = result.camera_frames(camera.name)
    drivable = [f.drivable_fraction for f in frames]
    changes = [f.change_fraction for f in frames if f.change_fraction is not None]
    corrupt = [c for c in result.corrupt if c.get("camera") == camera.name]
    return {
        "image_topic": camera.image_topic.name, "image_type": camera.image_topic.msgtype,
        "messages_in_topic": camera.image_topic.count,
        "frame_rate_hz": M.frame_rate(camera.bag_times),
        "frames": {"read": camera.frames_read, "processed": len(frames),
                   "skipped_corrupt": len(corrupt)},
        "throughput_fps": len(frames) / result.wall_s if result.wall_s > 0 and frames else None,
        "engine_fps": _engine_fps(frames),
        "latency_ms": M.latency_summary([f.timings for f in frames]),
        "drivable_fraction": M.percentiles(drivable) if drivable else None,
        "label_change_fraction": M.percentiles(changes) if changes else None,
        "evaluation": _evaluation(camera.confusion, names, camera.unmatched_predictions,
                                  camera.unmatched_labels, camera.ground_truth or ""),
        "birds_eye": camera.grid.camera_summary() if camera.grid is not None else None,
    }


def write_report(result: ReplayResult, folder: str | Path, *, palette: np.ndarray | None = None) -> Path:
    """Write ``report.html``, ``metrics.json`` and ``frames.csv`` into ``folder``.

    Returns:
        The path of ``report.html``.
    """
    folder = Path(folder)
    data = build_metrics(result)
    # Everything is built before anything is written, and a failed write removes the folder it
    # made: no half report is left behind.
    page = _html(result, data, _plots(result, palette if palette is not None else result.palette))
    with NewOutputs(folder) as written:
        folder.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            written.add(folder / name)
        (folder / "metrics.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        _write_csv(result, folder / "frames.csv")
        (folder / "report.html").write_text(page, encoding="utf-8")
    return folder / "report.html"


def _write_csv(result: ReplayResult, path: Path) -> None:
    names = result.class_names
    stages: list[str] = []
    for frame in result.frames:
        stages.extend(s for s in frame.timings if s not in stages)
    camera = ["camera"] if result.options.multi_camera else []  # a column only with cameras
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(camera + ["index", "stamp_ns", "bag_ns", "drivable_fraction",
                                  "label_change_fraction"]
                        + [f"ms_{s}" for s in stages] + [f"share_{n}" for n in names])
        for f in result.frames:
            writer.writerow([f.camera] * len(camera)
                            + [f.index, f.stamp_ns, f.bag_ns, f"{f.drivable_fraction:.6f}",
                               "" if f.change_fraction is None else f"{f.change_fraction:.6f}"]
                            + [f"{f.timings[s]:.3f}" if s in f.timings else "" for s in stages]
                            + [f"{v:.6f}" for v in f.shares[:len(names)]])


# -- plots -------------------------------------------------------------------------------------
def figure_png(fig: Any) -> str:
    """A matplotlib figure as a base64 PNG for an ``<img src="data:...">`` (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(result: ReplayResult, palette: np.ndarray | None) -> dict[str, str]:
    if not result.frames:
        return {}
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers and in CI
    import matplotlib.pyplot as plt

    frames = result.frames
    if result.options.multi_camera:  # the cameras' frames interleave: plot them in time order
        frames = sorted(frames, key=lambda f: f.stamp_ns)
    t0 = frames[0].stamp_ns
    t = np.array([(f.stamp_ns - t0) / 1e9 for f in frames])
    names = result.class_names
    shares = np.stack([f.shares for f in frames])
    plots: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(9, 3.2))
    order = np.argsort(-shares.mean(0))
    top = [i for i in order[:8] if shares[:, i].mean() > 0]
    colors = [tuple(np.asarray(palette[i], float) / 255.0) if palette is not None and i < len(palette)
              else None for i in top]
    ax.stackplot(t, *(shares[:, i] for i in top), labels=[names[i] for i in top],
                 colors=colors if all(c is not None for c in colors) else None)
    ax.set_xlabel("time since first frame (s)")
    ax.set_ylabel("pixel share")
    ax.set_ylim(0, 1)
    ax.set_title("Class pixel shares (8 largest classes)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    plots["shares"] = figure_png(fig)

    fig, ax1 = plt.subplots(figsize=(9, 3.2))
    ax1.plot(t, [f.drivable_fraction for f in frames], color="tab:green", label="drivable fraction")
    ax1.set_ylim(0, 1)
    ax1.set_xlabel("time since first frame (s)")
    ax1.set_ylabel("drivable fraction", color="tab:green")
    ax2 = ax1.twinx()
    change = [np.nan if f.change_fraction is None else f.change_fraction for f in frames]
    ax2.plot(t, change, color="tab:red", alpha=0.7, label="changed pixels")
    finite = [c for c in change if not np.isnan(c)]
    ax2.set_ylim(0, max(0.05, 1.1 * max(finite)) if finite else 1)  # from 0: no exaggeration
    ax2.set_ylabel("share of pixels whose label changed", color="tab:red")
    ax1.set_title("Drivable area and temporal stability")
    plots["drivable"] = figure_png(fig)

    stages = M.latency_summary([f.timings for f in frames])
    fig, ax = plt.subplots(figsize=(9, 3.2))
    labels = list(stages)
    data = [[f.timings[s] for f in frames if s in f.timings] for s in labels]
    try:  # matplotlib >= 3.10 spells it 'orientation'; 'vert' is deprecated there
        ax.boxplot(data, orientation="horizontal", showfliers=True)
    except TypeError:
        ax.boxplot(data, vert=False, showfliers=True)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.set_xlabel("ms per frame")
    ax.set_title("Latency per stage")
    plots["latency"] = figure_png(fig)

    cm = result.confusion
    if cm is not None and cm.matrix.sum():
        ious = cm.iou()
        fig, ax = plt.subplots(figsize=(9, 3.2))
        ax.bar(range(len(ious)), [0 if v is None else v for v in ious],
               color=["lightgrey" if v is None else "tab:blue" for v in ious])
        ax.set_xticks(range(len(ious)), names[:len(ious)], rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("IoU")
        ax.set_title("Per-class IoU (grey: class absent from truth and prediction)")
        plots["iou"] = figure_png(fig)

        rows = cm.matrix.sum(1, keepdims=True)
        norm = np.divide(cm.matrix, rows, out=np.zeros(cm.matrix.shape), where=rows > 0)
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        image = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(norm)), names[:len(norm)], rotation=90, fontsize=7)
        ax.set_yticks(range(len(norm)), names[:len(norm)], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        ax.set_title("Confusion matrix (rows normalised)")
        fig.colorbar(image, ax=ax, fraction=0.046)
        plots["confusion"] = figure_png(fig)
    return plots


# -- HTML --------------------------------------------------------------------------------------
def format_value(value: Any, digits: int = 3, suffix: str = "") -> str:
    """A number for the HTML report (``n/a`` for None)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def html_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """Rows (and an optional header) as an HTML table, cells escaped."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _birds_eye_html(result: ReplayResult, section: dict[str, Any] | None) -> list[str]:
    """The drivable grid section: where camera and pose came from, the IoU, a grid picture."""
    if section is None or result.grid is None:
        return []
    grid = section["grid"]
    if section.get("fused"):
        sources = [("cameras fused", ", ".join(n for n, c in section["cameras"].items() if c)
                    + "; without camera model or pose (cells unknown): "
                    + (", ".join(n for n, c in section["cameras"].items() if not c) or "none"))]
        sources += [(f"camera {name}", f"model from {c['camera_model_from']}, pose from "
                     f"{c['pose_from']}, {c['grids']} grids")
                    for name, c in section["cameras"].items() if c]
    else:
        sources = [("camera model", f"{section['camera_model_from']} "
                                    f"({section['camera_models']} calibration(s))"),
                   ("camera pose", section["pose_from"])]
    parts = ["<h2>Bird's-eye drivable grid</h2>", html_table([
        ("grid", f"{grid['width']} x {grid['height']} cells of {grid['resolution_m']} m in "
                 f"{grid['frame']}, x {grid['x_m'][0]}..{grid['x_m'][1]} m, "
                 f"y {grid['y_m'][0]}..{grid['y_m'][1]} m, max range {grid['max_range_m']} m"),
        *sources,
        ("grids written", section["topic_messages"]),
        ("bird's-eye drivable IoU", format_value(section["drivable_iou"], 4)
         + (f" over {section['frames_evaluated']} frames (grid of the ground truth vs grid of "
            "the prediction, cells the truth grid sees)" if section["frames_evaluated"] else "")),
    ])]
    problems = [("", section)] if not section.get("fused") else [
        (f"camera {name}: ", c) for name, c in section["cameras"].items() if c]
    for prefix, part in problems:
        for problem, count in part["frames_without_grid"].items():
            parts.append(f"<p class='bad'>{html.escape(prefix)}{count} frames without a grid: "
                         f"{html.escape(problem)}</p>")
    png = result.grid.picture_png()
    if png:
        caption = ("prediction (left) and ground truth (right)" if section["frames_evaluated"]
                   else "prediction")
        parts.append(f"<p>Grid of the first {'evaluated ' if section['frames_evaluated'] else ''}"
                     f"frame, {caption}; forward is up, left is left; green drivable, red "
                     "visible but not drivable, grey unknown.</p>"
                     f"<img alt='drivable grid' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode('ascii')}'>")
    return parts


def _cameras_html(cameras: dict[str, Any] | None) -> list[str]:
    """The per-camera table of a multi-camera replay (the other sections give the totals)."""
    if not cameras:
        return []
    rows = []
    for name, c in cameras.items():
        latency = c["latency_ms"].get("engine_call", {})
        evaluation = c["evaluation"]
        rows.append((name, c["image_topic"], f"{c['frames']['processed']} / {c['frames']['read']}",
                     c["frames"]["skipped_corrupt"], format_value(c["frame_rate_hz"], 2),
                     format_value(c["throughput_fps"], 2), format_value(latency.get("p50"), 2),
                     format_value(latency.get("p99"), 2),
                     format_value(evaluation["miou"], 4) if evaluation else "no ground truth",
                     c["birds_eye"]["grids"] if c["birds_eye"] else "no camera model/pose"))
    return ["<h2>Cameras</h2>", html_table(rows, [
        "camera", "topic", "frames processed / read", "corrupt", "bag Hz", "frames/s",
        "engine_call p50 ms", "p99 ms", "mIoU", "grids"]),
        "<p>One engine runs the cameras' frames in batches (a frame's engine_call is its "
        "batch's time); the other sections give the totals over all cameras.</p>"]


def _html(result: ReplayResult, data: dict[str, Any], plots: dict[str, str]) -> str:
    status = data["status"]
    timing = data["timing"]
    frames = data["frames"]
    inp = data["input"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>bisenet_ros replay report: {html.escape(Path(inp['bag']).name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
        ".bad{color:#b00020;font-weight:bold}.ok{color:#107020}img{max-width:100%}"
        ".samples img{width:32%;margin:.3%}</style></head><body>",
        f"<h1>Replay report: {html.escape(str(inp['bag']))}</h1>",
    ]
    if status["interrupted"]:
        parts.append(f"<p class='bad'>Interrupted by {status['interrupted']}: the figures cover the "
                     f"{frames['processed']} frames processed before the stop.</p>")
    if status["fatal_error"]:
        parts.append(f"<p class='bad'>Stopped by an error: {html.escape(status['fatal_error'])}</p>")
    if status["input_damage"]:
        parts.append("<p class='bad'>The input bag is damaged; every readable message was "
                     "processed:</p><ul>" + "".join(f"<li>{html.escape(d)}</li>"
                                                     for d in status["input_damage"]) + "</ul>")
    for warning in status["warnings"]:
        parts.append(f"<p>Warning: {html.escape(warning)}</p>")
    engine = data["engine"] or {}
    parts.append("<h2>Run</h2>")
    parts.append(html_table([
        ("input", f"{inp['bag']} ({inp['storage']})"),
        ("camera topic", f"{inp['image_topic']} [{inp['image_type']}]" if inp["image_topic"]
         else ", ".join(inp.get("image_topics", []))),
        ("output", f"{data['output']['bag']} ({data['output']['storage']})"),
        ("model", model_summary(engine)),
        ("frames processed / in topic", f"{frames['processed']} / {inp['messages_in_topic']}"),
        ("corrupt messages skipped", frames["skipped_corrupt"]),
        ("bag frame rate", format_value(inp["frame_rate_hz"], 2, " Hz")),
        ("replay throughput", format_value(timing["throughput_fps"], 2, " frames/s")),
        ("engine alone", format_value(timing["engine_fps"], 2, " frames/s")),
        ("real-time factor", format_value(timing["real_time_factor"], 2, "x")
         + " (throughput / bag frame rate; > 1 keeps up with the camera)"),
        ("wall time", format_value(timing["wall_s"], 1, " s")),
    ]))
    lat = timing["latency_ms"]
    parts.append("<h2>Latency per stage (ms)</h2>")
    parts.append(html_table([(s, format_value(v["p50"], 2), format_value(v["p90"], 2), format_value(v["p99"], 2),
                          format_value(v["max"], 2)) for s, v in lat.items()],
                        ["stage", "p50", "p90", "p99", "max"]))
    parts.append("<p>decode: message to frame (reader thread); engine stages as reported by the "
                 "engine; engine_call: the whole engine call; write: message fields, serialization "
                 "and bag write (writer thread). Decode and write overlap with inference.</p>")
    if "latency" in plots:
        parts.append(f"<img alt='latency' src='data:image/png;base64,{plots['latency']}'>")
    evaluation = data["evaluation"]
    if evaluation is not None:
        parts.append(f"<h2>Accuracy against ground truth ({html.escape(evaluation['ground_truth'])})</h2>")
        parts.append(html_table([
            ("mIoU", format_value(evaluation["miou"], 4)),
            ("pixel accuracy", format_value(evaluation["pixel_accuracy"], 4)),
            ("drivable-area IoU", format_value(evaluation["drivable_iou"], 4)),
            ("frames evaluated", evaluation["frames_evaluated"]),
            ("frames without ground truth", evaluation["unmatched_predictions"]),
        ]))
        for key in ("iou", "confusion"):
            if key in plots:
                parts.append(f"<img alt='{key}' src='data:image/png;base64,{plots[key]}'>")
        parts.append(html_table([(n, format_value(v, 4)) for n, v in evaluation["per_class_iou"].items()],
                            ["class", "IoU"]))
    parts.extend(_cameras_html(data.get("cameras")))
    parts.extend(_birds_eye_html(result, data["birds_eye"]))
    parts.append("<h2>Content over time</h2>")
    for key in ("shares", "drivable"):
        if key in plots:
            parts.append(f"<img alt='{key}' src='data:image/png;base64,{plots[key]}'>")
    content = data["content"]
    if content["label_change_fraction"]:
        c = content["label_change_fraction"]
        parts.append(f"<p>Temporal stability: on average {format_value(c['mean'] * 100, 2)}% of the pixels "
                     f"change label between consecutive frames (p90 {format_value(c['p90'] * 100, 2)}%, "
                     f"max {format_value(c['max'] * 100, 2)}%).</p>")
    if result.samples:
        parts.append("<h2>Sample overlays</h2><div class='samples'>")
        for camera in result.cameras:
            for index, jpeg in sorted(camera.samples):
                title = html.escape(f"{camera.name} frame {index}" if camera.name else f"frame {index}")
                parts.append(f"<img title='{title}' alt='{title}' src='data:image/jpeg;base64,"
                             f"{base64.b64encode(jpeg).decode('ascii')}'>")
        parts.append("</div>")
    if frames["corrupt"] or frames["corrupt_labels"]:
        parts.append("<h2>Skipped messages</h2>")
        rows = [(f"image #{c['index']}", c["bag_ns"], c["reason"]) for c in frames["corrupt"]]
        rows += [(f"label #{c['index']}", c["bag_ns"], c["reason"]) for c in frames["corrupt_labels"]]
        parts.append(html_table(rows[:200], ["message", "bag time (ns)", "reason"]))
    parts.append("<p>All figures are in metrics.json; per-frame values in frames.csv.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
