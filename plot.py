"""Learning curves, the report's tables and a generated summary from run directories.

    python plot.py --log_dir logs                      # writes logs/report/
    python plot.py --log_dir logs machine2/logs --out_dir report   # merge runs from several machines

Reads only each run's config.json, metrics.csv, summary.json and grad_norms.csv, so runs copied from other machines
merge; seeds of one configuration (name and settings) on the same data (and frozen embeddings) and epochs are averaged
(mean +- std), each seed once, smoke runs apart, and each log folder's runs are its direct sub-folders. Writes the
figures ({lm,vit}_{epochs,time,grad_norms}.png), summary_{lm,vit}.{md,csv}, summary.md and index.html.
"""
import argparse
import csv
import io
import json
import math
import shutil
import signal
import sys
from pathlib import Path

import numpy as np

from report import DamagedReference, compare, fmt, load_reference, markdown, print_out, reference_config, \
    table_cells, write_file, write_html
from results import find_runs, folders_problem, group_key, one_per_seed


def mean_std(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return (float(np.mean(values)), std) if values else (None, None)


class Group:
    """The runs of one configuration (one per seed) and their statistics."""

    def __init__(self, key, runs, name):
        self.key, self.name, self.runs = key, name, runs  # key: results.group_key
        self.task, metric = runs[0].task, runs[0].metric  # as the task stated it in config.json
        self.m, self.label, self.maximize, self.digits = (metric[k] for k in ("name", "label", "maximize", "digits"))
        c = self.config = runs[0].config
        self.title, self.scoring = c["title"], c.get("scoring")  # scoring: unlike the others' (the LM's carried state)
        # neither is compared: smoke runs (--limit_batches), and runs short of their epochs or of their tests
        # (running, or stopped): a mean over the seeds that have a result would pass for one over them all
        unfinished = any(len(r.rows) < (r.config.get("epochs") or 0) or not r.summary for r in runs)
        self.smoke, self.tag = key.smoke or unfinished, " (smoke)" if key.smoke else " (unfinished)" * unfinished
        self.architecture = (f"ViT {c.get('block')}" if self.task == "vit" else f"Transformer {c.get('block')}"
                             if c.get("model") == "transformer" else str(c.get("model", "?")).upper())

    def devices(self):
        """The devices its runs trained on, as config.json records them ("2 x <GPU>" under torchrun),
        those of its epochs before a resume too."""
        def device(env, world):
            name = str(env.get("device_name") or "-") if isinstance(env, dict) else "-"
            return f"{world} x {name}" if type(world) is int and world > 1 and name != "-" else name
        envs = [(r.config.get("environment"), r.config.get("world_size")) for r in self.runs]
        earlier = [r.config.get("earlier_environments") for r in self.runs]
        envs += [(e, e.get("world_size")) for es in earlier if isinstance(es, list) for e in es if isinstance(e, dict)]
        return sorted({device(*e) for e in envs})

    def best(self, values):
        return (max if self.maximize else min)((v for v in values if v == v), default=None)  # NaN is no result

    def stat(self, per_run):  # mean, std of per_run(run) over the runs where it is defined
        return mean_std([per_run(r) for r in self.runs])

    def best_of(self, column):
        return self.stat(lambda r: self.best([row[column] for row in r.rows]) if r.rows else None)

    def summary_value(self, key):
        number = lambda v: v if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
        return self.stat(lambda r: number(r.summary.get(key)) if r.summary else None)

    def curve(self, column, x="epoch"):  # mean (and std) of a column over seeds, for the epochs every seed reached
        n = min(len(r.rows) for r in self.runs)
        ys = np.array([[row[column] for row in r.rows[:n]] for r in self.runs])
        # a gap in the curve: a NaN loss, an infinite perplexity, or one no log axis spans (past about 1e260)
        ys[~(np.abs(ys) < 1e200)] = np.nan
        xs = np.array([[row[x] for row in r.rows[:n]] for r in self.runs]).mean(0)
        return xs, ys.mean(0), (ys.std(0, ddof=1) if len(self.runs) > 1 else None)

    def norm_epochs(self):  # those every seed logged, or []
        return sorted(set.intersection(*(set(r.norms) for r in self.runs)))

    def norms_at(self, epoch):  # per-layer gradient norms at an epoch: mean and std over seeds (arrays over layers)
        ys = np.array([r.norms[epoch] for r in self.runs])
        return ys.mean(0), (ys.std(0, ddof=1) if len(self.runs) > 1 else None)

    def time_to(self, target):  # mean elapsed seconds until the valid metric first reaches target, or None
        reached = (lambda v: v >= target) if self.maximize else (lambda v: v <= target)
        times = [next((row["elapsed"] for row in r.rows if reached(row[f"valid_{self.m}"])), None) for r in self.runs]
        return None if None in times else float(np.mean(times))


def tables(groups, task, ref=None):
    m, label, digits = groups[0].m, groups[0].label, groups[0].digits
    with_ref = any(reference_config(g, ref) for g in groups) if ref else False
    results_cols = ["architecture", "layers", "optimizer", "experiment", "seeds", "epochs", f"best train {label}",
                    f"best valid {label}", f"test {label} (final model)", f"test {label} (best-valid model)"]
    tested_too = dict(alike_best_test="best-valid model, scored as the reference", ema_best_test="best-valid EMA")
    optional = {k: f"test {label} ({v})" for k, v in tested_too.items()  # a column where a run made that test
                if any(g.summary_value(f"{k}_{m}")[0] is not None for g in groups)}
    results_cols += list(optional.values()) + ["report", "difference"] * with_ref
    cost_cols = ["architecture", "layers", "optimizer", "experiment", "learnable parameters", "peak memory (MB)",
                 "memory (%)", "train s/epoch", "valid s/epoch", "device"]
    results, costs, flat = [], [], []
    for g in groups:
        c = g.config
        head = [g.architecture, c.get("layers"), c.get("optimizer"), g.name + g.tag]
        stats = dict(best_train=g.best_of(f"train_{m}"), best_valid=g.best_of(f"valid_{m}"),
                     **{k: g.summary_value(f"{k}_{m}") for k in ("test", "best_test", *tested_too)},
                     params=g.summary_value("params_learnable"),
                     memory=g.stat(lambda r: max(row["peak_mem_mb"] for row in r.rows) if r.rows else None),
                     mem_pct=g.stat(lambda r: max(row["mem_pct"] for row in r.rows) if r.rows else None),
                     train_s=g.stat(lambda r: np.mean([row["train_time"] for row in r.rows]) if r.rows else None),
                     valid_s=g.stat(lambda r: np.mean([row["valid_time"] for row in r.rows]) if r.rows else None))
        epochs = sorted({len(r.rows) for r in g.runs})
        results.append(head + [len(g.runs), "/".join(map(str, epochs))] +
                       [fmt(*stats[k], digits) for k in ("best_train", "best_valid", "test", "best_test", *optional)]
                       + (table_cells(g, ref) if with_ref else []))
        costs.append(head + [fmt(stats["params"][0], None, 0), fmt(*stats["memory"], digits=0),
                             fmt(*stats["mem_pct"], digits=1), fmt(*stats["train_s"], digits=2),
                             fmt(*stats["valid_s"], digits=2), " / ".join(g.devices())])
        flat.append(dict(zip(results_cols, head), seeds=len(g.runs), epochs=max(epochs),  # the head's four names
                         **{f"{k}_{s}": v for k, stat in stats.items() for s, v in zip(("mean", "std"), stat)}))
    return (results_cols, results), (cost_cols, costs), flat


def pyplot():  # headless, imported only when a figure is drawn
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(groups, task, out_dir, ref=None, per_panel=8):
    """The metric and the loss over epochs and over time, a row of panels (sharing their y axes) per
    per_panel configurations at most, so that every curve stays readable."""
    plt, m, label, title, written = pyplot(), groups[0].m, groups[0].label, groups[0].title, []
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator
    size = math.ceil(len(groups) / math.ceil(len(groups) / per_panel))  # balanced: 13 -> 7 + 6
    chunks = [groups[i:i + size] for i in range(0, len(groups), size)]
    n = max(len(r.rows) for g in groups for r in g.runs)
    keys = [(Line2D([], [], color="k", ls="--", marker="v"), "train"), (Line2D([], [], color="k", marker="o"), "valid")]
    if ref and any((reference_config(g, ref) or {}).get(f"best_valid_{m}") for g in groups):
        keys.append((Line2D([], [], color="grey", ls=":", lw=1.5),
                     "the report's best valid (a level: its whole run's)"))
    for x, xlabel in (("epoch", "epoch"), ("elapsed", "training + validation time (s)")):
        fig, rows = plt.subplots(len(chunks), 2, figsize=(14, 5.5 * len(chunks)), squeeze=False, sharey="col")
        for axes, chunk in zip(rows, chunks):
            for i, g in enumerate(chunk):
                colour = f"C{i % 10}"  # tab10: at most per_panel configurations in a row
                for ax, kind in zip(axes, (m, "loss")):
                    for split, style, marker in (("train", "--", "v"), ("valid", "-", "o")):
                        xs, mean, std = g.curve(f"{split}_{kind}", x)  # later runs thinner, on top: ties stay visible
                        ax.plot(xs, mean, style, color=colour, marker=marker if len(xs) < 3 else None, ms=5,
                                lw=2.4 - 1.4 * i / len(chunk), label=g.name if split == "valid" else None)
                        if std is not None:
                            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.15)
                reported = (reference_config(g, ref) or {}).get(f"best_valid_{m}") if ref else None
                if reported is not None:  # a level, not a point of our time: the report's run was not ours
                    axes[0].axhline(reported, color=colour, ls=":", lw=1.5)
            for ax, kind in zip(axes, (label + " (fraction, 0 to 1)" * (m == "acc"), "loss")):
                ax.set_xlabel(xlabel)
                ax.set_ylabel(kind)
                ax.grid(alpha=0.3)
                if x == "epoch":  # whole epochs, with room around a single one
                    ax.set_xticks(range(1, n + 1)) if n <= 12 else ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                    ax.set_xlim(0.5, n + 0.5)
            if m == "ppl" and any(np.nanmax(line.get_ydata(), initial=0) > 0 for line in axes[0].get_lines()):
                axes[0].set_yscale("log")  # not when every value is a gap
            handles, labels = axes[0].get_legend_handles_labels()
            axes[1].legend(handles + [k for k, _ in keys], labels + [t for _, t in keys], loc="center left",
                           bbox_to_anchor=(1.02, 0.5), fontsize=8)
        written.append(finish(fig, f"{title}: {label} and loss over {'epochs' if x == 'epoch' else 'wall-clock time'}",
                              out_dir / f"{task}_{'epochs' if x == 'epoch' else 'time'}.png"))
    return written


def finish(fig, title, path):  # title, save, close
    fig.suptitle(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=110, bbox_inches="tight", format="png")
    pyplot().close(fig)
    write_file(path, png.getvalue())
    return path


def pairs_by(groups, key, *more):
    """Groups that differ only in config[key] (and the keys in more): a {value (or values): group}
    for each value of the other settings (those config.json names), data and epochs."""
    keys, out = (key, *more), {}
    for g in groups:
        names = (g.config.get("naming") or {}).get("settings") or []
        settings = dict({k: g.config.get(k) for k in names if k not in keys},
                        group=(g.key.data, g.key.embeddings, g.key.smoke, g.key.epochs))
        value = g.config.get(key) if not more else tuple(g.config.get(k) for k in keys)
        out.setdefault(json.dumps(settings, sort_keys=True, default=str), {})[value] = g
    return [v for v in out.values() if len(v) > 1]


def plot_grad_norms(groups, task, out_dir):
    """Per-layer gradient norms (layer on x, log y), one line per configuration (mean over seeds,
    band: +- std): at the first step (epoch 0), over the first epoch, and over the last epoch."""
    groups = [g for g in groups if g.norm_epochs()]
    if not groups:
        return []
    plt, last = pyplot(), max(max(g.norm_epochs()) for g in groups)
    panels = [(e, f"mean over epoch {e}" if e else "first step (initialisation)") for e in sorted({0, 1, last})]
    colours = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (epoch, title) in zip(axes[0], panels):
        for i, g in enumerate(groups):
            if epoch not in g.norm_epochs():
                continue
            mean, std = g.norms_at(epoch)
            layers = np.arange(1, len(mean) + 1)
            # styles differ too: configurations with equal norms (warmup does not change the first step) overlap
            ax.plot(layers, mean, ("-o", "--s", ":^", "-.d")[i % 4], ms=4, color=colours(i % colours.N), label=g.name)
            if std is not None:
                ax.fill_between(layers, np.maximum(mean - std, 1e-12), mean + std, color=colours(i % colours.N),
                                alpha=0.15)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("layer (1 = next to the input)")
        ax.set_ylabel("gradient L2 norm")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(*axes[0][0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.02, 0.5),
                       fontsize=8)
    title = f"{groups[0].title}: per-layer gradient norms" + ("" if last > 1 else " (one epoch: no last-epoch panel)")
    return [finish(fig, title, out_dir / f"{task}_grad_norms.png")]


def norm_findings(groups, task):
    """Pre- vs post-norm, with and without warmup (Xiong et al. 2020): accuracy and the gradient
    norms' shape at initialisation, mean +- std over seeds, one table per setting of the rest."""
    lines, m, label = [], groups[0].m, groups[0].label  # never no groups: findings() has returned before
    for table in pairs_by(groups, "block", "warmup_epochs"):
        if {b for b, _ in table} != {"prenorm", "postnorm"} or len({w or 0 for _, w in table}) < 2:
            continue  # the plain pre/post comparison is a finding of its own
        names = ", ".join(sorted(g.name for g in table.values()))
        lines += ["", f"Pre- vs post-norm, with and without warmup ({names}):",
                  "", f"| block | warmup epochs | seeds | best valid {label} | test {label} (best-valid model) | "
                  "grad norm, last / first layer, first step | same, epoch 1 mean |", "|---|---|---|---|---|---|---|"]
        for (block, warmup), g in sorted(table.items(), key=lambda kv: (kv[0][0] != "prenorm", kv[0][1] or 0)):
            ratio = {e: g.stat(lambda r, e=e: r.norms[e][-1] / r.norms[e][0] if e in r.norms and r.norms[e][0] > 0
                               else None) for e in (0, 1)}
            lines.append(f"| {block} | {warmup or 0:g} | {len(g.runs)} | {fmt(*g.best_of(f'valid_{m}'))} | "
                         f"{fmt(*g.summary_value(f'best_test_{m}'))} | {fmt(*ratio[0], digits=2)} | "
                         f"{fmt(*ratio[1], digits=2)} |")
        lines += ["", "Xiong et al. (2020) predict that post-norm's gradients at initialisation grow towards the "
                     "output (a last/first ratio above 1) so that it needs warmup, while pre-norm's do not; "
                  f"the figure {task}_grad_norms.png shows every layer."]
    return lines


def findings(groups, task):
    """The report's questions, answered from the numbers of full runs: smoke runs are named, not used."""
    m, label, maximize, title, digits = (getattr(groups[0], k) for k in ("m", "label", "maximize", "title", "digits"))
    show = lambda *stat: fmt(*stat, digits=digits)  # noqa: E731 - the metric to its task's digits
    smoke, groups = [g for g in groups if g.smoke], [g for g in groups if not g.smoke]
    lines = [f"## {title}", ""]
    for tag, kind in ((" (smoke)", "Smoke runs (`--limit_batches`)"),
                      (" (unfinished)", "Short of their epochs or tests (still running, or stopped)")):
        names = [g.name for g in smoke if g.tag == tag]
        lines += [f"- {kind}, tabulated but not compared: {', '.join(names)}."] * bool(names)
    speed = {g.name: g.stat(lambda r: np.mean([row["train_time"] for row in r.rows]) if r.rows else None)[0]
             for g in groups}
    timed = [g for g in groups if all(r.rows for r in g.runs) and speed[g.name] is not None
             and g.best_of(f"valid_{m}")[0] is not None]
    if not timed:
        done = "full run of this study has finished" if smoke else "run of this study has finished an epoch"
        return lines + [""] * (lines[-1] != "") + [f"No {done} yet: nothing to compare.", ""]
    fastest = min(timed, key=lambda g: speed[g.name])
    devices = sorted({d for g in timed for d in g.devices() if d != "-"})
    several = f"; the runs trained on {len(devices)} devices ({', '.join(devices)}): compare times within one"
    lines.append(f"- Fastest per epoch: **{fastest.name}**, {speed[fastest.name]:.2f} s of training per epoch "
                 f"(slowest: {max(speed[g.name] for g in timed):.2f} s){several * (len(devices) > 1)}.")
    alike = [g for g in timed if not g.scoring] or timed  # a valid metric scored otherwise is no rival
    among = f" among those scored as the reference ({', '.join(g.name for g in timed if g not in alike)}: below)"
    among *= len(alike) < len(timed)
    target = float(np.median([g.best_of(f"valid_{m}")[0] for g in alike]))
    reached = {g.name: t for g in alike if (t := g.time_to(target)) is not None}
    if reached:
        name = min(reached, key=reached.get)
        lines.append(f"- Fastest to a valid {label} of {show(target)} (the median of the configurations' best): "
                     f"**{name}** in {reached[name]:.1f} s; {len(reached)} of {len(alike)} configurations{among} "
                     f"reach it.")
    if selectable := [g for g in alike if g.summary_value(f"best_test_{m}")[0] is not None]:
        pick = (max if maximize else min)(selectable, key=lambda g: g.best_of(f"valid_{m}")[0])
        lines.append(f"- Best generalisation, selected on validation{among}: **{pick.name}**, best valid {label} "
                     f"{show(*pick.best_of(f'valid_{m}'))}, test {label} of that model "
                     f"{show(*pick.summary_value(f'best_test_{m}'))} "
                     f"(final model: {show(*pick.summary_value(f'test_{m}'))}).")
    for pair in pairs_by(groups, "block"):
        if {"prenorm", "postnorm"} <= set(pair):
            pre, post = pair["prenorm"], pair["postnorm"]
            pv, post_v = pre.best_of(f"valid_{m}"), post.best_of(f"valid_{m}")
            pt, post_t = pre.summary_value(f"best_test_{m}"), post.summary_value(f"best_test_{m}")
            gap = None if pt[0] is None or post_t[0] is None else pt[0] - post_t[0]
            seeds = (f"{len(pre.runs)} seed{'s' * (len(pre.runs) > 1)} each" if len(pre.runs) == len(post.runs)
                     else f"{len(pre.runs)} and {len(post.runs)} seeds")
            lines.append(f"- Pre- vs post-norm ({pre.name} / {post.name}, {seeds}): best valid {label} "
                         f"{show(*pv)} vs {show(*post_v)}; test {show(*pt)} vs {show(*post_t)}"
                         + (f"; gap (pre - post) {gap:+.{digits}f}." if gap is not None else "."))
    for g in groups:
        as_reference = show(*g.summary_value(f"alike_best_test_{m}"))  # a run scored otherwise is tested so too
        lines += [f"- **{g.name}** is scored {g.scoring}: test {label} {as_reference}."] * bool(g.scoring)
        if g.summary_value(f"ema_best_test_{m}")[0] is not None:
            lines.append(f"- Weight average (EMA) of **{g.name}**: best valid {label} "
                         f"{show(*g.summary_value(f'ema_best_valid_{m}'))} (the model itself: "
                         f"{show(*g.best_of(f'valid_{m}'))}), test {label} of the best-valid EMA "
                         f"{show(*g.summary_value(f'ema_best_test_{m}'))}.")
    lines += norm_findings(groups, task)
    return lines + [""]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as the trainers' flags (config.Parser, which this module cannot import)
        given = message.removeprefix("unrecognized arguments: ")  # `plot.py logs`: a folder without its flag
        hint = f"; did you mean --log_dir {given}?" if given != message and not given.startswith("-") else ""
        self.exit(2, f"error: {message}{hint} (see --help)\n")

    def print_help(self, file=None):  # as main's lines: a full stdout is one line (argparse would drop the error)
        print_out(self.format_help())


def main(argv=None):
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log_dir", nargs="+", action="extend", help="folders holding run directories (default: logs)")
    parser.add_argument("--out_dir", default=None, help="where to write (default: <first log_dir>/report)")
    args = parser.parse_args(argv)
    getattr(sys.stdout, "reconfigure", lambda **kw: None)(errors="backslashreplace")  # as utils.cli: see there
    args.log_dir = args.log_dir or ["logs"]  # not a default: --log_dir would extend it
    out_dir = Path(args.out_dir or Path(args.log_dir[0]) / "report")
    try:
        problem = folders_problem(args.log_dir, out_dir)
        runs = [] if problem else find_runs(args.log_dir, out_dir)
    except OSError as e:  # a path the system refuses (a name too long, a loop of links)
        problem = f"{e.strerror or e}" + f": {e.filename}" * bool(e.filename)
    if problem or not runs:
        print(f"error: {problem or 'no run directories (with config.json) under ' + ', '.join(args.log_dir)}",
              file=sys.stderr)
        return 2
    try:
        ref = load_reference()
        out_dir.mkdir(parents=True, exist_ok=True)
        code, said = write_report(runs, args.log_dir, out_dir, ref)
    except DamagedReference as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:  # a folder that cannot be written, a full disk: what was there stays whole
        free = shutil.disk_usage(next(p for p in [out_dir, *out_dir.absolute().parents] if p.exists())).free
        print(f"error: cannot write the report in {out_dir}: {e.strerror or e} ({free / 2 ** 20:,.1f} MB free "
              f"there); choose another folder with --out_dir", file=sys.stderr)
    else:
        print_out("".join(f"{line}\n" for line in said), f" (the report is in {out_dir})")  # once the report is whole
        return code
    return 2


def write_report(runs, log_dirs, out_dir, ref):
    """Every study's tables, figures and findings, summary.md and index.html; (the exit code, the lines to print)."""
    opening, body, figures, pages, every, said = [], [], [], [], [], []
    for task in sorted({r.task for r in runs if r.rows}):
        mine, by_key = [r for r in runs if r.task == task and r.rows], {}
        metric = max((r.metric for r in mine), key=lambda m: sum(r.metric == m for r in mine))  # the most runs'
        for r in mine:
            if r.metric != metric:  # a damaged config.json: its rows have other columns
                r.problems.append(f"its metric {r.metric['name']} is not that of the other {task} runs: not plotted")
            else:
                by_key.setdefault(group_key(r), []).append(r)
        if by_key:
            groups = [Group(key, one_per_seed(rs), label(key, by_key)) for key, rs in sorted(by_key.items())]
            every += groups
            opening += compare(groups, task, ref)
            lines, figs, page = report_task(task, groups, out_dir, ref)
            body, figures, pages = body + lines, figures + figs, pages + [page]
            n, k = sum(len(g.runs) for g in groups), len(groups)
            said.append(f"{task}: {k} configuration{'s' * (k > 1)}, {n} run{'s' * (n > 1)} -> {out_dir}")
    problems = [f"{r.path}: " + ("; ".join(r.problems) or "no finished epoch (failed or still starting)")
                for r in runs if not r.rows or r.problems]
    print("".join(f"warning: {p}\n" for p in problems), end="", file=sys.stderr)
    banner = ""
    if all(g.smoke for g in every):  # nothing compared: a check of the pipeline, or a study on its way
        banner = ("Smoke runs only (--limit_batches): a check of the pipeline, not results; nothing here measures the "
                  "report's configurations." if every and all(g.key.smoke for g in every) else
                  "No configuration has run all its epochs yet: the curves so far; nothing is compared.")
    made = f"Generated by plot.py from {len(runs)} run{'s' * (len(runs) > 1)} in {', '.join(log_dirs)}."
    summary = (["# Summary", "", made, ""]
               + [f"**{banner}**", ""] * bool(banner) + opening + body
               + (["## Missing or damaged", ""] + [f"- {p}" for p in problems] + [""]) * bool(problems))
    write_file(out_dir / "summary.md", "\n".join(summary))
    write_html(out_dir, ["\n".join(summary)] + pages, figures, banner)
    return (0 if any(r.rows for r in runs) else 1), said


def label(key, keys):
    """A group's name: its configuration's, told apart from others of that name (smoke runs aside) by
    its data's or frozen embeddings' checksum, its epochs or the settings where they differ."""
    same = [k for k in keys if k.name == key.name and k.smoke == key.smoke]
    mine, others = json.loads(key.settings), [json.loads(k.settings) for k in same]
    parts = ([f"data {key.data[:8] or 'unrecorded'}"] * (len({k.data for k in same}) > 1)
             + [f"embeddings {key.embeddings[:8] or 'learned'}"] * (len({k.embeddings for k in same}) > 1)
             + [f"{key.epochs} epoch{'s' * (key.epochs != 1)}"] * (len({k.epochs for k in same}) > 1)
             + [f"{k} {v}" for k, v in mine.items() if any(o.get(k) != v for o in others)])
    return key.name + (f" ({', '.join(parts)})" if parts else "")


def report_task(task, groups, out_dir, ref):
    """One study's tables (markdown and CSV), figures and findings: (summary lines, figures, tables)."""
    (rc, results), (cc, costs), flat = tables(groups, task, ref)
    note = f"\n{ref.get('note', '')}\n" if ref and "report" in rc and task == "vit" else ""
    note += "".join(f"\n{g.name} is scored {g.scoring}.\n" for g in groups if g.scoring)  # unlike the rows around it
    page = f"# {groups[0].title}\n\n## Results\n\n{markdown(rc, results)}{note}\n## Cost\n\n{markdown(cc, costs)}"
    write_file(out_dir / f"summary_{task}.md", page)
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    write_file(out_dir / f"summary_{task}.csv", rows.getvalue())
    figures = plot_curves(groups, task, out_dir, ref) + plot_grad_norms(groups, task, out_dir)
    lines = findings(groups, task) + [f"Tables: summary_{task}.md, summary_{task}.csv. Figures: "
                                      + ", ".join(p.name for p in figures) + ".", ""]
    return lines, figures, page


def stop(signum, frame):
    """Ctrl-C or SIGTERM: one line, not a traceback; each file of the report is written whole or not at all."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    print(f"{'interrupted' if signum == signal.SIGINT else 'terminated'}: the report is incomplete; run plot.py "
          f"again", file=sys.stderr)
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    sys.exit(main())
