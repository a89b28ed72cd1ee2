"""The reference's LM set-up from public sources, against a local HTTP server serving fixtures in the
real formats: the token files (sha256), GPT-1's parameters and vocabulary (git blob ids), corrupted
and interrupted downloads; and, when the real files are here, GPT-1's decoding of Wikitext-2."""
import contextlib
import functools
import hashlib
import http.server
import io
import json
import re
import subprocess
import sys
import threading
import unittest
import unittest.mock
from pathlib import Path

import numpy as np
import torch

import data
import gpt1
from test_data import TempDir, write_token_files
from utils import UserError

HERE = Path(__file__).resolve().parent
REAL = HERE.parent / "shared" / "data"
SHAPES = ((4, 3), (6, 3), (5,))  # positions, tokens, the rest: 35 numbers over three files


class Server:
    """http.server on 127.0.0.1 serving a folder; `cut` names files sent with a Content-Length larger
    than their body, then the connection closed (an interrupted download)."""

    def __init__(self, root, cut=()):
        cut = set(cut)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = Path(root) / self.path.lstrip("/")
                if path.name in cut:
                    body = path.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) * 2))
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_params(folder):
    """params_{0,1,2}.npy: the concatenation 0, 1, ..., 34 split 16 / 10 / 9 (the token table, numbers 12 to
    29, ends in the third), and their blob ids."""
    folder.mkdir(parents=True, exist_ok=True)
    flat = np.arange(35, dtype=np.float32)
    blobs = {}
    for i, piece in enumerate(np.split(flat, [16, 26])):
        buf = io.BytesIO()
        np.save(buf, piece)
        (folder / f"params_{i}.npy").write_bytes(buf.getvalue())
        blobs[f"params_{i}.npy"] = gpt1.git_blob_id(buf.getvalue())
    return blobs


def pinned(blobs, fn, *args):
    """fn(*args) with GPT-1's pinned blob ids replaced (None: the real ones) and the fixtures' shapes."""
    with unittest.mock.patch.multiple(gpt1, BLOBS=blobs or gpt1.BLOBS, SHAPES=SHAPES):
        return fn(*args)


def embeddings(folder, base, blobs):
    return pinned(blobs, gpt1.gpt1_embeddings, folder, base)


def token_files(folder, url, sha256):
    """data.download_token_files from url, pinned to these checksums."""
    with unittest.mock.patch.multiple(data, TOKEN_URL=url, TOKEN_SHA256=sha256):
        return data.download_token_files(folder)


class TestEmbeddings(TempDir):
    def test_a_blob_id_is_gits(self):  # as `printf 'hello\n' | git hash-object --stdin` prints it
        self.assertEqual(gpt1.git_blob_id(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a")

    def test_the_token_table_is_read_at_its_offset_with_a_padding_row(self):
        blobs = write_params(self.tmp / "served")
        with Server(self.tmp / "served") as server:
            path = embeddings(self.tmp / "data", server.url, blobs)
        with np.load(path, allow_pickle=False) as d:
            table = d["tokens"]
        expected = np.concatenate([np.zeros((1, 3)), np.arange(12, 30).reshape(6, 3)]).astype(np.float32)
        np.testing.assert_array_equal(table, expected)
        # made once: later runs reuse it, with no server
        self.assertEqual(embeddings(self.tmp / "data", "http://127.0.0.1:9/", blobs), path)

    def test_offline_from_files_fetched_elsewhere_verified_alike(self):
        blobs = write_params(self.tmp / "elsewhere")
        path = embeddings(self.tmp / "data", str(self.tmp / "elsewhere"), blobs)
        with np.load(path, allow_pickle=False) as d:
            np.testing.assert_array_equal(d["tokens"][1:], np.arange(12, 30).reshape(6, 3))
        (self.tmp / "elsewhere" / "params_1.npy").write_bytes(b"\x93NUMPY damaged")
        with self.assertRaisesRegex(UserError, "not the pinned file"):
            embeddings(self.tmp / "other", str(self.tmp / "elsewhere"), blobs)
        self.assertFalse((self.tmp / "other").exists())
        (self.tmp / "empty").mkdir()
        proc = subprocess.run([sys.executable, "gpt1.py", "--from", str(self.tmp / "empty"), "--data_folder",
                               str(self.tmp / "data2")], cwd=HERE, capture_output=True, text=True, timeout=120)
        self.assertEqual((proc.returncode, len(proc.stderr.splitlines())), (2, 1), proc.stderr)
        self.assertIn("python gpt1.py --from <their folder>", proc.stderr)  # what to do, in the same words
        for source, said in (("nowhere", "does not exist"), ("elsewhere/params_0.npy", "is a file")):
            with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit) as ctx:
                gpt1.main(["--from", str(self.tmp / source), "--data_folder", str(self.tmp / "data2")])
            self.assertEqual(ctx.exception.code, 2)
            self.assertRegex(err.getvalue(), f"^error: --from {re.escape(str(self.tmp / source))} {said}")
        self.assertFalse((self.tmp / "data2").exists())

    def test_from_a_folder_of_the_vocabulary_alone_it_is_copied_and_no_embeddings_made(self):
        files = {"encoder_bpe_40000.json": b'{"a</w>": 0}', "vocab_40000.bpe": b"#version: 0.2\n"}
        (self.tmp / "vocab").mkdir()
        for name, content in files.items():
            (self.tmp / "vocab" / name).write_bytes(content)
        blobs = dict(gpt1.BLOBS, **{name: gpt1.git_blob_id(content) for name, content in files.items()})
        with contextlib.redirect_stdout(io.StringIO()) as out:
            pinned(blobs, gpt1.main, ["--from", str(self.tmp / "vocab"), "--data_folder", str(self.tmp / "data")])
        self.assertEqual({p.name: p.read_bytes() for p in (self.tmp / "data").iterdir()}, files)
        self.assertIn("holds no params_0.npy, so GPT-1's embeddings (--embeddings gpt1) were not made", out.getvalue())
        (self.tmp / "vocab" / "vocab_40000.bpe").write_bytes(b"#version: 0.3\n")  # not the pinned file: one line
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()), \
                self.assertRaises(SystemExit) as ctx:
            pinned(blobs, gpt1.main, ["--from", str(self.tmp / "vocab"), "--data_folder", str(self.tmp / "data3")])
        self.assertEqual(ctx.exception.code, 2)
        self.assertRegex(err.getvalue(), r"^error: vocab_40000.bpe from .* is not the pinned file \(git blob \w+, "
                                         r"expected \w+\)\n$")
        self.assertEqual(list((self.tmp / "data3").iterdir()), [(self.tmp / "data3" / "encoder_bpe_40000.json")])

    def test_a_corrupted_or_interrupted_download_leaves_nothing(self):
        blobs = write_params(self.tmp / "served")
        good = (self.tmp / "served" / "params_1.npy").read_bytes()
        (self.tmp / "served" / "params_1.npy").write_bytes(good[:-4] + b"\0\0\0\0")
        with Server(self.tmp / "served") as server, self.assertRaisesRegex(UserError, "not the pinned file"):
            embeddings(self.tmp / "data", server.url, blobs)
        (self.tmp / "served" / "params_1.npy").write_bytes(good)
        with Server(self.tmp / "served", cut={"params_1.npy"}) as server, \
                self.assertRaisesRegex(UserError, "cannot fetch GPT-1's parameters"):
            embeddings(self.tmp / "data", server.url, blobs)
        self.assertEqual(list((self.tmp / "data").glob("*")) if (self.tmp / "data").exists() else [], [])

    def test_offline_names_the_file_to_put_where(self):
        with self.assertRaises(UserError) as ctx:
            embeddings(self.tmp / "data", "http://127.0.0.1:9/", None)
        self.assertIn(f"put gpt1_embeddings.npz (array 'tokens', 40,479 x 768) into {self.tmp / 'data'}",
                      str(ctx.exception))


class TestTokenFiles(TempDir):
    def test_download_is_verified_and_moved_in_only_when_all_three_are_good(self):
        served = write_token_files(self.tmp / "served")
        sha = {name: hashlib.sha256((served / name).read_bytes()).hexdigest() for name in data.TOKEN_SHA256}
        with Server(served) as server:
            token_files(self.tmp / "good", server.url, sha)
            for name in sha:
                self.assertEqual((self.tmp / "good" / name).read_bytes(), (served / name).read_bytes())
            bad = dict(sha, **{"wiki.test.npz": "0" * 64})
            with self.assertRaisesRegex(OSError, "sha256"):
                token_files(self.tmp / "bad", server.url, bad)
        with Server(served, cut={"wiki.validation.npz"}) as server, self.assertRaisesRegex(OSError, "wiki.validation"):
            token_files(self.tmp / "cut", server.url, sha)
        for folder in ("bad", "cut"):
            self.assertFalse((self.tmp / folder).exists() and any((self.tmp / folder).iterdir()))

    def test_auto_downloads_the_token_files_and_offline_names_both_formats(self):
        served = write_token_files(self.tmp / "served")
        sha = {name: hashlib.sha256((served / name).read_bytes()).hexdigest() for name in data.TOKEN_SHA256}
        with Server(served) as server, unittest.mock.patch.object(data, "TOKEN_URL", server.url), \
                unittest.mock.patch.object(data, "TOKEN_SHA256", sha):
            corpus = data.load_wikitext(self.tmp / "wiki", torch.device("cpu"))
        self.assertIsNone(corpus.vocab)  # the token files, not the text
        with unittest.mock.patch.object(data, "TOKEN_URL", "http://127.0.0.1:9/"), \
                unittest.mock.patch.object(data, "WIKITEXT_URLS", ("http://127.0.0.1:9/w.zip",)), \
                self.assertRaises(UserError) as ctx:
            data.load_wikitext(self.tmp / "offline", torch.device("cpu"))
        for fragment in ("wiki.train.npz", "(GPT-1 token ids, the reference's)", "train.txt", "(word-level text)"):
            self.assertIn(fragment, str(ctx.exception))


class TestVocabulary(TempDir):
    def vocabulary(self):
        encoder = {"<unk>": 0, "a": 1, "b": 2, "a</w>": 3, "b</w>": 4, "ab</w>": 5, "ba": 6, "bab</w>": 7, "-</w>": 8,
                   "'</w>": 9}
        return gpt1.Vocabulary(encoder, ["b a", "a b</w>", "ba b</w>", ""])

    def test_merges_by_rank_word_ends_and_ids_plus_one(self):
        vocab = self.vocabulary()
        self.assertEqual(vocab.bpe("ab"), ["ab</w>"])
        self.assertEqual(vocab.bpe("bab"), ["bab</w>"])  # "b a" first (rank 0), then "ba b</w>"
        self.assertEqual(vocab.bpe("aab"), ["a", "ab</w>"])
        ids = vocab.encode("AB bab a")
        self.assertEqual(ids, [6, 8, 4])  # GPT-1 ids 5, 7, 3, plus one
        self.assertEqual(vocab.decode(ids), "ab bab a")
        self.assertEqual(vocab.encode("c"), [1])  # unknown: <unk>
        self.assertEqual(vocab.decode(vocab.encode("c a c b")), "<unk> a <unk> b")  # never glued to the next word
        # as the token files split text: letters and digits a word, any other character one, accents stripped
        self.assertEqual(vocab.encode("AB-a'B\tBàb"), [6, 9, 4, 10, 5, 8])
        self.assertEqual(vocab.encode("— – ’ <unk>"), [1, 1, 1, 1])  # outside the vocabulary, as there; <unk> itself
        gpt = gpt1.Vocabulary({".</w>": 0, "<unk>": 1, ".": 2}, [])  # "<unk>" not at id 0, where GPT-1's is
        self.assertEqual(gpt.encode("c <unk>..."), [2, 2, 1, 1, 1])
        self.assertEqual(gpt.decode([99]), "<unk>")  # an id beyond the vocabulary

    def test_files_are_fetched_verified_and_kept_beside_the_data(self):
        served = self.tmp / "served"
        served.mkdir()
        (served / "encoder_bpe_40000.json").write_text(json.dumps({"<unk>": 0, "a</w>": 1}))
        (served / "vocab_40000.bpe").write_text("#version: 0.2\n")
        blobs = {n: gpt1.git_blob_id((served / n).read_bytes()) for n in ("encoder_bpe_40000.json", "vocab_40000.bpe")}
        with Server(served) as server:
            vocab = pinned(blobs, gpt1.Vocabulary.find, self.tmp / "data", server.url)
            self.assertEqual(vocab.encode("a a"), [2, 2])
            with self.assertRaisesRegex(OSError, "not the pinned file"):
                pinned(dict(blobs, **{"vocab_40000.bpe": "0" * 40}), gpt1.Vocabulary.find, self.tmp / "other",
                       server.url)
        self.assertTrue((self.tmp / "data" / "vocab_40000.bpe").exists())

    @unittest.skipUnless((REAL / "wikitext2" / "wiki.train.npz").exists(), "the real token files are not here")
    def test_the_reports_token_files_are_what_the_report_is_compared_on(self):
        corpus = data.load_wikitext(REAL / "wikitext2", torch.device("cpu"), download=False)
        reference = json.loads((HERE / "reference.json").read_text())
        self.assertEqual(corpus.sha256, reference["lm"]["settings"]["data_sha256"])
        import plan  # what the plan assumes before the files are in place
        self.assertEqual(tuple(len(corpus.splits[s]) for s in ("train", "valid", "test")), plan.STANDARD["train_lm.py"])

    @unittest.skipUnless((REAL / "gpt1" / "encoder_bpe_40000.json").exists(), "the real GPT-1 vocabulary is not here")
    def test_text_encodes_to_the_reports_token_files_line_by_line(self):
        vocab = gpt1.Vocabulary.find(REAL / "gpt1")
        for split, name in (("validation", "valid"), ("test", "test")):
            with np.load(REAL / "wikitext2" / f"wiki.{split}.npz") as d:
                tokens, ends = d["tokens"].tolist(), np.cumsum(d["sizes"]).tolist()
            if split == "validation":
                self.assertEqual(vocab.decode(tokens[:ends[0]]), "= homarus gammarus =")
            text = (REAL / "wikitext2-words" / f"{name}.txt").read_text(encoding="utf-8-sig")
            lines = [line for line in text.splitlines() if line.strip()]  # the token files' lines
            self.assertEqual(len(lines), len(ends))
            # the word-level text has <unk> where the token files, made from the raw text, have the word
            known = [i for i, line in enumerate(lines) if "<unk>" not in line]
            self.assertGreater(len(known), 600)
            for i in known:
                self.assertEqual(vocab.encode(lines[i]), tokens[ends[i - 1] if i else 0:ends[i]], lines[i])


if __name__ == "__main__":
    unittest.main()
