"""SGD with the recipes' parameter groups, and the warmup + poly learning-rate schedule."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, head_lr_mult: float = 1.0,
                 head_modules: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Split parameters into (decay / no decay) x (backbone / head) groups.

    Weight decay is never applied to 1-D parameters (norm weights and all biases): decaying a
    BatchNorm scale towards 0 only fights the normalization. Parameters of the top-level
    submodules named in ``head_modules`` (the fusion module and the segmentation heads in the
    BiSeNetV1 / STDC-Seg code) train at ``head_lr_mult`` times the base rate, because they start
    from scratch while the backbone is usually ImageNet-initialized.

    Returns:
        Groups for ``torch.optim.SGD``; each carries ``lr_mult`` (read by :class:`WarmupPoly`) and
        a ``name`` for logging.
    """
    heads = set(head_modules) if head_lr_mult != 1.0 else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.split(".", 1)[0] in heads
        decay = p.ndim > 1
        buckets.setdefault((is_head, decay), []).append(p)
    if heads and not any(is_head for is_head, _ in buckets):
        children = ", ".join(n for n, _ in model.named_children())
        raise ValueError(f"optim.head_modules {sorted(heads)} matches no submodule of the model "
                         f"(its top-level submodules: {children}); the {head_lr_mult}x head rate would not apply")
    groups = []
    for (is_head, decay), params in sorted(buckets.items()):
        mult = head_lr_mult if is_head else 1.0
        groups.append({"params": params, "lr": lr * mult, "initial_lr": lr * mult, "lr_mult": mult,
                       "weight_decay": weight_decay if decay else 0.0,
                       "name": f"{'head' if is_head else 'base'}_{'decay' if decay else 'nodecay'}"})
    return groups


def build_optimizer(model: nn.Module, optim_cfg: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with momentum over :func:`param_groups` (the ``optim`` config section)."""
    groups = param_groups(model, lr=optim_cfg["lr"], weight_decay=optim_cfg["weight_decay"],
                          head_lr_mult=optim_cfg["head_lr_mult"], head_modules=optim_cfg["head_modules"])
    return torch.optim.SGD(groups, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"],
                           weight_decay=optim_cfg["weight_decay"])


class WarmupPoly:
    """Warmup (exponential or linear from ``warmup_ratio``) then poly decay, per step.

    ``lr(step) = base * mult * factor(step)`` with ``factor`` rising from ``warmup_ratio`` to 1 over
    ``warmup_iters`` steps, then ``(1 - (step - warmup) / (total - warmup)) ** power``.
    Its state is a single integer, so it is trivially checkpointed with ``weights_only`` loading.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_iters: int, warmup_iters: int = 1000,
                 warmup: str = "exp", warmup_ratio: float = 0.1, power: float = 0.9) -> None:
        self.optimizer = optimizer
        self.total = total_iters
        self.warmup_iters = min(warmup_iters, max(total_iters - 1, 0))
        self.warmup = warmup
        self.ratio = warmup_ratio
        self.power = power
        self.step_count = 0
        self.base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self._apply()

    def factor(self, step: int) -> float:
        """The LR multiplier at ``step`` (0-based)."""
        if step < self.warmup_iters:
            t = step / self.warmup_iters
            return self.ratio ** (1 - t) if self.warmup == "exp" else self.ratio + (1 - self.ratio) * t
        span = max(1, self.total - self.warmup_iters)
        return max(0.0, 1 - (step - self.warmup_iters) / span) ** self.power

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * f

    def step(self) -> None:
        """Advance one training step (call after ``optimizer.step()``)."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "base": list(self.base)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.base = [float(b) for b in state["base"]]
        self._apply()


#: The published recipes' warm-up (CoinCheung/BiSeNet, STDC-Seg), used when optim.warmup_iters is None.
RECIPE_WARMUP_ITERS = 1000


def warmup_steps(warmup_iters: int | None, total_iters: int) -> tuple[int, str | None]:
    """The warm-up length of a run of ``total_iters`` steps, and the line that says why, if any.

    The recipes' 1000 steps (``warmup_iters`` None) were written for 60k-150k-step runs; on a
    short run they would be most of it (a 20-step run would average 0.16x the base rate), so
    they are scaled down to a tenth of the run. An explicit ``optim.warmup_iters`` is kept as
    given, with a warning when it is more than half of the run, up to the run's steps minus one
    (what :class:`WarmupPoly` runs), so that the recorded value is the length used.

    Returns:
        ``(steps, message)``: ``message`` is None when there is nothing to say.
    """
    if warmup_iters is None:
        steps = min(RECIPE_WARMUP_ITERS, total_iters // 10)
        if steps < RECIPE_WARMUP_ITERS:
            return steps, (f"warm-up: {steps} steps, a tenth of the {total_iters}-step run (the recipes' "
                           f"{RECIPE_WARMUP_ITERS} would be most of it); set optim.warmup_iters to choose")
        return steps, None
    if warmup_iters > total_iters / 2:
        return min(warmup_iters, max(total_iters - 1, 0)), (
            f"warning: optim.warmup_iters={warmup_iters} is more than half of the {total_iters}-step run: "
            "most steps run below the base learning rate; unset it (null) for a tenth of the run")
    return warmup_iters, None


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Mapping[str, Any], total_iters: int) -> WarmupPoly:
    """The :class:`WarmupPoly` schedule of the ``optim`` config section (warm-up: :func:`warmup_steps`)."""
    steps, _ = warmup_steps(optim_cfg["warmup_iters"], total_iters)
    return WarmupPoly(optimizer, total_iters=total_iters, warmup_iters=steps,
                      warmup=optim_cfg["warmup"], warmup_ratio=optim_cfg["warmup_ratio"],
                      power=optim_cfg["poly_power"])
