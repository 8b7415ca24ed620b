"""The training loop and the ``python -m training train`` command.

One process per GPU under ``torchrun`` (DistributedDataParallel, SyncBatchNorm on CUDA, NCCL;
gloo on CPU), or a single plain process. The loop is step-based like the published recipes:
every ``train.ckpt_every`` steps the complete state is written atomically to ``last.pth``; every
``train.eval_every`` steps the model is evaluated on the val split and ``best.pth`` is kept.
``--resume`` reloads ``last.pth`` and continues with exactly the steps an uninterrupted run would
have taken (the data order and augmentation are functions of the step, see
:class:`training.data.StepBatchSampler`; weights, optimizer, scheduler, AMP scaler and RNG
states come from the checkpoint).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset

from training.checkpoint import (atomic_save, build_training_checkpoint, load_training_checkpoint,
                                 set_rng_state)
from training.config import dump_config, load_config, parse_override
from training.data import StepBatchSampler, build_dataset, dataset_class_set
from training.evaluate import evaluate, iou_from_confusion, mean_iou, pixel_accuracy
from training.logs import RunLogger
from training.losses import segmentation_loss
from training.optim import build_optimizer, build_scheduler, warmup_steps

# ----------------------------------------------------------------------------- distributed


def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join the process group when launched by ``torchrun`` and pick this process's device.

    Args:
        device: "cpu", "cuda", "cuda:N" or None (CUDA if available). Under ``torchrun`` every
            process drives its own GPU, ``cuda:LOCAL_RANK``, whatever index is named (a run
            started in one process records ``cuda:0``, and may be resumed under ``torchrun``).

    Returns:
        ``(rank, world_size, device)``.

    Raises:
        ValueError: CUDA asked for where torch sees none (e.g. a GPU run resumed on a CPU machine).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"train.device is {device!r}, but torch sees no CUDA device here; give --device cpu "
                         "(also when resuming a run that trained on a GPU)")
    if use_cuda:
        dev = torch.device(f"cuda:{local_rank}" if world > 1 else device if device and ":" in device else "cuda:0")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, dev


def _is_main(rank: int) -> bool:
    return rank == 0


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# ----------------------------------------------------------------------------- model set-up


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Initialise the backbone from ImageNet weights; returns the number of tensors loaded.

    Accepted: a torchvision ``resnet18`` state_dict (BiSeNetV1), an STDC-Net ImageNet file
    (``STDCNet813M_73.91.tar`` / ``STDCNet1446_76.47.tar``: ``{"state_dict": ...}``, optionally
    ``module.``-prefixed), or any checkpoint whose keys start with ``cp.backbone.``. The
    ImageNet classifier keys are skipped; every backbone tensor must be present with the right
    shape (never a silent partial load).
    """
    from bisenet_ros.models import CheckpointError, read_checkpoint

    backbone = getattr(getattr(model, "cp", None), "backbone", None)
    if backbone is None:
        raise CheckpointError(
            f"model.backbone_weights: {getattr(model, 'variant', 'this model')} has no separate ImageNet "
            "backbone (BiSeNetV2 trains from scratch in its recipe); use model.init_weights for a full checkpoint")
    state = read_checkpoint(path)
    if isinstance(state, Mapping) and state.get("format") == "bisenet_ros":
        state = state["model"]
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("cp.backbone.") for k in state):
        state = {k[len("cp.backbone."):]: v for k, v in state.items() if k.startswith("cp.backbone.")}
    expected = backbone.state_dict()
    used = {k: v for k, v in state.items() if k in expected}
    missing = [k for k in expected if k not in used and not k.endswith("num_batches_tracked")]
    bad = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in used.items()
           if v.shape != expected[k].shape]
    if missing or bad or not used:
        raise CheckpointError(
            f"{path}: does not fit the {model.variant} backbone: {len(missing)} missing (first: "
            f"{', '.join(missing[:3])}); {len(bad)} shape mismatches ({', '.join(bad[:2])})")
    backbone.load_state_dict(used, strict=False)
    return len(used)


def load_init_weights(model: nn.Module, path: str | os.PathLike[str]) -> tuple[int, list[str]]:
    """Fine-tune start: load a full checkpoint (any format ``load_weights`` reads) into ``model``.

    A checkpoint trained for another class count (a published Cityscapes file, 19 classes, for an
    11-class CamVid run) loads everything except the tensors whose shape depends on the class
    count: the classifiers of the main and auxiliary heads, which keep their fresh
    initialisation. Every other tensor must fit exactly (``load_weights`` is strict), and the
    normalization comes from the file.

    Args:
        model: a training model from ``build_model(..., aux=True)``.
        path: the checkpoint.

    Returns:
        ``(file_classes, reinitialised)``: the file's class count and the names of the tensors
        that start from scratch (empty when the class counts agree).

    Raises:
        CheckpointError: unreadable file, other variant, or any other mismatch.
    """
    from bisenet_ros.models import build_model, detect_format, load_weights, read_checkpoint
    from bisenet_ros.models.checkpoint import convert_state_dict

    path = os.fspath(path)
    # The class-dependent tensors are the ones whose shape changes with the class count.
    twin = build_model(model.variant, model.num_classes + 1, aux=True).state_dict()
    class_keys = [k for k, v in model.state_dict().items() if twin[k].shape != v.shape]
    fmt, variant, state, _ = detect_format(read_checkpoint(path), path)
    state = convert_state_dict(fmt, variant, state, path)
    file_classes = next((int(state[k].shape[0]) for k in class_keys if k in state), model.num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deployment checkpoints lack the aux heads: expected
        if file_classes == model.num_classes:
            load_weights(model, path)
            return file_classes, []
        source = build_model(model.variant, file_classes, aux=True)
        load_weights(source, path)
    kept = {k: v for k, v in source.state_dict().items() if k not in class_keys}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    assert sorted(missing) == sorted(class_keys) and not unexpected, (missing, unexpected)
    model.normalization = source.normalization
    model.checkpoint_info = source.checkpoint_info
    return file_classes, class_keys


def build_train_model(config: Mapping[str, Any], num_classes: int, *,
                      resumed: Mapping[str, Any] | None = None) -> tuple[nn.Module, str | None]:
    """The training model (aux heads built), with ImageNet backbone / fine-tune weights if configured.

    Args:
        config: the run's config.
        num_classes: the dataset's class count.
        resumed: the training checkpoint a resumed run continues from: its weights replace any
            start weights, so ``model.init_weights`` / ``model.backbone_weights`` are not read
            again (they may have moved since); the normalization comes from the checkpoint.

    Returns:
        ``(model, note)``: ``note`` is the line that says which class heads start from scratch
        when ``model.init_weights`` has another class count, else None.
    """
    from bisenet_ros.models import Normalization, build_model

    mcfg = config["model"]
    model = build_model(mcfg["variant"], num_classes, aux=True)
    note = None
    if resumed is not None:
        model.normalization = Normalization.from_dict(resumed["normalization"])
    elif mcfg.get("init_weights"):
        file_classes, fresh = load_init_weights(model, mcfg["init_weights"])
        if fresh:
            note = (f"init weights: {mcfg['init_weights']} has {file_classes} classes, this run {num_classes}: "
                    f"the {len(fresh)} class-head tensors ({', '.join(fresh[:2])}, ...) start from scratch, "
                    "every other tensor is loaded")
    elif mcfg.get("backbone_weights"):
        load_backbone_weights(model, mcfg["backbone_weights"])
    return model, note


def eval_input_size(dataset: Any, scale: float) -> list[int]:
    """The network input ``[width, height]`` the run evaluates at: its first image times ``eval.scale``.

    Stored in the checkpoints as ``input_size`` so that the deployed model runs at the size it
    was scored at (the same rounding as :func:`training.evaluate.predict_logits`).
    """
    height, width = dataset.read(0)[1].shape
    return [max(1, int(round(width * scale))), max(1, int(round(height * scale)))]


# ----------------------------------------------------------------------------- one step


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: torch.amp.GradScaler, loss_cfg: Mapping[str, Any], amp: bool
               ) -> tuple[float, dict[str, float]]:
    """One optimisation step.

    Args:
        model: train-mode model built with ``aux=True`` (possibly DDP-wrapped).
        images: (N, 3, H, W) normalized float32 on the model's device.
        labels: (N, H, W) int64, 255 = ignore.
        optimizer, scheduler, scaler: the optimisation state (scaler disabled off CUDA).
        loss_cfg: the ``loss`` config section.
        amp: autocast the forward pass to float16 (CUDA only; losses are computed in float32).

    Returns:
        ``(loss, parts)`` as floats.
    """
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=amp):
        outputs = model(images)
    loss, parts = segmentation_loss(outputs, labels, loss_cfg)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach()), parts


# ----------------------------------------------------------------------------- the run


def recorded_config(run_dir: str | os.PathLike[str], *, with_yaml: bool = True) -> dict[str, Any] | None:
    """The config a run folder records, for ``--resume``: ``last.pth``'s, else ``config.yaml``'s.

    ``config.yaml`` alone is what a run leaves when it stopped before its first checkpoint
    (``train.ckpt_every`` steps); the resumed run then starts from step 0 with that config.

    Args:
        run_dir: the run directory.
        with_yaml: also fall back to ``config.yaml`` (False: ``last.pth`` only).

    Returns:
        The recorded config (to load with ``load_config(..., recorded=True)``), or None when the
        folder holds neither file.
    """
    run_dir = Path(run_dir)
    if (run_dir / "last.pth").is_file():
        return load_training_checkpoint(run_dir / "last.pth")["config"]
    if with_yaml and (run_dir / "config.yaml").is_file():
        with open(run_dir / "config.yaml", encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    return None


#: What may differ when a run is resumed: where the data lives and how this machine runs it.
#: Everything else comes from the checkpoint's config, because it decides the steps.
RESUME_SETTINGS = ("data.root", "data.workers", "train.cpu_threads", "train.device")


def train(config: Mapping[str, Any], run_dir: str | os.PathLike[str], *, resume: bool = False,
          device: str | None = None, workers: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train according to ``config``, writing checkpoints and logs under ``run_dir``.

    The run folder's ``config.yaml`` and every checkpoint's ``config`` are the run's effective
    config: the class list actually trained (``data.class_set`` as ``{names, palette}`` for a
    folder dataset, ``model.num_classes``), the warm-up length, the DataLoader workers, the CPU
    threads and the device. ``--resume`` reads that config back.

    Args:
        config: a complete config (:func:`training.config.load_config`).
        run_dir: the run directory (created); holds config.yaml, logs, last.pth, best.pth.
        resume: continue from ``run_dir/last.pth`` (its stored config is used, except
            :data:`RESUME_SETTINGS`, which come from ``config``).
        device: "cpu", "cuda", "cuda:N" (overrides ``train.device``; default: CUDA if available).
        workers: override ``data.workers``.
        quiet: no progress line.

    Returns:
        ``{"step", "best_miou", "last_miou", "seconds"}``.
    """
    run_dir = Path(run_dir)
    config = load_config(dict(config))
    if device is not None:
        config["train"]["device"] = device
    if workers is not None:
        config["data"]["workers"] = workers
    rank, world, dev = init_distributed(config["train"]["device"])
    main = _is_main(rank)
    ckpt = None
    if resume:
        last = run_dir / "last.pth"
        if last.is_file():
            ckpt = load_training_checkpoint(last)
            stored = load_config(ckpt["config"], recorded=True)
            for dotted in RESUME_SETTINGS:
                section, key = dotted.split(".")
                stored[section][key] = config[section][key]
            config = stored
        elif main:
            print(f"--resume: {last} does not exist yet; starting from step 0", file=sys.stderr)
    tcfg, dcfg = config["train"], config["data"]

    if dev.type == "cpu":
        if tcfg["cpu_threads"]:
            torch.set_num_threads(int(tcfg["cpu_threads"]))
        tcfg["cpu_threads"] = torch.get_num_threads()
    # Under torchrun every process picks cuda:LOCAL_RANK: record the type, not rank 0's index.
    tcfg["device"] = str(dev) if world == 1 else dev.type
    seed = int(tcfg["seed"])
    torch.manual_seed(seed)  # model init; replaced by the checkpoint's RNG state on resume
    np.random.seed(seed)
    class_set = dataset_class_set(dcfg)
    num_classes = class_set.num_classes
    config["model"]["num_classes"] = num_classes  # the dataset's class list decides
    if dcfg["format"] == "folder" or dcfg["class_set"] != "cityscapes":
        dcfg["class_set"] = {"names": list(class_set.names), "palette": class_set.palette.tolist()}
    warmup, warmup_note = warmup_steps(config["optim"]["warmup_iters"], tcfg["iters"])
    config["optim"]["warmup_iters"] = warmup
    model, init_note = build_train_model(config, num_classes, resumed=ckpt)
    norm = model.normalization
    train_ds = build_dataset(dcfg, dcfg["train_split"], num_classes=num_classes, mean=norm.mean, std=norm.std,
                             train=True)
    val_ds = None
    if tcfg["eval_every"]:
        val_ds = build_dataset(dcfg, dcfg["val_split"], num_classes=num_classes, mean=norm.mean, std=norm.std,
                               train=False)
    input_size = eval_input_size(val_ds if val_ds is not None else train_ds, config["eval"]["scale"])
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, run_dir / "config.yaml")
        for note in (warmup_note, init_note):
            if note:
                print(note, file=sys.stderr)
    _barrier(world)

    model.to(dev).train()
    if world > 1 and dev.type == "cuda" and config["model"]["sync_bn"]:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config["optim"])
    scheduler = build_scheduler(optimizer, config["optim"], tcfg["iters"])
    amp = bool(tcfg["amp"]) and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start_step, best_miou = 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if amp and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_step, best_miou = int(ckpt["step"]), float(ckpt.get("best_miou", -1.0))
        set_rng_state(ckpt["rng"])
        if main:
            print(f"resumed {run_dir / 'last.pth'} at step {start_step}", file=sys.stderr)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    n_workers = dcfg["workers"]
    sampler = StepBatchSampler(len(train_ds), tcfg["batch_size"], rank=rank, world_size=world,
                               start_step=start_step, total_steps=tcfg["iters"], seed=seed)
    # A private generator: the DataLoader must not draw from the global torch RNG, whose state
    # (dropout) is part of what --resume restores.
    loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=n_workers, pin_memory=dev.type == "cuda",
                        generator=torch.Generator().manual_seed(seed), persistent_workers=False)
    val_loader = None
    if val_ds is not None:
        shard = Subset(val_ds, range(rank, len(val_ds), world))
        val_loader = DataLoader(shard, batch_size=config["eval"]["batch_size"], num_workers=min(n_workers, 2))
    logger = RunLogger(run_dir, total_steps=tcfg["iters"], start_step=start_step, class_names=class_set.names,
                       tensorboard=tcfg["tensorboard"], enabled=main)
    palette = class_set.palette.tolist()

    def save(name: str, step: int) -> None:
        if main:
            state = build_training_checkpoint(model, class_names=list(class_set.names), palette=palette,
                                              optimizer=optimizer, scheduler=scheduler,
                                              scaler=scaler if amp else None, step=step, config=config,
                                              best_miou=best_miou, input_size=input_size)
            atomic_save(state, run_dir / name)
        _barrier(world)

    def validate(step: int) -> float:
        assert val_loader is not None
        conf = evaluate(model, val_loader, num_classes, scales=[config["eval"]["scale"]], device=dev, amp=amp)
        if world > 1:
            conf = conf.to(dev)
            dist.all_reduce(conf)
            conf = conf.cpu()
        miou = mean_iou(conf)
        logger.eval(step, miou, pixel_accuracy(conf), list(iou_from_confusion(conf)))
        return miou

    start_time = time.time()
    last_miou = float("nan")
    step = last_logged = start_step
    tick = time.time()
    if main and not quiet:
        logger.message(f"training {config['model']['variant']} on {dcfg['root']} ({len(train_ds)} images, "
                       f"{num_classes} classes) for {tcfg['iters']} steps, global batch {tcfg['batch_size']} "
                       f"on {world} x {dev}; evaluated at {input_size[0]}x{input_size[1]} "
                       f"(eval.scale {config['eval']['scale']})")
    for images, labels in loader:
        images = images.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_mult"]
        loss, parts = train_step(net, images, labels, optimizer, scheduler, scaler, config["loss"], amp)
        step += 1
        if not np.isfinite(loss):
            raise FloatingPointError(f"step {step}: loss is {loss}; lower optim.lr or check the labels")
        if tcfg["log_every"] and (step % tcfg["log_every"] == 0 or step == tcfg["iters"]):
            now = time.time()
            logger.train(step, lr, loss, parts, (now - tick) / max(1, step - last_logged))
            last_logged, tick = step, now
        if not quiet:
            logger.progress(step, loss, lr, force=step == tcfg["iters"])
        if val_loader is not None and (step % tcfg["eval_every"] == 0 or step == tcfg["iters"]):
            last_miou = validate(step)
            if last_miou > best_miou:
                best_miou = last_miou
                save("best.pth", step)
            net.train()
        if (tcfg["ckpt_every"] and step % tcfg["ckpt_every"] == 0) or step == tcfg["iters"]:
            save("last.pth", step)
    logger.close()
    seconds = time.time() - start_time
    if main and not quiet:
        print(f"done: {step} steps in {seconds:.0f} s; best val mIoU "
              f"{100 * max(best_miou, 0):.2f}%; checkpoints in {run_dir}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return {"step": step, "best_miou": best_miou, "last_miou": last_miou, "seconds": seconds}


# ----------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m training train``."""
    parser.add_argument("--config", help="YAML config file or name in training/configs (e.g. bisenetv2_cityscapes)")
    parser.add_argument("--run-dir", help="run directory for config, logs and checkpoints "
                        "(default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last.pth (uses the stored config)")
    parser.add_argument("--data-root", help="dataset root (overrides data.root)")
    parser.add_argument("--iters", type=int, help="number of steps (overrides train.iters)")
    parser.add_argument("--batch-size", type=int, help="global batch size (overrides train.batch_size)")
    parser.add_argument("--lr", type=float, help="base learning rate (overrides optim.lr)")
    parser.add_argument("--backbone-weights", help="ImageNet backbone weights (overrides model.backbone_weights)")
    parser.add_argument("--init-weights", help="checkpoint to fine-tune from (overrides model.init_weights)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available; "
                        "under torchrun each process uses cuda:LOCAL_RANK)")
    parser.add_argument("--workers", type=int, help="DataLoader workers per process (overrides data.workers)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process (overrides train.cpu_threads)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any config override, e.g. train.eval_every=2000 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m training train``."""
    overrides = list(args.overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = (("data_root", "data.root"), ("workers", "data.workers"), ("threads", "train.cpu_threads"),
             ("device", "train.device"), ("iters", "train.iters"), ("batch_size", "train.batch_size"),
             ("lr", "optim.lr"), ("backbone_weights", "model.backbone_weights"),
             ("init_weights", "model.init_weights"))
    for flag, key in flags:
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if not args.config and not args.resume:
        raise ValueError("give --config (a YAML file or a name in training/configs), or --resume --run-dir")
    run_dir = args.run_dir
    if run_dir is None:
        if not args.config:
            raise ValueError("--resume needs --run-dir")
        run_dir = str(Path("runs") / Path(args.config).stem)
    recorded = recorded_config(run_dir, with_yaml=not args.config) if args.resume else None
    if recorded is not None:
        # The run's recorded config, with only what RESUME_SETTINGS allows taken from this command.
        allowed = [o for o in overrides if ".".join(parse_override(o)[0]) in RESUME_SETTINGS]
        config = load_config(recorded, allowed, recorded=True)
        ignored = [o for o in overrides if o not in allowed]
        if ignored:
            print("--resume: the stored config is used; ignoring " + " ".join(ignored), file=sys.stderr)
    elif args.config:
        config = load_config(args.config, overrides)
    else:
        raise ValueError(f"nothing to resume in {run_dir} (no last.pth, no config.yaml); "
                         "give --config to start the run there")
    train(config, run_dir, resume=args.resume, quiet=args.quiet)
    return 0
