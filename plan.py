"""runs.sh's check before it spends anything, and its estimate of what it will spend. It reads the
sweep's runs, one `exp_id<TAB>group<TAB>script flags...` line each (shell-quoted, as runs.sh
prints them), checks the device, the data (fetched once) and GPT-1's embeddings, and prints the
plan: how many runs, where, about how long and how much disk. A run's time comes from the finished
epochs of its configuration in the log folder when there are any, else from a few timed training
and evaluation steps of its model shape; its disk from the size of the weights it will save.

    DRY_RUN=1 bash runs.sh          # the commands, then this plan (nothing fetched)
"""
import argparse
import contextlib
import dataclasses
import io
import json
import math
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

START = time.perf_counter()
import torch  # timed from START: each run pays for these imports too

import engine
import optim
import results
import train_lm
import train_vit
from config import parse_config
from data import load_cifar10, load_wikitext
from gpt1 import EMBEDDINGS_FILE, gpt1_embeddings
from rundir import save_torch, trained_state
from utils import UserError, check, choose_precision, cli, cuda_unusable_reason, get_device

IMPORT_S = time.perf_counter() - START
SCRIPTS = {"train_lm.py": (train_lm, "LM_DATA"), "train_vit.py": (train_vit, "VIT_DATA")}
# Settings that leave the time of a step (nearly) unchanged: runs that differ only in these share a timing.
TIME_FREE = ("optimizer", "lr", "momentum", "weight_decay", "scheduler", "warmup_epochs", "min_lr", "block",
             "label_smoothing", "grad_clip", "dropout", "drop_path", "mixup", "cutmix", "recipe")
CPU = torch.device("cpu")


@dataclasses.dataclass
class Run:
    exp_id: str
    group: str
    script: str
    cfg: object
    done: int = 0             # epochs in its metrics.csv
    seconds: float = None     # the time it still needs; None: not estimated
    disk: int = 0             # bytes it holds when finished
    checkpoint: int = 0       # bytes of checkpoint.pt while it runs
    source: str = ""          # where the estimate came from


def read_runs(lines):
    runs = []
    for number, line in enumerate(lines, 1):
        try:
            exp_id, group, command = line.rstrip("\n").split("\t", 2)
            script, *flags = shlex.split(command)
            check(script in SCRIPTS, f"unknown script {script!r}")
        except (ValueError, UserError) as e:
            raise UserError(f"line {number} of the run list is not exp_id<TAB>group<TAB>train_lm.py or train_vit.py "
                            f"and its flags ({e})") from None
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                cfg = parse_config(SCRIPTS[script][0].Config, flags)
        except (SystemExit, UserError) as e:
            why = err.getvalue().strip() or str(e)
            raise UserError(f"{exp_id}: {why.removeprefix('error: ')}") from None
        runs.append(Run(exp_id, group, script, cfg))
    return runs


def check_device(name):
    if name == "cpu":
        return
    if torch.cuda.is_available():
        get_device("cuda")  # a GPU this torch has no kernels for is refused here, before any run
        return
    check(name != "cuda", f"DEVICE=cuda (the default with GPUS and in the image), but {cuda_unusable_reason()}")
    print(f"warning: no usable GPU ({cuda_unusable_reason()}): the sweep runs on the CPU, where the full study "
          f"takes days", file=sys.stderr)


def check_data(runs, dry_run):
    """Load (or fetch, once) every dataset and embeddings file the runs need. Returns the seconds each
    data folder takes to load (None where a dry run found nothing) and what a dry run found missing."""
    load_s, missing = {}, []
    for run in runs:
        cfg, setting = run.cfg, SCRIPTS[run.script][1]
        key = (run.script, cfg.data_folder)
        if key not in load_s:
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(sys.stderr):  # the download's own lines
                    data = (load_wikitext(cfg.data_folder, CPU, cfg.data_format, not dry_run)
                            if run.script == "train_lm.py" else load_cifar10(cfg.data_folder, CPU, not dry_run))
                load_s[key] = time.perf_counter() - start
            except UserError as e:
                check(dry_run, f"{setting}={cfg.data_folder}: {e}")
                missing.append(f"{setting}={cfg.data_folder} is not there yet (the sweep fetches it)")
                load_s[key] = None
            if run.script == "train_lm.py" and load_s[key] is not None:
                check(cfg.embeddings != "gpt1" or data.vocab is None, f"EMBEDDINGS=gpt1 needs the token files, but "
                      f"LM_DATA={cfg.data_folder} holds word-level text (EMBEDDINGS=none learns them instead)")
        if getattr(cfg, "embeddings", "") != "gpt1" or load_s[key] is None:
            continue
        if dry_run and not (Path(cfg.data_folder) / EMBEDDINGS_FILE).exists():
            missing.append(f"GPT-1's embeddings are not in {cfg.data_folder} yet (the sweep fetches them)")
        elif not dry_run:
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    gpt1_embeddings(cfg.data_folder)
            except UserError as e:
                raise UserError(f"EMBEDDINGS=gpt1: {e} (EMBEDDINGS=none learns them instead)") from None
    return load_s, list(dict.fromkeys(missing))


def progress(run, previous):
    """Epochs already run: all of them when its summary.json says so, else its metrics.csv rows.
    `previous`: the runs in its log folder (results.py's reading of them), by directory name."""
    done = previous.get(run.exp_id)
    if done is None:
        return 0
    finished = isinstance((done.summary or {}).get("epochs"), int) and done.summary["epochs"] >= run.cfg.epochs
    return run.cfg.epochs if finished else len(done.rows)


def measured(run, previous):
    """Seconds per epoch and bytes of finished epochs of this configuration (other seeds, or this run's
    own epochs): the mean over the runs found, or None."""
    same = [r for r in previous.values() if r.rows and r.name == run.cfg.naming()["configuration"]
            and r.config.get("limit_batches") == run.cfg.limit_batches]
    if not same:
        return None
    per_epoch = sum(r.rows[-1]["elapsed"] / len(r.rows) for r in same) / len(same)
    sizes = [sum(p.stat().st_size for p in r.path.iterdir() if p.is_file() and p.name != "checkpoint.pt")
             for r in same]
    return per_epoch, int(sum(sizes) / len(sizes))


def timed_shape(run, device):
    """A few training and evaluation steps of the run's model: seconds per train and eval batch, the
    batches per split, the seconds to build the run and to save an epoch, and the bytes saved."""
    cfg = run.cfg
    dtype, _ = choose_precision(cfg.precision, device)
    torch.manual_seed(0)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        task, model, _, _ = SCRIPTS[run.script][0].build(cfg, device)
    model = model.to(device)
    optimizer, _, _ = optim.make_optimizer(cfg.optimizer, model, cfg.lr, cfg.momentum, cfg.weight_decay, device,
                                            cfg.decay_exempt)
    step = engine.make_step(model, task, cfg, optimizer, dtype)
    built = time.perf_counter() - start
    n = {s: min(task.num_batches(s), cfg.limit_batches or math.inf) for s in ("train", "valid", "test")}
    per = {}
    for split, stepper in (("train", step), ("valid", None)):
        engine.run_epoch(model, task, split, 1, stepper, SimpleNamespace(limit_batches=1, no_progress=True), dtype)
        k = min(2, n[split])
        limit = SimpleNamespace(limit_batches=k, no_progress=True)
        per[split] = engine.run_epoch(model, task, split, 1, stepper, limit, dtype)["seconds"] / k
    with tempfile.TemporaryDirectory(dir=existing(cfg.log_dir)) as tmp:  # saved as a run saves them, on that disk
        start = time.perf_counter()
        save_torch(dict(model=trained_state(model)), Path(tmp) / "best.pt")
        save_torch(dict(model=trained_state(model), optimizer=optimizer.state_dict(),
                        ema=step.ema and step.ema.state_dict()), Path(tmp) / "checkpoint.pt")
        saved = time.perf_counter() - start
        best, checkpoint = ((Path(tmp) / name).stat().st_size for name in ("best.pt", "checkpoint.pt"))
    return dict(train=per["train"], eval=per["valid"], n=n, built=built, saved=saved,
                best=best * (1 + (cfg.ema > 0)), checkpoint=checkpoint)


def existing(path):
    """The folder itself, or its nearest ancestor that exists."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def estimate(runs, load_s, device):
    """Each run's time left, disk and checkpoint size; returns how many model shapes were timed."""
    shapes, previous = {}, {}
    for run in runs:
        cfg = run.cfg
        if cfg.log_dir not in previous:  # every run there, read once
            found = results.find_runs([cfg.log_dir], Path(cfg.log_dir) / "report")
            previous[cfg.log_dir] = {r.path.name: r for r in found}
        run.done = progress(run, previous[cfg.log_dir])
        left = cfg.epochs - run.done
        found = measured(run, previous[cfg.log_dir])
        if found:
            per_epoch, run.disk = found
            run.seconds, run.source = left * per_epoch, "finished epochs"
            run.checkpoint = 3 * run.disk  # the weights, and Adam's two moments
            continue
        if load_s[run.script, cfg.data_folder] is None or (
                getattr(cfg, "embeddings", "") == "gpt1" and not (Path(cfg.data_folder) / EMBEDDINGS_FILE).exists()):
            continue  # a dry run, and its data is not there yet: not estimated
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in cfg.NOT_SETTINGS + TIME_FREE}
        key = json.dumps([run.script, settings], sort_keys=True)
        if key not in shapes:
            try:
                shapes[key] = timed_shape(run, device)
            except UserError as e:  # what would stop the run (a batch larger than the data, say)
                raise UserError(f"{run.exp_id}: {e}") from None
        s = shapes[key]
        evals = 2 if cfg.ema else 1  # the EMA weights are evaluated too
        epoch = s["n"]["train"] * s["train"] + evals * s["n"]["valid"] * s["eval"] + s["saved"]
        tests = (2 + (cfg.ema > 0)) * s["n"]["test"] * s["eval"]  # the final, best (and EMA) weights
        run.seconds = 0.0 if left <= 0 else IMPORT_S + s["built"] + left * epoch + tests
        run.disk = s["best"] + 100_000  # best.pt (and best_ema.pt), the logs
        run.checkpoint = s["checkpoint"]
        run.source = "timed steps"
    return len(shapes)


def duration(s):
    return f"{s:.0f} s" if s < 100 else f"{s / 60:.0f} min" if s < 6000 else \
        f"{s / 3600:.1f} h" if s < 72 * 3600 else f"{s / 86400:.1f} days"


def size(b):
    return f"{b / 1e6:,.0f} MB" if b < 1e9 else f"{b / 1e9:,.1f} GB"


def report(runs, shapes, workers, missing, device):
    groups = {}
    for run in runs:
        groups[run.group] = groups.get(run.group, 0) + 1
    finished = sum(r.done >= r.cfg.epochs for r in runs)
    resumed = sum(0 < r.done < r.cfg.epochs for r in runs)
    where = ("cuda (not here)" if device is None else f"{device} ({torch.cuda.get_device_name(device)})"
             if device.type == "cuda" else f"{device} ({torch.get_num_threads()} threads)")
    print(f"== plan: {len(runs)} run{'s' * (len(runs) != 1)} on {where}"
          + (f", {workers} in parallel" if workers > 1 else "") + f", logs in {runs[0].cfg.log_dir}")
    print("   " + ", ".join(f"{g} {n}" for g, n in groups.items())
          + (f"; {finished} finished (skipped)" if finished else "") + (f"; {resumed} to resume" if resumed else ""))
    known = [r for r in runs if r.seconds is not None]
    if missing and len(known) < len(runs):
        left = len(runs) - len(known)
        print(f"   not estimated ({left} run{'s' * (left != 1)}): {'; '.join(missing)}")
    if not known:
        return
    # runs.sh gives worker k every k-th run; the sweep lasts as long as its busiest worker
    seconds = max(sum(r.seconds or 0 for r in runs[k::workers]) for k in range(workers))
    found = sum(r.source == "finished epochs" for r in runs)
    how = [f"{shapes} model shape{'s' * (shapes != 1)} timed"] * (shapes > 0)
    how += [f"{found} from finished epochs"] * (found > 0)
    print(f"   time: about {duration(seconds)}{' for the runs estimated' if len(known) < len(runs) else ''} "
          f"({'; '.join(how)}; compile warm-ups not included)")
    to_do = [r for r in known if r.done < r.cfg.epochs]
    peak = sum(r.disk for r in to_do) + sum(sorted((r.checkpoint for r in to_do), reverse=True)[:workers])
    log_dir = existing(runs[0].cfg.log_dir)
    free = shutil.disk_usage(log_dir).free
    print(f"   disk: {size(sum(r.disk for r in known))} when done (best weights and logs), {size(peak)} more at most "
          f"while running; {size(free)} free there")
    if peak > free:
        print(f"warning: the sweep needs about {size(peak)} but {log_dir} has {size(free)} free", file=sys.stderr)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (runs.sh's GPUS)")
    parser.add_argument("--dry_run", action="store_true", help="fetch nothing; estimate what is in place")
    args = parser.parse_args(argv)
    check(not sys.stdin.isatty(), "plan.py reads runs.sh's run list on its standard input: DRY_RUN=1 bash runs.sh "
          "shows the plan")
    runs = read_runs(sys.stdin)
    check(runs, "no runs given")
    try:
        check_device(runs[0].cfg.device)
    except UserError as e:
        check(args.dry_run, str(e))  # a dry run may plan a GPU sweep on a machine without one
        return report(runs, 0, max(1, args.workers), [str(e)], None)
    load_s, missing = check_data(runs, args.dry_run)
    device = get_device(runs[0].cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the trainers
    shapes = estimate(runs, load_s, device)
    report(runs, shapes, max(1, args.workers), missing, device)


if __name__ == "__main__":
    main()
