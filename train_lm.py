r"""Train a language model on Wikitext-2 (LSTM, GRU or causal Transformer core) and log per-epoch
perplexity, the best model and test results.

    python train_lm.py --optimizer adam --embeddings gpt1    # the reference report's LM (frozen GPT-1 embeddings)
    python train_lm.py --layers 2 --optimizer adamw          # logs/lm_lstm_L2_adamw_s42
    python train_lm.py --model transformer --layers 2 --block postnorm --data_folder ./data/wikitext2
    python train_lm.py --recipe improved                     # runs.sh's lm_lstm_L1_adamw_improved_s42

Writes <log_dir>/<exp_id>/{config.json, metrics.csv, best.pt, summary.json}, checkpoint.pt while it
runs, and vocab.txt for word-level text. `--data_folder` holds wiki.{train,validation,test}.npz (the
report's GPT-1 token ids) or train/valid/test.txt (word-level text); with neither, the token files
are downloaded (else the text).
"""
import dataclasses
import hashlib
import math
import stat
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from config import TrainConfig, option, parse_config
from data import TEXT_FILES, TOKEN_FILES, Windows, index_batches, load_wikitext, read_tokens_npz
from engine import check_fits, train
from gpt1 import EMBEDDINGS_FILE, gpt1_embeddings
from models import CORES, LanguageModel, count_params
from utils import UserError, check, cli, epoch_generator, first_process_first, log


@dataclasses.dataclass
class Config(TrainConfig):
    model: str = option("lstm", "the language model's core: an LSTM, a GRU or a causal Transformer", list(CORES),
                        group="model")
    layers: int = option(1, "recurrent layers or transformer blocks", group="model")
    block: str = option("prenorm", "transformer core: LayerNorm before (pre) or after (post) the residual",
                        ["prenorm", "postnorm"], group="model")
    batch_size: int = option(16, "windows of seq_len tokens per optimizer step", group="optimisation")
    lr: float = option(1e-3, "learning rate", group="optimisation")
    data_folder: str = option("./data/wikitext2", "folder with wiki.*.npz token files or train/valid/test.txt; "
                              "what is missing is downloaded there", group="data", role="context")
    data_format: str = option("auto", "tokens: the reference's GPT-1 token ids; words: word-level text; auto: "
                              "whichever is there, token files first", ["auto", "tokens", "words"], group="data",
                              role="data")
    seq_len: int = option(256, "tokens per window (each predicts the next token)", group="data")
    embeddings: str = option("", "pretrained token embeddings: gpt1 (GPT-1's, the reference's; fetched once "
                             "beside the token files), an .npz with array 'tokens', or an .npy (vocab x "
                             "embedding_size); frozen unless --learn_embeddings. Without it (the default) they "
                             "are learned from scratch", group="model")
    learn_embeddings: bool = option(False, "train embeddings loaded with --embeddings", group="model")
    embedding_size: int = option(768, "embedding width (tied to the output layer)", group="model")
    hidden_size: int = option(512, "recurrent state or transformer width", group="model")
    num_heads: int = option(8, "attention heads (transformer core)", group="model")
    mlp_dim: int = option(2048, "MLP hidden width (transformer core)", group="model")
    batching: str = option("windows", "windows: independent shuffled windows, state reset (the reference); "
                           "streams: batch_size contiguous streams read in order, the recurrent state "
                           "carried (detached) from window to window, in training and evaluation",
                           ["windows", "streams"], group="data")

    def validate(self):
        super().validate()
        check(2 <= self.seq_len < 2 ** 31, f"--seq_len must be at least 2 and below 2**31, got {self.seq_len}")
        check(self.model != "transformer" or self.hidden_size % self.num_heads == 0,
              f"--hidden_size {self.hidden_size} is not divisible by --num_heads {self.num_heads}")
        check(self.embeddings.lower() != "none", "--embeddings none: leave --embeddings out; without it the "
              "embeddings are learned from scratch")
        check(self.embeddings or not self.learn_embeddings, "--learn_embeddings trains the embeddings loaded with "
              "--embeddings; without them the embeddings are learned from scratch anyway: leave it out")

    def unused(self):
        parts = (("block", "LayerNorm"), ("num_heads", "attention"), ("mlp_dim", "MLP"))
        core = {} if self.model == "transformer" else {name: f"the {self.model} core has no {part}"
                                                        for name, part in parts}
        return super().unused() | core

    PREFIX = "lm_{model}"
    DATA_KIND = "tokens"  # the report's: GPT-1 token ids

    def data_kind(self):
        """tokens or words: --data_format, or with auto what load_wikitext reads in --data_folder (the
        token files where they are, else the text where it is, else the token files, downloaded)."""
        if self.data_format != "auto":
            return self.data_format
        folder = Path(self.data_folder)
        has = {kind: all((folder / f).exists() for f in files.values()) for kind, files in
               (("tokens", TOKEN_FILES), ("words", TEXT_FILES))}
        return "words" if has["words"] and not has["tokens"] else "tokens"
    # streams with carried state, dropout, clipping and a cosine schedule (after Merity et al., 2018)
    RECIPES = {"improved": dict(batching="streams", batch_size=32, seq_len=128, dropout=0.4, lr=2e-3,
                                weight_decay=0.01, decay_exempt=True, scheduler="cosine", warmup_epochs=0.5,
                                grad_clip=0.25)}


class TextTask:
    """Next-token prediction over windows of a token stream; the loss is summed over real tokens.
    With batching="streams" the windows are read in stream order and the model's state is carried
    from one batch to the next (detached: backpropagation stops at the window's start)."""
    metric, label, maximize, digits, unit = "ppl", "perplexity", False, 2, "tokens"
    title = "Language model (Wikitext-2)"
    scoring = alike = None  # scored as the reference: independent windows (else build() says how, and adds its way)
    warnings = ()

    def __init__(self, corpus, seq_len, batch_size, seed, batching="windows"):
        self.streams = batching == "streams"
        self.windows = {s: Windows(t, seq_len, batch_size if self.streams else None)
                        for s, t in corpus.splits.items()}
        self.batch_size, self.seed, self.state = batch_size, seed, None
        self.zero = torch.zeros((), device=corpus.splits["train"].device)

    def num_batches(self, split):
        return math.ceil(self.windows[split].num_windows / self.batch_size)

    def batch_sizes(self, split):
        return {self.batch_size}  # a short last batch is filled up with empty windows

    def batches(self, split, epoch):
        w = self.windows[split]
        self.state = None  # every pass starts from a fresh state
        if self.streams:
            batches = index_batches(w.num_windows, self.batch_size, device=w.padded.device, order=w.stream_order())
        else:
            generator = epoch_generator(self.seed, epoch, "shuffle") if split == "train" else None
            batches = index_batches(w.num_windows, self.batch_size, generator, w.padded.device)
        for idx, idx_host in batches:
            if len(idx) < self.batch_size:  # windows of padding alone: one shape per epoch (torch.compile)
                idx, idx_host = (F.pad(i, (0, self.batch_size - len(i)), value=w.num_windows) for i in (idx, idx_host))
            inputs, targets = w.batch(idx)
            yield inputs, targets, w.targets_in(idx_host)

    def loss(self, model, batch):
        inputs, targets, count = batch
        # summed in chunks: the full logits never exist
        loss, state = model(inputs, state=self.state, targets=targets)  # None but in streams
        if self.streams:
            self.state = None if state is None else tuple(s.detach() for s in state) if isinstance(state, tuple) \
                else state.detach()
        return loss, count, self.zero

    def metric_value(self, loss, accuracy):
        return math.exp(loss) if loss < 700 else math.inf


def embeddings_path(config):
    """The embeddings file a run (its config.json) loaded."""
    name = str(config.get("embeddings") or "")
    return Path(str(config.get("data_folder") or ".")) / EMBEDDINGS_FILE if name == "gpt1" else Path(name)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_embeddings(path, vocab_size, width):
    kind = Path(path).stat().st_mode if Path(path).exists() else None  # a pipe would be read twice (its checksum)
    check(kind is None or stat.S_ISREG(kind) or stat.S_ISDIR(kind), f"embeddings {path} is not a file (a pipe or a "
          f"device?): give the table as a .npy or .npz file")
    table, _ = read_tokens_npz(path)
    check(table.dtype.kind in "fiu", f"embeddings {path} hold {table.dtype} values; they must be real numbers")
    check(table.shape == (vocab_size, width),
          f"embeddings {path} have shape {table.shape}, the data and model need ({vocab_size}, {width}) "
          f"(vocabulary x --embedding_size)")
    with np.errstate(over="ignore"):
        table = table.astype(np.float32)  # a float64 beyond float32's range becomes inf: refused here
    rows = np.flatnonzero(~np.isfinite(table).all(1))
    if len(rows):
        raise UserError(f"embeddings {path} hold NaN or infinite values (in float32) in {len(rows):,} "
                        f"row{'s' * (len(rows) > 1)}, the first row {rows[0]}")
    return torch.from_numpy(table)


def alike_window(cfg):
    """The windows a run's best-valid model is tested in too, as the reference scored (the default seq_len, its
    own), or None: a run scored so already, or a Transformer (nothing carried: its streams score as windows do)."""
    return Config.seq_len if cfg.batching == "streams" and cfg.model != "transformer" else None


MODEL_ARGS = ("model", "layers", "embedding_size", "hidden_size", "dropout", "learn_embeddings", "seq_len",
              "block", "num_heads", "mlp_dim")


def build_model(args, embeddings=None):
    """The LanguageModel from its saved arguments (config.json's model_args), as train_lm.py builds it."""
    return LanguageModel(args["model"], args["layers"], args["vocab_size"], args["embedding_size"],
                         args["hidden_size"], args["dropout"], embeddings, args["learn_embeddings"], args["seq_len"],
                         args["block"], args["num_heads"], args["mlp_dim"])


def build(cfg, device):
    with first_process_first():  # under torchrun one process downloads, then the rest read
        corpus = load_wikitext(cfg.data_folder, device, cfg.data_format)
        path = gpt1_embeddings(cfg.data_folder) if cfg.embeddings == "gpt1" else cfg.embeddings
    log(f"data: {corpus.source}; vocabulary {corpus.vocab_size:,}; "
        + ", ".join(f"{s} {t.numel():,} tokens" for s, t in corpus.splits.items()))
    task = TextTask(corpus, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.batching)
    if unseen := {s: n for s, n in (corpus.unseen or {}).items() if n}:  # the model scores them all as one word
        task.warnings = ["words not in train.txt are read as <unk>: " + ", ".join(f"{n:,} of {TEXT_FILES[s]}'s "
                         f"{corpus.splits[s].numel():,} ({n / corpus.splits[s].numel():.2%})" for s, n in unseen.items())]
    if window := alike_window(cfg):  # said beside its numbers, and scored as the reference too: no comparison unawares
        task.scoring = ("over carried streams (each window starts from the state the one before it left), so its "
                        "perplexity runs a little lower than the same model's in independent windows, the reference's "
                        f"way; its best-valid model is also tested in windows of {window}, as the reference")
        task.alike = TextTask(corpus, window, cfg.batch_size, cfg.seed)
    split = min(task.windows, key=lambda s: task.windows[s].num_windows)
    n = task.windows[split].num_windows
    check(cfg.batch_size <= n, f"--batch_size {cfg.batch_size} is larger than the smallest split ({split}: {n} "
          f"window{'s' * (n != 1)} of {cfg.seq_len} tokens)")
    embeddings = load_embeddings(path, corpus.vocab_size, cfg.embedding_size) if path else None
    model_args = dict({k: getattr(cfg, k) for k in MODEL_ARGS}, vocab_size=corpus.vocab_size)
    check_fits(lambda n: build_model(dict(model_args, layers=n)), cfg.layers, device)
    model = build_model(model_args, embeddings)
    kind = "frozen" if embeddings is not None and not cfg.learn_embeddings else "learned"
    log(f"model: {cfg.model}, {cfg.layers} layer{'s' * (cfg.layers != 1)}, {kind} embeddings, "
        f"{count_params(model):,} learnable of {count_params(model, False):,} parameters")
    # word-level runs keep their vocabulary, so that samples can be decoded later
    files = {"vocab.txt": ("\n".join(corpus.vocab) + "\n").encode()} if corpus.vocab is not None else {}
    # frozen embeddings are not saved with the weights: the file's checksum ties the run to it
    frozen = dict(embeddings_sha256=file_sha256(path)) if path and not cfg.learn_embeddings else {}
    return task, model, dict(task="lm", model_args=model_args, vocab_size=corpus.vocab_size, data_source=corpus.source,
                             data_kind="tokens" if corpus.vocab is None else "words", data_sha256=corpus.sha256,
                             data_sizes={s: t.numel() for s, t in corpus.splits.items()}, **frozen), files


@cli
def main(argv=None):
    return train(parse_config(Config, argv, __doc__), build)


if __name__ == "__main__":
    main()
