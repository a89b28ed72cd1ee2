"""The sweep's plan, printed before it spends anything: the device and the data checked (what is
missing fetched once, before the first run), then how many runs, where, and about how long and how
much disk. A run's time comes from the finished epochs of its configuration in the log folder when
there are any; else, before a real sweep on a GPU, from a few of its batches timed there through the
trainer's own path (these small models are bound by launching kernels, far from their FLOPs' time);
else (a dry run stays in seconds) from its FLOPs (models.py's formulas, over the data's sizes) at a
share of a matmul rate measured here in a fraction of a second. Its disk comes from its learnable
parameters. bench.py measures MFU against that rate.

    DRY_RUN=1 bash runs.sh          # the commands, then this plan, in seconds (nothing fetched)
"""
import contextlib
import io
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

import results
import train_lm
import train_vit
from config import REPORT, parse_config
from data import GPT1_VOCAB_SIZE, IMAGE_EXTENSIONS, TEXT_FILES, TOKEN_FILES, Corpus, ImageData, load_cifar10, \
    load_wikitext, read_tokens_npz, split_train_valid, tokenize
from engine import Step, run_epoch
from gpt1 import gpt1_embeddings
from models import lm_flops, lm_train_flops, vit_flops
from optim import make_optimizer
from utils import UserError, check, choose_precision, cuda_unusable_reason, device_name, get_device, sync

SCRIPTS = {"train_lm.py": (train_lm, "LM_DATA"), "train_vit.py": (train_vit, "VIT_DATA")}
# The share of the measured matmul rate a step is counted at: 50-94% measured on a CPU (docs/speed.md); on a GPU
# these models reach 1-10%, so there a plan times their batches and a dry run's FLOPs give a lower bound.
EFFICIENCY = dict(cpu=0.6, cuda=0.4)
TIMED_ON = {"cuda"}  # devices where a run's time is its timed batches', not its FLOPs' (1-10% MFU on an H200)
TIMING_S = 40  # a real sweep's plan times batches this long at most (it prints within a minute), then counts FLOPs
START_S = 3  # a run's imports, data loading, model building and saving (2.7 s an LM, 3.2 s a ViT, on a 2-core CPU)
# The study's data when it is not in place yet: Wikitext-2 in GPT-1 tokens, CIFAR-10 (train, valid, test).
STANDARD = {"train_lm.py": (2_356_376, 245_046, 279_023), "train_vit.py": (45_000, 5_000, 10_000)}
OPTIMIZER_STATES = dict(sgd=0, momentum=1, adam=2, adamw=2)  # tensors per weight in checkpoint.pt


def parse_run(exp_id, config_class, argv):
    """A run's Config from its flags; a bad flag is one line naming the run."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_config(config_class, argv)
    except (SystemExit, UserError) as e:
        raise UserError(f"{exp_id}: {(err.getvalue().strip() or str(e)).removeprefix('error: ')}") from None


def check_device(name, gpus=()):
    """The device the runs will use; DEVICE=cuda without a usable GPU is refused, and so is GPUS naming
    a GPU this process does not see (a worker on it would fail every run it takes, at once)."""
    if name != "cpu" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        beyond = [g for g in gpus if g.isdigit() and int(g) >= count]
        check(not beyond, f"GPUS names GPU {beyond[0] if beyond else ''}, but this process sees {count} GPU"
              f"{'s' * (count > 1)}, numbered from 0" + " (after CUDA_VISIBLE_DEVICES)" * bool(
                  os.environ.get("CUDA_VISIBLE_DEVICES")))
        return get_device("cuda")  # a GPU this torch has no kernels for is refused here, before any run
    check(name != "cuda", f"DEVICE=cuda (the default with GPUS and in the image), but {cuda_unusable_reason()}")
    if name == "auto":
        print(f"warning: no usable GPU ({cuda_unusable_reason()}): the sweep runs on the CPU (its time is in the "
              f"plan below)", file=sys.stderr)
    return torch.device("cpu")


def check_data(runs):
    """Load (or fetch, once) every dataset and embeddings file the runs need, saying what it does;
    returns each one's checksum, by (script, folder) and ("embeddings", file)."""
    seen = {}
    for run in runs:
        cfg, (_, setting) = run.cfg, SCRIPTS[run.script]
        if (run.script, cfg.data_folder) in seen:
            continue
        print(f"== checking {setting}={cfg.data_folder} (decoded once, then cached)", flush=True)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the download's own lines
                data = (load_wikitext(cfg.data_folder, torch.device("cpu"), cfg.data_format)
                        if run.script == "train_lm.py" else load_cifar10(cfg.data_folder, torch.device("cpu")))
        except UserError as e:
            raise UserError(f"{setting}={cfg.data_folder}: {e}") from None
        seen[(run.script, cfg.data_folder)] = data.sha256
        # every embeddings file of the LMs on these data, read as their runs will read it
        tables = dict.fromkeys((r.cfg.embeddings, r.cfg.embedding_size) for r in runs if r.script == "train_lm.py"
                               and r.cfg.data_folder == cfg.data_folder and r.cfg.embeddings)
        for name, width in tables:
            check(name != "gpt1" or data.vocab is None, f"EMBEDDINGS=gpt1 needs the token files, but LM_DATA="
                  f"{cfg.data_folder} holds word-level text (EMBEDDINGS=none learns them instead)")
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    path = gpt1_embeddings(cfg.data_folder) if name == "gpt1" else name
                    train_lm.load_embeddings(path, data.vocab_size, width)
                seen["embeddings", name] = train_lm.file_sha256(path)
            except UserError as e:
                raise UserError(f"EMBEDDINGS={name}: {e} (EMBEDDINGS=none learns them instead)") from None
    return seen


def other_data(runs, previous, sums):
    """The runs in the log folder under the sweep's names that trained on other data, or other frozen
    embeddings, than it has now: one skipped as finished would report their numbers as these data's."""
    blocked = []
    for run in runs:
        found = previous[run.cfg.log_dir].get(run.exp_id)
        config, frozen = found.config if found else {}, sums.get(("embeddings", getattr(run.cfg, "embeddings", "")))
        if config.get("data_sha256") not in (None, sums[run.script, run.cfg.data_folder]):
            blocked.append(f"{run.exp_id} (trained on other data than {SCRIPTS[run.script][1]}={run.cfg.data_folder})")
        elif config.get("embeddings_sha256") not in (None, frozen):
            blocked.append(f"{run.exp_id} (trained on other frozen embeddings than EMBEDDINGS={run.cfg.embeddings})")
    return blocked


def data_sizes(run, notes):
    """(examples per split (train, valid, test): tokens or images, vocabulary or classes), counted
    cheaply from the data in place, else the study's standard sizes (and a note saying so)."""
    folder, setting = Path(run.cfg.data_folder), SCRIPTS[run.script][1]
    kind = run.cfg.data_kind()
    try:
        if run.script == "train_vit.py":
            counts = [sum(1 for p in (folder / split).glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS)
                      for split in ("train", "test")]
            if all(counts):
                valid = len(split_train_valid(counts[0])[1])
                return (counts[0] - valid, valid, counts[1]), len(list((folder / "train").glob("*/")))
        elif kind == "tokens" and all((folder / f).exists() for f in TOKEN_FILES.values()):
            return tuple(read_tokens_npz(folder / name)[0].size for name in TOKEN_FILES.values()), GPT1_VOCAB_SIZE
        elif kind == "words" and all((folder / f).exists() for f in TEXT_FILES.values()):
            splits = [tokenize(folder / name) for name in TEXT_FILES.values()]
            return tuple(map(len, splits)), len(set(splits[0]) | {"<pad>", "<unk>", "<eos>"})
    except UserError as e:  # damaged: a dry run says so (a real sweep's data check has refused it already)
        notes.append(f"{setting}={folder}: {e}: standard sizes")
    else:
        notes.append(f"{setting}={folder} is not there yet (the sweep fetches it): standard sizes")
    return STANDARD[run.script], GPT1_VOCAB_SIZE if run.script == "train_lm.py" else 10


def build_model(run, classes):
    """The run's model as its trainer builds it (build it under torch.device("meta") to count alone),
    its embedding frozen where the run's will be: a table given and not learned."""
    cfg = run.cfg
    if run.script == "train_vit.py":
        return train_vit.build_model(dict({k: getattr(cfg, k) for k in train_vit.MODEL_ARGS}, num_classes=classes))
    model = train_lm.build_model(dict({k: getattr(cfg, k) for k in train_lm.MODEL_ARGS}, vocab_size=classes))
    model.embedding.weight.requires_grad_(not cfg.embeddings or cfg.learn_embeddings)
    return model


def work(run, sizes, classes):
    """(batches of a training pass, of a validation pass, of the tests at the end (the EMA's, and an LM's in
    the reference's windows, included); FLOPs of a training batch, of an evaluation batch; learnable
    parameters)."""
    cfg, extra = run.cfg, 0
    limited = lambda b: min(b, cfg.limit_batches or b)  # noqa: E731 - a pass of at most --limit_batches
    with torch.device("meta"):
        model = build_model(run, classes)
    if run.script == "train_vit.py":
        tokens = (32 // cfg.patch_size) ** 2
        per = vit_flops(cfg.layers, tokens + 1, cfg.embed_dim, cfg.hidden_dim, tokens, 3 * cfg.patch_size ** 2, classes)
        batches = [math.ceil(n / cfg.batch_size) for n in sizes]
        per_batch = (3 * per * cfg.batch_size, per * cfg.batch_size)
    else:
        frozen = not model.embedding.weight.requires_grad
        shape = dict(seq_len=cfg.seq_len, v=classes, e=cfg.embedding_size, h=cfg.hidden_size, mlp=cfg.mlp_dim)
        def windowed(n, length):  # batches of a split of n tokens cut into windows of length (targets: n - 1)
            return math.ceil(math.ceil((n - 1) / length) / cfg.batch_size)
        batches = [windowed(n, cfg.seq_len) for n in sizes]
        tokens = cfg.batch_size * cfg.seq_len
        per_batch = (lm_train_flops(cfg.model, cfg.layers, frozen, **shape) * tokens,
                     lm_flops(cfg.model, cfg.layers, **shape) * tokens)
        if alike := train_lm.alike_window(cfg):  # the best-valid model tested in the reference's windows too
            extra = limited(windowed(sizes[2], alike)) * alike / cfg.seq_len  # in seq_len's batches
    train, valid, test = map(limited, batches)
    evals = 2 if cfg.ema else 1  # the weight average is validated and tested too
    learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (train, evals * valid, 2 * evals * test + extra), per_batch, learnable


def batch_seconds(run, classes, device, steps=3):
    """Seconds per training batch and per evaluation batch of the run's model on the device, through
    its trainer's path (augmentation, loss, optimizer) on random data, timed after a warm-up pass."""
    cfg, g = run.cfg, torch.Generator().manual_seed(0)
    n = cfg.batch_size * steps
    if run.script == "train_vit.py":
        split = lambda: (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device),  # noqa: E731
                         torch.randint(0, classes, (n,), generator=g).to(device))
        task = train_vit.ImageTask(ImageData(dict(train=split(), valid=split()), list(range(classes))), cfg.batch_size,
                                   cfg.seed, cfg.label_smoothing, cfg.augment, cfg.mixup, cfg.cutmix)
    else:
        split = lambda: torch.randint(1, classes, (n * cfg.seq_len + 1,), generator=g).to(device)  # noqa: E731
        task = train_lm.TextTask(Corpus(dict(train=split(), valid=split()), classes), cfg.seq_len, cfg.batch_size,
                                 cfg.seed, cfg.batching)
    model = build_model(run, classes).to(device)
    optimizer = make_optimizer(cfg.optimizer, model, cfg.lr, cfg.momentum, cfg.weight_decay, device,
                               cfg.decay_exempt)[0]
    precision = choose_precision(cfg.precision, device)
    for epoch in (1, 2):  # the first pays for the warm-up
        train = run_epoch(model, task, "train", epoch, Step(optimizer), precision, steps)
        valid = run_epoch(model, task, "valid", epoch, None, precision, steps)
    return tuple(r["seconds"] / min(steps, task.num_batches(s)) for r, s in ((train, "train"), (valid, "valid")))


def matmul_rate(device, dtype):
    """FLOP/s of a square matmul in the runs' precision, the best of a few (a fraction of a second)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    best = math.inf
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        a @ a
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


# Published dense peaks (TFLOP/s, no sparsity) of common GPUs in the precision a run uses (fp32: TF32
# on tensor cores where the GPU has them), by the model's word in the device's name.
PEAKS = {"H200": dict(bf16=989, fp16=989, fp32=495), "H100": dict(bf16=989, fp16=989, fp32=495),
         "A100": dict(bf16=312, fp16=312, fp32=156), "L40S": dict(bf16=362, fp16=362, fp32=183),
         "L4": dict(bf16=121, fp16=121, fp32=60), "A10": dict(bf16=125, fp16=125, fp32=62),
         "T4": dict(fp16=65, fp32=8), "V100": dict(fp16=125, fp32=16)}


def published_peak(device_name, kind):
    """The published peak of a GPU in kind ("bf16", "fp16", "fp32"), or None; a model matches as a
    word of the name ("NVIDIA L40S" is no L4)."""
    words = set(re.split(r"[^A-Za-z0-9]+", device_name))
    return next((peaks.get(kind) for gpu, peaks in PEAKS.items() if gpu in words), None)


def mfu(flops_per_s, fp32_share, ceiling, ceiling_fp32):
    """The FLOP rate over what the device could reach for the same work, each part against the
    ceiling of its precision (fp32_share of the FLOPs in fp32)."""
    return flops_per_s * (fp32_share / ceiling_fp32 + (1 - fp32_share) / ceiling)


def progress(runs):
    """Each run's epochs already done (all of them when its summary.json says so, else its metrics.csv
    rows), from every run in the log folders, read once; returns those runs by folder and name. A run
    there that this sweep cannot continue or count as done is refused before anything runs: one of
    other settings (a QUICK run under the same name), one trained for more epochs than now asked, or one
    with epochs to go but no checkpoint to go on from (and, once the data are read, other_data)."""
    previous, blocked = {}, []
    for run in runs:
        log_dir = run.cfg.log_dir
        if log_dir not in previous:
            report = Path(log_dir) / REPORT  # plot.py writes it at the end: refused now, not days later
            problem = results.report_problem(report)
            check(not problem, f"{report} {problem}, where plot.py writes the sweep's report folder at its end; move "
                  f"it away, or give another LOG_DIR")
            previous[log_dir] = {r.path.name: r for r in results.find_runs([log_dir], report)}
        found = previous[log_dir].get(run.exp_id)
        if found is None:
            continue
        finished = (found.summary or {}).get("epochs")  # an int in a finished run's summary
        run.done = finished if isinstance(finished, int) else len(found.rows)  # all of them, untested: resumed
        run.finished = isinstance(finished, int) and finished >= run.cfg.epochs
        other = [f"{k} {found.config[k]}, not {getattr(run.cfg, k)}" for k in run.cfg.with_role("setting")
                 if k in found.config and found.config[k] != getattr(run.cfg, k)]
        if other:
            blocked.append(f"{run.exp_id} (its {'; '.join(other)})")
        elif run.done > run.cfg.epochs:  # its trainer refuses to resume it with fewer epochs, and it is no such run
            blocked.append(f"{run.exp_id} (trained {run.done} epochs, more than the {run.cfg.epochs} asked)")
        elif run.cfg.fixed_epochs(found.config) not in (None, run.cfg.epochs):  # its trainer refuses it
            spans = found.config["epochs"]
            blocked.append(f"{run.exp_id} (its cosine schedule spans {spans} epoch{'s' * (spans != 1)}, not the "
                           f"{run.cfg.epochs} asked)")
        elif not run.finished and run.done and not (found.path / "checkpoint.pt").exists():  # its trainer refuses
            how = "finished at" if isinstance(finished, int) else "stopped after"
            blocked.append(f"{run.exp_id} ({how} {run.done} epoch{'s' * (run.done != 1)}, no checkpoint.pt to go on "
                           f"from)")
    refuse(blocked)
    return previous


def refuse(blocked):
    check(not blocked, f"{len(blocked)} run{'s' * (len(blocked) > 1)} in the log folder cannot be continued by this "
          f"sweep: {', '.join(blocked[:3])}{', ...' * (len(blocked) > 3)}; give another LOG_DIR, or move "
          f"{'those runs' if len(blocked) > 1 else 'it'} away")


def measured(run, previous, device):
    """Seconds per epoch and bytes of finished epochs of this configuration on this kind of device
    (other seeds, or this run's own epochs): the mean over the runs found, or None."""
    here = device_name(device)  # a CPU's epochs say nothing of a GPU's

    def where(r):  # the device a run recorded; one that recorded none counts as this one
        env = r.config.get("environment")
        return env.get("device_name", here) if isinstance(env, dict) else here
    def seconds(r):  # per epoch; a damaged row's time (NaN, negative, a year an epoch) is no measurement
        t = r.rows[-1]["elapsed"] / len(r.rows) if r.rows else math.nan
        return t if 0 < t < 3e7 else None
    same = [r for r in previous.values() if seconds(r) and r.name == run.cfg.naming()["configuration"]
            and r.config.get("limit_batches") == run.cfg.limit_batches and where(r) == here]
    if not same:
        return None
    per_epoch = sum(seconds(r) for r in same) / len(same)
    sizes = [sum(p.stat().st_size for p in r.path.iterdir() if p.is_file() and p.name != "checkpoint.pt")
             for r in same]
    return per_epoch, int(sum(sizes) / len(sizes))


def estimate(runs, previous, device, notes, timing=False):
    """Each run's time left, disk when done and checkpoint size; returns the matmul rate used, or None.
    `timing` (a real sweep's plan; a dry run's stays in seconds): on a GPU, from timed batches."""
    sizes, timed, rate, deadline = {}, {}, None, time.monotonic() + TIMING_S
    if device.type not in TIMED_ON:
        timing = False
    elif not timing:
        notes.append("these small models reach 1-10% of an H200's matmul rate, so FLOPs make this time a lower "
                     "bound; the sweep's own plan times their batches")
    for run in runs:
        cfg = run.cfg
        left = cfg.epochs - run.done
        found = measured(run, previous[cfg.log_dir], device)
        if found:
            per_epoch, run.disk = found
            run.seconds, run.checkpoint, run.source = left * per_epoch, 3 * run.disk, "finished epochs"
            continue
        key = (run.script, cfg.data_folder)
        sizes[key] = sizes.get(key) or data_sizes(run, notes)
        (train, valid, test), per_batch, learnable = work(run, *sizes[key])
        name = (run.script, cfg.naming()["configuration"])  # the same model and path, whatever the seed
        if timing and (name in timed or left <= 0 or time.monotonic() < deadline):  # per_batch: seconds, not FLOPs
            if left > 0:  # none timed for a run with nothing left
                per_batch = timed[name] = timed.get(name) or batch_seconds(run, sizes[key][1], device)
            run.source = "timed batches"
        else:
            rate = rate or matmul_rate(device, choose_precision(cfg.precision, device).dtype) * EFFICIENCY[device.type]
            per_batch, run.source = [f / rate for f in per_batch], "FLOPs"
        run.seconds = 0.0 if left <= 0 else START_S + left * (train * per_batch[0] + valid * per_batch[1]) \
            + test * per_batch[1]
        run.disk = 4 * learnable * (1 + (cfg.ema > 0)) + 100_000  # best.pt (and best_ema.pt), the logs
        run.checkpoint = 4 * learnable * (1 + OPTIMIZER_STATES[cfg.optimizer] + (cfg.ema > 0))
    if timing and any(r.source == "FLOPs" for r in runs):
        notes.append(f"the plan times batches for {TIMING_S} s at most: the rest from FLOPs, a lower bound on a GPU")
    if timing and device.type == "cuda":
        torch.cuda.empty_cache()  # the timed models' memory, not held by the sweep while its runs train
    return rate


def duration(s):
    return f"{s:.0f} s" if s < 100 else f"{s / 60:.0f} min" if s < 6000 else \
        f"{s / 3600:.1f} h" if s < 72 * 3600 else f"{s / 86400:.1f} days"


def size(b):
    return f"{b / 1e6:,.0f} MB" if b < 1e9 else f"{b / 1e9:,.1f} GB"


def makespan(seconds, workers):
    """How long a work queue of `workers` takes over runs of these durations, in this order."""
    free = [0.0] * workers
    for s in seconds:
        free[free.index(min(free))] += s
    return max(free)


def report(runs, workers, notes, device, rate=None):
    groups = {}
    for run in runs:
        groups[run.group] = groups.get(run.group, 0) + 1
    finished = sum(r.finished for r in runs)
    resumed = sum(r.done > 0 and not r.finished for r in runs)
    threads = torch.get_num_threads()
    where = ("cuda (not here)" if device is None else f"{device} ({torch.cuda.get_device_name(device)})"
             if device.type == "cuda" else f"{device} ({threads} thread{'s' * (threads != 1)})")
    print(f"== plan: {len(runs)} run{'s' * (len(runs) != 1)} on {where}"
          + (f", {workers} in parallel" if workers > 1 else "") + f", logs in {runs[0].cfg.log_dir}")
    print("   " + ", ".join(f"{g} {n}" for g, n in groups.items())
          + (f"; {finished} finished (skipped)" if finished else "") + (f"; {resumed} to resume" if resumed else ""))
    known = [r for r in runs if r.seconds is not None]
    if notes:
        print(f"   {'not estimated' if not known else 'note'}: {'; '.join(dict.fromkeys(notes))}")
    if not known:
        return
    found = {source: sum(r.source == source for r in known) for source in ("finished epochs", "timed batches")}
    how = [f"{n} from {source}" for source, n in found.items() if n]
    if len(known) > sum(found.values()):
        share = EFFICIENCY[device.type]
        how.append(f"{len(known) - sum(found.values())} from FLOPs at {share:.0%} of a measured "
                   f"{rate / share / 1e12:.2f} TFLOP/s")
    print(f"   time: about {duration(makespan([r.seconds for r in known], max(1, workers)))} "
          f"({'; '.join(how)}; compile warm-ups not included)")
    to_do = [r for r in known if not r.finished]
    peak = sum(r.disk for r in to_do) + sum(sorted((r.checkpoint for r in to_do), reverse=True)[:max(1, workers)])
    log_dir = next(p for p in [Path(runs[0].cfg.log_dir).absolute(), *Path(runs[0].cfg.log_dir).absolute().parents]
                   if p.exists())
    free = shutil.disk_usage(log_dir).free
    print(f"   disk: {size(sum(r.disk for r in known))} when done (best weights and logs), {size(peak)} more at most "
          f"while running; {size(free)} free there", flush=True)
    if peak > free:
        print(f"warning: the sweep needs about {size(peak)} but {log_dir} has {size(free)} free", file=sys.stderr)


def twins(runs):
    """Warn of runs that compute what others compute under their own names: a setting that only logs
    (--grad_norms) changes no number, so a seed in both SEEDS and NORMS_SEEDS trains runs twice."""
    first, pairs = {}, []
    for run in runs:
        computes = {k: v for k, v in vars(run.cfg).items() if k not in ("exp_id", *run.cfg.only_logs())}
        twin = first.setdefault(repr(computes), run.exp_id)
        pairs += [(run.exp_id, twin, run.cfg)] * (twin != run.exp_id)
    if pairs:
        n, seeds = len(pairs), " ".join(map(str, sorted({cfg.seed for *_, cfg in pairs})))
        logs = ", ".join(f"--{k}" for k in pairs[0][2].only_logs())
        print(f"warning: {n} run{'s' * (n > 1)} train{'s' * (n == 1)} exactly as another does ({logs} only logs; "
              f"SEEDS and NORMS_SEEDS share {seeds}): {', '.join(f'{a} as {b}' for a, b, _ in pairs[:2])}"
              f"{', ...' * (n > 2)}; drop the shared seeds from one of them to save those runs", file=sys.stderr)


def plan(runs, gpus, dry_run):
    """Check the runs already in the log folder, the device and (unless a dry run) the data, then
    print the plan."""
    twins(runs)
    previous, workers = progress(runs), len(gpus)
    try:
        device = check_device(runs[0].cfg.device, gpus)
    except UserError as e:
        check(dry_run, str(e))  # a dry run may plan a GPU sweep on a machine without one
        return report(runs, workers, [str(e)], None)
    if not dry_run:
        refuse(other_data(runs, previous, check_data(runs)))
    notes = []
    rate = estimate(runs, previous, device, notes, timing=not dry_run)
    report(runs, workers, notes, device, rate)
