"""Learning curves, the report's tables and a generated summary from run directories.

    python plot.py --log_dir logs                      # writes logs/report/
    python plot.py --log_dir logs machine2/logs --out_dir report   # merge runs from several machines

Reads only each run's config.json, metrics.csv and summary.json, so run folders copied from other
machines merge. Runs with several seeds are one configuration (mean +- std). Unfinished runs are
plotted as far as they got; runs without a single epoch are listed, not plotted.
Writes PNG figures, summary_{lm,vit}.{md,csv} and summary.md into the output folder.
"""
import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TASKS = {"lm": ("ppl", "perplexity", False, "Language model (Wikitext-2)"),
         "vit": ("acc", "accuracy", True, "Vision Transformer (CIFAR-10)")}
# Config keys that say nothing about what is being compared (seeds are averaged over).
NOT_A_SETTING = {"seed", "exp_id", "log_dir", "data_folder", "device", "no_progress", "resume", "overwrite",
                 "environment", "data_source", "classes", "epochs"}


@dataclass
class Run:
    path: Path
    config: dict
    rows: list
    summary: dict = None
    task: str = ""
    name: str = ""
    problems: list = field(default_factory=list)


def read_run(path):
    """One run directory -> Run, or None if it is not a run. Damage is recorded, never raised."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    task = config.get("task") or ("lm" if "model" in config else "vit")
    exp_id = config.get("exp_id") or path.name
    name = re.sub(rf"_s{config.get('seed')}(?=_|$)", "", exp_id)  # the configuration: seeds merge
    run = Run(path, config, [], task=task, name=name)
    try:
        with open(path / "metrics.csv") as f:
            for row in csv.DictReader(f):
                run.rows.append({k: float(v) for k, v in row.items()})
    except (OSError, ValueError) as e:
        run.problems.append(f"metrics.csv unreadable ({e})")
    try:
        run.summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        run.problems.append(f"summary.json unreadable ({e})")
    return run


def find_runs(log_dirs, out_dir):
    """Every run under log_dirs, except anything inside the report folder out_dir."""
    runs, out_dir = [], out_dir.resolve()
    for log_dir in log_dirs:
        for config in sorted(Path(log_dir).rglob("config.json")):
            if out_dir in config.resolve().parents:
                continue
            run = read_run(config.parent)
            if run is not None:
                runs.append(run)
    return runs


def mean_std(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def fmt(mean, std=None, digits=4):
    if mean is None:
        return "-"
    text = f"{mean:,.{digits}f}" if abs(mean) < 1e5 else f"{mean:,.0f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


class Group:
    """The runs of one configuration (one per seed) and their statistics."""

    def __init__(self, name, runs):
        self.name, self.runs = name, runs
        self.task = runs[0].task
        self.m, _, self.maximize, _ = TASKS[self.task]
        c = runs[0].config
        self.config = c
        if self.task == "vit":
            self.architecture = f"ViT {c.get('block')}"
        elif c.get("model") == "transformer":
            self.architecture = f"Transformer {c.get('block')}"
        else:
            self.architecture = c.get("model", "?").upper()
        self.finished = [r for r in runs if r.summary]

    def best(self, values):
        return (max if self.maximize else min)(values)

    def stat(self, per_run):
        """mean, std of per_run(run) over the runs where it is defined."""
        return mean_std([per_run(r) for r in self.runs])

    def best_of(self, column):
        return self.stat(lambda r: self.best([row[column] for row in r.rows]) if r.rows else None)

    def summary_value(self, key):
        return self.stat(lambda r: r.summary.get(key) if r.summary else None)

    def curve(self, column, x="epoch"):
        """Mean (and std) of a column over seeds, for the epochs that every seed reached."""
        n = min(len(r.rows) for r in self.runs)
        ys = np.array([[row[column] for row in r.rows[:n]] for r in self.runs])
        xs = np.array([[row[x] for row in r.rows[:n]] for r in self.runs]).mean(0)
        return xs, ys.mean(0), (ys.std(0, ddof=1) if len(self.runs) > 1 else None)

    def time_to(self, target):
        """Mean elapsed seconds until the valid metric first reaches target (None if it never does)."""
        times = []
        for r in self.runs:
            hit = [row["elapsed"] for row in r.rows
                   if (row[f"valid_{self.m}"] >= target if self.maximize else row[f"valid_{self.m}"] <= target)]
            times.append(hit[0] if hit else None)
        return None if None in times else float(np.mean(times))


def tables(groups, task):
    m, label, maximize, _ = TASKS[task]
    results_cols = ["architecture", "layers", "optimizer", "experiment", "seeds", "epochs", f"best train {label}",
                    f"best valid {label}", f"test {label} (final model)", f"test {label} (best-valid model)"]
    cost_cols = ["architecture", "layers", "optimizer", "experiment", "learnable parameters", "peak memory (MB)",
                 "memory (%)", "train s/epoch", "valid s/epoch"]
    results, costs, flat = [], [], []
    for g in groups:
        c = g.config
        head = [g.architecture, c.get("layers"), c.get("optimizer"), g.name]
        stats = dict(best_train=g.best_of(f"train_{m}"), best_valid=g.best_of(f"valid_{m}"),
                     test=g.summary_value(f"test_{m}"), best_test=g.summary_value(f"best_test_{m}"),
                     params=g.summary_value("params_learnable"),
                     memory=g.stat(lambda r: max(row["peak_mem_mb"] for row in r.rows) if r.rows else None),
                     mem_pct=g.stat(lambda r: max(row["mem_pct"] for row in r.rows) if r.rows else None),
                     train_s=g.stat(lambda r: np.mean([row["train_time"] for row in r.rows]) if r.rows else None),
                     valid_s=g.stat(lambda r: np.mean([row["valid_time"] for row in r.rows]) if r.rows else None))
        epochs = sorted({len(r.rows) for r in g.runs})
        results.append(head + [len(g.runs), "/".join(map(str, epochs))] +
                       [fmt(*stats[k]) for k in ("best_train", "best_valid", "test", "best_test")])
        costs.append(head + [fmt(stats["params"][0], None, 0), fmt(*stats["memory"], digits=0),
                             fmt(*stats["mem_pct"], digits=1), fmt(*stats["train_s"], digits=2),
                             fmt(*stats["valid_s"], digits=2)])
        flat.append(dict(zip(["architecture", "layers", "optimizer", "experiment"], head), seeds=len(g.runs),
                         epochs=max(epochs), **{f"{k}_{s}": v for k, (mean, std) in stats.items()
                                                for s, v in (("mean", mean), ("std", std))}))
    return (results_cols, results), (cost_cols, costs), flat


def markdown(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_curves(groups, task, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    m, label, _, title = TASKS[task]
    colours = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    written = []
    for x, xlabel in (("epoch", "epoch"), ("elapsed", "training + validation time (s)")):
        fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
        for i, g in enumerate(groups):
            colour = colours(i % colours.N)
            for ax, kind in zip(axes, (m, "loss")):
                for split, style in (("train", "--"), ("valid", "-")):
                    xs, mean, std = g.curve(f"{split}_{kind}", x)
                    ax.plot(xs, mean, style, color=colour, marker="." if len(xs) < 3 else None,
                            label=g.name if split == "valid" else None)
                    if std is not None:
                        ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.15)
        for ax, kind in zip(axes, (label, "loss")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(kind)
            ax.grid(alpha=0.3)
        if task == "lm":
            axes[0].set_yscale("log")
        if x == "epoch":
            for ax in axes:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = axes[0].get_legend_handles_labels()
        handles += [Line2D([], [], color="k", ls="--"), Line2D([], [], color="k", ls="-")]
        labels += ["train", "valid"]
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        fig.suptitle(f"{title}: {label} and loss over {'epochs' if x == 'epoch' else 'wall-clock time'}")
        fig.tight_layout()
        path = out_dir / f"{task}_{'epochs' if x == 'epoch' else 'time'}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def pairs_by(groups, key):
    """Groups that differ only in config[key], as {other settings: {value: group}}."""
    out = {}
    for g in groups:
        settings = {k: v for k, v in g.config.items() if k not in NOT_A_SETTING and k != key}
        out.setdefault(json.dumps(settings, sort_keys=True, default=str), {})[g.config.get(key)] = g
    return [v for v in out.values() if len(v) > 1]


def findings(groups, task):
    """The report's questions, answered from the numbers."""
    m, label, maximize, title = TASKS[task]
    lines = [f"## {title}", ""]
    timed = [g for g in groups if all(r.rows for r in g.runs)]
    if not timed:
        return lines + ["No run of this study has finished an epoch yet.", ""]
    speed = {g.name: g.stat(lambda r: np.mean([row["train_time"] for row in r.rows]))[0] for g in timed}
    fastest = min(timed, key=lambda g: speed[g.name])
    lines.append(f"- Fastest per epoch: **{fastest.name}**, {speed[fastest.name]:.2f} s of training per epoch "
                 f"(slowest: {max(speed.values()):.2f} s).")
    bests = [g.best_of(f"valid_{m}")[0] for g in timed]
    target = float(np.median(bests))
    reach = {g.name: g.time_to(target) for g in timed}
    reached = {k: v for k, v in reach.items() if v is not None}
    if reached:
        name = min(reached, key=reached.get)
        lines.append(f"- Fastest to a valid {label} of {fmt(target)} (the median of the configurations' best): "
                     f"**{name}** in {reached[name]:.1f} s; {len(reached)} of {len(timed)} configurations reach it.")
    selectable = [g for g in timed if g.summary_value(f"best_test_{m}")[0] is not None]
    if selectable:
        pick = (max if maximize else min)(selectable, key=lambda g: g.best_of(f"valid_{m}")[0])
        lines.append(f"- Best generalisation, selected on validation: **{pick.name}**, best valid {label} "
                     f"{fmt(*pick.best_of(f'valid_{m}'))}, test {label} of that model "
                     f"{fmt(*pick.summary_value(f'best_test_{m}'))} "
                     f"(final model: {fmt(*pick.summary_value(f'test_{m}'))}).")
    for pair in pairs_by(groups, "block"):
        if {"prenorm", "postnorm"} <= set(pair):
            pre, post = pair["prenorm"], pair["postnorm"]
            pv, post_v = pre.best_of(f"valid_{m}"), post.best_of(f"valid_{m}")
            pt, post_t = pre.summary_value(f"best_test_{m}"), post.summary_value(f"best_test_{m}")
            gap = None if pt[0] is None or post_t[0] is None else pt[0] - post_t[0]
            seeds = f"{len(pre.runs)} and {len(post.runs)} seeds"
            lines.append(f"- Pre- vs post-norm ({pre.name} / {post.name}, {seeds}): best valid {label} "
                         f"{fmt(*pv)} vs {fmt(*post_v)}; test {fmt(*pt)} vs {fmt(*post_t)}"
                         + (f"; gap (pre - post) {gap:+.4f}." if gap is not None else "."))
    unfinished = [r for g in groups for r in g.runs if not r.summary]
    if unfinished:
        lines.append("- Unfinished (plotted as far as they got, no test result): "
                     + ", ".join(f"{r.path.name} ({len(r.rows)} epochs)" for r in unfinished) + ".")
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log_dir", nargs="+", default=["logs"], help="folders holding run directories")
    parser.add_argument("--out_dir", default=None, help="where to write (default: <first log_dir>/report)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir or Path(args.log_dir[0]) / "report")
    runs = find_runs(args.log_dir, out_dir)
    if not runs:
        print(f"error: no run directories (with config.json) under {', '.join(args.log_dir)}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    empty = [r for r in runs if not r.rows]
    summary = ["# Summary", "", f"Generated by plot.py from {len(runs)} runs in {', '.join(args.log_dir)}.", ""]
    for task in TASKS:
        by_name = {}
        for r in runs:
            if r.task == task and r.rows:
                by_name.setdefault(r.name, []).append(r)
        groups = [Group(name, rs) for name, rs in by_name.items()]
        if not groups:
            continue
        (rc, results), (cc, costs), flat = tables(groups, task)
        title = TASKS[task][3]
        (out_dir / f"summary_{task}.md").write_text(
            f"# {title}\n\n## Results\n\n{markdown(rc, results)}\n## Cost\n\n{markdown(cc, costs)}")
        with open(out_dir / f"summary_{task}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
        figures = plot_curves(groups, task, out_dir)
        summary += findings(groups, task)
        summary += [f"Tables: summary_{task}.md, summary_{task}.csv. Figures: "
                    + ", ".join(p.name for p in figures) + ".", ""]
        print(f"{task}: {len(groups)} configurations, {sum(len(g.runs) for g in groups)} runs -> {out_dir}")
    problems = [f"{r.path}: " + ("; ".join(r.problems) or "no finished epoch (failed or still starting)")
                for r in runs if not r.rows or r.problems]
    if problems:
        summary += ["## Missing or damaged", ""] + [f"- {p}" for p in problems] + [""]
        for p in problems:
            print(f"warning: {p}", file=sys.stderr)
    (out_dir / "summary.md").write_text("\n".join(summary))
    return 0 if len(empty) < len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
