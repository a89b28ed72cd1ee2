"""What the trainers share that is not the training loop: errors and the CLI wrapper, downloads,
device and precision (and the environment a run records), distributed helpers, seeding.

    >>> device = get_device("auto"); precision = choose_precision("auto", device)
"""
import contextlib
import http.client
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

EXIT_USER_ERROR, EXIT_DIVERGED = 2, 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C; docker stop, Slurm, timeout; a closed terminal
STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}
FIRST_RANK_GRACE_S = 60  # how long another rank failing before the process group exists waits for the first
# what a collective raises when another process has ended (gloo's words, then NCCL's)
PEER_GONE = r"(closed|reset) by peer|remote process exited|communicator was aborted"
OUT_OF_MEMORY = "error: out of memory; try a smaller --batch_size or model"  # a run's size: the sweep goes on
ENDED = []  # not empty once a CLI's main has ended (cli): a stop signal then is ignored (stop)


class UserError(Exception):
    """A problem the user can fix (bad flag, missing data, existing run): one line, exit code 2."""


class Diverged(Exception):
    """The loss became NaN or infinite: not a user error, so it has its own exit code (3)."""


class Stopped(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP: the run stops at once, keeping its last finished epoch; exit 128 + signal."""

    def __init__(self, signum=signal.SIGINT, detail=""):
        super().__init__(detail)
        self.signum, self.detail = signum, detail


def stop(signum, frame):
    """The handler of the stop signals. One while stopping (a clean-up, an exit handler), or once a CLI's
    main has ended, is ignored: one signal or several leave the same state and print the same line."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if not ENDED:  # else it would break, with a traceback, into the line that says why main ended
        raise Stopped(signum)


def stop_signals():
    """The stop signals a process catches: Ctrl-C and SIGTERM always (also where a shell started it
    with Ctrl-C ignored, a background job), a closed terminal's SIGHUP unless ignored on purpose (nohup)."""
    return [s for s in STOP_SIGNALS if s != signal.SIGHUP or signal.getsignal(s) != signal.SIG_IGN]


def check(condition, message):
    if not condition:
        raise UserError(message)


def check_folder(path, flag, if_file="is a file, not a folder"):  # one line saying why path is not a folder
    check(Path(path).is_dir(), f"{flag} {path} " + (if_file if Path(path).exists() else "does not exist"))


def file_in_the_way(path):  # the file that path is, or lies under (no folder can be made there), or None
    return next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)


def first_line(exc):  # an exception as one short line, even when its message is empty
    lines = str(exc).strip().splitlines()
    return (lines[0][:1500] if lines else "") or type(exc).__name__


def cli(main):
    """Run `main(argv)`: a UserError is one `error:` line and exit 2, a diverged run exit 3, Ctrl-C, SIGTERM or
    SIGHUP a clean stop (exit 130, 143, 129) that says what was kept. Under torchrun a failing rank says so with
    its rank and leaves at once (os._exit): torchrun then ends the others, which would wait in a collective."""
    def wrapped(argv=None):
        ENDED.clear()
        previous, stdout = {s: signal.signal(s, stop) for s in stop_signals()}, sys.stdout
        # a character the output's encoding lacks (generated text, a path; an ASCII locale or PYTHONIOENCODING) is
        # written escaped, as stderr writes it, not a traceback
        getattr(stdout, "reconfigure", lambda **kw: None)(errors="backslashreplace")
        sys.stdout = stdout and Stdout(stdout)
        try:
            try:
                try:
                    result = main(argv)
                except SystemExit as e:  # argparse's, after --help: its text is flushed below, as any output
                    if e.code:
                        raise
                    result = None
                print(end="", flush=True)  # within the try: a closed or full stdout shows here, not at the exit
                code, message = 0, None
            except BaseException as e:  # ending: a stop signal from now on (torchrun's SIGTERM once another rank
                ENDED.append(True)  # has failed) is ignored: first, so the window before it is a bytecode or two
                code, message = ending(e)
                previous = {} if isinstance(e, KeyboardInterrupt) else previous  # an exiting process keeps ignoring
            distributed = dist.is_available() and dist.is_initialized()
            # Before the process group exists every rank fails alike (flags, batch size): one message, the first
            # rank's. Another that left first would have torchrun stop the first before it says why, so it waits
            # to be stopped, once the first has ended; not stopped, its failure is its own, and it says so.
            says = distributed or rank() == 0
            if code == EXIT_USER_ERROR and not says:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                time.sleep(FIRST_RANK_GRACE_S)
                message, says = f"[rank {rank()}] {message}", True
            if message and says:
                with contextlib.suppress(OSError):  # a stderr that cannot take it (2>/dev/full): the code still says
                    print(f"[rank {rank()}] " * distributed + message, file=sys.stderr, flush=True)
            # The process ends here. Failing: the other ranks may be inside a collective that will never complete.
            # Done: every collective has completed and every file is written, yet at the interpreter's exit a thread
            # of gloo's now and then aborts it (SIGABRT, a failed run), and destroy_process_group now and then never
            # returns (a finished run that torchrun waits for forever): os._exit skips both.
            for stream in (sys.stdout, sys.stderr):  # now: what one cannot take (a full disk, a closed pipe) is
                try:  # dropped, not tried again with a traceback at the exit (which os._exit skips)
                    stream and stream.flush()
                except (OSError, UserError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            if distributed:
                os._exit(code)
            if code:
                sys.exit(code)
            return result
        finally:  # the caller's stdout and handlers back, for a caller that runs main in its own process
            sys.stdout = stdout
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
    return wrapped


def ending(e):
    """(exit code, message or None) for the exception that ended a CLI's main; `e` raised again where it
    is none of these classes (a bug, or argparse's exit: its own report)."""
    if isinstance(e, UserError):
        return EXIT_USER_ERROR, f"error: {first_line(e)}"
    if isinstance(e, Diverged):
        return EXIT_DIVERGED, f"diverged: {first_line(e)}"
    if isinstance(e, (MemoryError, RuntimeError)):  # torch's allocators and collectives raise RuntimeErrors
        if dist.is_available() and dist.is_initialized() and re.search(PEER_GONE, str(e)):
            return 1, "stopped: another process ended (its own line says why)"
        if isinstance(e, MemoryError) or re.search(r"out of memory|can't allocate memory", str(e)):
            return EXIT_USER_ERROR, OUT_OF_MEMORY
    elif isinstance(e, BrokenPipeError):  # the reader of stdout has gone (| head): a quiet end, as SIGPIPE's in C
        return 128 + signal.SIGPIPE, None
    elif isinstance(e, OSError):  # a path the system refuses that no check named (a name too long, a loop of links)
        return EXIT_USER_ERROR, f"error: {e.strerror or first_line(e)}" + f": {e.filename}" * bool(e.filename)
    elif isinstance(e, KeyboardInterrupt):
        signum = getattr(e, "signum", signal.SIGINT)
        return 128 + signum, f"{STOP_WORDS.get(signum, 'interrupted')}: {getattr(e, 'detail', '') or 'stopped'}"
    raise e


def fetch(url, timeout=60):
    """The bytes at url. OSError when offline, on an HTTP error, or when the transfer is cut short."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            content = response.read()
            length = response.headers.get("Content-Length")
    except (OSError, http.client.HTTPException) as e:  # offline, refused, HTTP error, cut short
        raise OSError(f"{url}: {reason(e)}") from None
    if isinstance(length, str) and length.isdigit() and len(content) != int(length):
        raise OSError(f"{url}: the transfer was cut short ({len(content):,} of {int(length):,} bytes)")
    return content


def reason(error):
    """Why a download failed, in words: the socket's, inside urllib's error; an HTTP error's code."""
    why = error if isinstance(error, urllib.error.HTTPError) else getattr(error, "reason", None) or error
    return getattr(why, "strerror", None) or (str(why).splitlines() or [""])[0] or type(why).__name__


# --------------------------------------------------------------------------- device and precision
def cuda_unusable_reason():
    """Why torch sees no usable CUDA device, in words a user can act on."""
    if torch.version.cuda is None:
        return "this torch is a CPU-only build; install a CUDA build of torch"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.is_available()
    said = " ".join(first_line(w.message) for w in caught)
    if "driver" in said.lower():
        return f"{said} (this torch is built for CUDA {torch.version.cuda})"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU (check GPUS)"
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/dxg")):
        return ("no NVIDIA device is visible to this process; in a container, start it with --gpus all "
                "(docker) or --device nvidia.com/gpu=all (podman)")
    return (f"CUDA reports no usable device{f' among CUDA_VISIBLE_DEVICES={visible}' if visible else ''}; "
            f"this torch needs an NVIDIA driver recent enough for CUDA {torch.version.cuda} (see nvidia-smi)")


def cuda_arch_problem(device=None):
    """Why this torch has no kernels for the GPU (a CUDA 13 build on a V100), or None. A cubin runs on
    its major generation at the same or a higher minor version; PTX is compiled for any newer GPU."""
    major, minor = torch.cuda.get_device_capability(device)
    found = (re.fullmatch(r"(sm|compute)_(\d+)[a-z]?", arch) for arch in torch.cuda.get_arch_list())
    archs = [(f[1], *divmod(int(f[2]), 10)) for f in found if f]  # sm_90a: ("sm", 9, 0)
    if not archs or any((kind == "sm" and m == major and n <= minor) or (kind == "compute" and (m, n) <= (major, minor))
                        for kind, m, n in archs):
        return None
    built = " ".join(sorted({f"{m}.{n}" for _, m, n in archs}, key=lambda v: tuple(map(int, v.split(".")))))
    return (f"this torch (CUDA {torch.version.cuda}) has no kernels for {torch.cuda.get_device_name(device)}, compute "
            f"capability {major}.{minor} (it is built for {built}); install a build that has them, for example "
            f"the CUDA 12.6 one: pip install torch torchvision --index-url https://download.pytorch.org/whl/cu126")


def get_device(name):
    """The torch device for --device (auto: CUDA where usable); a GPU this torch lacks kernels for: refused."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name.startswith("cuda"):
        check(torch.cuda.is_available(), f"--device cuda asked for, but CUDA is not usable: {cuda_unusable_reason()}")
    device = torch.device(name)
    if device.type == "cuda":
        problem = cuda_arch_problem(device)
        check(problem is None, problem)
    return device


class Precision(NamedTuple):
    """The precision a run computes in, resolved once at set-up: the autocast dtype (None: plain
    fp32) and why it was chosen; fp16 scales its loss."""
    dtype: torch.dtype = None
    why: str = "fp32"

    @property
    def scaled(self):
        return self.dtype == torch.float16

    @property
    def name(self):  # "float32", "bfloat16", "float16"
        return str(self.dtype or torch.float32).removeprefix("torch.")

    def autocast(self, device):  # mixed precision in dtype, or nothing (plain fp32)
        return torch.autocast(device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


def choose_precision(name, device):
    """The Precision of --precision. auto: bf16 where the GPU runs it natively (compute capability 8.0
    and up), fp16 with loss scaling on older GPUs (bf16 is emulated there), fp32 on a CPU. On a GPU,
    fp32 matmuls (the recurrent cores' too) run as TF32."""
    if device.type != "cuda":
        check(name != "fp16", "--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
        if name == "auto":
            return Precision(None, "fp32: the device is a CPU")
        return Precision({"fp32": None, "bf16": torch.bfloat16}[name], f"{name}: asked for")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    major, minor = torch.cuda.get_device_capability(device)
    native = major >= 8
    if name == "auto":
        if native:
            return Precision(torch.bfloat16, f"bf16: native on compute capability {major}.{minor}")
        return Precision(torch.float16, f"fp16 with loss scaling: compute capability {major}.{minor} has no native "
                                        f"bf16 (it needs 8.0)")
    reason = f"{name}: asked for"
    if name == "bf16" and not native:
        reason += f" (emulated on compute capability {major}.{minor}, slow; auto would choose fp16)"
    return Precision({"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name], reason)


FP32 = Precision()


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def environment(device):
    """What the numbers were made with: versions, device, and the code's commit, "-dirty" when a tracked
    file differs from it (the commit alone would not reproduce the run)."""
    try:
        status = subprocess.run(["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        lines = status.stdout.splitlines() if status.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        lines = []
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), None)
    commit = None if commit in (None, "(initial)") else commit + "-dirty" * any(not x.startswith("#") for x in lines)
    return dict(torch=torch.__version__, python=platform.python_version(), hostname=platform.node(), device=str(device),
                device_name=device_name(device), threads=torch.get_num_threads(), git_commit=commit)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_space(folder):
    """The free space on folder's disk, in words ("1.2 GB")."""
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(folder).free
        return f"{free / 2 ** 30:.1f} GB" if free >= 2 ** 30 else f"{free / 2 ** 20:.1f} MB"
    return "unknown space"


# -------------------------------------------------------------------------------------- distributed
def rank():
    """This process's rank: from the process group, or from torchrun's environment before it exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return (launch() or (1, 0))[1]


def launch():
    """(world size, rank, local rank) as torchrun sets them, (1, 0, 0) without WORLD_SIZE, None when
    its variables do not describe one process of several (a shell's leftovers, a hand-made launch)."""
    env = {n: os.environ.get(n, "").strip() for n in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    if env["WORLD_SIZE"] in ("", "1"):
        return 1, 0, 0
    world, rank_, local, port = (int(v) if v.isdigit() else None for v in env.values())
    ok = None not in (world, rank_, local, port) and rank_ < world and os.environ.get("MASTER_ADDR")
    return (world, rank_, local) if ok else None


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def log(*args):  # print, from the first process only
    if rank() == 0:
        print(*args, flush=True)


class Stdout:
    """sys.stdout while a CLI runs: a write that fails (a full disk under `>`: any line, from any thread, --help's
    too) is one line that names it; a closed pipe stays a BrokenPipeError, ending's quiet end."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):  # encoding, fileno, isatty: the stream's
        return getattr(self.stream, name)

    def write(self, text):
        return self.named(self.stream.write, text)

    def flush(self):
        return self.named(self.stream.flush)

    @staticmethod
    def named(call, *args):
        try:
            return call(*args)
        except OSError as e:
            if isinstance(e, BrokenPipeError):
                raise
            raise UserError(f"cannot write the standard output: {e.strerror or e}") from None


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


def init_distributed(device, batch_size):
    """Under torchrun: the process group (NCCL on CUDA, gloo on CPU), bound to this rank's GPU.
    Returns the device this process trains on."""
    names = "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"
    launched = launch()
    check(launched, ", ".join(f"{n}={os.environ.get(n, '(unset)')}" for n in names) + ": not one process of several "
          "as torchrun starts them (docs/scaling.md); unset WORLD_SIZE to train in one process")
    world, _, local = launched
    if world == 1 or dist.is_initialized():
        return device
    check(batch_size % world == 0, f"--batch_size {batch_size} does not divide over {world} processes")
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return device


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
    return batch if world == 1 else tuple(torch.tensor_split(b, world)[rank()] if torch.is_tensor(b) else b
                                          for b in batch)


# ----------------------------------------------------------------------------------------- seeding
def epoch_seed(seed, epoch, purpose):
    return ((seed * 1_000_003 + epoch) * 4_294_967_311 + zlib.crc32(purpose.encode())) % 2 ** 63


def epoch_generator(seed, epoch, purpose):
    """A CPU generator for one purpose ("shuffle", "augment", ...) in one epoch: data order and
    augmentation depend on nothing else (model, process count), and a resumed run draws the same."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, purpose))


def seed_dropout(seed, epoch):
    """Seed torch's global generator (dropout, drop-path) for one training epoch of this process: each
    rank draws its own masks for its slice of the batch, and a resumed run draws the same with no
    generator state saved: every other draw has a generator of its own (epoch_generator)."""
    torch.manual_seed(epoch_seed(seed, epoch, f"dropout, rank {rank()}"))


def setup(cfg):
    """Device, precision, seeds and, under torchrun, the process group: (device, Precision). A full
    run that `--device auto` puts on a CPU says so before it starts."""
    device = init_distributed(get_device(cfg.device), cfg.batch_size)
    if cfg.device == "auto" and device.type == "cpu" and not cfg.limit_batches and rank() == 0:
        print(f"warning: training on the CPU, since CUDA is not usable ({cuda_unusable_reason()}); a full run "
              f"takes hours to days there (--device cpu silences this)", file=sys.stderr, flush=True)
    precision = choose_precision(cfg.precision, device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2 ** 32)
    torch.manual_seed(cfg.seed)  # every device
    return device, precision
