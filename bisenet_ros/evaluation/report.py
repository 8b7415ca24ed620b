"""The fleet evaluation report: ``metrics.json`` and a self-contained ``report.html``, in the
style of the replay report (plots embedded as base64 PNGs, every figure also in the JSON).

Worst first: the per-bag table is sorted by mIoU (lowest first), the per-class table by IoU.
"""
from __future__ import annotations

import datetime
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from bisenet_ros.evaluation.fleet import FleetResult
from bisenet_ros.fileio import write_atomic
from bisenet_ros.inference.segmenter import model_summary
from bisenet_ros.replay.report import figure_png, format_value, html_table, json_safe

REPORT_FILES = ("report.html", "metrics.json")


def threads_text(threads: int) -> str:
    """How many engine threads each worker runs, for the report and the console."""
    return (f"{threads} engine thread(s) per worker" if threads > 0
            else "engine threads: the backend's default")


def build_metrics(result: FleetResult) -> dict[str, Any]:
    """Every figure of the report as a JSON-ready dict."""
    models = []
    for summary in result.models:
        cm = summary.confusion
        models.append({
            "name": summary.name, "provenance": summary.provenance, "config": summary.config,
            "engine_ms_per_frame": summary.engine_ms,
            "evaluation": None if cm is None else cm.summary(result.class_names),
        })
    bags = []
    for bag in result.bags:
        row: dict[str, Any] = {
            "bag": bag.bag, "status": bag.status, "reason": bag.reason, "cached": bag.cached,
            "attempts": bag.attempts, "frames_in_topic": bag.frames_in_topic,
            "frames_processed": bag.frames_processed, "corrupt_skipped": bag.corrupt,
            "frames_without_ground_truth": bag.unmatched, "throughput_fps": bag.throughput_fps(),
            "wall_s": bag.wall_s, "damage": bag.damage, "warnings": bag.warnings, "models": []}
        for figures in bag.models:
            cm = figures.confusion
            row["models"].append({
                "frames_evaluated": cm.frames if cm else 0,
                "miou": cm.miou() if cm else None,
                "pixel_accuracy": cm.pixel_accuracy() if cm else None,
                "drivable_iou": cm.drivable_iou() if cm else None,
                "engine_ms_per_frame": figures.engine_ms})
        if bag.disagreement is not None:
            row["disagreement_rate"] = bag.disagreement.rate()
        bags.append(row)
    data = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": {"runner": result.runner, "engine_threads_per_worker": result.threads,
                "wall_s": result.wall_s, "throughput_fps": result.throughput_fps(),
                "processing_span_s": result.processing_span_s(),
                "interrupted": result.interrupted},
        "bags": {"total": len(result.bags), "counted": len(result.counted),
                 "failed": len(result.failed), "cached": sum(b.cached for b in result.bags),
                 "frames_processed": result.frames_processed()},
        "class_names": result.class_names,
        "models": models,
        "per_bag": bags,
        "comparison": result.comparison(),
        "disagreement_heatmap": (None if result.disagreement is None
                                 else result.disagreement.heatmap()),
    }
    return json_safe(data)


def write_report(result: FleetResult, folder: str | Path) -> Path:
    """Write ``metrics.json`` and ``report.html`` into ``folder`` (atomically); returns the HTML path."""
    folder = Path(folder)
    data = build_metrics(result)
    page = _html(result, data, _plots(result))  # built first: a failure here writes no half report
    write_atomic(folder / "metrics.json", json.dumps(data, indent=2) + "\n")
    write_atomic(folder / "report.html", page)
    return folder / "report.html"


def _plots(result: FleetResult) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display on servers and in CI
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    names = result.class_names
    ious = [m.confusion.iou() for m in result.models if m.confusion is not None]
    if ious:
        fig, ax = plt.subplots(figsize=(9, 3.2))
        width = 0.8 / len(ious)
        x = np.arange(len(names))
        for i, (values, summary) in enumerate(zip(ious, result.models)):
            ax.bar(x + i * width - 0.4 + width / 2, [0 if v is None else v for v in values], width,
                   label=summary.name)
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("IoU")
        ax.set_title("Per-class IoU over all bags (one confusion matrix)")
        if len(ious) > 1:
            ax.legend(fontsize=8)
        plots["iou"] = figure_png(fig)
    heat = result.disagreement.heatmap() if result.disagreement is not None else None
    if heat is not None:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        image = ax.imshow(heat, cmap="magma", vmin=0, extent=(0, 1, 1, 0))
        ax.set_xlabel("image x (fraction of width)")
        ax.set_ylabel("image y (fraction of height)")
        ax.set_title("Where A and B disagree (share of frames' pixels per cell)")
        fig.colorbar(image, ax=ax, fraction=0.046)
        plots["disagreement"] = figure_png(fig)
    return plots


def _img(plots: dict[str, str], key: str) -> str:
    return f"<img alt='{key}' src='data:image/png;base64,{plots[key]}'>" if key in plots else ""


def _html(result: FleetResult, data: dict[str, Any], plots: dict[str, str]) -> str:
    run, bags = data["run"], data["bags"]
    two = len(result.models) > 1
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>bisenet_ros fleet evaluation: {bags['total']} bags</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
        ".bad{color:#b00020;font-weight:bold}img{max-width:100%}</style></head><body>",
        f"<h1>Fleet evaluation: {bags['total']} bags, {bags['frames_processed']} frames</h1>",
    ]
    if run["interrupted"]:
        parts.append("<p class='bad'>Interrupted: the figures cover the bags finished before the "
                     "stop; run the same command again to evaluate the rest.</p>")
    if result.failed:
        parts.append(f"<p class='bad'>{len(result.failed)} bag(s) could not be evaluated and are "
                     "not counted (see Failed bags).</p>")
    comparison = data["comparison"]
    if comparison and comparison["regressions"]:
        parts.append("<p class='bad'>Regressions of B against A beyond "
                     f"{comparison['threshold_points']:.2f} IoU points:</p><ul>"
                     + "".join(f"<li>{html.escape(r)}</li>" for r in comparison["regressions"]) + "</ul>")
    parts.append("<h2>Run</h2>")
    rows: list[tuple[Any, ...]] = [
        ("runner", f"{run['runner']}, {threads_text(run['engine_threads_per_worker'] or 0)}"),
        ("bags counted / failed / from cache", f"{bags['counted']} / {bags['failed']} / {bags['cached']}"),
        ("throughput (bags run now)", format_value(run["throughput_fps"], 2, " frames/s")),
        ("wall time", format_value(run["wall_s"], 1, " s")),
    ]
    for model in data["models"]:
        p = model["provenance"]
        rows.append((f"model {model['name']}", f"{model_summary(p)} (key {p.get('model_key')})"))
    parts.append(html_table(rows))

    evals = [m["evaluation"] for m in data["models"]]
    if any(e is not None for e in evals):
        names = [m["name"] for m in data["models"]]
        parts.append("<h2>Accuracy over all bags (one confusion matrix summed over every frame)</h2>")
        header = ["metric"] + names + (["B - A (points)"] if two else [])
        metric_rows = []
        for key, label in (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"),
                           ("drivable_iou", "drivable-area IoU")):
            row = [label] + [format_value(e[key], 4) if e else "n/a" for e in evals]
            if two:
                row.append(format_value(comparison["overall"].get(key, {}).get("delta_points"), 2))
            metric_rows.append(row)
        metric_rows.append(["frames evaluated"] + [e["frames_evaluated"] if e else 0 for e in evals]
                           + ([""] if two else []))
        # Time per frame beside the accuracy: what a precision or model change buys and costs.
        metric_rows.append(["engine ms per frame"]
                           + [format_value(m["engine_ms_per_frame"], 1) for m in data["models"]]
                           + ([""] if two else []))
        parts.append(html_table(metric_rows, header))
        parts.append(_img(plots, "iou"))
        parts.append("<h3>Per-class IoU (worst first)</h3>")
        first = evals[0] or {"per_class_iou": {}}
        order = sorted(first["per_class_iou"], key=lambda n: (first["per_class_iou"][n] is None,
                                                              first["per_class_iou"][n] or 0.0))
        class_rows = []
        for name in order:
            row = [name] + [format_value(e["per_class_iou"][name], 4) if e else "n/a" for e in evals]
            if two:
                row.append(format_value(comparison["per_class"].get(name, {}).get("delta_points"), 2))
            class_rows.append(row)
        parts.append(html_table(class_rows, ["class"] + [f"IoU {n}" for n in names]
                            + (["B - A (points)"] if two else [])))
    if two and comparison:
        d = comparison["disagreement"]
        parts.append("<h2>Where A and B disagree</h2>")
        parts.append(f"<p>{format_value((d['rate'] or 0) * 100, 3)}% of {d['pixels']} pixels over "
                     f"{d['frames']} frames have different labels.</p>")
        parts.append(_img(plots, "disagreement"))

    parts.append("<h2>Bags (worst mIoU first)</h2>")
    counted = [b for b in data["per_bag"] if b["status"] in ("ok", "damaged")]
    counted.sort(key=lambda b: (b["models"][0]["miou"] is None, b["models"][0]["miou"] or 0.0))
    header = ["bag", "frames", "mIoU A", "pixel acc. A", "drivable IoU A", "frames/s"]
    if two:
        header += ["mIoU B", "B - A (points)", "disagreement"]
    header += ["note"]
    bag_rows = []
    for b in counted:
        a = b["models"][0]
        row = [b["bag"], b["frames_processed"], format_value(a["miou"], 4), format_value(a["pixel_accuracy"], 4),
               format_value(a["drivable_iou"], 4), format_value(b["throughput_fps"], 2)]
        if two:
            delta = comparison["per_bag"].get(b["bag"], {}).get("delta_points") if comparison else None
            row += [format_value(b["models"][1]["miou"], 4), format_value(delta, 2),
                    format_value((b.get("disagreement_rate") or 0) * 100, 2, "%")]
        note = ("damaged: " + "; ".join(b["damage"])) if b["status"] == "damaged" else ""
        if b["cached"]:
            note = (note + " " if note else "") + "(from an earlier run)"
        bag_rows.append(row + [note])
    parts.append(html_table(bag_rows, header))
    failed = [b for b in data["per_bag"] if b["status"] not in ("ok", "damaged")]
    if failed:
        parts.append("<h2>Failed bags (not counted)</h2>")
        parts.append(html_table([(b["bag"], b["status"], b["reason"]) for b in failed],
                            ["bag", "status", "reason"]))
    parts.append("<p>Aggregates sum every bag's confusion matrix (exact integer counts), never "
                 "an average of per-bag mIoUs. All figures are in metrics.json.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
