"""The run directory and its files, each written atomically (a crash or a full disk leaves the
previous version intact): config.json, metrics.csv, grad_norms.csv, checkpoint.pt, best.pt,
best_ema.pt and summary.json."""
import contextlib
import csv
import dataclasses
import errno
import fcntl
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from utils import STOP_SIGNALS, UserError, barrier, check, environment, file_in_the_way, first_line, free_space, log, \
    rank, world_size


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C, SIGTERM or SIGHUP during the block takes effect at its end: a file is finished first (and
    torch.save's own clean-up cannot turn the interrupt into a different error)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    # None: a handler installed outside Python; the default then stands for it
    previous = {s: signal.signal(s, lambda signum, _: received.append(signum)) or signal.SIG_DFL
                for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    live = [s for s in received if previous[s] != signal.SIG_IGN]  # not a SIGHUP that nohup ignores
    handler = previous[live[0]] if live else signal.SIG_IGN
    if callable(handler):
        handler(live[0], None)  # ours, or Python's own: KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        signal.raise_signal(live[0])


def atomic_write(path, write):
    """Write through `write(file)` to a temporary file, fsync, rename over `path`: a crash or a full
    disk leaves the previous file and no temporary one; Ctrl-C or SIGTERM waits for the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with signals_deferred():
            try:
                with open(tmp, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        written = r"PytorchStreamWriter|file write failed|unexpected pos"  # torch's words for a failed write
        if isinstance(e, RuntimeError) and not re.search(written, str(e)):
            raise
        raise UserError(f"could not write {path}: {getattr(e, 'strerror', None) or 'the write failed'}; "
                        f"{free_space(path.parent)} free on its disk; any previous version is intact") from None
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_bytes(path, content):
    """atomic_write of bytes, making the folder first."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(content))


def save_torch(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_torch(path):
    """Checkpoints are loaded with weights_only=True: a crafted pickle is refused, never run."""
    try:
        with warnings.catch_warnings():  # torch warns of a foreign pickle's protocol; its error says more
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file cannot be trusted
        # torch's safe loader, refusing a file, first advises loading it unsafely, then says why: only why is quoted
        refused = str(e).partition("WeightsUnpickler error:")[2] or str(e).partition("trusted source.")[2]
        why = first_line(refused or getattr(e, "strerror", 0) or e).split(". ")[0].rstrip(".")[:200]
        raise UserError(f"cannot load {path}: {why}"
                        + " (refused by torch's safe loader: not a file of this project)" * bool(refused)) from None


def write_csv(path, columns, rows):
    buf = io.StringIO()  # the header is the row that names each column, as writeheader writes it
    csv.DictWriter(buf, fieldnames=columns, lineterminator="\n").writerows([dict(zip(columns, columns)), *rows])
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
        raise UserError(f"could not append to {path}: {e.strerror or e}; {free_space(path.parent)} free on its "
                        f"disk") from None


def existing_run(cfg):
    """Whether <log_dir>/<exp_id> holds something; refuse it unless --resume, or --overwrite, of a run
    (never what is not recognisably a run of this project: --resume would write into it, --overwrite
    delete it)."""
    run_dir, file = Path(cfg.log_dir) / cfg.exp_id, file_in_the_way(cfg.log_dir)
    check(not file, f"--log_dir {cfg.log_dir}" + f": {file}" * (file != run_dir.parent) + " is a file, not a folder")
    exists = run_dir.is_dir() and any(p.name != PROBE for p in run_dir.iterdir())  # its probe alone: no run
    check(not run_dir.exists() or run_dir.is_dir(), f"{run_dir} exists and is not a directory")
    if not exists:
        return False
    try:
        theirs = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        theirs = None
    theirs = theirs if isinstance(theirs, dict) and theirs.get("task") in ("vit", "lm") else None
    check(theirs or (run_dir / "checkpoint.pt").is_file(), f"{run_dir} exists and is not a run directory (it has "
          f"no run's config.json or checkpoint.pt); give another --exp_id or --log_dir, or move it away")
    if not cfg.overwrite:
        kind = (theirs or {}).get("data_kind")
        if kind and kind != cfg.data_kind():  # the other trainer's, or other text: no --resume continues it
            raise UserError(f"run directory {run_dir} already exists and holds a run on other data ({kind}, not "
                            f"{cfg.data_kind()}); give another --exp_id, or --overwrite to replace it")
        check(cfg.resume, f"run directory {run_dir} already exists; use --resume to continue it, --overwrite to "
              f"start it again, or another --exp_id")
    return True


@contextlib.contextmanager
def advisory_lock(path, busy, what, shared=False, wait=False):
    """Hold an advisory lock on the file `path` for the block (exclusive, or shared with others that
    share it); when another process holds it otherwise, wait, or refuse with `busy` (`what`: what it
    guards). The kernel drops it when a process dies: never stale."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        why = f"{file} is a file, not a folder" if (file := file_in_the_way(Path(path).parent)) else e.strerror or e
        raise UserError(f"cannot write {what}: {why}") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:  # held (EACCES: some file systems' word for it), or no locks there: unguarded
            if isinstance(e, BlockingIOError) or e.errno == errno.EACCES:
                raise UserError(busy) from None
            if Path(path).parent not in UNLOCKED:  # Lustre without -o flock, NFS without its lock daemon
                UNLOCKED.add(Path(path).parent)
                print(f"warning: {Path(path).parent} takes no file locks ({e.strerror or e}): {what} is not guarded "
                      f"against a second process", file=sys.stderr, flush=True)
        yield
    finally:
        os.close(fd)


UNLOCKED = set()  # the folders whose file system refused a lock, said once
PROBE = ".write_test"  # written by the first process, read by the others: they share the run directory


@contextlib.contextmanager
def run_lock(cfg, existing=False):
    """Hold <log_dir>/.<exp_id>.lock (beside the run, so that --overwrite keeps it) for the block: a
    second process on the same run is refused instead of interleaving its files. existing: only if a
    run made that file already (this creates nothing)."""
    path, run_dir = Path(cfg.log_dir) / f".{cfg.exp_id}.lock", Path(cfg.log_dir) / cfg.exp_id
    if rank() != 0 or existing and not path.exists():
        yield
        return
    with advisory_lock(path, f"{run_dir} is in use by another process (it holds {path}); wait for it, or use "
                             f"another --exp_id", f"the run directory {run_dir}"):
        yield


def prepare_run_dir(cfg):
    """Create <log_dir>/<exp_id>; refuse an existing run unless --resume or --overwrite. Returns the
    path, and whether the run starts afresh (nothing of an earlier run is in it)."""
    run_dir = Path(cfg.log_dir) / cfg.exp_id
    real = Path(os.path.realpath(run_dir))  # a link made to a folder elsewhere: the run lives there, its aside beside
    # The first process looks: a network file system would go on telling the others that a folder they
    # looked for before it was made is not there (its cache of lookups), and fail the check below.
    exists = existing_run(cfg) if rank() == 0 else False
    fresh = not exists or cfg.overwrite
    probe, token = run_dir / PROBE, [os.urandom(8).hex()]
    if rank() == 0:
        try:
            if exists and cfg.overwrite:  # kept aside until the new run has saved an epoch (keep_or_remove)
                if replaced(run_dir).is_dir() and not finished_rows(run_dir):  # a replacement killed before that:
                    shutil.rmtree(real)  # the run it was to replace is aside already
                else:
                    shutil.rmtree(replaced(run_dir), ignore_errors=True)
                    real.rename(replaced(run_dir))
            real.mkdir(parents=True, exist_ok=True)
            probe.write_text(token[0])
        except OSError as e:
            raise UserError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None
    try:
        if world_size() > 1:  # every process reads what the first writes (best.pt, checkpoint.pt): one file system
            dist.broadcast_object_list(token)  # once the first process has written it
            for _ in range(60):  # a second at a time: a network file system may list a new file late
                with contextlib.suppress(OSError):
                    if probe.read_text() == token[0]:
                        break
                time.sleep(1)
            else:
                raise UserError(f"process {rank()} does not see the run directory {run_dir} that the first process "
                                f"made: on several machines, --log_dir must be a folder they all share")
            barrier()
    except BaseException:  # a fresh run leaves no directory behind: the same command, fixed, runs again
        keep_or_remove(run_dir, fresh)
        raise
    finally:
        if rank() == 0:
            probe.unlink(missing_ok=True)
    return run_dir, fresh


def keep_or_remove(run_dir, fresh):
    """After a failure: a fresh run that has no checkpoint yet leaves no directory behind (through a link
    to a folder elsewhere, that folder goes), so the same command can simply run again, and the run
    --overwrite was to replace comes back (the first process acts). Returns '' or what became of it."""
    if not fresh or (run_dir / "checkpoint.pt").exists():
        return ""
    back, real = (aside := replaced(run_dir)).is_dir(), os.path.realpath(run_dir)
    if rank() == 0:
        shutil.rmtree(real, ignore_errors=True)
        if back:
            aside.rename(real)
    return f"the run it was to replace is back in {run_dir}" if back else f"{run_dir} was removed"


def replaced(run_dir):  # a hidden sibling (of a link's target), which no reader takes for a run
    return (real := Path(os.path.realpath(run_dir))).with_name(f".{real.name}.replaced")  # a loop: not followed


@dataclasses.dataclass
class Progress:
    """What a checkpoint carries beside the model and optimizer: every finished row and the best epochs."""
    history: list = dataclasses.field(default_factory=list)
    norm_history: list = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: dict(epoch=0, value=None))
    best_ema: dict = dataclasses.field(default_factory=lambda: dict(epoch=0, value=None))


NORM_COLUMNS = ["epoch", "layer", "norm"]
DATA_KEYS = ("data_kind", "data_sha256", "data_sizes", "vocab_size", "classes")  # config.json's records of the data


class RunDir:
    """<log_dir>/<exp_id> and its files; under torchrun only the first process writes."""

    def __init__(self, path, task, cfg, config, fp16=False, files=None):
        self.path, self.cfg, self.config, self.main, self.files = Path(path), cfg, config, rank() == 0, files or {}
        m = task.metric
        self.columns = ["epoch", "train_loss", f"train_{m}", "valid_loss", f"valid_{m}", "lr", "train_time",
                        "valid_time", "elapsed", f"{task.unit}_per_s", "peak_mem_mb", "mem_pct"]
        self.columns += ["ema_valid_loss", f"ema_valid_{m}"] if cfg.ema else []
        self.columns += ["skipped_steps"] if fp16 else []

    def resume(self, stateful):
        """Load checkpoint.pt into the stateful objects; a Progress, empty when starting."""
        path = self.path / "checkpoint.pt"
        check(not (self.cfg.resume and not path.exists() and (self.path / "summary.json").exists()),
              f"{self.path} is finished and its checkpoint.pt was removed (--keep_checkpoint keeps it): it cannot "
              f"be continued; start another run")
        if not (self.cfg.resume and path.exists()):
            check(not (self.cfg.resume and finished_rows(self.path)), f"{self.path} has finished epochs in its "
                  f"metrics.csv but no checkpoint.pt to continue from; start again with --overwrite, or another "
                  f"--exp_id")
            return Progress()
        ckpt = load_torch(path)
        damaged = damaged_parts(ckpt if isinstance(ckpt, dict) else {}, self.columns)
        if "config" not in damaged:  # another setting first: one (--ema) changes the columns its rows are held to
            self.check_same_run(ckpt["config"])
        check(not damaged, f"{path} is not a checkpoint of this project (its {', '.join(damaged)} "
              f"{'is' if len(damaged) == 1 else 'are'} missing or damaged); start again with --overwrite")
        done = len(ckpt["history"])  # fewer epochs would record a run that trained more than it says
        check(done <= self.cfg.epochs, f"cannot resume {self.path} with --epochs {self.cfg.epochs}: it has trained "
              f"{done} epochs already; give --epochs {done} or more")
        try:
            for key, obj in stateful.items():
                if obj is not None and ckpt.get(key) is not None:
                    load_trained(obj, ckpt[key], path) if key == "model" else obj.load_state_dict(ckpt[key])
        except (AttributeError, KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{path} does not fit this run ({first_line(e)[:200]}); start again with --overwrite") \
                from None
        log(f"resuming {self.path} after epoch {done}")
        return Progress(ckpt["history"], ckpt["norm_history"], ckpt["best"], ckpt["best_ema"])

    def check_same_run(self, saved):
        """Refuse to resume onto what would change the numbers: other data, precision or settings. The
        context (paths, device, why a precision was chosen) and how the results are described (the
        metric's label and digits, the title) may change."""
        # as JSON, as config.json holds them (a tuple and a list alike); a setting added since: its default
        saved, now, defaults = (json.loads(json.dumps(c)) for c in
                                (saved, self.config, dataclasses.asdict(type(self.cfg)())))
        # the data's settings (--data_format) too: the data they resolve to are compared whole (DATA_KEYS)
        context = set(self.cfg.with_role("context", "data")) | {"naming", "data_source", "precision_reason", "metric",
                                                                 "title", "scoring"}
        diffs = [k for k in sorted(set(saved) | set(now)) if k not in context and (k in saved or k in defaults)
                 and saved.get(k, defaults.get(k)) != now.get(k)]  # a record added since: not compared
        data = [k for k in diffs if k in DATA_KEYS]
        check(not data, f"cannot resume {self.path}: it was trained on other data (its {', '.join(data)} differ from "
              f"those of {self.cfg.data_folder}); put its data back, or start another run")
        epochs = self.cfg.fixed_epochs(saved)
        check(epochs in (None, self.cfg.epochs), f"cannot resume {self.path} with --epochs {self.cfg.epochs}: its "
              f"cosine schedule spans the {epochs} epoch{'s' * (epochs != 1)} it started with; give --epochs {epochs}, "
              f"or start another run")

        def short(value):
            return repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        check(not diffs, f"cannot resume {self.path} with a different configuration ("
              + "; ".join(f"{k}: {short(saved.get(k, defaults.get(k)))} -> {short(now.get(k))}" for k in diffs) + ")")

    def start(self, progress, device, norms):
        """The run's files once a resume is accepted, and the CSVs rewritten from the checkpoint's rows
        (a row a crash kept from the CSV is written out again)."""
        if not self.main:
            return
        for name, content in self.files.items():
            atomic_write(self.path / name, lambda f, content=content: f.write(content))
        earlier = self.earlier_environments(len(progress.history)) if progress.history else []
        save_json(dict(self.config, environment=environment(device), world_size=world_size(),
                       **({"earlier_environments": earlier} if earlier else {})), self.path / "config.json")
        write_csv(self.path / "metrics.csv", self.columns, progress.history)
        if norms:
            write_csv(self.path / "grad_norms.csv", NORM_COLUMNS, progress.norm_history)

    def earlier_environments(self, done):
        """Where the run trained before this resume, from its config.json: each environment with the
        epochs done by its end (a run requeued onto another GPU mixes their epoch times); one whose
        resume ended before an epoch trained none, and is left out."""
        try:
            old = json.loads((self.path / "config.json").read_text())
            earlier = old.get("earlier_environments", [])
            idle = bool(earlier) and isinstance(earlier[-1], dict) and earlier[-1].get("epochs_done") == done
            return earlier + [dict(old["environment"], world_size=old.get("world_size"), epochs_done=done)] * (not idle)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:  # not a config.json as start writes
            print(f"warning: {self.path / 'config.json'} cannot be read ({getattr(e, 'strerror', 0) or 'damaged'}): "
                  f"where its first {done} epochs trained goes unrecorded", file=sys.stderr, flush=True)
            return []

    def save_epoch(self, progress, new_norms, stateful, improved, ema_improved):
        """The epoch's files as one: a stop signal while they are written takes effect after the last,
        so that metrics.csv always holds the checkpoint's epochs (after a crash, a resume writes out
        the rows the checkpoint holds)."""
        if not self.main:
            return
        epoch = len(progress.history)
        states = {k: (trained_state(v) if k == "model" else v.state_dict()) if v is not None else None
                  for k, v in stateful.items()}
        with signals_deferred():
            if improved:
                save_torch(dict(model=states["model"], epoch=epoch), self.path / "best.pt")
            if ema_improved:
                save_torch(dict(model=stateful["ema"].model.state_dict(), epoch=epoch), self.path / "best_ema.pt")
            save_torch(dict(states, epoch=epoch, config=self.config, **dataclasses.asdict(progress)),
                       self.path / "checkpoint.pt")
            shutil.rmtree(replaced(self.path), ignore_errors=True)  # --overwrite's older run: now replaced
            append_csv(self.path / "metrics.csv", self.columns, progress.history[-1])  # the rows last
            if new_norms:
                append_csv(self.path / "grad_norms.csv", NORM_COLUMNS, *new_norms)

    def load_weights(self, model, name):
        state = load_torch(self.path / name)
        check(isinstance(state, dict) and "model" in state, f"{self.path / name} holds no model weights")
        load_trained(model, state["model"], self.path / name)

    def finish(self, summary):
        """summary.json; checkpoint.pt is for resuming, so a finished run drops it unless --keep_checkpoint."""
        if self.main:
            save_json(summary, self.path / "summary.json")
            if not self.cfg.keep_checkpoint:
                (self.path / "checkpoint.pt").unlink(missing_ok=True)


def finished_rows(run_dir):
    """Whether run_dir's metrics.csv holds a row: an epoch finished there (False when it cannot be read)."""
    with contextlib.suppress(OSError):
        return len((Path(run_dir) / "metrics.csv").read_bytes().splitlines()) > 1
    return False


def damaged_parts(ckpt, columns):
    """The parts of a checkpoint that are missing or not as save_epoch writes them (rows of numbers in
    the run's columns, best epochs)."""
    kinds = dict(config=dict, model=dict, history=list, norm_history=list, best=dict, best_ema=dict)
    damaged = [k for k, kind in kinds.items() if not isinstance(ckpt.get(k), kind)]
    try:
        json.dumps(ckpt.get("config"))  # it is compared with this run's as JSON
    except (TypeError, ValueError):
        damaged += ["config"] * ("config" not in damaged)

    def rows(key, names):
        return all(isinstance(r, dict) and set(r) == set(names) and all(isinstance(v, (int, float)) for v in r.values())
                   for r in ckpt[key])
    damaged += [k for k, names in (("history", columns), ("norm_history", NORM_COLUMNS)) if k not in damaged
                and not rows(k, names)]
    damaged += [k for k in ("best", "best_ema") if k not in damaged and not (set(ckpt[k]) == {"epoch", "value"}
                and isinstance(ckpt[k]["epoch"], int) and isinstance(ckpt[k]["value"], (int, float, type(None))))]
    return damaged


def trained_state(model):
    """The model's weights without its frozen parameters (loaded from a file and never trained, such as
    GPT-1's embeddings): the run reloads them from that file, so no checkpoint repeats them."""
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items() if id(v) not in frozen}


def load_trained(model, state, source="the checkpoint"):
    """Load weights saved by trained_state: every key but the frozen parameters' must be there."""
    frozen = {k for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.nn.Parameter)
              and not v.requires_grad}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__  # torch names the tensor on its second line
        raise UserError(f"{source} does not fit the model: {why}") from None
    lacking = sorted(set(missing) - frozen)
    check(not unexpected and not lacking, f"{source} does not fit the model (missing "
          f"{', '.join(lacking[:3]) or 'nothing'}, unexpected {', '.join(unexpected[:3]) or 'nothing'})")
