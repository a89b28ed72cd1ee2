"""What both trainers share: configuration and errors, device and precision, seeding, optimizers,
the epoch loop with exact metrics, timing and memory, and the run directory (config, CSV,
checkpoints, resume, summary).

A trainer hands `fit` a task object that knows how a split becomes batches and a batch a loss:

    task.metric          "acc" or "ppl"      task.maximize   True when higher is better
    task.unit            "images" or "tokens"
    task.num_batches(split) -> int
    task.batches(split, epoch) -> iterator of batches (device tensors, order seeded by epoch)
    task.loss(model, batch) -> (summed loss: tensor, count: int, correct: tensor)
    task.metric_value(mean_loss, accuracy) -> float
"""
import argparse
import contextlib
import copy
import csv
import dataclasses
import io
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import zlib
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a convenience, never a reason to fail
    tqdm = None


class UserError(Exception):
    """A problem the user can fix (bad flag, missing data, existing run): one line, exit code 2."""


def check(condition, message):
    if not condition:
        raise UserError(message)


def cli(main):
    """Run `main(argv)`; report a UserError as one line on stderr with exit code 2 (no traceback)
    and Ctrl-C as a clean stop that can be resumed."""
    def wrapped(argv=None):
        try:
            return main(argv)
        except UserError as e:
            if rank() == 0:  # every rank fails alike; one message is enough
                print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: the last finished epoch is saved; continue with --resume", file=sys.stderr)
            sys.exit(130)
    return wrapped


# ----------------------------------------------------------------------------------------- config

def option(default, help, choices=None):
    """A dataclass field that becomes a command-line flag."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class TrainConfig:
    """Settings both trainers share. Each script subclasses it with its own defaults and shape."""
    layers: int = option(2, "number of recurrent layers or transformer blocks")
    block: str = option("prenorm", "transformer block: LayerNorm before (pre) or after (post) the residual",
                        ["prenorm", "postnorm"])
    batch_size: int = option(128, "examples (windows or images) per optimizer step")
    epochs: int = option(10, "passes over the training split")
    optimizer: str = option("adamw", "sgd: plain SGD; momentum: SGD with momentum; adam: Adam without "
                            "weight decay; adamw: AdamW", ["sgd", "momentum", "adam", "adamw"])
    lr: float = option(3e-4, "learning rate")
    momentum: float = option(0.9, "momentum of the 'momentum' optimizer")
    weight_decay: float = option(5e-4, "weight decay (sgd, momentum, adamw; adam uses none)")
    dropout: float = option(0.0, "dropout probability")
    scheduler: str = option("constant", "learning rate after the warmup: constant, or cosine decay to --min_lr "
                            "(both per step)", ["constant", "cosine"])
    warmup_epochs: float = option(0.0, "linear warmup from lr/steps to lr over this many epochs (per step)")
    min_lr: float = option(0.0, "the cosine schedule's final learning rate")
    grad_clip: float = option(0.0, "clip the global gradient norm to this value (0: off)")
    ema: float = option(0.0, "keep an exponential moving average of the weights with this decay per step "
                        "(e.g. 0.999; 0: off), evaluated and logged beside the model")
    grad_norms: bool = option(False, "log each layer's gradient norm (mean over the epoch's steps, and the "
                              "first step as epoch 0) to grad_norms.csv")
    seed: int = option(42, "seed of every random generator")
    exp_id: str = option("", "run name; default: derived from the settings")
    log_dir: str = option("logs", "folder that holds one sub-folder per run")
    data_folder: str = option("", "dataset folder")
    device: str = option("auto", "auto picks CUDA when there is one", ["auto", "cpu", "cuda"])
    precision: str = option("auto", "auto: bf16 autocast on CUDA that supports it, else fp32",
                            ["auto", "fp32", "bf16", "fp16"])
    compile: bool = option(False, "torch.compile the model (in place); the warm-up is timed apart from the epochs")
    limit_batches: int = option(0, "at most this many batches per split and epoch (0: all), for smoke runs")
    no_progress: bool = option(False, "no progress bars")
    resume: bool = option(False, "continue the run in <log_dir>/<exp_id> from its checkpoint")
    overwrite: bool = option(False, "delete an existing run directory of the same name and start again")

    def validate(self):
        check(self.layers >= 1, f"--layers must be at least 1, got {self.layers}")
        check(self.batch_size >= 1, f"--batch_size must be at least 1, got {self.batch_size}")
        check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        check(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        check(self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.limit_batches >= 0, f"--limit_batches must be >= 0, got {self.limit_batches}")
        check(0 <= self.warmup_epochs <= self.epochs,
              f"--warmup_epochs must be in [0, --epochs], got {self.warmup_epochs}")
        check(0 <= self.min_lr <= self.lr, f"--min_lr must be in [0, --lr], got {self.min_lr}")
        check(self.grad_clip >= 0, f"--grad_clip must be >= 0, got {self.grad_clip}")
        check(0 <= self.ema < 1, f"--ema must be a decay in [0, 1), got {self.ema}")
        check(not (self.resume and self.overwrite), "--resume and --overwrite exclude each other")
        check(self.exp_id == "" or ("/" not in self.exp_id and self.exp_id not in (".", "..")),
              f"--exp_id must be a plain name, got {self.exp_id!r}")

    def name_fields(self):
        """Fields spelled out in the default run name, in order."""
        return ["layers", "optimizer", "lr", "batch_size", "seed"]

    def default_exp_id(self, prefix):
        """A readable run name: the main settings, then any other setting that changes the result
        and differs from its default. `--epochs` is left out so that a run can be extended."""
        short = {"layers": "L", "lr": "lr", "batch_size": "bs", "seed": "s"}
        parts = [prefix] + [f"{short.get(k, '')}{getattr(self, k):g}" if isinstance(getattr(self, k), float)
                            else f"{short.get(k, '')}{getattr(self, k)}" for k in self.name_fields()]
        defaults = type(self)()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self.name_fields() or f.name in NOT_IN_NAME or value == getattr(defaults, f.name):
                continue
            parts.append(f.name if value is True else f"{f.name}{value:g}" if isinstance(value, float)
                         else f"{f.name}{Path(str(value)).stem}")
        return "_".join(parts)


# Settings that do not change what a run computes: they may differ on resume and stay out of names.
NOT_IN_NAME = {"epochs", "exp_id", "log_dir", "data_folder", "device", "no_progress", "resume", "overwrite"}
RESUME_MAY_DIFFER = {"epochs", "log_dir", "data_folder", "no_progress", "resume", "overwrite"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block
        self.exit(2, f"error: {message} (see --help)\n")


def parse_config(cls, argv=None, description=None):
    """Build argparse from the dataclass `cls` (one flag per field), parse, validate."""
    parser = _Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        meta = f.metadata
        if f.type in (bool, "bool"):
            parser.add_argument(f"--{f.name}", action="store_true", help=meta.get("help"))
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(f"--{f.name}", type=kind, default=default, choices=meta.get("choices"),
                                help=f"{meta.get('help', '')} (default: {default})")
    cfg = cls(**vars(parser.parse_args(argv)))
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------- device, seeds, precision

def get_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        check(torch.cuda.is_available(), "--device cuda asked for, but this machine has no usable CUDA "
                                         "device (use --device cpu or auto)")
    return torch.device(name)


def resolve_precision(name, device):
    """The autocast dtype for --precision, or None for plain fp32."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    check(not (name == "fp16" and device.type == "cpu"), "--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def rank():
    """This process's rank: from the process group, or from torchrun's RANK before it exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def log(*args):
    """print, from the first process only."""
    if rank() == 0:
        print(*args, flush=True)


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier():
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def first_process_first():
    """The first process runs the block (a download, a cache write) before the others start it."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def setup(cfg):
    """Device, precision, seeds and, under torchrun, the process group (NCCL on CUDA, gloo on CPU).
    Returns (device, autocast dtype or None). `--batch_size` stays the global batch."""
    device = get_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        check(cfg.batch_size % world == 0,
              f"--batch_size {cfg.batch_size} does not divide over {world} processes")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    dtype = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed)
    return device, dtype


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)  # every device


def epoch_generator(seed, epoch, purpose):
    """A CPU generator for one purpose ("shuffle", "augment", ...) in one epoch. Deriving it from
    (seed, epoch, purpose) keeps data order and augmentation independent of everything else (model
    size, process count), and a resumed run draws exactly what the uninterrupted one drew."""
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + epoch) * 4_294_967_311 + zlib.crc32(purpose.encode())) % 2 ** 63)
    return g


def make_optimizer(name, params, lr, momentum=0.9, weight_decay=0.0, device=None):
    """The reference's four optimizers. Returns (optimizer, effective weight decay). They use the
    fused kernels (one launch for all parameters) where this torch has them for the device, else
    foreach on CUDA and the defaults elsewhere."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        cls, kwargs = torch.optim.SGD, dict(weight_decay=weight_decay)
    elif name == "momentum":
        cls, kwargs = torch.optim.SGD, dict(momentum=momentum, weight_decay=weight_decay)
    elif name == "adam":
        cls, kwargs = torch.optim.Adam, dict(weight_decay=0.0)  # the reference's Adam has no weight decay
    elif name == "adamw":
        cls, kwargs = torch.optim.AdamW, dict(weight_decay=weight_decay)
    else:
        raise UserError(f"unknown optimizer {name!r}; choose from sgd, momentum, adam, adamw")
    try:  # CPU too: there the fused step is about 3x the default (4 vs 12 ms for ViT-6's AdamW)
        return cls(params, lr=lr, fused=True, **kwargs), kwargs["weight_decay"]
    except (TypeError, RuntimeError, ValueError):  # a torch or device without this fused kernel
        return cls(params, lr=lr, foreach=device is not None and device.type == "cuda", **kwargs), kwargs["weight_decay"]


def distribute(model):
    """DistributedDataParallel under torchrun, the model itself otherwise."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def shard(batch):
    """This process's slice of a global batch: tensors split along the first dimension; other items
    (the global count of examples or tokens) are kept whole."""
    world = world_size()
    if world == 1:
        return batch
    return tuple(torch.tensor_split(b, world)[rank()] if torch.is_tensor(b) else b for b in batch)


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
    """An exponential moving average of a model's weights, updated after every optimizer step:
    ema = d * ema + (1 - d) * weights, with d = min(decay, (1 + n) / (10 + n)) at the n-th update, so
    the average forgets the random initialisation early in a run (TensorFlow's num_updates rule).
    Buffers are copied. `model` is a frozen copy in eval mode, to evaluate like any model."""

    def __init__(self, model, decay):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.params = list(self.model.parameters())  # listed once, not every step

    def rate(self):
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        torch._foreach_lerp_(self.params, list(model.parameters()), 1 - self.rate())
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self):
        return dict(model=self.model.state_dict(), updates=self.updates)

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]


class LayerGradNorms:
    """Per-layer gradient norms, accumulated on the device: after each backward pass, the L2 norm of
    each layer's whole gradient (one foreach kernel for all tensors); read once per epoch as the
    mean over its steps, plus the first step's norms (the gradients at that point of training)."""

    def __init__(self, layers):
        self.params = [p for layer in layers for p in layer]
        device = self.params[0].device
        self.owner = torch.tensor([i for i, layer in enumerate(layers) for _ in layer], device=device)
        self.zero = torch.zeros((), device=device)
        self.num_layers = len(layers)
        self.reset()

    def reset(self):
        self.sums, self.first, self.steps = torch.zeros(self.num_layers, device=self.zero.device), None, 0

    @torch.no_grad()
    def add(self):
        norms = torch._foreach_norm([p.grad if p.grad is not None else self.zero for p in self.params])
        squares = torch.stack(norms).float().square()
        layer = torch.zeros_like(self.sums).index_add_(0, self.owner, squares).sqrt_()
        self.sums += layer
        if self.first is None:
            self.first = layer
        self.steps += 1

    def read(self):
        """(mean norms over the steps, first step's norms), lists of floats, one host read."""
        both = torch.stack([self.sums / max(self.steps, 1), self.first]).tolist()
        return both[0], both[1]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device):
    """(peak MB, % of the device's memory): CUDA max allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        used = torch.cuda.max_memory_allocated(device)
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return used / 2 ** 20, 100.0 * used / total


# ------------------------------------------------------------------------------------- epoch loop

class Diverged(UserError):
    pass


# Fault injection for the crash tests: TRAINER_FAULT=point:epoch[:step] kills this process with
# SIGKILL at that point (points: batch, csv, best, checkpoint). Read once; unset in normal use.
FAULT = os.environ.get("TRAINER_FAULT")


def fault_point(*where):
    if FAULT == ":".join(map(str, where)):
        os.kill(os.getpid(), signal.SIGKILL)


def run_epoch(model, task, split, epoch=1, optimizer=None, autocast_dtype=None, scaler=None,
              limit_batches=0, progress=False, refresh_every=50, scheduler=None, grad_clip=0.0, ema=None,
              grad_norms=None):
    """Train (with an optimizer) or evaluate `model` on one pass over `split`.

    Losses are summed on the device and divided once at the end: the result is the exact mean
    over every token or image, whatever the batch sizes. The host reads device values only every
    `refresh_every` batches (progress bar and a NaN check) and once at the end. In training, `ema`
    (an EMA) is updated after every step and `grad_norms` (a LayerGradNorms) sees every gradient.
    Returns dict(loss, accuracy, metric, count, seconds).
    """
    training = optimizer is not None
    device = next(model.parameters()).device
    world = world_size()
    model.train(training)
    n = task.num_batches(split)
    n = min(n, limit_batches) if limit_batches else n
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct predictions
    count = 0
    bar = tqdm(total=n, desc=f"{split} {epoch}", leave=False, dynamic_ncols=True,
               disable=not progress or rank() != 0 or not sys.stderr.isatty()) if tqdm else None
    sync(device)
    start = time.perf_counter()
    with torch.set_grad_enabled(training):
        for step, batch in enumerate(islice(task.batches(split, epoch), n), 1):
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss_sum, batch_count, correct = task.loss(model, shard(batch))
            if training:
                optimizer.zero_grad(set_to_none=True)
                # batch_count is the whole global batch's; DDP averages gradients over the
                # processes, so scaling by the world size makes them the exact global mean.
                loss = loss_sum * world / batch_count
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if grad_clip or grad_norms is not None:
                        scaler.unscale_(optimizer)  # the true gradients, for clipping and logging
                else:
                    loss.backward()
                if grad_norms is not None:
                    grad_norms.add()  # before clipping: the gradients the model produced
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if ema is not None:
                    ema.update(unwrap(model))
            sums += torch.stack([loss_sum.detach().double(), correct.double()])
            count += batch_count
            if FAULT and training:
                fault_point("batch", epoch, step)
            if step % refresh_every == 0 or step == n:
                total = sums[0].item() * world  # one host read per refresh_every batches (this rank's estimate)
                if not math.isfinite(total):
                    raise Diverged(f"{split} loss became {total} in epoch {epoch} by step {step} "
                                   f"(of {n}); the logs and the last good checkpoint are kept")
                if bar is not None:
                    bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            if bar is not None:
                bar.update()
    if world > 1:
        dist.all_reduce(sums)  # every process scored its own slice of every batch
    sync(device)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    check(count > 0, f"the {split} split produced no batches")
    loss_total, correct = sums.tolist()
    loss = loss_total / count
    accuracy = correct / count
    return dict(loss=loss, accuracy=accuracy, metric=task.metric_value(loss, accuracy), count=count,
                seconds=seconds)


# ---------------------------------------------------------------------------------- run directory

def atomic_write(path, write):
    """Write through `write(file)` to a temporary file, fsync, then rename over `path`: a crash or a
    full disk leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {e.strerror or e}; the previous version is intact") from None
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_torch(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_torch(path):
    """Checkpoints are loaded with weights_only=True: a crafted pickle is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file cannot be trusted
        raise UserError(f"cannot load {path}: {str(e).splitlines()[0][:200]}") from None


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device):
    return dict(torch=torch.__version__, python=platform.python_version(), device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                or platform.machine(), threads=torch.get_num_threads(), git_commit=git_commit(),
                hostname=platform.node())


def prepare_run_dir(cfg):
    """Create <log_dir>/<exp_id>; refuse an existing run unless --resume or --overwrite."""
    run_dir = Path(cfg.log_dir) / cfg.exp_id
    exists = run_dir.is_dir() and any(run_dir.iterdir())
    if exists and not (cfg.resume or cfg.overwrite):
        raise UserError(f"run directory {run_dir} already exists; use --resume to continue it, "
                        f"--overwrite to start it again, or another --exp_id")
    barrier()  # every process has looked before the first one changes anything
    if rank() != 0:
        barrier()
        return run_dir
    try:
        if exists and cfg.overwrite:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None
    barrier()
    return run_dir


def rng_state():
    np_state = np.random.get_state()
    state = dict(python=random.getstate(), numpy=(np_state[0], torch.from_numpy(np_state[1].copy()),
                                                  *np_state[2:]), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    """JSON-compatible copy of a config value (for comparison across a save and load)."""
    return json.loads(json.dumps(value))


def config_differences(saved, current):
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys
            if k not in RESUME_MAY_DIFFER and _plain(saved.get(k)) != _plain(current.get(k))]


def write_csv(path, columns, rows):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def append_csv(path, columns, *rows):
    """Append rows in one write, flushed and fsynced, so a finished epoch's rows survive any crash."""
    line = io.StringIO()
    csv.DictWriter(line, fieldnames=columns, lineterminator="\n").writerows(rows)
    try:
        with open(path, "a") as f:
            f.write(line.getvalue())
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"could not append to {path}: {e.strerror or e}") from None


def compile_model(model, task, autocast_dtype):
    """torch.compile in place (state_dict keys stay those of the plain model), then training and
    evaluation passes on a batch and on a batch one example smaller, so the compilation is not
    billed to the first epoch: an epoch's last batch is usually smaller, and that second shape is
    what makes torch.compile recompile with dynamic shapes. The random state is put back afterwards:
    a compiled run draws the same numbers as a plain one."""
    device = next(model.parameters()).device
    state = rng_state()
    sync(device)
    start = time.perf_counter()
    model.compile()
    for training in (True, False):
        model.train(training)
        for smaller in (False, True):
            batch = next(iter(task.batches("train" if training else "valid", 0)))  # a fresh pass: fresh state
            if smaller:
                if not all(b.shape[0] > 1 for b in batch if torch.is_tensor(b)):
                    continue
                batch = tuple(b[:-1] if torch.is_tensor(b) else b for b in batch)
            with torch.set_grad_enabled(training), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                                   enabled=autocast_dtype is not None):
                loss, _, _ = task.loss(model, batch)
            if training:
                loss.backward()
                model.zero_grad(set_to_none=True)
    sync(device)
    set_rng_state(state)
    seconds = time.perf_counter() - start
    print(f"compiled the model in {seconds:.1f}s (not counted in the epoch times)")
    return seconds


def fit(model, task, cfg, run_dir, optimizer, device, autocast_dtype=None, scheduler=None, extra_config=None):
    """The epoch loop: train, validate, append a metrics.csv row, keep best.pt, checkpoint; then test
    the final and the best-validation model and write summary.json. Resumes from checkpoint.pt when
    cfg.resume and one exists. With cfg.ema the weight average is validated every epoch beside the
    model (its own columns and best_ema.pt) and tested at the end; with cfg.grad_norms each layer's
    gradient norm goes to grad_norms.csv. Returns the summary dict."""
    run_dir = Path(run_dir)
    m = task.metric
    columns = ["epoch", "train_loss", f"train_{m}", "valid_loss", f"valid_{m}", "lr", "train_time",
               "valid_time", "elapsed", f"{task.unit}_per_s", "peak_mem_mb", "mem_pct"]
    if cfg.ema:
        columns += ["ema_valid_loss", f"ema_valid_{m}"]
    norm_columns = ["epoch", "layer", "norm"]
    config = dict(dataclasses.asdict(cfg), **(extra_config or {}))
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    if scheduler is None:
        steps = task.num_batches("train")
        scheduler = make_scheduler(cfg, optimizer, min(steps, cfg.limit_batches) if cfg.limit_batches else steps)
    raw = unwrap(model)  # checkpoints hold the plain model's keys, with or without DDP
    ema = EMA(raw, cfg.ema) if cfg.ema else None
    norms = None
    if cfg.grad_norms:
        check(hasattr(raw, "layer_parameters"), f"--grad_norms: {type(raw).__name__} does not name its layers")
        norms = LayerGradNorms(raw.layer_parameters())
    stateful = dict(model=raw, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema)
    main = rank() == 0  # under torchrun only the first process writes and prints

    history, norm_history, start_epoch = [], [], 1
    best, best_ema = dict(epoch=0, value=None), dict(epoch=0, value=None)
    ckpt_path = run_dir / "checkpoint.pt"
    if cfg.resume and ckpt_path.exists():
        ckpt = load_torch(ckpt_path)
        diffs = config_differences(ckpt["config"], config)
        check(not diffs, f"cannot resume {run_dir} with a different configuration ({'; '.join(diffs)})")
        for key, obj in stateful.items():
            if obj is not None and ckpt.get(key) is not None:
                obj.load_state_dict(ckpt[key])
        set_rng_state(ckpt["rng"])
        history, best, start_epoch = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
        norm_history, best_ema = ckpt.get("norm_history", []), ckpt.get("best_ema", best_ema)
        if main:
            print(f"resuming {run_dir} after epoch {ckpt['epoch']}")
    compile_seconds = compile_model(raw, task, autocast_dtype) if cfg.compile else None
    # The checkpoint holds every finished row: rewriting the CSV from it drops a row written after
    # the last checkpoint (that epoch is trained again) and restores one written before it.
    if main:
        save_json(dict(config, environment=environment(device), world_size=world_size()), run_dir / "config.json")
        write_csv(run_dir / "metrics.csv", columns, history)
        if norms is not None:
            write_csv(run_dir / "grad_norms.csv", norm_columns, norm_history)

    progress = not cfg.no_progress
    better = (lambda a, b: a > b) if task.maximize else (lambda a, b: a < b)
    for epoch in range(start_epoch, cfg.epochs + 1):
        if norms is not None:
            norms.reset()
        train = run_epoch(model, task, "train", epoch, optimizer, autocast_dtype, scaler, cfg.limit_batches,
                          progress, scheduler=scheduler, grad_clip=cfg.grad_clip, ema=ema, grad_norms=norms)
        valid = run_epoch(model, task, "valid", epoch, None, autocast_dtype, None, cfg.limit_batches, progress)
        elapsed = (history[-1]["elapsed"] if history else 0.0) + train["seconds"] + valid["seconds"]
        mem_mb, mem_pct = peak_memory(device)
        row = dict(zip(columns, [epoch, train["loss"], train["metric"], valid["loss"], valid["metric"],
                                 optimizer.param_groups[0]["lr"], train["seconds"], valid["seconds"], elapsed,
                                 train["count"] / train["seconds"], mem_mb, mem_pct]))
        new_norms = []
        if norms is not None:
            mean, first = norms.read()
            # Epoch 0: the very first step's gradients, the model at its initialisation.
            for e, values in ([(0, first)] if epoch == 1 else []) + [(epoch, mean)]:
                new_norms += [dict(epoch=e, layer=i, norm=v) for i, v in enumerate(values, 1)]
            norm_history += new_norms
        ema_improved = False
        if ema is not None:
            ema_valid = run_epoch(ema.model, task, "valid", epoch, None, autocast_dtype, None, cfg.limit_batches,
                                  progress)
            row.update(ema_valid_loss=ema_valid["loss"], **{f"ema_valid_{m}": ema_valid["metric"]})
            ema_improved = best_ema["value"] is None or better(ema_valid["metric"], best_ema["value"])
            if ema_improved:
                best_ema = dict(epoch=epoch, value=ema_valid["metric"])
        history.append(row)
        improved = best["value"] is None or better(valid["metric"], best["value"])
        if improved:
            best = dict(epoch=epoch, value=valid["metric"])
        if not main:
            continue
        append_csv(run_dir / "metrics.csv", columns, row)
        if new_norms:
            append_csv(run_dir / "grad_norms.csv", norm_columns, *new_norms)
        fault_point("csv", epoch)
        if improved:
            save_torch(dict(model=raw.state_dict(), epoch=epoch), run_dir / "best.pt")
            fault_point("best", epoch)
        if ema_improved:
            save_torch(dict(model=ema.model.state_dict(), epoch=epoch), run_dir / "best_ema.pt")
        save_torch(dict({k: (v.state_dict() if v is not None else None) for k, v in stateful.items()},
                        epoch=epoch, history=history, norm_history=norm_history, best=best, best_ema=best_ema,
                        rng=rng_state(), config=config), ckpt_path)
        fault_point("checkpoint", epoch)
        print(f"epoch {epoch}/{cfg.epochs}  train loss {train['loss']:.4f} {m} {train['metric']:.4f}  "
              f"valid loss {valid['loss']:.4f} {m} {valid['metric']:.4f}  "
              + (f"ema {m} {row[f'ema_valid_{m}']:.4f}  " if ema is not None else "")
              + f"({train['seconds']:.1f}s + {valid['seconds']:.1f}s)", flush=True)

    check(history, "no epoch was trained")

    def test(net, weights=None):
        barrier()  # best.pt and best_ema.pt are written by the first process
        if weights is not None:
            net.load_state_dict(load_torch(run_dir / weights)["model"])
        return run_epoch(net, task, "test", 0, None, autocast_dtype, None, cfg.limit_batches, progress)

    test_final = test(model)
    ema_tests = {}
    if ema is not None:
        ema_final, ema_best = test(ema.model), test(ema.model, "best_ema.pt")
        ema_tests = {"ema_best_epoch": best_ema["epoch"], f"ema_best_valid_{m}": best_ema["value"],
                     f"ema_test_{m}": ema_final["metric"], f"ema_best_test_{m}": ema_best["metric"]}
    test_best = test(raw, "best.pt")
    mem_mb, mem_pct = peak_memory(device)
    summary = dict(
        params_total=sum(p.numel() for p in raw.parameters()),
        params_learnable=sum(p.numel() for p in raw.parameters() if p.requires_grad),
        epochs=len(history), best_epoch=best["epoch"], **{f"best_valid_{m}": best["value"]},
        test_loss=test_final["loss"], **{f"test_{m}": test_final["metric"]},
        best_test_loss=test_best["loss"], **{f"best_test_{m}": test_best["metric"]}, **ema_tests,
        mean_train_time=float(np.mean([r["train_time"] for r in history])),
        mean_valid_time=float(np.mean([r["valid_time"] for r in history])),
        elapsed=history[-1]["elapsed"], peak_mem_mb=mem_mb, mem_pct=mem_pct, compile_seconds=compile_seconds)
    if main:
        save_json(summary, run_dir / "summary.json")
        print(f"test {m}: final {test_final['metric']:.4f}, best-valid model (epoch {best['epoch']}) "
              f"{test_best['metric']:.4f}"
              + (f"; EMA final {ema_tests[f'ema_test_{m}']:.4f}, best-valid EMA (epoch {best_ema['epoch']}) "
                 f"{ema_tests[f'ema_best_test_{m}']:.4f}" if ema is not None else "") + f"; logs in {run_dir}")
    barrier()
    return summary
