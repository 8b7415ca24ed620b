"""End-to-end training on synthetic scenes: it learns, it resumes after SIGKILL, it runs under torchrun.

These tests train for real on CPU, so they use the fastest variant (STDC1) at a tiny resolution.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # training/ runs from the clone

from training import synth  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import build_dataset  # noqa: E402
from training.evaluate import evaluate, mean_iou  # noqa: E402

# Measured on this project's 2-core CI machine (1 thread): after 100 steps of batch 4 the val mIoU
# of this run is 0.195 (an untrained model: 0.001); ~27 s of CPU. The threshold leaves a wide
# margin for BLAS/CPU differences.
LEARNED_MIN_MIOU = 0.12


def _tiny_config(data_root: Path, **sections: dict) -> dict:
    """The shipped synthetic recipe at test size: 256x128 scenes seen at ~half size."""
    config = load_config("synthetic")
    config["data"].update(root=str(data_root), crop=[64, 128], scale=[0.4, 0.6], workers=0)
    config["train"].update(iters=100, batch_size=4, log_every=10, eval_every=100, ckpt_every=50,
                           tensorboard=False)
    config["optim"].update(warmup_iters=10)
    config["eval"].update(scale=0.5, batch_size=4)
    for name, values in sections.items():
        config[name].update(values)
    return load_config(config)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synth.write_dataset(root, train=48, val=8, height=128, width=256, seed=11)
    return root


@pytest.fixture(scope="module")
def trained_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    """Train the tiny recipe once (shared by the tests below); return (run dir, result, seconds)."""
    from training.train import train

    run_dir = tmp_path_factory.mktemp("run")
    # One thread: deterministic, and far faster than two when other processes compete for the
    # cores (two OpenMP threads then spin-wait on each other: measured 5x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.time()
        result = train(_tiny_config(synth_root), run_dir, device="cpu", quiet=True)
        seconds = time.time() - start
    finally:
        torch.set_num_threads(threads)
    return run_dir, result, seconds


def _val_loader(synth_root: Path, model: torch.nn.Module):
    cfg = _tiny_config(synth_root)
    ds = build_dataset(cfg["data"], "val", num_classes=19, mean=model.normalization.mean,
                       std=model.normalization.std, train=False)
    return torch.utils.data.DataLoader(ds, batch_size=4)


def test_a_short_cpu_run_learns_the_synthetic_scenes(trained_run, synth_root: Path) -> None:
    from bisenet_ros.models import build_model

    run_dir, result, seconds = trained_run
    torch.manual_seed(0)
    untrained = build_model("stdc1", 19)
    untrained_miou = mean_iou(evaluate(untrained, _val_loader(synth_root, untrained), 19, scales=[0.5]))
    trained = build_model("stdc1", 19, weights=run_dir / "best.pth")
    learned = mean_iou(evaluate(trained, _val_loader(synth_root, trained), 19, scales=[0.5]))
    print(f"synthetic val mIoU: untrained {untrained_miou:.3f}, after {result['step']} steps {learned:.3f} "
          f"({seconds:.0f} s)")
    assert learned == pytest.approx(result["best_miou"], abs=1e-6)
    assert learned > LEARNED_MIN_MIOU
    assert learned > 4 * untrained_miou
    # The run directory holds what the docs promise.
    for name in ("config.yaml", "train.csv", "eval.csv", "log.jsonl", "last.pth", "best.pth"):
        assert (run_dir / name).is_file(), name
    # The network input the run was scored at (256x128 scenes at eval.scale 0.5), for the engine.
    from bisenet_ros.models import read_checkpoint

    assert read_checkpoint(run_dir / "best.pth")["input_size"] == [128, 64]
    rows = list(csv.DictReader(open(run_dir / "train.csv")))
    assert [int(r["step"]) for r in rows] == list(range(10, 101, 10))
    assert {"loss_out", "loss_aux0", "loss_aux1", "loss_detail_bce", "loss_detail_dice"} <= set(rows[0])
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_eval_command_prints_the_iou_table(trained_run, capsys: pytest.CaptureFixture) -> None:
    from training.__main__ import main

    run_dir, result, _ = trained_run
    json_path = run_dir / "metrics.json"
    assert main(["eval", str(run_dir), "--scale", "0.5", "--workers", "0", "--threads", "1",
                 "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "road" in out and "mIoU" in out
    import json

    metrics = json.loads(json_path.read_text())
    assert metrics["miou"] == pytest.approx(result["best_miou"], abs=1e-6)
    assert np.array(metrics["confusion"]).shape == (19, 19)
    assert main(["eval", str(run_dir / "last.pth"), "--scales", "0.5", "0.75", "--flip", "--workers", "0",
                 "--limit", "2", "--threads", "1"]) == 0
    assert "+ flip" in capsys.readouterr().out


def test_export_writes_the_onnx_file_the_engine_runs(trained_run, tmp_path: Path) -> None:
    import onnxruntime as ort

    from bisenet_ros.inference.export import read_onnx_info
    from bisenet_ros.models import build_model
    from training.__main__ import main

    run_dir, _, _ = trained_run
    out = tmp_path / "synthetic.onnx"
    assert main(["export", str(run_dir), "--out", str(out), "--size", "128x64"]) == 0
    info = read_onnx_info(str(out))
    assert (info.variant, info.num_classes, info.input_size) == ("stdc1", 19, (128, 64))
    assert info.class_names[0] == "road"
    model = build_model("stdc1", 19, weights=run_dir / "best.pth")
    x = torch.randn(1, 3, 64, 128)
    labels = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).argmax(1).numpy()
    assert (labels == expected).mean() > 0.999


def _write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _train_cmd(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training", "train", "--config", str(config), "--run-dir", str(run_dir),
            "--device", "cpu", "--threads", "1", "--quiet", *extra]


def _train_rows(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "train.csv") as stream:
        return [row[:-1] for row in csv.reader(stream)]  # drop sec_per_step (timing)


def test_resume_after_sigkill_continues_with_identical_steps(synth_root: Path, tmp_path: Path) -> None:
    # BiSeNetV2: its dropout makes the torch RNG state part of what must be restored.
    config = _tiny_config(synth_root, model={"variant": "bisenetv2"},
                          optim={"head_modules": ["head", "aux2", "aux3", "aux4", "aux5_4"]},
                          train={"iters": 12, "batch_size": 2, "log_every": 1, "eval_every": 6,
                                 "ckpt_every": 3, "tensorboard": True},
                          data={"workers": 1, "crop": [64, 96]})
    cfg = _write_config(tmp_path / "tiny.yaml", config)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    reference = subprocess.Popen(_train_cmd(cfg, ref_dir), cwd=ROOT, env=env)
    victim = subprocess.Popen(_train_cmd(cfg, run_dir), cwd=ROOT, env=env)
    deadline = time.time() + 120
    while not (run_dir / "last.pth").exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    from bisenet_ros.models import read_checkpoint

    killed_at = read_checkpoint(run_dir / "last.pth")["step"]
    assert killed_at < 12, "the run finished before it could be killed"
    resumed = subprocess.run(_train_cmd(cfg, run_dir, "--resume"), cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {run_dir / 'last.pth'} at step {killed_at}" in resumed.stderr
    assert reference.wait(timeout=180) == 0

    ref, got = read_checkpoint(ref_dir / "last.pth"), read_checkpoint(run_dir / "last.pth")
    assert got["step"] == ref["step"] == 12
    for key, tensor in ref["model"].items():
        assert torch.equal(tensor, got["model"][key]), f"weights differ after resume: {key}"
    for key, state in ref["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], got["optimizer"]["state"][key]["momentum_buffer"])
    assert got["best_miou"] == ref["best_miou"]
    # The logs of the resumed run read like the uninterrupted one (rows after the kill rewritten).
    assert _train_rows(run_dir) == _train_rows(ref_dir)


def test_torchrun_two_cpu_processes(synth_root: Path, tmp_path: Path) -> None:
    config = _tiny_config(synth_root, train={"iters": 3, "batch_size": 4, "log_every": 1, "eval_every": 3,
                                             "ckpt_every": 3})
    cfg = _write_config(tmp_path / "ddp.yaml", config)
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training", "train", "--config", str(cfg), "--run-dir", str(run_dir), "--device", "cpu", "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    from bisenet_ros.models import build_model, read_checkpoint

    ckpt = read_checkpoint(run_dir / "last.pth")
    assert ckpt["step"] == 3
    assert not any(k.startswith("module.") for k in ckpt["model"])   # saved unwrapped
    build_model("stdc1", 19, weights=run_dir / "last.pth")            # loads in bisenet_ros
    rows = list(csv.DictReader(open(run_dir / "eval.csv")))
    assert [int(r["step"]) for r in rows] == [3]                      # both val shards reduced once


def test_imagenet_backbone_weights_load_strictly(tmp_path: Path) -> None:
    from bisenet_ros.models import CheckpointError, build_model
    from training.train import load_backbone_weights

    # A torchvision-style ResNet-18 file (classifier included) for BiSeNetV1.
    source = build_model("bisenetv1", aux=True).cp.backbone.state_dict()
    resnet = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.items()}
    torch.save({**resnet, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, tmp_path / "r18.pth")
    model = build_model("bisenetv1", aux=True)
    assert load_backbone_weights(model, tmp_path / "r18.pth") == len(resnet)
    assert torch.equal(model.cp.backbone.conv1.weight, resnet["conv1.weight"])
    # An STDC-Net ImageNet file: {"state_dict": {"module.features...": ...}} plus its classifier.
    stdc = build_model("stdc1", aux=True)
    net = {f"module.{k}": torch.randn_like(v) if v.is_floating_point() else v
           for k, v in stdc.cp.backbone.state_dict().items()}
    torch.save({"state_dict": {**net, "module.fc.weight": torch.zeros(1000, 1024)}}, tmp_path / "stdc.tar")
    assert load_backbone_weights(stdc, tmp_path / "stdc.tar") == len(net)
    # The STDC1 file does not fit STDC2: a clear error, no partial load.
    with pytest.raises(CheckpointError, match="does not fit the stdc2 backbone"):
        load_backbone_weights(build_model("stdc2", aux=True), tmp_path / "stdc.tar")
    with pytest.raises(CheckpointError, match="no separate ImageNet backbone"):
        load_backbone_weights(build_model("bisenetv2", aux=True), tmp_path / "r18.pth")


def test_init_weights_with_another_class_count_reinitialises_only_the_class_heads(tmp_path: Path) -> None:
    from bisenet_ros.models import CheckpointError, build_model
    from training.train import load_init_weights

    # A 19-class Cityscapes file in the published CoinCheung/BiSeNet V2 layout (a train-mode state_dict).
    torch.manual_seed(1)
    city = build_model("bisenetv2", 19, aux=True)
    torch.save(city.state_dict(), tmp_path / "model_final_v2_city.pth")
    torch.manual_seed(2)
    model = build_model("bisenetv2", 11, aux=True)
    fresh_before = {k: v.clone() for k, v in model.state_dict().items()}
    file_classes, fresh = load_init_weights(model, tmp_path / "model_final_v2_city.pth")
    assert file_classes == 19
    # Exactly the classifiers of the main head and the four booster heads (weight + bias each).
    assert sorted(fresh) == sorted(f"{h}.conv_out.1.{p}" for h in ("head", "aux2", "aux3", "aux4", "aux5_4")
                                   for p in ("weight", "bias"))
    for key, tensor in model.state_dict().items():
        expected = fresh_before[key] if key in fresh else city.state_dict()[key]
        assert torch.equal(tensor, expected), key
    assert model.eval()(torch.randn(1, 3, 64, 96)).shape == (1, 11, 64, 96)
    # Same class count: a plain strict load. Another variant: still an error naming both.
    same = build_model("bisenetv2", 19, aux=True)
    assert load_init_weights(same, tmp_path / "model_final_v2_city.pth") == (19, [])
    assert torch.equal(same.head.conv_out[1].weight, city.head.conv_out[1].weight)
    with pytest.raises(CheckpointError, match="holds a bisenetv2 model, but the model is stdc1"):
        load_init_weights(build_model("stdc1", 11, aux=True), tmp_path / "model_final_v2_city.pth")


def test_camvid_fine_tune_records_the_effective_config_and_resumes_from_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """prepare camvid -> fine-tune the CamVid recipe from a 19-class file -> config.yaml tells the truth."""
    from bisenet_ros.models import build_model, read_checkpoint
    from training.__main__ import main

    synth.write_segnet_camvid(tmp_path / "segnet", train=4, val=2, test=0, height=72, width=96, seed=3)
    assert main(["prepare", "camvid", str(tmp_path / "segnet"), "--out", str(tmp_path / "camvid")]) == 0
    torch.save(build_model("bisenetv2", 19, aux=True).state_dict(), tmp_path / "city.pth")
    run_dir = tmp_path / "run"
    # The recipe's 10k steps, 720x960 crops and eval.scale 2.0, shrunk to test size.
    args = ["train", "--config", "bisenetv2_camvid", "--data-root", str(tmp_path / "camvid"), "--run-dir",
            str(run_dir), "--iters", "3", "--batch-size", "2", "--device", "cpu", "--threads", "1",
            "--workers", "0", "--init-weights", str(tmp_path / "city.pth"), "--quiet",
            "--set", "data.crop=[64,96]", "--set", "data.scale=[0.75,1.25]", "--set", "train.eval_every=3",
            "--set", "train.tensorboard=false"]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
        err = capsys.readouterr().err
        assert "city.pth has 19 classes, this run 11: the 10 class-head tensors" in err
        assert "warm-up: 0 steps, a tenth of the 3-step run" in err
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert recorded["model"]["num_classes"] == 11
        assert recorded["data"]["class_set"]["names"][:4] == ["Sky", "Building", "Pole", "Road"]
        assert (recorded["data"]["workers"], recorded["train"]["cpu_threads"], recorded["train"]["device"]) == \
            (0, 1, "cpu")
        assert recorded["optim"]["warmup_iters"] == 0
        ckpt = read_checkpoint(run_dir / "last.pth")
        assert ckpt["config"] == recorded                        # one truth in both places
        assert ckpt["input_size"] == [192, 144]                  # 96x72 frames at the recipe's eval.scale 2.0
        assert ckpt["class_names"] == recorded["data"]["class_set"]["names"]
        # Resuming reads that config: the dataset may even have moved (the classes are recorded),
        # and so may the fine-tune start file (last.pth holds the weights and their normalization).
        (tmp_path / "camvid").rename(tmp_path / "moved")
        (tmp_path / "moved" / "classes.yaml").unlink()
        (tmp_path / "city.pth").unlink()
        assert main(["train", "--resume", "--run-dir", str(run_dir), "--data-root", str(tmp_path / "moved"),
                     "--iters", "5", "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "ignoring train.iters=5" in err and f"resumed {run_dir / 'last.pth'} at step 3" in err
        assert "class-head tensors" not in err
        assert read_checkpoint(run_dir / "last.pth")["normalization"] == ckpt["normalization"]
        again = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert again == {**recorded, "data": {**recorded["data"], "root": str(tmp_path / "moved")}}
        # Export without --size: the size the run was scored at.
        from bisenet_ros.inference.export import read_onnx_info

        assert main(["export", str(run_dir), "--out", str(tmp_path / "camvid.onnx"), "--no-verify"]) == 0
        info = read_onnx_info(str(tmp_path / "camvid.onnx"))
        assert (info.input_size, info.num_classes, info.class_names[3]) == ((192, 144), 11, "Road")
    finally:
        torch.set_num_threads(threads)


def test_resume_before_the_first_checkpoint_uses_the_run_folders_config(
        synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bisenet_ros.models import read_checkpoint
    from training.__main__ import main
    from training.config import dump_config

    # What a run killed before its first checkpoint leaves: config.yaml and no last.pth.
    config = _tiny_config(synth_root, train={"iters": 2, "batch_size": 2, "eval_every": 0, "ckpt_every": 0},
                          optim={"lr": 0.02})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dump_config(config, run_dir / "config.yaml")
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--resume", "--run-dir", str(run_dir), "--device", "cpu", "--threads", "1",
                     "--set", "data.workers = 0", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "last.pth does not exist yet; starting from step 0" in err
    assert "ignoring" not in err  # an allowed setting, however it is spaced
    recorded = read_checkpoint(run_dir / "last.pth")["config"]
    assert (recorded["model"]["variant"], recorded["optim"]["lr"], recorded["train"]["iters"]) == ("stdc1", 0.02, 2)
    assert recorded["data"]["root"] == str(synth_root)
    # A folder with neither file: a user error (status 2), not a run of the built-in defaults.
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "empty")]) == 2
    assert f"error: nothing to resume in {tmp_path / 'empty'}" in capsys.readouterr().err


def test_init_distributed_picks_the_device_each_process_drives(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train as train_module

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    # A run recorded on a GPU, resumed where torch sees none: one line saying what to give.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device here; give --device cpu"):
        train_module.init_distributed("cuda:0")
    assert train_module.init_distributed(None) == (0, 1, torch.device("cpu"))
    # With GPUs (CUDA calls replaced): one process takes the index named; under torchrun every
    # process takes cuda:LOCAL_RANK, also when the config names cuda:0 (a one-process run resumed
    # under torchrun), never two processes on one GPU.
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert train_module.init_distributed("cuda:1") == (0, 1, torch.device("cuda:1"))
    monkeypatch.setattr(train_module.dist, "is_initialized", lambda: True)
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert train_module.init_distributed("cuda:0") == (int(rank), 2, torch.device(f"cuda:{rank}"))
    assert chosen == [torch.device("cuda:1"), torch.device("cuda:0"), torch.device("cuda:1")]
