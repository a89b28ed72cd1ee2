r"""Sample from a trained language model run (its best-validation weights).

    python generate.py --run logs/lm_lstm_L1_adam_embeddings-gpt1_s42 --words 100 --temperature 0.8 --top_k 40 \
        --prompt "the meaning of" --seed 1

Word-level runs keep their vocabulary (vocab.txt), so samples come back as text and unknown
prompt words become <unk> with a warning. Runs on the token files use GPT-1's byte-pair vocabulary,
found (or fetched) beside the token files: the prompt may be text or token ids, and the sample is
text; without the vocabulary it is printed as ids.
"""
import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch

from config import Parser
from data import word_index
from gpt1 import Vocabulary
from rundir import load_torch, load_trained
from train_lm import MODEL_ARGS, Config, build_model, embeddings_path, file_sha256, load_embeddings
from utils import UserError, check, check_folder, cli, first_line


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's examples as written, and every flag's default."""


def load_run(run_dir):
    """(model in eval mode, config, vocabulary or None) of a train_lm.py run; a damaged run is refused
    in one line."""
    check(str(run_dir) != "", "--run is empty; give the folder of a train_lm.py run (logs/<exp_id>)")
    run_dir = Path(run_dir)
    check_folder(run_dir, "--run", "is a file, not a run directory")
    if not (run_dir / "config.json").exists():  # a log folder given for one of its runs: name one, an LM's first
        runs = sorted((p.parent.name for p in run_dir.glob("*/config.json") if not p.parent.name.startswith(".")),
                      key=lambda n: (n[:3] != "lm_", n))  # a hidden one: a run --overwrite has set aside
        check(not runs, f"{run_dir} is a folder of runs, not one run: give one of them, e.g. --run "
              f"{run_dir / runs[0] if runs else ''}" + f" ({len(runs)} there)" * (len(runs) > 1))
        raise UserError(f"{run_dir} is not a run directory (it has no config.json): give the folder of a train_lm.py "
                        f"run (logs/<exp_id>)")
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir} is not a readable run directory ({e})") from None
    check(isinstance(config, dict) and config.get("task") == "lm", f"{run_dir} is not a language-model run")
    check(isinstance(config.get("model_args"), dict), f"{run_dir}/config.json has no model_args")
    check((run_dir / "best.pt").exists(), f"{run_dir} has no best.pt yet (no finished epoch)")
    try:
        args = checked_model_args(config["model_args"], str(config.get("embeddings") or ""))
    except (KeyError, TypeError, UserError) as e:
        raise UserError(f"{run_dir}/config.json: model_args do not describe a model ({first_line(e)})") from None
    embeddings = None
    if config.get("embeddings_sha256"):  # frozen embeddings: not in best.pt, reloaded from their file
        path = embeddings_path(config)
        check(path.is_file() and file_sha256(path) == config["embeddings_sha256"], f"{run_dir} was trained with "
              f"frozen embeddings from {path}, which is missing or has changed since")
        embeddings = load_embeddings(path, args["vocab_size"], args["embedding_size"])
    model = build_model(args, embeddings)
    weights = load_torch(run_dir / "best.pt")
    check(isinstance(weights, dict) and "model" in weights, f"{run_dir}/best.pt holds no model weights")
    load_trained(model, weights["model"], f"{run_dir}/best.pt (for the model in its config.json)")
    vocab = None
    word_level = str(config.get("data_source", "")).startswith("word-level")
    check(not word_level or (run_dir / "vocab.txt").exists(), f"{run_dir} was trained on word-level text, but its "
          f"vocab.txt is missing: without it no sample can be decoded (put it back from a copy of the run)")
    if (run_dir / "vocab.txt").exists():
        try:
            vocab = (run_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {run_dir}/vocab.txt: {e}") from None
        size = args["vocab_size"]
        check(len(vocab) == size and {"<unk>", "<eos>"} <= set(vocab), f"{run_dir}/vocab.txt is damaged: "
              f"{len(vocab):,} words (the model has {size:,}), <unk> and <eos> must be among them")
    return model.eval(), dict(config, model_args=args), vocab  # the arguments as checked


def checked_model_args(args, embeddings=""):
    """The saved model arguments, held to what train_lm.py's Config takes (with the run's --embeddings):
    each of its type, choices and range."""
    fields = {f.name: f for f in dataclasses.fields(Config) if f.name in MODEL_ARGS}
    for name, f in fields.items():
        kind = type(f.default)
        choices = f.metadata.get("choices")
        check((type(args[name]) is kind or kind is float and type(args[name]) is int)
              and (not choices or args[name] in choices), f"{name} is {args[name]!r}")
    check(type(args["vocab_size"]) is int and 1 < args["vocab_size"] < 2 ** 31, f"vocab_size is {args['vocab_size']!r}")
    Config(**{name: args[name] for name in fields}, embeddings=embeddings).validate()
    return args


def encode(prompt, vocab, bpe=None, missing=""):
    """Prompt -> token ids, and the words that were not in the vocabulary (or hold characters GPT-1's
    has not). Token-id runs take ids, or text when GPT-1's vocabulary (`bpe`) is at hand; `missing`
    says why it is not, and where its files go."""
    if vocab is None:
        try:
            return [int(t) for t in prompt.split()], []
        except ValueError:
            check(bpe is not None, f"this run was trained on token ids, and {missing}; or give --prompt as "
                  f"space-separated token ids")
            unknown = bpe.encoder.get("<unk>", 0) + 1
            return bpe.encode(prompt), [w for w in prompt.split() if w != "<unk>" and unknown in bpe.encode(w)]
    index = word_index(vocab)
    words = prompt.split() or ["<eos>"]  # an empty prompt starts a new line
    return [index.get(w, index["<unk>"]) for w in words], [w for w in words if w not in index]


def gpt1_vocabulary(config):
    """(GPT-1's vocabulary, "") for a run on the token files: beside them, fetched there when missing; or
    (None, why it is not at hand and where its files go), offline."""
    folder = Path(str(config.get("data_folder") or "."))
    try:
        return Vocabulary.find(folder), ""
    except (OSError, UserError) as e:
        return None, (f"GPT-1's vocabulary is not at hand "
                      f"({first_line(e).split(': ')[-1][:80]}): put encoder_bpe_40000.json and vocab_40000.bpe into "
                      f"{folder} (python gpt1.py --from DIR copies them there from a download made elsewhere)")


@torch.no_grad()
def sample(model, ids, count, temperature=1.0, top_k=0, generator=None, max_len=256):
    """Extend ids by `count` sampled tokens. A recurrent core carries its state, so only the new
    token is fed; a core without state (the transformer) rereads the last max_len tokens."""
    tokens = list(ids)
    logits, state = model(torch.tensor([tokens[-max_len:]]))
    for _ in range(count):
        scores = logits[0, -1].float() / max(temperature, 1e-6)
        scores[0] = float("-inf")  # padding is never a word
        if top_k:
            kth = torch.topk(scores, min(top_k, scores.numel() - 1)).values[-1]
            scores[scores < kth] = float("-inf")
        nxt = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
        tokens.append(nxt)
        if state is not None:
            logits, state = model(torch.tensor([[nxt]]), state)
        else:
            logits, _ = model(torch.tensor([tokens[-max_len:]]))
    return tokens[len(ids):]


def decode(ids, vocab):  # words, a line per sentence
    return re.sub(" ?\n ?", "\n", " ".join("\n" if vocab[i] == "<eos>" else vocab[i] for i in ids))


@cli
def main(argv=None):
    parser = Parser(description=__doc__, formatter_class=Formatter)
    parser.add_argument("--run", required=True, default=argparse.SUPPRESS, help="a run directory of train_lm.py")
    parser.add_argument("--words", type=int, default=100, help="tokens to sample: words for a word-level run, "
                        "GPT-1 byte-pair pieces for a token-file run")
    parser.add_argument("--temperature", type=float, default=1.0, help="below 1: safer, above 1: wilder")
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--prompt", default="", help="words (or token ids for token-id runs) to continue")
    parser.add_argument("--seed", type=int, default=1, help="the same seed gives the same sample")
    args = parser.parse_args(argv)
    check(1 <= args.words <= 100_000, f"--words must be in 1..100,000, got {args.words}")
    check(0 < args.temperature < float("inf"), f"--temperature must be a positive number, got {args.temperature}")
    check(0 <= args.seed < 2 ** 63, f"--seed must be in 0..2**63-1, got {args.seed}")
    check(args.top_k >= 0, f"--top_k must be >= 0, got {args.top_k}")
    model, config, vocab = load_run(args.run)
    bpe, missing = gpt1_vocabulary(config) if vocab is None else (None, "")
    ids, unknown = encode(args.prompt, vocab, bpe, missing)
    size = config["model_args"]["vocab_size"]
    check(all(0 < i < size for i in ids), f"prompt ids must lie in 1..{size - 1}")
    if missing:  # once the prompt is found good: a refused one is one line
        print(f"note: the sample stays token ids, since {missing}", file=sys.stderr)
    if unknown:
        print(f"warning: not in the vocabulary, read as <unk>: {' '.join(unknown)}", file=sys.stderr)
    generator = torch.Generator().manual_seed(args.seed)
    drawn = [] if ids else [int(torch.randint(1, size, (1,), generator=generator))]
    out = drawn + sample(model, ids or drawn, args.words - len(drawn), args.temperature, args.top_k, generator,
                         config["model_args"]["seq_len"])  # no prompt: a token drawn with the seed starts the sample
    if bpe is not None:  # the prompt, then its continuation
        text = bpe.decode(ids + out)
    elif vocab is None:
        text = " ".join(map(str, out))
    else:
        text = decode(ids + out, vocab) if args.prompt.strip() else decode(out, vocab)
    print(text, flush=True)


if __name__ == "__main__":
    main()
