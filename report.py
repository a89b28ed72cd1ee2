"""The reference report's numbers beside ours, and the whole report as one HTML page. plot.py calls
these; the report's numbers are data, in reference.json.

    python plot.py --log_dir logs      # summary.md opens with what was reproduced; report/index.html

A configuration of ours measures one of the report's when it has the same identity (layers, block,
optimizer; the LM's core), changed no other setting from the defaults (which are the report's), ran
the report's epochs to the end on data of the report's: for the ViT, CIFAR-10's 45,000 / 5,000 /
10,000 images; for the LM, GPT-1's frozen embeddings on the report's token files (their checksum
in reference.json).
"""
import base64
import html
import json
import math
import os
import re
import signal
import sys
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference.json"
IDENTITY = {"vit": ("layers", "block", "optimizer"), "lm": ("model", "layers", "optimizer")}
ALLOWED = {"vit": set(IDENTITY["vit"]), "lm": set(IDENTITY["lm"]) | {"embeddings"}}


class DamagedReference(ValueError):
    """reference.json is there but not what plot.py can compare with."""


def load_reference(path=REFERENCE):
    """The report's numbers, checked: None (and a warning) when the file is missing, DamagedReference
    saying what is wrong when it is damaged."""
    try:
        ref = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        print(f"warning: {path} is missing: the report is drawn without the reference report's numbers",
              file=sys.stderr)
        return None
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise DamagedReference(f"{path} is not readable JSON ({str(e)[:100]})") from None
    problem = reference_problem(ref)
    if problem:
        raise DamagedReference(f"{path}: {problem}")
    return ref


def reference_problem(ref):
    """What is wrong with reference.json's content, or ''."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    if not isinstance(ref, dict):
        return f"the file holds {type(ref).__name__}, not an object"
    tolerance = ref.get("tolerance")
    if not isinstance(tolerance, dict) or not all(number(tolerance.get(k)) for k in ("acc", "ppl_relative")):
        return "its tolerance must give the numbers acc and ppl_relative"
    for task in IDENTITY:
        part = ref.get(task)
        settings, configs = (part.get("settings"), part.get("configs")) if isinstance(part, dict) else (None, None)
        if not isinstance(settings, dict) or not number(settings.get("epochs")) or not isinstance(configs, list):
            return f"{task!r} must hold settings with a number of epochs, and a list of configs"
        sizes = settings.get("data_sizes", {})
        if not isinstance(sizes, dict) or not all(number(n) for n in sizes.values()) \
                or not isinstance(settings.get("data_sha256", ""), str):
            return f"{task}'s settings: data_sizes must be an object of numbers, data_sha256 text"
        for i, rc in enumerate(part["configs"], 1):
            if not isinstance(rc, dict) or any(k not in rc for k in ("config", *IDENTITY[task])):
                return f"{task} config {i} must be an object with config, {', '.join(IDENTITY[task])}"
            bad = [k for k, v in rc.items() if k not in IDENTITY[task] and not (number(v) and v > 0)]
            if bad:
                return f"{task} config {i}: {bad[0]} is {rc[bad[0]]!r}, not a positive number"
    return ""


def print_out(text, where=""):
    """text on the standard output, flushed; a closed pipe (| head) a quiet end, exit 141, as SIGPIPE's in C; a
    full disk one line, exit 2; what the stream holds is dropped, not tried again at the exit."""
    try:
        print(text, end="", flush=True)
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(e, BrokenPipeError):
            print(f"error: cannot write the standard output: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(128 + signal.SIGPIPE if isinstance(e, BrokenPipeError) else 2)


def write_file(path, content):
    """str (as UTF-8, a path of other bytes escaped) or bytes to path through a temporary file: a full disk
    leaves no half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(content.encode(errors="backslashreplace") if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def reference_config(group, ref):
    """The report's configuration with this group's identity, or None."""
    configs = (ref or {}).get(group.task, {}).get("configs", [])
    return next((rc for rc in configs if all(group.config.get(k) == rc.get(k) for k in IDENTITY[group.task])), None)


def not_comparable(group, ref):
    """Why this group's runs do not measure the report's configuration ('' when they do)."""
    task, reasons, model = group.task, set(), (reference_config(group, ref) or {}).get("params")
    want = ref[task]["settings"]["epochs"]
    for r in group.runs:
        params = (r.summary or {}).get("params_total")  # the same settings on other images: CIFAR-100, 64 px
        if model and type(params) is int and params != model:
            reasons.add(f"a model of {params:,} parameters, not the report's {model:,} (other classes or image size)")
        naming = r.config.get("naming") or {}  # a setting that only logs (--grad_norms) changes no number
        changed, logs = naming.get("changed"), naming.get("only_logs")
        other = sorted(set(changed or {}) - ALLOWED[task] - set(logs if isinstance(logs, list) else []))
        if changed is None or other:
            reasons.add("other settings" + (f" ({', '.join(other)})" if other else ""))
        if task == "lm" and r.config.get("embeddings") != "gpt1":  # fetched and verified by gpt1.py
            reasons.add("not GPT-1's frozen embeddings (--embeddings gpt1)")
        tokens = ref[task]["settings"].get("data_sha256")  # the report's token files, as data.py sums them
        if task == "lm" and not str(r.config.get("data_source", "token files")).startswith("token files"):
            reasons.add("word-level text, not the report's token files")
        elif task == "lm" and tokens and r.config.get("data_sha256") != tokens:
            reasons.add("token files other than the report's")
        if task == "vit" and str(r.config.get("data_source")).startswith("JPEG"):  # as data.py names such folders
            reasons.add("JPEG images, a lossy copy of CIFAR-10's")
        sizes = ref[task]["settings"].get("data_sizes")  # CIFAR-10's, split as data.py splits it
        if task == "vit" and sizes and r.config.get("data_sizes") != sizes:
            reasons.add("its data's sizes unrecorded (an older run)" if "data_sizes" not in r.config else
                        "not CIFAR-10's " + " / ".join(f"{n:,}" for n in sizes.values()) + " images")
        asked = r.config.get("epochs")
        if asked != want:  # another schedule's, another best-valid epoch's
            reasons.add(f"{asked} epoch{'s' * (asked != 1)} asked, not the report's {want}")
        elif len(r.rows) < want:
            reasons.add(f"{len(r.rows)} of the report's {want} epochs")
    return "; ".join(sorted(reasons))


def reported(m, rc):
    """(what is compared, the report's value): its test metric m where it gives one, else best valid."""
    return (f"test {m}", rc[f"test_{m}"]) if f"test_{m}" in rc else (f"best valid {m}", rc.get(f"best_valid_{m}"))


def ours(group, what):
    """Our value (mean over seeds) of what the report gives: the test of our best-valid model, or the best valid."""
    kind, m = what.rsplit(" ", 1)
    return group.summary_value(f"best_test_{m}")[0] if kind == "test" else group.best_of(f"valid_{m}")[0]


def verdict(task, ours, theirs, ref):
    """(difference, reproduced / better / not reproduced) within the stated tolerance."""
    tol = ref["tolerance"]
    if task == "vit":
        diff, close = ours - theirs, abs(ours - theirs) <= tol["acc"]
        better = diff > 0
    else:
        diff, close = ours - theirs, abs(ours / theirs - 1) <= tol["ppl_relative"]
        better = diff < 0
    return diff, "reproduced" if close else "better than the report" if better else "not reproduced"


def compare(groups, task, ref):
    """One line per configuration the report measured: what our runs say about it."""
    if not ref or task not in ref:
        return []
    tol = ref["tolerance"]
    within = f"{tol['acc'] * 100:g} accuracy points" if task == "vit" else f"{tol['ppl_relative']:.0%} perplexity"
    lines = [f"### {'ViT' if task == 'vit' else 'LM'} against the reference report (reproduced: within {within})", ""]
    for rc in ref[task]["configs"]:
        name = " ".join(f"{k} {rc[k]}" for k in IDENTITY[task])
        what, theirs = reported(groups[0].m, rc)
        if theirs is None:
            continue  # the report gives no metric for this configuration (only its time)
        matching = [g for g in groups if reference_config(g, ref) is rc]
        fair = [g for g in matching if not not_comparable(g, ref)]
        if not fair:
            why = "; ".join(f"{g.name}: {not_comparable(g, ref)}" for g in matching) or "no run of it"
            lines.append(f"- Config {rc['config']} ({name}): not measured here ({why}).")
        for g in fair:  # several: the same configuration on two copies of the data, told apart by their names
            value, seeds = ours(g, what), len(g.runs)
            if value is None:
                lines.append(f"- Config {rc['config']} ({name}): {g.name} has no {what} yet.")
                continue
            diff, status = verdict(task, value, theirs, ref)
            lines.append(f"- Config {rc['config']} ({name}): **{status}**, {what} {value:.4g} against the report's "
                         f"{theirs:.4g} ({diff:+.4g}; {g.name}, {seeds} seed{'s' * (seeds > 1)}).")
    return lines + ([""] + [ref.get("note", "")] if task == "vit" else []) + [""]


def table_cells(group, ref):
    """The report column and our difference from it, for a results table row."""
    rc = reference_config(group, ref) if ref else None
    if rc is None:
        return ["", ""]
    what, theirs = reported(group.m, rc)
    value = ours(group, what)
    if theirs is None:
        return ["", ""]
    why = not_comparable(group, ref)
    digits = group.digits
    compared = value is not None and not group.smoke  # a smoke run is no result to set against the report's
    diff = f"{value - theirs:+,.{digits}f}" + (" (not comparable)" if why else "") if compared else ""  # see summary.md
    return [f"{theirs:,.{digits}f} ({what})", diff]


def fmt(mean, std=None, digits=4):
    """A table cell: the mean ± std, each to digits, whole past 1e5, in 3 figures past 1e15 (the
    perplexity of a diverged run; inf beyond float range)."""
    def number(v):
        return f"{v:,.{digits}f}" if abs(v) < 1e5 else f"{v:,.0f}" if abs(v) < 1e15 else f"{v:.3g}"
    text = "-" if mean is None else number(mean)
    return text if std is None or mean is None or not math.isfinite(std) else f"{text} ± {number(std)}"


def markdown(columns, rows):
    """A markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]) + "\n"


def markdown_to_html(text):
    """The summaries' own markdown (headings, lists, tables, bold, paragraphs) as HTML."""
    out, table = [], []
    def inline(s):
        return re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s)))

    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(re.fullmatch(r"-+", c) for c in cells):
                table.append(cells)
            continue
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table = []
        level = len(line) - len(line.lstrip("#"))
        if level and line[level:level + 1] == " ":
            out.append(f"<h{level}>{inline(line[level + 1:])}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px;display:block;max-width:100%;overflow-x:auto}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;overflow-wrap:break-word}
.banner{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em;font-weight:bold}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}li{margin:.2em 0}"""


def write_html(out_dir, sections, figures, banner=""):
    """report/index.html: the summary, tables and figures on one self-contained page (figures as PNG
    data; no network, no scripts), `banner` a warning above it all."""
    body = [f'<div class="banner">{html.escape(banner)}</div>'] * bool(banner) + [markdown_to_html(t) for t in sections]
    for path in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        body.append(f'<h3>{html.escape(Path(path).stem)}</h3><img alt="{html.escape(Path(path).name)}" '
                    f'src="data:image/png;base64,{data}">')
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Report</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}</body></html>")
    write_file(Path(out_dir) / "index.html", page)
    return Path(out_dir) / "index.html"
