"""The whole study: every configuration of both trainers, each run named as its trainer names it,
skipped when finished and resumed when interrupted, then plot.py. `runs.sh` hands over to it.

    bash runs.sh                          # the whole study at the reference epochs, then logs/report/
    QUICK=1 bash runs.sh                  # every configuration, 2 small batches, 1 epoch (logs/quick)
    DRY_RUN=1 bash runs.sh                # the commands and the plan, in seconds; runs and fetches nothing
    RUN_GROUPS=reference ONLY='^vit_L6' SEEDS="1 2 3" GPUS="0 1" bash runs.sh

Groups: reference (the report's 13 configurations), extras (GRU and Transformer LMs), improved (`--recipe improved`:
ViT-6 pre- and post-norm, LSTM-1), norms (ViT-6 pre/post-norm, warmup or none, layer gradient norms; NORMS_SEEDS each).

Its settings are environment variables (SETTINGS, below), given before the command as above: it takes no arguments.
docs/recipes.md's table says what each does; `settings()` reads and checks them. One sweep at a time on a log folder,
or the shards of one list. Ctrl-C or SIGTERM (or a closed terminal's SIGHUP, unless under nohup) stops every running
configuration within seconds; the same command resumes. A failing run does not stop the others: the failures are
listed at the end, with the line each one said, exit code 1. Only when RETIRE_AFTER runs in a row fail with the same
line (a setting every run shares, such as --compile without a compiler) do no more runs start.
"""
import contextlib
import dataclasses
import difflib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import plan
from config import parse_config
from rundir import advisory_lock
from utils import OUT_OF_MEMORY, STOP_SIGNALS, STOP_WORDS, UserError, check, cli, file_in_the_way, first_line, \
    launch, stop_signals

HERE = Path(__file__).resolve().parent
SETTINGS = ("QUICK", "DRY_RUN", "RUN_GROUPS", "SEEDS", "NORMS_SEEDS", "ONLY", "EPOCHS_LM", "EPOCHS_VIT", "DEVICE",
            "GPUS", "LOG_DIR", "LM_DATA", "VIT_DATA", "EMBEDDINGS", "TRAIN_ARGS", "SHARD", "PYTHON")
GROUPS = ("reference", "extras", "improved", "norms")
RETIRE_AFTER = 3  # runs failed in a row on one GPU (with others working), or alike anywhere: no more start
# The trainers' flags the sweep gives each run itself, and where their values come from instead.
OWN_FLAGS = {"--epochs": "EPOCHS_LM and EPOCHS_VIT", "--seed": "SEEDS", "--data_folder": "LM_DATA and VIT_DATA",
             "--device": "DEVICE", "--log_dir": "LOG_DIR", "--embeddings": "EMBEDDINGS",
             "--exp_id": "the trainers' own names", "--resume": "the sweep itself (it resumes every run)",
             "--overwrite": "nothing: move the runs away, or give another LOG_DIR"}
# The study: group, trainer, the flags that differ from its defaults. Names come from the trainer.
CONFIGS = [("reference", "train_lm.py", f) for f in ("--optimizer adam", "--optimizer adamw", "--optimizer sgd",
                                                      "--optimizer momentum", "--layers 2 --optimizer adamw",
                                                      "--layers 4 --optimizer adamw")]
CONFIGS += [("reference", "train_vit.py", f) for f in ("--layers 2 --optimizer adam", "--layers 2 --optimizer adamw",
                                                       "--layers 2 --optimizer sgd", "--layers 2 --optimizer momentum",
                                                       "--layers 4 --optimizer adamw", "--layers 6 --optimizer adamw",
                                                       "--layers 6 --optimizer adamw --block postnorm")]
CONFIGS += [("extras", "train_lm.py", f) for f in ("--model gru --optimizer adam",
                                                   "--model gru --layers 2 --optimizer adamw")]
CONFIGS += [("extras", "train_lm.py", f"--model transformer {f}{b}") for b in ("", " --block postnorm")
            for f in ("--optimizer adam", "--layers 2 --optimizer adamw")]
CONFIGS += [("improved", "train_vit.py", f"--recipe improved --layers 6{b}") for b in ("", " --block postnorm")]
CONFIGS += [("improved", "train_lm.py", "--recipe improved")]
CONFIGS += [("norms", "train_vit.py", f"--layers 6{b}{w} --grad_norms") for b in ("", " --block postnorm")
            for w in ("", " --warmup_epochs 5")]


@dataclasses.dataclass
class Run:
    exp_id: str
    group: str
    script: str
    argv: list                # the trainer's flags
    cfg: object               # its parsed Config
    done: int = 0             # epochs it has already run (the plan reads them)
    finished: bool = False    # its summary.json says it ran them all and was tested: skipped
    seconds: float = None     # the time it still needs; None: not estimated
    disk: int = 0             # bytes it holds when finished
    checkpoint: int = 0       # bytes of checkpoint.pt while it runs
    source: str = ""          # where the estimate comes from
    said: str = ""            # the last `error:` or `diverged:` line of its output

    def command(self, python):
        return [python, script_path(self.script), *self.argv]


def script_path(name):
    """A script beside this one as a command names it: by its name in this folder, else by its path
    (the sweep runs where it was started, so that relative paths in its settings are the user's)."""
    return name if Path.cwd().resolve() == HERE else str(HERE / name)


def flag(name, default="0"):
    value = os.environ.get(name, default).strip().lower()
    check(value in ("1", "true", "yes", "on", "0", "false", "no", "off", ""),
          f"{name} must be 1, true or yes (or 0, false, no), got '{os.environ.get(name, default)}'")
    return value in ("1", "true", "yes", "on")


def words(name, default="", kind=str):
    """A list setting, separated by spaces or commas; integers from 0 to 2**63 - 1, as the trainers take."""
    items = re.findall(r"[^\s,]+", os.environ.get(name) or default)
    bad = [w for w in items if kind is int and not (re.fullmatch(r"[0-9]+", w) and int(w) < 2 ** 63)]
    check(not bad, f"{name} must be integers from 0 to 2**63 - 1, got '{bad[0] if bad else ''}'")
    return [kind(w) for w in items]


def gpus():
    """GPUS, checked, and the GPUs this process sees by CUDA_VISIBLE_DEVICES (Slurm's, for one): indices
    count those from 0, as torch does. The sweep spreads its runs itself: a torchrun process is refused."""
    check(launch() == (1, 0, 0), f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set, as torchrun sets it for its "
          f"processes, but the sweep runs each configuration as one process (GPUS spreads them over GPUs, SHARD over "
          f"machines): unset WORLD_SIZE")
    given = words("GPUS")
    bad = [g for g in given if not re.fullmatch(r"[0-9]+|(GPU|MIG)-[A-Za-z0-9/-]+", g)]
    check(not bad, f"GPUS takes GPU indices or UUIDs (\"0 1\" or \"0,1\"), got '{bad[0] if bad else ''}'")
    named = [str(int(g)) if g.isdigit() else g for g in given]
    twice = [g for i, g in enumerate(named) if g in named[:i]]
    check(not twice, f"GPUS names GPU {twice[0] if twice else ''} twice: two runs sharing a GPU would each report "
          f"the other's time in their epoch times")
    visible = re.findall(r"[^\s,]+", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    beyond = [g for g in given if g.isdigit() and visible and int(g) >= len(visible)]
    check(not beyond, f"GPUS names GPU {beyond[0] if beyond else ''}, but CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES')} shows this process {len(visible)}, numbered from 0")
    return given, visible


def settings():
    """The sweep's settings from the environment, checked: one line for the first that is wrong. An
    empty variable is an unset one, as in the shell's ${VAR:-default}."""
    def env(name, default=""):
        return os.environ.get(name) or default
    for name in sorted(set(os.environ) - set(SETTINGS)):  # RUN_GROUP=reference: every group, silently
        if near := difflib.get_close_matches(name.upper(), SETTINGS, 1, 0.8):
            print(f"warning: {name} is not a setting of the sweep, and is ignored: {near[0]}?", file=sys.stderr)
    try:
        train_args = shlex.split(env("TRAIN_ARGS", ""))
    except ValueError as e:  # an unclosed quote
        raise UserError(f"TRAIN_ARGS is not a line of shell words ({e}): {env('TRAIN_ARGS')}") from None
    for word in train_args:  # argparse takes --flag=value, and a flag's unambiguous start
        name = word.split("=", 1)[0]
        check(name != "-h" and not (len(name) > 3 and "--help".startswith(name)), "TRAIN_ARGS cannot ask for --help: "
              "python train_lm.py --help (or train_vit.py) lists the flags it takes")
        own = next((f for f in OWN_FLAGS if len(name) > 3 and f.startswith(name)), None)
        check(own is None, f"TRAIN_ARGS cannot set {own}: its value comes from {OWN_FLAGS.get(own)}")
    s = dict(quick=flag("QUICK"), dry_run=flag("DRY_RUN"), only=env("ONLY", ""), python=env("PYTHON", "python3"),
             train_args=train_args, lm_data=env("LM_DATA", "./data/wikitext2"),
             vit_data=env("VIT_DATA", "./data/cifar10"))
    s["gpus"], s["visible"] = gpus()
    s["device"] = env("DEVICE", "cuda" if s["gpus"] else "auto")
    s["log_dir"] = env("LOG_DIR", "logs/quick" if s["quick"] else "logs")
    for name in ("LOG_DIR", "LM_DATA", "VIT_DATA"):
        folder, file = Path(s[name.lower()]), file_in_the_way(s[name.lower()])
        check(file is None, f"{name}={folder}" + f": {file}" * (file != folder) + " is a file, not a folder")
    for name in ("EPOCHS_LM", "EPOCHS_VIT"):
        value = env(name, "10" if name == "EPOCHS_LM" else "50")
        check(re.fullmatch(r"[0-9]+", value) and 0 < int(value) < 2 ** 63, f"{name} must be a positive integer, got "
              f"'{value}'")
        s[name.lower()] = 1 if s["quick"] else int(value)
    for name, default in (("SEEDS", "42"), ("NORMS_SEEDS", "1 2 3")):
        s[name.lower()] = list(dict.fromkeys(words(name, default, int)))  # a repeated seed runs once
        check(s[name.lower()] or name == "NORMS_SEEDS" and "norms" not in env("RUN_GROUPS", " ".join(GROUPS)),
              f"{name}={os.environ.get(name)!r} gives no seed")
    s["groups"] = words("RUN_GROUPS", " ".join(GROUPS))
    check(s["groups"], f"RUN_GROUPS={os.environ.get('RUN_GROUPS')!r} names no group; choose from {' '.join(GROUPS)}")
    unknown = [g for g in s["groups"] if g not in GROUPS]
    check(not unknown, f"unknown group '{unknown[0] if unknown else ''}' in RUN_GROUPS; choose from {' '.join(GROUPS)}")
    check(s["device"] in ("auto", "cpu", "cuda"), f"DEVICE must be auto, cpu or cuda, got '{s['device']}'"
          + " (GPUS picks the GPUs)" * s["device"].startswith("cuda:"))
    try:
        re.compile(s["only"])
    except re.error as e:
        raise UserError(f"ONLY is not a valid regular expression: '{s['only']}' ({e})") from None
    if re.search(r"[\w-]\*", s["only"]):  # a glob's habit: 'vit_L6*' reads as vit_L and any number of 6s
        print(f"warning: ONLY='{s['only']}' is a regular expression, in which '*' repeats the character before it "
              f"('.*' is any text)", file=sys.stderr)
    shard = re.fullmatch(r"(\d+)/(\d+)", env("SHARD", "0/1"))
    check(shard and int(shard[1]) < int(shard[2]), f"SHARD must be i/N with 0 <= i < N, got '{env('SHARD')}'")
    s["shard"] = int(shard[1]), int(shard[2])
    s["embeddings"] = env("EMBEDDINGS", "auto")
    if s["embeddings"] == "auto":  # GPT-1's for the token files, there or to be fetched; not in smoke runs
        tokens = (Path(s["lm_data"]) / "wiki.train.npz").exists() or not (Path(s["lm_data"]) / "train.txt").exists()
        s["embeddings"] = "gpt1" if tokens and not s["quick"] else "none"
    return s


def trainer_argv(s, group, script, flags, seed):
    """The trainer's flags for one configuration and seed: its own, TRAIN_ARGS, then the sweep's."""
    flags = shlex.split(flags) + ["--seed", str(seed)]
    lm = script == "train_lm.py"
    if s["quick"]:  # one epoch: a warmup stays a warmup (over both steps), but fits in it
        flags = [("1" if i and flags[i - 1] == "--warmup_epochs" else f) for i, f in enumerate(flags)]
        if "--recipe" in flags and "--warmup_epochs" not in flags:
            flags += ["--warmup_epochs", "1"]  # the recipes warm up for longer
    frozen = group == "reference" and lm and s["embeddings"] != "none"  # the report's LMs froze GPT-1's
    extra = ["--epochs", str(s["epochs_lm" if lm else "epochs_vit"]),
             "--data_folder", s["lm_data" if lm else "vit_data"]]
    if s["quick"]:
        extra += ["--limit_batches", "2"] + (["--batch_size", "4", "--seq_len", "64"] if lm else [])
        extra += ["--embedding_size", "64", "--hidden_size", "64"] if lm and not frozen else []
    extra += ["--embeddings", s["embeddings"]] if frozen else []
    return flags + s["train_args"] + extra + ["--device", s["device"], "--log_dir", s["log_dir"]], frozen


def select(s):
    """The runs of the settings: RUN_GROUPS, each seed, ONLY (on the configuration's name, with or
    without TRAIN_ARGS, or the run's), then SHARD. Each run's name is the one its trainer gives
    those flags, TRAIN_ARGS and seed."""
    runs, seen, index, pattern, refused = [], {}, 0, re.compile(s["only"]), None
    for group, script, flags in CONFIGS:
        if group not in s["groups"]:
            continue
        config = plan.SCRIPTS[script][0].Config
        for seed in s["norms_seeds" if group == "norms" else "seeds"]:
            argv, frozen = trainer_argv(s, group, script, flags, seed)
            own = shlex.split(flags) + ["--seed", str(seed)]
            data = ["--data_folder", argv[argv.index("--data_folder") + 1]] + ["--embeddings", s["embeddings"]] * frozen
            names, error = [parse_config(config, own + data).default_exp_id()], None
            try:  # with the run's epochs, which name nothing but bound --warmup_epochs (QUICK's one: not its name's)
                full = own + s["train_args"] + data + argv[argv.index("--epochs"):][:2] * (not s["quick"])
                run = f"TRAIN_ARGS={shlex.quote(shlex.join(s['train_args']))} ({script} {flags})" * bool(s["train_args"])
                names.append(plan.parse_run(run or f"{script} {flags}", config, full).default_exp_id())
            except UserError as e:  # TRAIN_ARGS that this trainer does not take: an error if the run is asked for
                error = e
            if s["only"] and not any(pattern.search(n) for name in names for n in (name.rsplit("_s", 1)[0], name)):
                refused = refused or error
                continue
            if error:
                raise error
            if names[-1] in seen:  # TRAIN_ARGS made two configurations one: it runs once, on one shard
                print(f"warning: TRAIN_ARGS make {names[0]} and {seen[names[-1]]} one run: {names[-1]}", file=sys.stderr)
                continue
            seen[names[-1]] = names[0]
            if index % s["shard"][1] == s["shard"][0]:
                argv += ["--exp_id", names[-1], "--resume", "--no_progress"]
                runs.append(Run(names[-1], group, script, argv, plan.parse_run(names[-1], config, argv)))
            index += 1
    if refused and not runs:
        raise refused
    check(runs, f"no configuration matches ONLY='{s['only']}' in RUN_GROUPS='{' '.join(s['groups'])}' "
          f"(shard {s['shard'][0]}/{s['shard'][1]})")
    return runs


class Sweep:
    """The runs as a work queue over workers (one per GPU, or one on the device), each run a child
    process in its own process group, its output appended to <log_dir>/<exp_id>.log (and shown, with
    one worker). Ctrl-C, SIGTERM or SIGHUP is forwarded to every running child; no new run starts."""

    def __init__(self, runs, s):
        self.s, self.todo, self.failed, self.children = s, queue.Queue(), [], {}
        self.stopped, self.unwritten, self.lock, self.retired = None, None, threading.Lock(), []
        self.alike = ("", 0)  # the line the last failures said, and how many in a row said it
        for run in runs:
            self.todo.put(run)

    def stop(self, signum, frame):
        self.stopped = self.stopped or signum
        with self.lock:
            for child in self.children.values():
                with contextlib.suppress(OSError):  # it has just ended
                    os.killpg(child.pid, signum)

    def work(self, gpu, threads):
        failures = 0  # in a row
        try:
            while self.stopped is None and self.alike[1] < RETIRE_AFTER:
                with self.lock:  # a faulty GPU would fail every run it took, the whole queue in minutes
                    retire = failures >= RETIRE_AFTER and len(self.retired) < len(self.s["gpus"]) - 1
                    self.retired += [gpu] * retire
                if retire:
                    others = "workers" if self.s["device"] == "cpu" else "GPUs"
                    return print(f"== {self.worker(gpu)}: {failures} runs in a row failed on it; it takes no more"
                                 f"{' (check it: nvidia-smi)' * (others == 'GPUs')}, the other {others} take the rest",
                                 flush=True)
                try:
                    run = self.todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    code = self.run_one(run, gpu, threads)
                    # stopped by a signal to it alone (not the sweep's): unfinished, so not done
                    why = f"{STOP_WORDS[code - 128]}, exit {code}" if code - 128 in STOP_SIGNALS else f"exit {code}"
                except BrokenPipeError:
                    raise  # the sweep's own output: below
                except Exception as e:  # noqa: BLE001 - e.g. its log cannot be written: this run fails, not the sweep
                    code, why = 1, f"{e.strerror}" + f": {e.filename}" * bool(e.filename) \
                        if isinstance(e, OSError) and e.strerror else first_line(e)
                if code and self.stopped is None:
                    print(f"== {run.exp_id}: FAILED ({why}, log {self.s['log_dir']}/{run.exp_id}.log)"
                          + f": {run.said}" * bool(run.said and gpu is not None), flush=True)  # else shown above
                    self.failed.append(f"{run.exp_id} ({why})" + f": {run.said}" * bool(run.said))
                failures = failures + 1 if code else 0
                # not a divergence (a result) nor memory (each run's size): those say nothing of the runs to come
                alike = code and run.said.startswith("error: ") and run.said != OUT_OF_MEMORY
                self.count_alike(run.said if alike else "")
        except (OSError, UserError) as e:  # its output gone (| head), or on a full disk: every run stops, as on SIGTERM
            self.stopped, self.unwritten = self.stopped or signal.SIGPIPE, None if isinstance(e, BrokenPipeError) else e
            self.stop(signal.SIGTERM, None)

    def count_alike(self, said):
        """The third failure in a row with the same `error:` line (a setting of every run) starts no more
        runs: the rest would fail alike, each after its start-up."""
        with self.lock:
            self.alike = (said, self.alike[1] + 1 if said and said == self.alike[0] else int(bool(said)))
            if self.alike[1] == RETIRE_AFTER:
                print(f"== {RETIRE_AFTER} runs in a row failed alike ({said}): no more runs start; fix that, then run "
                      f"the same command again (finished runs are skipped)", flush=True)

    def worker(self, gpu):  # by its GPU, or (GPUS with DEVICE=cpu) as one of the CPU's workers
        return f"GPU {gpu}" if self.s["device"] != "cpu" else f"worker {gpu}"

    def run_one(self, run, gpu, threads):
        """The run's exit code (0 when it was already done)."""
        if run.finished:  # as the plan found it
            return print(f"== {run.exp_id}: done, skipped", flush=True) or 0
        command = run.command(self.s["python"])
        where = "" if gpu is None else f" on GPU {gpu}" if self.s["device"] != "cpu" else f" (worker {gpu}, on the CPU)"
        print(f"== {run.exp_id}{where}: {shlex.join(command)}", flush=True)
        visible = self.s["visible"][int(gpu)] if gpu is not None and gpu.isdigit() and self.s["visible"] else gpu
        env = dict(os.environ, **({} if gpu is None else dict(CUDA_VISIBLE_DEVICES=visible)),
                   **({} if threads is None else dict(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", threads))))
        with open(Path(self.s["log_dir"]) / f"{run.exp_id}.log", "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
            f.flush()
            with self.lock:
                if self.stopped is not None:
                    return 0
                child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         encoding="utf-8", errors="replace", env=env, start_new_session=True)
                self.children[run.exp_id] = child
            try:
                for line in child.stdout:
                    f.write(line)
                    f.flush()
                    run.said = line.strip() if re.match(r"(error|diverged): ", line) else run.said
                    if gpu is None:
                        print(line, end="", flush=True)
            except Exception:  # a full disk: the run stops at its last finished epoch, and resumes later
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGTERM)
                raise
            finally:
                code = child.wait()
                with self.lock:
                    del self.children[run.exp_id]
        return code

    def execute(self):
        """Every run, on the workers; returns the signal that stopped the sweep, or None."""
        gpus = self.s["gpus"] or [None]
        # the CPUs this process may use (a Slurm job's, a taskset's), not the machine's
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cpus // len(gpus))) if self.s["gpus"] else None
        previous = {s: signal.signal(s, self.stop) for s in stop_signals()}
        workers = [threading.Thread(target=self.work, args=(gpu, threads), daemon=True) for gpu in gpus]
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(0.1)  # short waits: the signal handler runs between them
        for s, handler in previous.items():
            signal.signal(s, handler)
        return self.stopped


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        return print(f"{__doc__.strip()}\n\nSETTINGS: {', '.join(SETTINGS)}") or 0
    settings_given = [re.fullmatch(r"([A-Za-z_]\w*)=(.*)", a, re.S) for a in argv]  # QUICK=1 after the command
    check(not argv, f"runs.sh takes no arguments (got {shlex.join(argv)}): its settings are environment variables, "
          f"given before it: " + (" ".join(f"{m[1]}={shlex.quote(m[2])}" for m in settings_given) + " bash runs.sh"
                                  if all(settings_given) else "QUICK=1 bash runs.sh (--help lists them)"))
    s = settings()
    runs = select(s)
    if s["quick"]:  # names are the configurations', what runs is cut short: say so
        print(f"== QUICK=1: each configuration for 2 batches of 1 epoch (its warmup shortened to that epoch; the LMs "
              f"that learn their embeddings 64 wide), under its own name, in {s['log_dir']}", flush=True)
    if s["dry_run"]:
        for run in runs:
            print(shlex.join(run.command(s["python"])))
        return plan.plan(runs, s["gpus"], dry_run=True)
    with folder_lock(s):
        plan.plan(runs, s["gpus"], dry_run=False)  # checks the device and the data (fetching them) first
        stopped = (work := Sweep(runs, s)).execute()
    if stopped is not None:
        check(not work.unwritten, f"{work.unwritten}; every run stopped; run the same command again to resume")
        if stopped != signal.SIGPIPE:  # a closed output (| head) ends it quietly
            print(f"== {STOP_WORDS[stopped]}: every run stopped; run the same command again to resume",
                  file=sys.stderr, flush=True)
        return 128 + stopped
    return finish(work, runs, s)


@contextlib.contextmanager
def folder_lock(s):
    """One sweep at a time on a log folder, or the shards of one list side by side (SHARD=i/N, one N:
    a job array on a shared filesystem): a whole sweep holds the folder's lock alone, shards share it
    and each holds its own. The folder is found writable first."""
    folder, (i, n) = Path(s["log_dir"]), s["shard"]
    lock, what = folder / ".sweep.lock", f"LOG_DIR={folder}"
    with contextlib.ExitStack() as held:
        held.enter_context(advisory_lock(lock, f"another sweep is running on {what} (it holds {lock}); wait for it "
                                               f"to end, or give another LOG_DIR", what, shared=n > 1))
        if n > 1:
            mine = folder / f".sweep.{i}of{n}.lock"
            held.enter_context(advisory_lock(mine, f"another sweep is running SHARD={i}/{n} on {what} (it holds "
                                                   f"{mine}); wait for it to end", what))
            for other in folder.glob(".sweep.*of*.lock"):
                theirs = re.fullmatch(r"\.sweep\.(\d+)of(\d+)\.lock", other.name)
                if theirs and int(theirs[2]) != n:  # shards of two splittings would run some runs twice
                    with advisory_lock(other, f"a sweep with SHARD={theirs[1]}/{theirs[2]} is running on {what}: the "
                                              f"shards of one log folder split its list alike (SHARD=i/{theirs[2]})",
                                       what, shared=True):
                        pass
        yield


def finish(work, runs, s):
    """The report, drawn by the last sweep on the log folder to end (shards end apart), unless every
    run failed; the list of failures; the exit code."""
    if work.retired:
        print(f"== taken out of the queue after {RETIRE_AFTER} failed runs in a row: "
              f"{', '.join(map(work.worker, work.retired))}", flush=True)
    if left := work.todo.qsize():
        print(f"== not started: {left} run{'s' * (left > 1)}, after {RETIRE_AFTER} failed alike", flush=True)
    if len(work.failed) + left == len(runs) and s["shard"][1] == 1:  # a shard's report is of every shard's runs
        print(f"== every run {'that started ' * bool(left)}failed (logs in {s['log_dir']}/*.log); no report", flush=True)
        return 1
    drawn = False
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(advisory_lock(Path(s["log_dir"]) / ".sweep.lock", "", f"LOG_DIR={s['log_dir']}"))
        except UserError:  # another shard is still running: it draws the report, of every run, when it ends
            print(f"== plots and tables: left to the sweep still running on LOG_DIR={s['log_dir']}", flush=True)
        else:
            print("== plots and tables", flush=True)
            drawn = not subprocess.run([s["python"], script_path("plot.py"), "--log_dir", s["log_dir"]]).returncode
            work.failed += [] if drawn else ["plot.py"]
    if work.failed:
        print("== failed:\n" + "".join(f"   {f}\n" for f in work.failed), end="", flush=True)
        return 1
    report = f"{s['log_dir']}/report" if drawn else f"the report when the last sweep on LOG_DIR={s['log_dir']} ends"
    print(f"== all done: {report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
