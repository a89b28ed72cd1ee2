"""The optimizers of the study, their weight-decay groups, the learning-rate schedule and the weight
average (EMA): what one optimizer step is made of, apart from the loop that takes it.

    >>> optimizer, weight_decay, groups = make_optimizer("adamw", model, 3e-4, weight_decay=5e-4)
"""
import copy
import math

import torch

from utils import check


def parameter_groups(model, exempt=False):
    """The learnable parameters as (decayed, not decayed). With `exempt`, tensors of fewer than 2
    dimensions (biases, LayerNorm weights) and the model's `no_weight_decay()` (positions, the CLS
    token) are not decayed, as in DeiT, timm and nanoGPT; without it all are, as in the reference."""
    skip = set(getattr(model, "no_weight_decay", lambda: ())()) if exempt else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a tied weight once
    exempted = [exempt and (p.ndim < 2 or n in skip) for n, p in named]
    return [p for (_, p), e in zip(named, exempted) if not e], [p for (_, p), e in zip(named, exempted) if e]


# The reference's four optimizers: each one's class and the settings it takes (it ignores the others).
OPTIMIZERS = dict(sgd=(torch.optim.SGD, ("weight_decay",)), momentum=(torch.optim.SGD, ("momentum", "weight_decay")),
                  adam=(torch.optim.Adam, ()),  # the reference's Adam has no weight decay
                  adamw=(torch.optim.AdamW, ("weight_decay",)))


def make_optimizer(name, model, lr, momentum=0.9, weight_decay=0.0, device=None, exempt=False):
    """One of OPTIMIZERS over `model`'s learnable parameters, fused where this torch has the kernel
    for the device: (optimizer, effective weight decay, what config.json records of the groups). A
    new optimizer goes into OPTIMIZERS."""
    check(name in OPTIMIZERS, f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    cls, takes = OPTIMIZERS[name]
    kwargs = {k: v for k, v in dict(momentum=momentum, weight_decay=weight_decay).items() if k in takes}
    decay, no_decay = parameter_groups(model, exempt)
    groups = [dict(params=decay)] + [dict(params=no_decay, weight_decay=0.0)] * bool(no_decay)
    recorded = {label: dict(tensors=len(ps), parameters=sum(p.numel() for p in ps))
                for label, ps in (("decay", decay), ("no_decay", no_decay))}
    try:
        optimizer = cls(groups, lr=lr, fused=True, **kwargs)
    except (TypeError, RuntimeError, ValueError):  # a torch or device without this fused kernel
        optimizer = cls(groups, lr=lr, foreach=device is not None and device.type == "cuda", **kwargs)
    return optimizer, kwargs.get("weight_decay", 0.0), recorded


def lr_factor(step, total_steps, warmup_steps, kind="constant", min_ratio=0.0):
    """The learning rate at optimizer step `step` (0-based) as a fraction of the peak: a linear
    warmup to 1 over warmup_steps, then constant or a cosine decay to min_ratio at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(cfg, optimizer, steps_per_epoch):
    """A per-step LambdaLR for --scheduler/--warmup_epochs/--min_lr, or None when the rate is fixed."""
    if cfg.scheduler == "constant" and cfg.warmup_epochs == 0:
        return None
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg.scheduler, cfg.min_lr / cfg.lr))


class EMA:
    """An exponential moving average of a model's weights after every optimizer step, with decay
    min(decay, (1 + n) / (10 + n)) at the n-th step (those the fp16 scaler skipped count), so that it
    soon forgets the initialisation (TensorFlow's num_updates rule); buffers are copied. `model` is
    an eval-mode copy."""

    def __init__(self, model, decay):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.params = list(self.model.parameters())  # listed once, not every step

    def rate(self):
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model, taken=None):
        """taken: a device bool, False where the fp16 scaler skipped the step (the average stays)."""
        self.updates += 1
        params = list(model.parameters())
        if taken is None:
            torch._foreach_lerp_(self.params, params, 1 - self.rate())
        else:
            step = torch._foreach_sub(params, self.params)
            torch._foreach_mul_(step, taken.float() * (1 - self.rate()))
            torch._foreach_add_(self.params, step)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self):
        return dict(model=self.model.state_dict(), updates=self.updates)

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
