"""Throughput, FLOPs and MFU of every reference model, our trainer against peer ViT
implementations, the fused LM loss against full logits (time and memory), the augmentation's share
of a ViT-2 step, a ViT-6 and an LSTM-1 epoch (on the real data when it is there, else on random
data of the same sizes). The whole study's time is the sweep's plan: DRY_RUN=1 bash runs.sh.

    python bench.py --quick                       # a few minutes on a CPU
    python bench.py --device cuda --json bench.json   # the GPU check: every GPU target in one run
    python bench.py --device cuda --only vit lm real --compile   # the epochs eager and compiled
    python bench.py --only vit real --data ./data

Everything is measured in this one process, so the ratios compare like with like. The ceiling is
the device's dense matmul rate in the precision used (--precision auto: bf16 on a recent GPU), measured
here, shown beside the GPU's published peak; MFU is the model's analytic training FLOPs (3x the
forward's matmul FLOPs) per second over the measured ceiling, each part of a model against the
ceiling of the precision it runs in (the recurrent cores run in fp32, TF32 on a GPU, under autocast).
"""
import argparse
import contextlib
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import engine
import optim
import plan
import utils
from config import Parser
from rundir import save_json
from augment import augment, normalize
from data import Corpus, ImageData, load_cifar10, load_wikitext
from models import LanguageModel, VisionTransformer, count_params, linear_cross_entropy, lm_recurrent_share, \
    lm_train_flops, vit_flops
from train_lm import TextTask
from train_vit import ImageTask

VIT = dict(embed_dim=256, hidden_dim=512, num_heads=8, patch_size=4)
LM = dict(vocab_size=40479, embedding_size=768, hidden_size=512)


def timed(fn, device, steps, warmup):
    """Seconds per call of fn, after warmup calls, synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    utils.sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    utils.sync(device)
    return (time.perf_counter() - start) / steps


def train_step(model, optimizer, loss, device, precision):
    """One optimizer step on loss(model), the forward under the precision's autocast."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device):
            value = loss(model)
        value.backward()
        optimizer.step()
    return step


def vit_loss(images, labels):
    return lambda model: F.cross_entropy(model(images).float(), labels)


def model_row(name, make, optimizer, lr, loss, device, precision, steps, count, unit, flops, **extra):
    """A table row for one model's training step: `count` images or tokens per step, `flops` each."""
    torch.manual_seed(0)
    model = make().to(device)
    opt, _, _ = optim.make_optimizer(optimizer, model, lr, weight_decay=5e-4)
    sec = timed(train_step(model, opt, loss, device, precision), device, steps, 1)
    return dict(model=name, params=count_params(model), unit=unit, throughput=count / sec,
                tflops=flops * count / sec / 1e12, **extra)


def bench_vit_models(device, precision, quick, batch=128):
    loss = vit_loss(torch.randn(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device))
    return [model_row(f"ViT-{layers} {block}", lambda: VisionTransformer(layers, block, **VIT), "adamw", 3e-4, loss,
                      device, precision, 3 if quick else 10, batch, "images/s", 3 * vit_flops(layers))
            for layers in (2, 4, 6) for block in ("prenorm", "postnorm")]


def bench_lm_models(device, precision, quick, frozen, batch=16, seq_len=256):
    tokens = torch.randint(1, LM["vocab_size"], (batch, seq_len + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    table = torch.zeros(LM["vocab_size"], LM["embedding_size"]) if frozen else None
    rows = []
    for core, layers, block in (("lstm", 1, "prenorm"), ("lstm", 2, "prenorm"), ("lstm", 4, "prenorm"),
                                ("gru", 1, "prenorm"), ("transformer", 2, "prenorm"), ("transformer", 2, "postnorm")):
        name = f"{core.upper() if core != 'transformer' else 'Transformer ' + block}-{layers}"
        rows.append(model_row(  # the trainer's loss: summed in chunks, the full logits never exist
            f"LM {name}", lambda: LanguageModel(core, layers, **LM, embeddings=table, max_len=seq_len, block=block),
            "adam", 1e-3, lambda model: model(x, targets=y)[0] / y.numel(), device, precision, 2 if quick else 5,
            batch * seq_len, "tokens/s", lm_train_flops(core, layers, frozen, seq_len=seq_len),
            fp32_share=lm_recurrent_share(core, layers, frozen, seq_len)))
    return rows


def bench_vit_trainer(device, precision, quick, layers=6, batch=128):
    """Our whole training path (seeded shuffle, batched augmentation, task loss, run_epoch) against
    the bare training step of our model and of each peer implementation, on tensors on the device."""
    steps = 4 if quick else 20
    n = batch * steps
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    task = ImageTask(ImageData({"train": (x, y)}, list(range(10))), batch, seed=0)
    torch.manual_seed(0)
    model = VisionTransformer(layers, "prenorm", **VIT).to(device)
    opt, _, _ = optim.make_optimizer("adamw", model, 3e-4, weight_decay=5e-4)
    engine.run_epoch(model, task, "train", 0, engine.Step(opt), precision, 2)  # warm-up
    # Our model's bare step too, with the peers' (unfused) AdamW: the trainer's overhead and the
    # implementations' difference, told apart.
    bare = {"models.py": lambda: VisionTransformer(layers, "prenorm", **VIT)}
    import torchvision  # here: its import takes seconds, which a refused command should not wait for
    makers = dict(bare, torchvision=lambda: torchvision.models.VisionTransformer(
        image_size=32, patch_size=4, num_layers=layers, num_heads=8, hidden_dim=256, mlp_dim=512, num_classes=10))
    with contextlib.suppress(ImportError):  # timm is no dependency: compared where it is installed
        import timm
        makers["timm"] = lambda: timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=4, embed_dim=256, depth=layers, num_heads=8, mlp_ratio=2.0, num_classes=10)
    peers = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        peer = make().to(device)
        step = train_step(peer, torch.optim.AdamW(peer.parameters(), lr=3e-4, weight_decay=5e-4),
                          vit_loss(normalize(x[:batch]), y[:batch]), device, precision)
        timed(step, device, 1, 2)  # warm-up
        peers[name] = (peer, step)
    # Alternated, best of several: the machine's drift hits every contender alike, and its noise only
    # ever slows a measurement down.
    best = dict(ours=0.0, **{name: 0.0 for name in peers})
    for _ in range(3 if quick else 5):
        epoch = engine.run_epoch(model, task, "train", 1, engine.Step(opt), precision)
        best["ours"] = max(best["ours"], n / epoch["seconds"])
        for name, (_, step) in peers.items():
            best[name] = max(best[name], batch / timed(step, device, steps, 0))
    ours = best["ours"]
    rows = [dict(model=f"ViT-{layers} train_vit.py path (augmentation included)", unit="images/s", throughput=ours,
                 tflops=ours * 3 * vit_flops(layers) / 1e12, ratio=1.0)]
    for name, (peer, _) in peers.items():
        flop = 3 * vit_flops(layers, first_only_last=name in bare)
        rows.append(dict(model=f"ViT-{layers} {name} (bare step, {count_params(peer):,} params)", unit="images/s",
                         throughput=best[name], tflops=best[name] * flop / 1e12, ratio=ours / best[name]))
    return rows


def loss_peak_mb(kind, device, batch=16, seq_len=256):
    """Peak memory (MB) of the LM loss alone, forward and backward, through an output layer tied to a
    frozen 40,479 x 768 embedding: 'fused' in chunks, as the trainer, or over the 'full' logits."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(batch * seq_len, LM["embedding_size"], generator=g).to(device).requires_grad_()
    w = (0.02 * torch.randn(LM["vocab_size"], LM["embedding_size"], generator=g)).to(device)
    t = torch.randint(1, LM["vocab_size"], (batch * seq_len,), generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = engine.resident_kb("VmRSS")
    loss = (linear_cross_entropy(h, w, t) if kind == "fused" else
            F.cross_entropy(h @ w.T, t, ignore_index=0, reduction="sum"))
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    return (engine.resident_kb("VmHWM") - base) / 2 ** 10


def bench_augmentation(device, precision, quick, batch=128):
    """The batched augmentation's cost as a share of a ViT-2 training step (the cheapest model it
    feeds), for the reference and the strong policy, alternated, best of several."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)
    torch.manual_seed(0)
    model = VisionTransformer(2, "prenorm", **VIT).to(device)
    opt, _, _ = optim.make_optimizer("adamw", model, 3e-4, weight_decay=5e-4, device=device)
    step = train_step(model, opt, lambda m: F.cross_entropy(m(normalize(images)).float(), labels), device, precision)
    runs = {policy: (lambda policy=policy: augment(images, g, policy=policy)) for policy in ("reference", "strong")}
    best = dict(step=math.inf, **{p: math.inf for p in runs})
    for _ in range(3 if quick else 10):
        best["step"] = min(best["step"], timed(step, device, 2, 1))
        for policy, run in runs.items():
            best[policy] = min(best[policy], timed(run, device, 10, 2))
    rows = [dict(model=f"ViT-2 training step, batch {batch}", unit="images/s", throughput=batch / best["step"])]
    rows += [dict(model=f"augmentation {p}, batch {batch}, share of a ViT-2 step", unit="images/s",
                  throughput=batch / best[p], share=best[p] / best["step"]) for p in runs]
    return rows


def bench_loss(device, precision, quick, batch=16, seq_len=256):
    """The LM loss through the tied 40,479-word output layer, forward and backward: fused and chunked
    (the trainer's) against F.cross_entropy over the full logits, in time and in peak memory."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(batch * seq_len, LM["embedding_size"], generator=g).to(device).requires_grad_()
    w = (0.02 * torch.randn(LM["vocab_size"], LM["embedding_size"], generator=g)).to(device).requires_grad_()
    t = torch.randint(1, LM["vocab_size"], (batch * seq_len,), generator=g).to(device)

    def run(fused):
        def step():
            h.grad = w.grad = None
            with precision.autocast(device):  # the hidden states in the autocast dtype, as in the model
                hh = h.to(precision.dtype or h.dtype)
                loss = (linear_cross_entropy(hh, w, t) if fused
                        else F.cross_entropy((hh @ w.T).float(), t, ignore_index=0, reduction="sum"))
            loss.backward()
        return step
    best = dict(fused=math.inf, full=math.inf)
    for _ in range(2 if quick else 5):
        for kind in best:
            best[kind] = min(best[kind], timed(run(kind == "fused"), device, 2 if quick else 5, 1))
    n, speed, memory = batch * seq_len, [], []
    for kind, what in (("fused", "fused, 1,024-token chunks"), ("full", "full fp32 logits")):
        if device.type == "cuda":
            mb = loss_peak_mb(kind, device, batch, seq_len)
        else:  # a process's peak resident set is its lifetime's: a fresh process for each
            code = f"import bench; print(bench.loss_peak_mb({kind!r}, 'cpu', {batch}, {seq_len}))"
            mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      cwd=Path(__file__).resolve().parent).stdout.split()[-1])
        speed.append(dict(model=f"LM loss fwd+bwd, {n:,} tokens, {what}", unit="tokens/s", throughput=n / best[kind],
                          ratio=best["full"] / best[kind]))
        memory.append(dict(model=f"LM loss peak memory, {batch} x {seq_len} tokens, {what}", unit="MB", throughput=mb))
    memory[0]["ratio"] = memory[1]["throughput"] / memory[0]["throughput"]
    return speed + memory


# the study's data sizes (train, valid), where the data is not in place: the plan's
CIFAR_SPLITS = dict(zip(("train", "valid"), plan.STANDARD["train_vit.py"]))
WIKITEXT_SPLITS = dict(zip(("train", "valid"), plan.STANDARD["train_lm.py"]))  # GPT-1 BPE tokens


def bench_real(device, precision, data_root, quick, with_compile=False, frozen=True):
    """A ViT-6 epoch and an LSTM-1 epoch (train + valid) through the trainers' path, on the real data
    when it is there and otherwise on random data of the same sizes (the time of an epoch does not
    depend on the pixel or token values). On CPU a slice is timed and extrapolated; on CUDA the
    whole epoch, the second of two (the first pays for warm-up). With `with_compile`, each model is
    then compiled in place as `--compile` does (the warm-up timed apart) and its epochs timed again."""
    rows = []
    root = Path(data_root)
    full = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    images = next((root / name for name in ("cifar10", "cifar10-jpeg") if (root / name).is_dir()), None)
    if images is not None:
        data, source = load_cifar10(images, device), "real"
    else:
        data, source = ImageData({s: (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device),
                                      torch.randint(0, 10, (n,), generator=g).to(device))
                                  for s, n in CIFAR_SPLITS.items()}, list(range(10))), "synthetic"
    if (root / "wikitext2").is_dir():
        corpus, lm_source = load_wikitext(root / "wikitext2", device), "real"
    else:
        corpus, lm_source = Corpus({s: torch.randint(1, LM["vocab_size"], (n,), generator=g).to(device)
                                    for s, n in WIKITEXT_SPLITS.items()}, LM["vocab_size"]), "synthetic"
    torch.manual_seed(0)
    jobs = [(f"{source} ViT-6 epoch", "images", ImageTask(data, 128, seed=0),
             VisionTransformer(6, "prenorm", **VIT).to(device), "adamw", 20),
            (f"{lm_source} LSTM-1 epoch", "tokens", TextTask(corpus, 256, 16, seed=0),
             LanguageModel("lstm", 1, **LM, embeddings=torch.zeros(LM["vocab_size"], LM["embedding_size"]) if frozen
                           else None).to(device),
             "adam", 3)]
    for name, unit, task, model, optimizer, cpu_slice in jobs:
        opt, _, _ = optim.make_optimizer(optimizer, model, 3e-4, weight_decay=5e-4, device=device)
        limit = 0 if full else cpu_slice
        # eager, then compiled in place as --compile does, and on a GPU with CUDA graphs too
        modes = ["default"] + ["reduce-overhead"] * (device.type == "cuda") if with_compile else []
        for compiled in [False] + modes:
            try:  # a compile mode that fails here is one row of the table, not the end of the check
                warm_up = engine.compile_model(model, task, precision, mode=compiled) if compiled else None
                runs = [(engine.run_epoch(model, task, "train", epoch, engine.Step(opt), precision, limit),
                         engine.run_epoch(model, task, "valid", epoch, None, precision, limit))
                        for epoch in ((1, 2) if full else (1,))]
            except Exception as e:  # noqa: BLE001
                rows.append(dict(model=f"{name}, compiled, {compiled}: failed ({utils.first_line(e)[:80]})", unit=""))
                continue
            train, valid = runs[-1]
            scale = lambda split: task.num_batches(split) / (limit or task.num_batches(split))  # noqa: E731
            seconds = train["seconds"] * scale("train") + valid["seconds"] * scale("valid")
            how = f", compiled, {compiled} (warm-up {warm_up:.0f} s)" if compiled else ""
            rows.append(dict(model=f"{name} ({train['count']:,} {unit}{', extrapolated' if limit else ''}{how}), "
                                   "train + valid", unit=f"{unit}/s", throughput=train["count"] / train["seconds"],
                             epoch_s=seconds, compiled=compiled, compile_s=warm_up))
    return rows


def table(rows, ceiling, ceiling_fp32, device, dtype):
    """The results as the console shows them: a line on the device, then a Markdown table."""
    here = utils.device_name(device)
    name = here if device.type == "cuda" else ""
    kind = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    peak = plan.published_peak(name, kind)
    fp32 = "" if dtype is None else (f"; fp32 (the recurrences): {ceiling_fp32 / 1e12:.3f} TFLOP/s measured, published "
                                     f"{plan.published_peak(name, 'fp32') or 'unknown'}")
    width = max([72] + [len(r["model"]) for r in rows])
    lines = [f"\ndevice {device} ({here}), torch {torch.__version__}, {torch.get_num_threads()} threads; {kind}: "
             f"measured ceiling {ceiling / 1e12:.3f} TFLOP/s (MFU against it), published peak "
             f"{f'{peak} TFLOP/s' if peak else 'unknown'}{fp32}\n",
             f"| {'measurement':<{width}} | {'throughput':>18} | {'TFLOP/s':>8} | {'MFU':>6} | {'ratio':>6} | "
             f"{'epoch s':>8} |", f"|{'-' * (width + 2)}|{'-' * 20}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 10}|"]
    for r in rows:
        cell = lambda k, f: (f.format(r[k]) if r.get(k) is not None else "")  # noqa: E731
        lines.append(f"| {r['model']:<{width}} | {cell('throughput', '{:,.0f}') + ' ' + r['unit']:>18} | "
                     f"{cell('tflops', '{:.3f}'):>8} | {cell('mfu', '{:.1%}'):>6} | "
                     f"{cell('ratio', '{:.2f}x') or cell('share', '{:.1%}'):>6} | {cell('epoch_s', '{:.1f}'):>8} |")
    return "\n".join(lines) + "\n"


SECTIONS = ("vit", "peers", "lm", "loss", "augment", "real")  # main's, in the order they run


@utils.cli
def main(argv=None):
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--quick", action="store_true", help="fewer steps: a few minutes on a CPU")
    parser.add_argument("--only", nargs="+", action="extend", choices=SECTIONS, help="the sections to run, in "
                        "this order (default: all)")
    parser.add_argument("--data", default=None, help="folder with cifar10/ (or cifar10-jpeg/) and wikitext2/ "
                        "(random data of the same sizes where they are missing; default ./data)")
    parser.add_argument("--compile", action="store_true", help="also time the real epochs with the models "
                        "compiled in place, as the trainers' --compile (the warm-up reported apart)")
    parser.add_argument("--lm_embeddings", default="frozen", choices=["frozen", "learned"], help="frozen: GPT-1's, "
                        "as runs.sh's reference LMs on the token files; learned: as its other LMs, or EMBEDDINGS=none")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    data = Path(args.data or "./data")
    if args.data:  # one given is read: not a typo, not one dataset
        utils.check_folder(data, "--data", "is not a folder")
        utils.check(not (data / "train").is_dir() and not (data / "wiki.train.npz").exists(), f"--data {data} is one "
                    f"dataset; give the folder that holds cifar10/ and wikitext2/: --data {data.parent}")
    out = Path(args.json or "").absolute()  # found writable now, not after the measurements
    utils.check(not args.json or not out.is_dir(), f"--json {args.json} is a folder: name a file in it")
    utils.check(not args.json or out.parent.is_dir() and os.access(out.parent, os.W_OK),
                f"--json {args.json}: cannot write there")
    device = utils.get_device(args.device)
    precision = utils.choose_precision(args.precision, device)
    dtype = precision.dtype
    ceiling = plan.matmul_rate(device, dtype)
    ceiling_fp32 = ceiling if dtype is None else plan.matmul_rate(device, None)
    rows = []
    sections = dict(vit=lambda: bench_vit_models(device, precision, args.quick),
                    peers=lambda: bench_vit_trainer(device, precision, args.quick),
                    lm=lambda: bench_lm_models(device, precision, args.quick, args.lm_embeddings == "frozen"),
                    loss=lambda: bench_loss(device, precision, args.quick),
                    augment=lambda: bench_augmentation(device, precision, args.quick),
                    real=lambda: bench_real(device, precision, data, args.quick, args.compile,
                                            args.lm_embeddings == "frozen"))
    assert tuple(sections) == SECTIONS
    for name in dict.fromkeys(args.only or SECTIONS):  # --only vit --only lm: both, each once
        start = time.perf_counter()
        rows += sections[name]()
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
        # The machine's rate drifts: the fastest of the ceilings measured at the start and after
        # every section (a few seconds each on a CPU) is what it can do.
        ceiling = max(ceiling, plan.matmul_rate(device, dtype))
        ceiling_fp32 = ceiling if dtype is None else max(ceiling_fp32, plan.matmul_rate(device, None))
    for r in rows:
        if r.get("tflops"):
            r["mfu"] = plan.mfu(r["tflops"] * 1e12, r.get("fp32_share", 0.0), ceiling, ceiling_fp32)
    if args.json:  # before the table: a standard output that cannot take it loses no measurement
        save_json(dict(
            device=str(device), environment=utils.environment(device), precision=str(dtype), quick=args.quick,
            ceiling_flops=ceiling, ceiling_fp32_flops=ceiling_fp32, results=rows, argv=sys.argv[1:],
            python=platform.python_version()), args.json)
    print(table(rows, ceiling, ceiling_fp32, device, dtype), end="", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
