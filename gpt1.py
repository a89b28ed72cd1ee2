"""GPT-1's byte-pair vocabulary and token embeddings, as the reference report's language models used
them: fetched from the pinned commit of openai/finetune-transformer-lm (MIT licence), each file
verified against its git blob id before use, and kept beside the token files. Without internet,
from its files fetched elsewhere (params_0.npy ... params_2.npy, encoder_bpe_40000.json,
vocab_40000.bpe of its folder model/):

    python gpt1.py --from DIR --data_folder ./data/wikitext2

    >>> path = gpt1_embeddings("./data/wikitext2")     # gpt1_embeddings.npz: (40,479, 768), row 0 padding
    >>> vocab = Vocabulary.find("./data/wikitext2"); vocab.decode(vocab.encode("the history of"))
    'the history of'

The reference's token files hold GPT-1 ids plus one (id 0 is padding), so row i of the embedding
table is GPT-1's token i - 1.
"""
import argparse
import hashlib
import io
import json
import re
import unicodedata
from pathlib import Path

import numpy as np

from config import Parser
from rundir import atomic_bytes
from utils import UserError, check, check_folder, cli, fetch

GPT1_URL = "https://raw.githubusercontent.com/openai/finetune-transformer-lm/a69b5c43b0452462890bca8ff92fb75dee9290cf/model/"
# git blob ids at that commit: a blob id is the SHA-1 of b"blob <size>\0" + content
BLOBS = {"params_0.npy": "84d83ac1f1cc878f56f33b167482c184491875d2",
         "params_1.npy": "0f19f4d4cda3d8f908e3faffd2cb2a8b9a4039da",
         "params_2.npy": "25bc19c72fdff69505a828ec6d73b32063532148",
         "encoder_bpe_40000.json": "9dc3f0af5a80956e57dc8d9401e16dfadcade7c2",
         "vocab_40000.bpe": "0023a687b3d4d0b795a5e97cc914bdabb5a253df"}
# The first two arrays of the concatenated parameters: positions (512 x 768), then tokens.
SHAPES = ((512, 768), (40478, 768))
EMBEDDINGS_FILE = "gpt1_embeddings.npz"


def git_blob_id(content):
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def fetch_verified(name, base=GPT1_URL):
    """The bytes of one file of the pinned commit, from its address or a local folder `base`,
    verified; OSError when it cannot be had."""
    blob_id = BLOBS[name]
    content = fetch(base + name) if re.match(r"https?://", str(base)) else (Path(base) / name).read_bytes()
    if git_blob_id(content) != blob_id:
        raise OSError(f"{name} from {base} is not the pinned file (git blob {git_blob_id(content)}, "
                      f"expected {blob_id})")
    return content


def gpt1_embeddings(folder, base=GPT1_URL):
    """<folder>/gpt1_embeddings.npz (array `tokens`: a zero padding row, then GPT-1's token
    embeddings), made once: the parameter files that hold the token table are fetched and verified,
    the table read at its offset in the concatenated parameters, and the file written atomically.
    Returns its path."""
    path = Path(folder) / EMBEDDINGS_FILE
    if path.exists():
        return path
    start, count = int(np.prod(SHAPES[0])), int(np.prod(SHAPES[1]))
    pieces, have, i = [], 0, 0
    try:
        while have < start + count:
            name = f"params_{i}.npy"
            check(name in BLOBS, f"the GPT-1 parameters end before the token embeddings ({name})")
            piece = np.load(io.BytesIO(fetch_verified(name, base)), allow_pickle=False).reshape(-1)
            pieces.append(piece)
            have, i = have + piece.size, i + 1
    except (OSError, ValueError) as e:
        raise UserError(f"--embeddings gpt1: cannot fetch GPT-1's parameters ({str(e)[:300]}); put {EMBEDDINGS_FILE} "
                        f"(array 'tokens', 40,479 x 768) into {folder}, or make it from params_0.npy, params_1.npy "
                        f"and params_2.npy fetched elsewhere ({GPT1_URL}): python gpt1.py --from <their folder> "
                        f"--data_folder {folder}; or pass an .npz or .npy of your own") from None
    table = np.concatenate(pieces)[start:start + count].reshape(SHAPES[1]).astype(np.float32)
    table = np.concatenate([np.zeros((1, SHAPES[1][1]), np.float32), table])  # id 0: padding
    buf = io.BytesIO()
    np.savez(buf, tokens=table)
    atomic_bytes(path, buf.getvalue())
    print(f"data: GPT-1's token embeddings written to {path}")
    return path


class Vocabulary:
    """GPT-1's byte-pair encoding: words lower-cased, merges applied by rank, `</w>` at word ends,
    ids shifted by one as in the token files."""

    def __init__(self, encoder, merges):
        self.encoder = encoder
        self.decoder = {i: "<unk></w>" if token == "<unk>" else token for token, i in encoder.items()}  # <unk>: a word
        self.ranks = {tuple(m.split()): r for r, m in enumerate(merges) if len(m.split()) == 2}
        self.cache = {}

    @classmethod
    def find(cls, folder, base=GPT1_URL):
        """The vocabulary files in `folder`, fetched and verified there when missing."""
        files = {}
        for name in ("encoder_bpe_40000.json", "vocab_40000.bpe"):
            path = Path(folder) / name
            if not path.exists():
                atomic_bytes(path, fetch_verified(name, base))
            files[name] = path.read_text(encoding="utf-8")
        return cls(json.loads(files["encoder_bpe_40000.json"]), files["vocab_40000.bpe"].split("\n")[1:])

    def bpe(self, word):
        if word not in self.cache:
            parts = list(word[:-1]) + [word[-1] + "</w>"]
            while len(parts) > 1:
                pairs = set(zip(parts, parts[1:]))
                best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
                if best not in self.ranks:
                    break
                merged, i = [], 0
                while i < len(parts):
                    if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            self.cache[word] = parts
        return self.cache[word]

    def encode(self, text):
        """Text -> token-file ids (GPT-1 id + 1), as the report's token files encode text: lower-cased, accents
        stripped, each run of letters and digits a word and any other character one (`h.` is `h .`; a curly quote
        or a dash other than `-`, outside the vocabulary, is `<unk>`)."""
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        unk, ids = self.encoder.get("<unk>", 0), []
        for word in re.findall(r"<unk>|[^\W_]+|\S", text):  # <unk>: the token files' own word
            ids += [unk] if word == "<unk>" else [self.encoder.get(token, unk) for token in self.bpe(word)]
        return [i + 1 for i in ids]

    def decode(self, ids):
        return "".join(self.decoder.get(i - 1, "<unk></w>") for i in ids).replace("</w>", " ").strip()


@cli
def main(argv=None):
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="a folder with GPT-1's params_0.npy, "
                        "params_1.npy, params_2.npy (and, for text, encoder_bpe_40000.json and vocab_40000.bpe)")
    parser.add_argument("--data_folder", default="./data/wikitext2", help="where the token files are")
    args = parser.parse_args(argv)
    source, folder = Path(args.source), Path(args.data_folder)
    check_folder(source, "--from", "is a file: give the folder that holds it")
    vocabulary = [name for name in ("encoder_bpe_40000.json", "vocab_40000.bpe") if (source / name).is_file()]
    for name in vocabulary:  # for text in and out of generate.py
        if not (folder / name).exists():  # one not pinned: an OSError, one line as any (utils.cli)
            atomic_bytes(folder / name, fetch_verified(name, source))
            print(f"data: {name} copied to {folder}")
    if vocabulary and not (source / "params_0.npy").exists():  # the vocabulary alone: what generate.py needs
        print(f"note: {source} holds no params_0.npy, so GPT-1's embeddings (--embeddings gpt1) were not made")
    else:
        gpt1_embeddings(folder, base=source)


if __name__ == "__main__":
    main()
