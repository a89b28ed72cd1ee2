"""Reading run directories: each run's config.json, metrics.csv, summary.json and grad_norms.csv, as
its trainer wrote them. Damage (a cut row, a file that is not JSON) is recorded on the run, never
raised, so that one broken run never hides the others. No torch.

    >>> runs = find_runs(["logs"], Path("logs/report"))
"""
import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

METRIC = dict(name=str, label=str, maximize=bool, digits=int)  # config.json's "metric", as the task states it
WORD, TEXT = r"[A-Za-z0-9_]{1,40}", r"[\w ().,:+-]{1,80}"  # a file name's part; a title or label (no markup)
SCORING = r"[\w ().,:;'+-]{0,300}"  # how a run is scored unlike the others (train_lm.build), or ''
PLAIN = ("layers", "block", "optimizer", "model", "embeddings", "data_source", "data_sha256")  # the readers' keys


def stated(config):
    """Whether config.json states its task (a word: it names files), title, metric and settings as a
    trainer does: settings of plain values, named in a list, their run's name and epochs as text and
    a whole number."""
    metric, naming, scoring = config.get("metric"), config.get("naming", {}), config.get("scoring") or ""
    names = naming.get("settings", []) if isinstance(naming, dict) else None
    return (isinstance(config.get("task"), str) and re.fullmatch(WORD, config["task"])
            and isinstance(config.get("title"), str) and re.fullmatch(TEXT, config["title"])
            and isinstance(metric, dict) and all(type(metric.get(k)) is kind for k, kind in METRIC.items())
            and re.fullmatch(WORD, metric["name"]) and re.fullmatch(TEXT, metric["label"])
            and 0 <= metric["digits"] <= 12 and isinstance(scoring, str) and re.fullmatch(SCORING, scoring)
            and isinstance(names, list) and all(isinstance(k, str) for k in names)
            and isinstance(naming.get("configuration", ""), str) and isinstance(naming.get("changed", {}), dict)
            and all(isinstance(config.get(k), (str, int, float, type(None))) for k in [*names, *PLAIN])
            and isinstance(config.get("epochs", 0), int) and isinstance(config.get("limit_batches", 0), int))


@dataclass
class Run:
    path: Path
    config: dict
    rows: list                                  # metrics.csv, as floats
    summary: dict = None
    norms: dict = field(default_factory=dict)  # epoch -> [norm of layer 1, 2, ...] (grad_norms.csv)
    task: str = ""
    name: str = ""                              # the configuration's: seeds share it
    metric: dict = None                         # name, label, maximize, digits (METRIC)
    problems: list = field(default_factory=list)


REQUIRED = ("epoch", "train_loss", "train_{m}", "valid_loss", "valid_{m}", "train_time", "valid_time", "elapsed",
            "peak_mem_mb", "mem_pct")


def read_rows(path, m, problems):
    """metrics.csv as a list of dicts of floats; damaged rows (cut, short, long, not numbers) are left
    out and named in problems, and a file without the columns the report needs gives no rows."""
    try:
        with open(path, newline="") as f:
            text = f.read()
        reader = csv.DictReader(io.StringIO(text))
        lines = list(reader)
        missing = [c.format(m=m) for c in REQUIRED if c.format(m=m) not in (reader.fieldnames or [])]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return problems.append(f"metrics.csv unreadable ({e})") or []
    if lines and missing:
        return problems.append(f"metrics.csv lacks {', '.join(missing)}") or []
    if lines and not text.endswith("\n"):  # every row is written whole with its line end: this one was cut
        problems.append(f"metrics.csv line {len(lines) + 1} skipped (cut short)")
        lines.pop()
    rows = []
    for i, row in enumerate(lines, 2):
        try:
            if None in row or None in row.values():
                raise ValueError("wrong number of fields")
            rows.append({k: number(k, v) for k, v in row.items()})
        except ValueError as e:
            problems.append(f"metrics.csv line {i} skipped ({e})")
    return rows


def number(column, text):
    try:
        if "_" in text or not text.isascii():  # float() reads "1_0" and other scripts' digits too; no CSV here has them
            raise ValueError
        return float(text)
    except ValueError:
        raise ValueError(f"{column} is {text[:40]!r}, not a number") from None


def read_json(path, problems):
    """A JSON object, or None (missing, or damaged and named in problems)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        value = problems.append(f"{path.name} unreadable ({str(e)[:80]})")
    if value is not None and not isinstance(value, dict):
        value = problems.append(f"{path.name} is not a JSON object")
    return value


def read_run(path):
    """One run directory -> Run. Damage is recorded in run.problems, never raised; a run whose
    config.json is unreadable or not as the trainers write it has no rows and is listed as skipped."""
    problems, later = [], []
    config = read_json(path / "config.json", problems) or {}
    summary = read_json(path / "summary.json", later)  # whether it finished, even when nothing else is readable
    task, metric = config.get("task"), config.get("metric")
    if not stated(config):
        why = ("no config.json" if not (path / "config.json").exists() else "config.json is empty" if not config
               else "config.json is not as the trainers write it (its task, title, metric or settings; an older "
                    "version's run, or a damaged file)")
        return Run(path, config, [], summary, task=task, name=path.name,
                   problems=(problems or [f"{why}: not plotted"]) + later)
    name = (config.get("naming") or {}).get("configuration") or config.get("exp_id") or path.name
    rows = read_rows(path / "metrics.csv", metric["name"], problems)
    if isinstance((summary or {}).get("epochs"), int) and summary["epochs"] < len(rows):
        summary = None  # a finished run extended (--resume --epochs N), still going: its tests are of an earlier model
    run = Run(path, config, rows, summary, task=task, name=str(name), metric=metric, problems=problems + later)
    try:
        with open(path / "grad_norms.csv") as f:
            for row in csv.DictReader(f):
                run.norms.setdefault(int(row["epoch"]), {})[int(row["layer"])] = float(row["norm"])
        layers = list(range(1, config.get("layers", 0) + 1)) if type(config.get("layers")) is int else None
        if any(sorted(norms) != layers for norms in run.norms.values()):  # as the seeds' curves are averaged
            raise ValueError(f"an epoch without the norms of layers 1 to {config.get('layers')}")
        run.norms = {e: [norms[k] for k in layers] for e, norms in sorted(run.norms.items())}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as e:
        run.problems.append(f"grad_norms.csv unreadable ({e})")
        run.norms = {}
    return run


def find_runs(log_dirs, out_dir):
    """The runs of each log folder: its sub-folders holding a run's files, not the report folder
    out_dir nor a hidden one (the run --overwrite replaces, until it is), and nothing deeper
    (logs/quick/, a sweep of smoke runs, is a log folder of its own)."""
    out_dir, folders = os.path.realpath(out_dir), {}  # by real path: a folder given twice is read once
    for log_dir in log_dirs:
        for name in ("config.json", "metrics.csv", "summary.json"):
            for p in Path(log_dir).glob(f"*/{name}"):
                if os.path.realpath(p.parent) != out_dir and not p.parent.name.startswith("."):  # no run's name does
                    folders.setdefault(os.path.realpath(p.parent), p.parent)
    return [read_run(folder) for folder in sorted(folders.values())]


def report_problem(out_dir):
    """Why out_dir cannot hold the report, or '': a file (/dev/null and a pipe too), or a run's directory."""
    if (out_dir / "config.json").exists():
        return "is a run directory"
    return "is a file" if out_dir.exists() and not out_dir.is_dir() else ""


def folders_problem(log_dirs, out_dir):
    """Why the report cannot be made from log_dirs into out_dir, or '': a log folder that is missing, a
    file or one run's directory (a typo: never left out in silence), or a report folder that is a
    run's (its files would be mixed with the report's)."""
    if problem := report_problem(out_dir):
        return f"--out_dir {out_dir} {problem}; choose another folder"
    for given, folder in zip(log_dirs, map(Path, log_dirs)):
        if not given:  # Path("") is this folder: never read in silence
            return "--log_dir is empty; give a folder (. for this one)"
        if (folder / "config.json").is_file():
            return f"--log_dir {folder} is a run directory; give the folder that holds it: --log_dir {folder.parent}"
        if not folder.is_dir():
            return f"--log_dir {folder} " + ("is a file, not a folder" if folder.exists() else "does not exist")
    return ""


class GroupKey(NamedTuple):
    """What runs must share to be seeds of one configuration."""
    name: str
    data: str        # a checksum of the data
    embeddings: str  # of the frozen embeddings file, where a run loaded one
    smoke: bool      # --limit_batches
    epochs: int      # asked for
    settings: str    # as JSON: the same name given by hand with --exp_id to runs of other settings


def group_key(run):
    epochs, names = run.config.get("epochs"), (run.config.get("naming") or {}).get("settings") or []
    settings = {k: run.config.get(k) for k in names if isinstance(k, str)}
    if run.config.get("precision_used"):  # --precision auto resolves per machine, as a resume refuses to mix
        settings["precision"] = run.config["precision_used"]
    return GroupKey(run.name, str(run.config.get("data_sha256", "")), str(run.config.get("embeddings_sha256", "")),
                    bool(run.config.get("limit_batches")), epochs if isinstance(epochs, int) else 0,
                    json.dumps(settings, sort_keys=True, default=str))


def one_per_seed(runs):
    """The runs of one configuration, one per seed: of a run copied into two log folders, or a seed run
    twice, the one that went furthest counts, and the others are named in their problems, never
    averaged as seeds of their own."""
    kept = {}
    for r in sorted(runs, key=lambda r: (not r.summary, -len(r.rows), str(r.path))):
        seed = r.config.get("seed") if type(r.config.get("seed")) is int else r.path  # a damaged one is its own
        if seed in kept:
            r.problems.append(f"seed {seed} again (as in {kept[seed].path}): left out, not a seed of its own")
        else:
            kept[seed] = r
    return sorted(kept.values(), key=lambda r: str(r.path))
