"""The training loop, for any task: `run_epoch` (one pass over a split, training or evaluating) and
`fit` (the epoch loop: train, validate, log a row, keep the best weights, checkpoint, then test),
and the device memory a run measures (`peak_memory`) and needs (`check_fits`, before it is built).

A trainer hands `fit` a task object that knows how a split becomes batches and a batch a loss:

    task.metric, task.label   "acc", "accuracy" or "ppl", "perplexity"   task.maximize   higher is better
    task.digits          decimals shown (4, 2)     task.unit "images" or "tokens"    task.title   the study's
    task.scoring         None, or how its metric is scored unlike its study's other runs (config.json, the report)
    task.alike           None, or the task scored as its study's reference: the best-valid model is tested there too
    task.warnings        lines about its data, printed with the settings' warnings once the run may go on
    task.num_batches(split) -> int       task.batch_sizes(split) -> the set of its batches' sizes
    task.batches(split, epoch) -> iterator of batches (device tensors, order seeded by epoch)
    task.loss(model, batch) -> (summed loss: tensor, count: int, correct: tensor)
    task.metric_value(mean_loss, accuracy) -> float
"""
import contextlib
import dataclasses
import math
import os
import re
import resource
import signal
import sys
import time
import warnings
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from optim import EMA, make_optimizer, make_scheduler
from rundir import RunDir, existing_run, keep_or_remove, prepare_run_dir, run_lock
from utils import FP32, Diverged, Stopped, UserError, barrier, check, distribute, log, rank, seed_dropout, setup, \
    shard, sync, unwrap, world_size

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a convenience, never a reason to fail
    tqdm = None


def device_memory(device):  # in bytes: the GPU's, or the machine's RAM
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_memory(device):
    """(peak MB, % of the device's memory): CUDA max allocated, or the process's peak RSS on CPU."""
    used = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resident_kb("VmHWM") * 1024
    return used / 2 ** 20, 100.0 * used / device_memory(device)


def check_fits(make, layers, device):
    """Refuse, before it is built for minutes, a model whose weights alone exceed the device's memory (a typo
    in --layers): its size from `make(n)`, n layers, counted on the meta device for 1 and 2 alike layers."""
    advice = "check --layers and the widths"
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nn.LSTM's about dropout with one layer
            one, two = (sum(p.numel() for p in make(n).parameters()) for n in (1, 2))
    except RuntimeError as e:  # a tensor of more than 2**63 bytes
        check("overflow" not in str(e), f"the model's tensors would be larger than any memory; {advice}")
        raise
    params, total = one + (layers - 1) * (two - one), device_memory(device)
    check(4 * params <= total, f"the model would have {params:,} parameters, {4 * params / 2 ** 30:,.1f} GB of "
          f"weights alone, more than the {total / 2 ** 30:,.1f} GB of memory of {device}; {advice}")


def resident_kb(field):
    """This process's resident memory in kB from /proc/self/status (VmRSS now, VmHWM its peak); getrusage's
    peak only where /proc is missing, since a program inherits its parent's there (a notebook's, the sweep's)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, kB elsewhere


class LayerGradNorms:
    """Per-layer gradient norms after each backward pass, accumulated on the device (one foreach
    kernel) and read once per epoch: the mean over its steps and the first step's. Steps the fp16
    loss scaler skipped (inf or NaN gradients) are left out and counted."""

    def __init__(self, layers):
        self.params = [p for layer in layers for p in layer]
        device = self.params[0].device
        self.owner = torch.tensor([i for i, layer in enumerate(layers) for _ in layer], device=device)
        self.zero = torch.zeros((), device=device)
        self.num_layers = len(layers)
        self.reset()

    def reset(self):
        self.sums = torch.zeros(self.num_layers, device=self.zero.device)
        self.first = torch.zeros_like(self.sums)
        self.counts = torch.zeros(2, device=self.zero.device)  # steps kept, steps skipped

    @torch.no_grad()
    def add(self, taken=None):
        norms = torch._foreach_norm([p.grad if p.grad is not None else self.zero for p in self.params])
        squares = torch.stack(norms).float().square()
        layer = torch.zeros_like(self.sums).index_add_(0, self.owner, squares).sqrt_()
        finite = torch.isfinite(layer).all() if taken is None else taken
        kept = torch.where(finite, layer, 0.0)
        self.first = torch.where((self.counts[0] == 0) & finite, kept, self.first)
        self.sums += kept
        self.counts += torch.stack([finite, ~finite]).float()

    def read(self):
        """(mean norms over the kept steps, the first kept step's norms, skipped steps), one host read."""
        values = torch.cat([self.sums / self.counts[0].clamp(min=1), self.first, self.counts[1:]]).tolist()
        n = self.num_layers
        return values[:n], values[n:2 * n], int(values[-1])


@dataclasses.dataclass
class Step:
    """One optimizer step and its optional parts, built once per run."""
    optimizer: torch.optim.Optimizer
    scaler: object = None           # torch.amp.GradScaler under fp16
    scheduler: object = None
    grad_clip: float = 0.0
    ema: EMA = None
    grad_norms: LayerGradNorms = None

    def __post_init__(self):
        self.skipped = torch.zeros((), device=self.optimizer.param_groups[0]["params"][0].device)

    def __call__(self, model, loss):
        opt, scaler = self.optimizer, self.scaler
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        taken = None
        if scaler:  # fp16: the true gradients, for clipping and logging, and whether the scaler skips
            scaler.unscale_(opt)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            taken = torch.stack(torch._foreach_norm(grads)).isfinite().all()  # the scaler's own test
            self.skipped += ~taken
        if self.grad_norms is not None:
            self.grad_norms.add(taken)  # before clipping: the gradients the model produced
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(unwrap(model), taken)


# ------------------------------------------------------------------------------------- epoch loop

def run_epoch(model, task, split, epoch=1, step=None, precision=FP32, limit=0, show=False, refresh_every=50):
    """Train (with a Step) or evaluate `model` on one pass over `split`, at most `limit` batches (0:
    all), with a progress bar if `show`. Losses are summed on the device and divided once: the exact
    mean over every token or image. The host reads the device every `refresh_every` batches (progress
    and a NaN check) and at the end. Returns dict(loss, accuracy, metric, count, seconds)."""
    training, device, world = step is not None, next(model.parameters()).device, world_size()
    model.train(training)
    n = task.num_batches(split)
    n = min(n, limit) if limit else n
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct predictions
    count, bar = 0, progress_bar(n, split) if show else None
    sync(device)
    start = time.perf_counter()
    with torch.set_grad_enabled(training):
        for i, batch in enumerate(islice(task.batches(split, epoch), n), 1):
            with precision.autocast(device):
                loss_sum, batch_count, correct = task.loss(model, shard(batch))
            if training:
                # batch_count is the whole global batch's; DDP averages gradients over the
                # processes, so scaling by the world size makes them the exact global mean.
                step(model, loss_sum * world / batch_count)
            sums += torch.stack([loss_sum.detach().double(), correct.double()])
            count += batch_count
            if i % refresh_every == 0 or i == n or i == 1:
                check_finite(sums[0], f"{split} loss", f"in epoch {epoch} by step {i} (of {n})")
                if bar is not None:  # this process's running means
                    loss, accuracy = (sums * world / count).tolist()
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False,
                                    **{task.metric: shown(task.metric_value(loss, accuracy), task.digits)})
            if bar is not None:
                bar.update()
    if world > 1:
        dist.all_reduce(sums)  # every process scored its own slice of every batch
    sync(device)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    check(count > 0, f"the {split} split produced no batches")
    loss, accuracy = (v / count for v in sums.tolist())
    return dict(loss=loss, accuracy=accuracy, metric=task.metric_value(loss, accuracy), count=count,
                seconds=seconds)


def check_finite(total, what, where):
    """The running loss sum as a float (one host read); Diverged on every process together when any
    process's is not finite, so that no rank is left waiting in a collective."""
    both = torch.stack([total.float(), (~torch.isfinite(total)).float()])
    if world_size() > 1:
        dist.all_reduce(both[1:])
    value, bad = both.tolist()
    if bad:  # a finite value here: another process's was not (its own line says which)
        raise Diverged(f"{what} became {value if not math.isfinite(value) else 'NaN or infinite in another process'} "
                       f"{where}")
    return value


def progress_bar(n, split):
    if tqdm is None or rank() != 0 or not (sys.stderr and sys.stderr.isatty()):
        return None
    return tqdm(total=n, desc=split, leave=False, dynamic_ncols=True)


def compile_model(model, task, precision=FP32, mode=None):
    """torch.compile in place (the state_dict keys stay the plain model's; a DDP module is compiled
    whole, so its all-reduce still overlaps the backward pass), then warmed up on every batch size
    each split yields (this process's slice), training and evaluation, so no compiling is billed to
    an epoch. Its dropout draws change nothing: each epoch reseeds them (utils.seed_dropout)."""
    device = next(model.parameters()).device
    sync(device)
    start = time.perf_counter()
    model.compile(mode=mode)
    try:
        for training, splits in ((True, ["train"]), (False, ["valid", "test"])):
            model.train(training)
            for size in sorted(set().union(*(task.batch_sizes(s) for s in splits)), reverse=True):
                batch = next(iter(task.batches(splits[0], 0)))  # a fresh pass: fresh state
                batch = tuple(b[:size] if torch.is_tensor(b) else b for b in batch)
                with torch.set_grad_enabled(training), precision.autocast(device):
                    loss, _, _ = task.loss(model, shard(batch))
                if training:
                    loss.backward()
                    model.zero_grad(set_to_none=True)
    except torch._dynamo.exc.TorchDynamoException as e:  # no C compiler, a kernel that does not build
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.endswith(" raised:")]
        cause = next((line for line in lines[1:] if re.search(r"\berror\b", line, re.I)), "")  # the compiler's
        said = (lines or [type(e).__name__])[0][:200] + f" ({cause[:200]})" * bool(cause)
        raise UserError(f"--compile failed: {said}; run without --compile") from None
    sync(device)
    seconds = time.perf_counter() - start
    log(f"compiled the model in {seconds:.1f}s (not counted in the epoch times)")
    return seconds


# ------------------------------------------------------------------------------------ the epochs

def make_step(model, task, cfg, optimizer, precision):
    raw = unwrap(model)
    steps = task.num_batches("train")
    norms = None
    if cfg.grad_norms:
        check(hasattr(raw, "layer_parameters"), f"--grad_norms: {type(raw).__name__} does not name its layers")
        norms = LayerGradNorms(raw.layer_parameters())
    return Step(optimizer, scaler=torch.amp.GradScaler("cuda") if precision.scaled else None,
                scheduler=make_scheduler(cfg, optimizer, min(steps, cfg.limit_batches or steps)),
                grad_clip=cfg.grad_clip, ema=EMA(raw, cfg.ema) if cfg.ema else None, grad_norms=norms)


def train_one_epoch(model, task, cfg, step, precision, progress, epoch):
    """Train, validate (and validate the EMA); returns the metrics row and the new grad-norm rows."""
    m, device = task.metric, next(model.parameters()).device
    if step.grad_norms is not None:
        step.grad_norms.reset()
    seed_dropout(cfg.seed, epoch)
    limit, show = cfg.limit_batches, not cfg.no_progress
    train = run_epoch(model, task, "train", epoch, step, precision, limit, show)
    valid = run_epoch(model, task, "valid", epoch, None, precision, limit, show)
    elapsed = (progress.history[-1]["elapsed"] if progress.history else 0.0) + train["seconds"] + valid["seconds"]
    mem_mb, mem_pct = peak_memory(device)
    row = {"epoch": epoch, "train_loss": train["loss"], f"train_{m}": train["metric"], "valid_loss": valid["loss"],
           f"valid_{m}": valid["metric"], "lr": step.optimizer.param_groups[0]["lr"],
           "train_time": train["seconds"], "valid_time": valid["seconds"], "elapsed": elapsed,
           f"{task.unit}_per_s": train["count"] / train["seconds"], "peak_mem_mb": mem_mb, "mem_pct": mem_pct}
    if step.ema is not None:
        ema = run_epoch(step.ema.model, task, "valid", epoch, None, precision, limit, show)
        row.update({"ema_valid_loss": ema["loss"], f"ema_valid_{m}": ema["metric"]})
    if step.scaler is not None:
        row["skipped_steps"] = int(step.skipped.item())
        step.skipped.zero_()
    new_norms = []
    if step.grad_norms is not None:
        mean, first, _ = step.grad_norms.read()
        # Epoch 0: the very first step's gradients, the model at its initialisation.
        for e, values in ([(0, first)] if epoch == 1 else []) + [(epoch, mean)]:
            new_norms += [dict(epoch=e, layer=i, norm=v) for i, v in enumerate(values, 1)]
    return row, new_norms


def fit(model, task, cfg, run_dir, optimizer, device, precision=FP32, extra_config=None, files=None):
    """The epoch loop: train, validate, append a metrics.csv row, keep best.pt, checkpoint; then test
    the final and the best-validation model and write summary.json. Resumes from checkpoint.pt with
    cfg.resume; `files` (name -> bytes) are written beside the logs once the run may go on. Returns
    the summary dict."""
    metric = dict(name=task.metric, label=task.label, maximize=task.maximize, digits=task.digits)  # for the readers
    config = dict(dataclasses.asdict(cfg), naming=cfg.naming(), metric=metric, title=task.title, scoring=task.scoring,
                  **(extra_config or {}))
    step = make_step(model, task, cfg, optimizer, precision)
    run = RunDir(run_dir, task, cfg, config, fp16=step.scaler is not None, files=files)
    raw = unwrap(model)  # checkpoints hold the plain model's keys, with or without DDP
    stateful = dict(model=raw, optimizer=optimizer, scheduler=step.scheduler, scaler=step.scaler, ema=step.ema)
    progress = run.resume(stateful)
    for line in [*cfg.ignored(), *task.warnings] if rank() == 0 else ():  # once it goes on: a refusal stays one line
        print(f"warning: {line}", file=sys.stderr, flush=True)
    compile_seconds = compile_model(model, task, precision) if cfg.compile else None
    run.start(progress, device, step.grad_norms is not None)

    def better(new, best):
        return new is not None and (best is None or (new > best if task.maximize else new < best))
    m = task.metric
    for epoch in range(len(progress.history) + 1, cfg.epochs + 1):
        row, new_norms = train_one_epoch(model, task, cfg, step, precision, progress, epoch)
        progress.history.append(row)
        progress.norm_history += new_norms
        improved = better(row[f"valid_{m}"], progress.best["value"])
        if improved:
            progress.best = dict(epoch=epoch, value=row[f"valid_{m}"])
        ema_improved = better(row.get(f"ema_valid_{m}"), progress.best_ema["value"])
        if ema_improved:
            progress.best_ema = dict(epoch=epoch, value=row[f"ema_valid_{m}"])
        run.save_epoch(progress, new_norms, stateful, improved, ema_improved)
        log_epoch(row, task, cfg.epochs)
    check(progress.history, "no epoch was trained")
    summary = test_and_summarise(model, task, cfg, run, progress, step.ema, precision, device)
    summary["compile_seconds"] = compile_seconds
    run.finish(summary)
    barrier()
    return summary


def shown(value, digits):
    """A metric as the console shows it: to the task's digits, with thousands separators; in 3 figures
    past 1e15 (a diverging run's perplexity would print a 300-digit number)."""
    return f"{value:,.{digits}f}" if abs(value) < 1e15 else f"{value:.3g}"


def log_epoch(row, task, epochs):
    if rank() != 0:
        return
    m, d = task.metric, task.digits
    ema = f"ema {m} {shown(row[f'ema_valid_{m}'], d)}  " if f"ema_valid_{m}" in row else ""
    n = row.get("skipped_steps")
    skipped = f"{n} step{'s' * (n != 1)} skipped by the fp16 scaler  " if n else ""
    log(f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} {m} {shown(row[f'train_{m}'], d)}  "
        f"valid loss {row['valid_loss']:.4f} {m} {shown(row[f'valid_{m}'], d)}  {ema}{skipped}"
        f"({row['train_time']:.1f}s + {row['valid_time']:.1f}s)")


def test_and_summarise(model, task, cfg, run, progress, ema, precision, device):
    """Test the final model and the best-validation one (and the EMA's two); the summary dict."""
    m, raw = task.metric, unwrap(model)

    def test(net, weights=None, scored=task):
        barrier()  # best.pt and best_ema.pt are written by the first process
        if weights is not None:
            run.load_weights(net, weights)
        return run_epoch(net, scored, "test", 0, None, precision, cfg.limit_batches, not cfg.no_progress)

    final = test(model)
    ema_tests = {}
    if ema is not None:
        ema_final, ema_best = test(ema.model), test(ema.model, "best_ema.pt")
        ema_tests = {"ema_best_epoch": progress.best_ema["epoch"], f"ema_best_valid_{m}": progress.best_ema["value"],
                     f"ema_test_{m}": ema_final["metric"], f"ema_best_test_{m}": ema_best["metric"]}
    best = test(raw, "best.pt")
    alike = {} if task.alike is None else {f"alike_best_test_{m}": test(raw, scored=task.alike)["metric"]}
    mem_mb, mem_pct = peak_memory(device)
    history = progress.history
    if rank() == 0:
        d = task.digits
        with_ema = "" if ema is None else (f"; EMA final {shown(ema_tests[f'ema_test_{m}'], d)}, best-valid EMA "
                                           f"(epoch {progress.best_ema['epoch']}) "
                                           f"{shown(ema_tests[f'ema_best_test_{m}'], d)}")
        as_reference = f" (scored as the reference: {shown(alike[f'alike_best_test_{m}'], d)})" if alike else ""
        log(f"test {m}: final {shown(final['metric'], d)}, best-valid model (epoch {progress.best['epoch']}) "
            f"{shown(best['metric'], d)}{as_reference}{with_ema}; logs in {run.path}")
    return dict(
        params_total=sum(p.numel() for p in raw.parameters()),
        params_learnable=sum(p.numel() for p in raw.parameters() if p.requires_grad),
        epochs=len(history), best_epoch=progress.best["epoch"], **{f"best_valid_{m}": progress.best["value"]},
        test_loss=final["loss"], **{f"test_{m}": final["metric"]},
        best_test_loss=best["loss"], **{f"best_test_{m}": best["metric"]}, **alike, **ema_tests,
        mean_train_time=float(np.mean([r["train_time"] for r in history])),
        mean_valid_time=float(np.mean([r["valid_time"] for r in history])),
        elapsed=history[-1]["elapsed"], peak_mem_mb=mem_mb, mem_pct=mem_pct)


def train(cfg, build):
    """What both trainers do around their task: name the run, set up the device, precision, seeds and
    process group, `build(cfg, device) -> (task, model, extra config, files to write)`, and only then,
    with the data loaded and the model built, create the run directory, make the optimizer, fit."""
    cfg.exp_id = cfg.exp_id or cfg.default_exp_id()
    try:
        device, precision = setup(cfg)
        log(f"device {device}; precision {precision.why}")
        if rank() == 0:  # refused at once, before the data is loaded (the first process looks: see prepare_run_dir)
            try:
                existing_run(cfg)
            finally:  # a run another process writes is in use, not one to --resume: its lock is looked at last, as
                with run_lock(cfg, existing=True):  # it may have started while its files were looked at
                    pass
        task, model, extra, files = build(cfg, device)
    except KeyboardInterrupt as e:
        raise Stopped(getattr(e, "signum", signal.SIGINT), "nothing of the run was written yet") from None
    model = model.to(device)
    optimizer, weight_decay, groups = make_optimizer(cfg.optimizer, model, cfg.lr, cfg.momentum, cfg.weight_decay,
                                                     device, cfg.decay_exempt)
    extra = dict(extra, effective_weight_decay=weight_decay, weight_decay_groups=groups,
                 precision_used=precision.name, precision_reason=precision.why)
    with run_lock(cfg):
        run_dir, fresh = prepare_run_dir(cfg)
        try:
            return fit(distribute(model), task, cfg, run_dir, optimizer, device, precision, extra, files)
        except BaseException as e:  # Ctrl-C and SIGTERM too
            gone = keep_or_remove(run_dir, fresh)
            if isinstance(e, Diverged):
                raise Diverged(f"{e}; " + (f"no epoch had finished, so {gone}" if gone else
                                           "the logs and the last good checkpoint are kept")) from None
            if isinstance(e, KeyboardInterrupt):
                raise Stopped(getattr(e, "signum", signal.SIGINT), f"no epoch had finished, so {gone}; the same "
                              "command starts it again" if gone else "the last finished epoch is saved; continue "
                              "with --resume") from None
            raise
