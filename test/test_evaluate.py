"""``bisenet-ros evaluate``: many bags, exact aggregation, resumable results, model A against B,
local worker processes and a local Ray cluster.

Bags are made here (64 x 128, ground truth on a labels topic). Most tests inject
:class:`FleetEngine`, whose prediction is a fixed function of the pixels (and of the weights
file's name, so that "model B" differs from "model A"); the Ray test runs the real Segmenter
with a tiny STDC1 checkpoint at 64 x 32.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bisenet_ros.commands import evaluate as cli
from bisenet_ros.commands import replay as replay_cli
from bisenet_ros.evaluation.bags import NoBagsError, find_bags, labels_dir_for
from bisenet_ros.evaluation.job import Disagreement
from bisenet_ros.replay.bagtools import write_image_bag
from test_replay import NAMES, KnownEngine, split_frame, split_truth

FRAMES = 4


class FleetEngine(KnownEngine):
    """KnownEngine; with weights named ``*slow.pth`` it takes 0.25 s per frame, with ``*b.pth``
    it labels the 8 leftmost columns class 2, and with ``*die.pth`` it kills its own process on
    a frame of the ``crash`` bag while the file ``<weights>.once`` exists (removed first: the
    retry succeeds)."""

    def __call__(self, frame: np.ndarray, color_order: str = "bgr", outputs: Any = None) -> Any:
        result = super().__call__(frame, color_order, outputs)
        weights = str(getattr(self.config, "weights", "") or "")
        if weights.endswith("slow.pth"):
            time.sleep(0.25)
        if weights.endswith("b.pth"):
            result.labels = result.labels.copy()
            result.labels[:, :8] = 2
        if weights.endswith("die.pth") and frame[0, 0, 1] == 7 and Path(weights + ".once").exists():
            Path(weights + ".once").unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return result


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three good bags (different frames), a garbage one, and weights files for A and B."""
    root = tmp_path_factory.mktemp("fleet")
    bags = {}
    for i, name in enumerate(("drive_a", "drive_b", "drive_c")):
        frames = [split_frame(3 * (k + i) - 6, seed=10 * i + k) for k in range(FRAMES)]
        truth = split_truth()
        bags[name] = write_image_bag(root / "bags" / name, frames, labels=[truth] * FRAMES)
    crash_frames = [split_frame(2, seed=k) for k in range(FRAMES)]
    for frame in crash_frames:
        frame[0, 0, 1] = 7  # FleetEngine's crash marker
    bags["crash"] = write_image_bag(root / "more" / "crash", crash_frames,
                                    labels=[split_truth()] * FRAMES)
    garbage = root / "more" / "broken"
    garbage.mkdir(parents=True)
    (garbage / "broken_0.mcap").write_bytes(b"\x89MCAP0\r\n" + b"not a bag at all" * 64)
    bags["broken"] = garbage
    for name in ("a.pth", "b.pth", "die.pth", "slow.pth"):
        (root / name).write_bytes(name.encode() * 32)  # FleetEngine ignores the content
    bags["root"] = root
    return bags


def run_eval(argv: list[str]) -> int:
    return cli.main(argv + ["--no-progress"], engine_factory=FleetEngine)


def metrics(report: Path) -> dict[str, Any]:
    return json.loads((report / "metrics.json").read_text())


def good(fleet: dict[str, Path]) -> list[str]:
    return [str(fleet[n]) for n in ("drive_a", "drive_b", "drive_c")]


def test_the_aggregate_is_the_sum_of_the_single_bag_replays(fleet: dict[str, Path], tmp_path: Path) -> None:
    total = np.zeros((len(NAMES), len(NAMES)), np.int64)
    for i, bag in enumerate(good(fleet)):
        rc = replay_cli.main([bag, "-o", str(tmp_path / f"out{i}"), "--report", str(tmp_path / f"r{i}"),
                              "--labels-topic", "/camera/labels", "--no-progress"],
                             engine_factory=KnownEngine)
        assert rc == 0
        total += np.array(metrics(tmp_path / f"r{i}")["evaluation"]["confusion_matrix"])
    report = tmp_path / "report"
    rc = run_eval(good(fleet) + ["--weights", str(fleet["root"] / "a.pth"),
                                 "--labels-topic", "/camera/labels", "--report", str(report)])
    assert rc == 0
    data = metrics(report)
    evaluation = data["models"][0]["evaluation"]
    np.testing.assert_array_equal(np.array(evaluation["confusion_matrix"]), total)
    assert evaluation["frames_evaluated"] == 3 * FRAMES
    # mIoU of the summed matrix, not the mean of the bags' mIoUs (these differ here)
    per_bag = [b["models"][0]["miou"] for b in data["per_bag"]]
    from bisenet_ros.replay.metrics import class_iou

    ious = class_iou(total)
    assert evaluation["miou"] == pytest.approx(float(np.nanmean(ious)))
    assert evaluation["miou"] != pytest.approx(float(np.mean(per_bag)))
    page = (report / "report.html").read_text()
    worst, best = sorted(good(fleet), key=lambda p: per_bag_miou(data, p))[::2]
    assert page.index(worst) < page.index(best)  # worst bags first
    assert not list(tmp_path.glob("report/*.tmp"))


def per_bag_miou(data: dict[str, Any], bag: str) -> float:
    return next(b["models"][0]["miou"] for b in data["per_bag"] if b["bag"] == bag)


def test_a_broken_bag_is_reported_and_the_others_count_and_a_rerun_skips_finished_bags(
        fleet: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    engines: list[FleetEngine] = []

    def factory(config: Any) -> FleetEngine:
        engines.append(FleetEngine(config))
        return engines[-1]

    base = ["--weights", str(fleet["root"] / "a.pth"), "--labels-topic", "/camera/labels",
            "--report", str(report), "--no-progress"]
    rc = cli.main(good(fleet)[:2] + [str(fleet["broken"])] + base, engine_factory=factory)
    assert rc == 1  # a bag failed: reported, not fatal
    err = capsys.readouterr().err
    assert f"not evaluated: {fleet['broken']}" in err
    data = metrics(report)
    assert data["bags"] == {"total": 3, "counted": 2, "failed": 1, "cached": 0,
                            "frames_processed": 2 * FRAMES}
    failed = [b for b in data["per_bag"] if b["status"] == "failed"]
    assert failed[0]["bag"] == str(fleet["broken"]) and failed[0]["reason"]
    assert data["models"][0]["evaluation"]["frames_evaluated"] == 2 * FRAMES
    assert sum(e.calls for e in engines) == 2 * FRAMES
    assert len(list((report / "bags").glob("*.json"))) == 2

    # Again with one more bag: only the new bag is evaluated; the result equals a fresh run's.
    engines.clear()
    rc = cli.main(good(fleet) + base, engine_factory=factory)
    assert rc == 0
    assert sum(e.calls for e in engines) == FRAMES
    again = metrics(report)
    assert again["bags"]["cached"] == 2 and again["bags"]["counted"] == 3
    fresh = tmp_path / "fresh"
    assert run_eval(good(fleet) + ["--weights", str(fleet["root"] / "a.pth"),
                                   "--labels-topic", "/camera/labels", "--report", str(fresh)]) == 0
    assert again["models"][0]["evaluation"] == metrics(fresh)["models"][0]["evaluation"]


def test_compare_with_itself_gives_zero_deltas_and_with_another_model_the_single_reports_deltas(
        fleet: dict[str, Path], tmp_path: Path) -> None:
    a, b = str(fleet["root"] / "a.pth"), str(fleet["root"] / "b.pth")
    common = good(fleet) + ["--labels-topic", "/camera/labels"]
    assert run_eval(common + ["--weights", a, "--compare", a, "--report", str(tmp_path / "same")]) == 0
    same = metrics(tmp_path / "same")["comparison"]
    assert all(v["delta_points"] in (0.0, None) for v in same["per_class"].values())
    assert same["overall"]["miou"]["delta_points"] == 0.0
    assert same["disagreement"]["differing_pixels"] == 0 and same["regressions"] == []

    for name, weights in (("a", a), ("b", b)):
        assert run_eval(common + ["--weights", weights, "--report", str(tmp_path / name)]) == 0
    single = {n: metrics(tmp_path / n)["models"][0]["evaluation"] for n in ("a", "b")}
    rc = run_eval(common + ["--weights", a, "--compare", b, "--report", str(tmp_path / "ab"),
                            "--fail-on-regression", "0.5"])
    data = metrics(tmp_path / "ab")
    cmp = data["comparison"]
    for name, delta in cmp["per_class"].items():
        ia, ib = single["a"]["per_class_iou"][name], single["b"]["per_class_iou"][name]
        if ia is None or ib is None:
            assert delta["delta_points"] is None
        else:
            assert delta["delta_points"] == pytest.approx((ib - ia) * 100)
    assert cmp["overall"]["miou"]["delta_points"] == pytest.approx(
        (single["b"]["miou"] - single["a"]["miou"]) * 100)
    assert data["models"][1]["evaluation"]["confusion_matrix"] == single["b"]["confusion_matrix"]
    # B labels the 8 leftmost of 128 columns differently wherever A did not say class 2
    assert cmp["disagreement"]["rate"] == pytest.approx(8 / 128)
    heat = np.array(data["disagreement_heatmap"])
    assert heat[:, :4].min() == pytest.approx(1.0) and heat[:, 5:].max() == 0.0
    assert cmp["regressions"] and rc == 3  # the release gate
    assert "Where A and B disagree" in (tmp_path / "ab" / "report.html").read_text()


def test_sigterm_stops_the_run_and_the_next_run_evaluates_only_the_rest(
        fleet: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = tmp_path / "report"
    argv = good(fleet) + ["--weights", str(fleet["root"] / "slow.pth"), "--labels-topic",
                          "/camera/labels", "--report", str(report), "--no-progress"]
    code = ("import sys; from test_evaluate import FleetEngine; from bisenet_ros.commands import "
            f"evaluate; sys.exit(evaluate.main({argv!r}, engine_factory=FleetEngine))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]),
                                                      str(Path(__file__).parent)]))
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((report / "bags").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first bag is finished and stored
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted: run the same command again" in err
    done = len(list((report / "bags").glob("*.json")))
    assert 1 <= done < 3
    assert metrics(report)["run"]["interrupted"] is True

    calls = []  # the same engine class (it is part of the model key), its calls counted
    call = FleetEngine.__call__
    monkeypatch.setattr(FleetEngine, "__call__", lambda self, *a, **k: calls.append(1) or call(self, *a, **k))
    assert cli.main(argv, engine_factory=FleetEngine) == 0
    assert len(calls) == (3 - done) * FRAMES
    assert metrics(report)["bags"]["cached"] == done


def test_jobs_give_the_sequential_figures_and_a_killed_worker_s_bag_is_retried(
        fleet: dict[str, Path], tmp_path: Path) -> None:
    bags = good(fleet) + [str(fleet["crash"])]
    die = fleet["root"] / "die.pth"
    base = ["--weights", str(die), "--labels-topic", "/camera/labels"]
    assert run_eval(bags + base + ["--report", str(tmp_path / "seq")]) == 0
    Path(str(die) + ".once").touch()
    assert run_eval(bags + base + ["--jobs", "2", "--report", str(tmp_path / "par")]) == 0
    assert not Path(str(die) + ".once").exists()  # the worker really was killed once
    seq, par = metrics(tmp_path / "seq"), metrics(tmp_path / "par")
    assert seq["models"][0]["evaluation"] == par["models"][0]["evaluation"]
    crash = next(b for b in par["per_bag"] if b["bag"] == str(fleet["crash"]))
    assert crash["status"] == "ok" and crash["attempts"] == 2
    assert par["run"]["runner"] == "2 local worker processes"
    assert par["run"]["engine_threads_per_worker"] >= 1


def test_bad_input_is_one_clear_line(fleet: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    a = str(fleet["root"] / "a.pth")
    assert run_eval([str(tmp_path / "none-*.mcap"), "--weights", a]) == 2
    assert "no bags matched" in capsys.readouterr().err
    assert cli.main(good(fleet) + ["--no-progress"]) == 2
    assert "needs --weights" in capsys.readouterr().err
    # a bag without the requested topic is reported, the others count
    assert run_eval(good(fleet)[:1] + ["--weights", a, "--image-topic", "/camera/image_raw",
                                       "--labels-topic", "/nope"]) == 1
    assert "labels topic '/nope' is not in" in capsys.readouterr().err
    # Ray: an address that does not answer (nothing listens on port 1)
    assert run_eval(good(fleet)[:1] + ["--weights", a, "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "does not answer" in err and err.count("\n") == 1
    assert run_eval(good(fleet)[:1] + ["--weights", a, "--ray", "nowhere"]) == 2
    assert "expected nothing" in capsys.readouterr().err


def test_mismatched_class_sets_are_refused(fleet: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    class_set = tmp_path / "classes.yaml"
    class_set.write_text("names: [road, sidewalk, car, sky]\npalette: [[1,1,1],[2,2,2],[3,3,3],[4,4,4]]\n")

    class Renamed(FleetEngine):
        @property
        def class_names(self) -> list[str]:  # type: ignore[override]
            return ["road", "sidewalk", "car", "sky"] if self.config.weights.endswith("b.pth") else NAMES

    rc = cli.main(good(fleet)[:1] + ["--weights", str(fleet["root"] / "a.pth"), "--compare",
                                     str(fleet["root"] / "b.pth"), "--no-progress"],
                  engine_factory=Renamed)
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot be compared" in err and err.count("\n") == 1


def test_class_names_and_self_describing_weights_as_in_replay(fleet: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from trained import write_training_checkpoint

    bag = good(fleet)[:1]
    # 'Road' is the engine's 'road' (replay accepts it too); an unknown name is a user error:
    # exit status 2 as in replay, and no report folder is left behind
    assert run_eval(bag + ["--weights", str(fleet["root"] / "a.pth"), "--labels-topic", "/camera/labels",
                           "--drivable-classes", "Road", "--report", str(tmp_path / "ok")]) == 0
    assert metrics(tmp_path / "ok")["models"][0]["evaluation"]["drivable_iou"] is not None
    assert run_eval(bag + ["--weights", str(fleet["root"] / "a.pth"), "--labels-topic", "/camera/labels",
                           "--drivable-classes", "sidewalks", "--report", str(tmp_path / "bad")]) == 2
    assert "did you mean 'sidewalk'?" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # a training checkpoint evaluates with --weights alone; a contradicting option names both values
    weights = str(write_training_checkpoint(tmp_path / "best.pth"))
    args = bag + ["--weights", weights, "--image-topic", "/camera/image_raw", "--no-progress"]
    assert cli.main(args + ["--report", str(tmp_path / "ckpt")]) == 0
    engine = metrics(tmp_path / "ckpt")["models"][0]["provenance"]
    assert (engine["variant"], engine["resolution"], engine["num_classes"]) == ("stdc1", [64, 32], 5)
    assert cli.main(args + ["--resolution", "64x32", "--num-classes", "3", "--report", str(tmp_path / "r")]) == 2
    assert "num_classes=3 contradicts" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_bag_lists_and_patterns(fleet: dict[str, Path], tmp_path: Path) -> None:
    listing = tmp_path / "drives.txt"
    listing.write_text(f"# the drives\n{fleet['drive_b']}\n{fleet['root']}/bags/drive_*\n")
    found = find_bags([str(listing)])
    assert [p.name for p in found] == ["drive_a", "drive_b", "drive_c"]
    with pytest.raises(NoBagsError, match="no bags matched"):
        find_bags([str(tmp_path / "*.mcap")])
    assert labels_dir_for("gt/{bag}/fine", Path("x/drive_a.mcap")) == Path("gt/drive_a/fine")


def test_disagreement_counts_are_exact_and_json_round_trips() -> None:
    d = Disagreement()
    a = np.zeros((10, 20), np.uint8)
    b = a.copy()
    b[:, :5] = 1
    d.add_frame(a, b)
    d.add_frame(a, a)
    assert (d.pixels, d.differing, d.frames) == (400, 50, 2)
    back = Disagreement.from_json(json.loads(json.dumps(d.to_json())))
    np.testing.assert_array_equal(back.heat_sum, d.heat_sum)


# -- Ray ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """One local Ray cluster (2 CPUs, 127.0.0.1 only) for the module; no process left after."""
    from bisenet_ros.evaluation.runners import connect_ray

    ray, started = connect_ray(None, num_cpus=2)
    assert started
    cluster = set(_ray_pids())
    yield ray
    ray.shutdown()
    deadline = time.monotonic() + 15
    while cluster & set(_ray_pids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster & set(_ray_pids()), "Ray processes left behind"


def tiny_checkpoint(path: Path) -> Path:
    import torch

    from bisenet_ros.models import build_model, make_checkpoint

    torch.manual_seed(0)
    model = build_model("stdc1", num_classes=len(NAMES)).eval()
    torch.save(make_checkpoint(model, class_names=NAMES, palette=[[i * 60] * 3 for i in range(4)]), path)
    return path


def test_sequential_jobs_and_ray_give_bit_identical_metrics_with_the_real_engine(
        fleet: dict[str, Path], tmp_path: Path, ray_cluster: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    weights = tiny_checkpoint(tmp_path / "tiny.pth")
    base = good(fleet) + ["--weights", str(weights), "--variant", "stdc1", "--num-classes", "4",
                          "--resolution", "64x32", "--num-threads", "1",
                          "--labels-topic", "/camera/labels"]
    runs = {"seq": ["--no-progress"], "jobs": ["--no-progress", "--jobs", "2"],
            "ray": ["--progress", "--ray"]}
    figures = {}
    for name, extra in runs.items():
        assert cli.main(base + ["--report", str(tmp_path / name)] + extra) == 0
        data = metrics(tmp_path / name)
        figures[name] = data["models"][0]["evaluation"]
        assert data["models"][0]["provenance"]["model_key"]
    assert figures["seq"] == figures["jobs"] == figures["ray"]
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate ")]
    assert progress and progress[-1].startswith(f"evaluate {3 * FRAMES}/{3 * FRAMES} frames")
    assert figures["ray"]["frames_evaluated"] == 3 * FRAMES
    assert metrics(tmp_path / "ray")["run"]["runner"] == "ray local cluster"
    # every Ray port of this cluster listens on the loopback interface only
    addresses = _listening_addresses(_ray_pids())
    assert len(addresses) >= 3 and set(addresses) == {"127.0.0.1"}, addresses


def _ray_pids() -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "-u", str(os.getuid())], capture_output=True,
                         check=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if any(k in line for k in ("gcs_server", "raylet", "ray::", "default_worker.py"))]


def _listening_addresses(pids: list[int]) -> list[str]:
    """Local addresses of the TCP sockets these processes listen on (from /proc, as ss does)."""
    import ipaddress

    inodes = set()
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir() if fds.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            # /proc prints the address as 32-bit words in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            addresses.append(str(getattr(address, "ipv4_mapped", None) or address))
    return addresses
