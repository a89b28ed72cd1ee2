"""Data tests on tiny fixtures in the real formats (token .npz, word-level text with a BOM, ImageFolder
trees, torchvision's pickled CIFAR-10 batches). The fixture writers are shared with test_train.py."""
import hashlib
import io
import itertools
import math
import os
import pickle
import re
import shutil
import socket
import tempfile
import threading
import time
import unittest
import urllib.error
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

import data
import utils
import augment as augment_module
from augment import AUGMENTS, CIFAR_MEAN, CIFAR_STD, TA_OPS, augment, crop_params, mix, normalize, trivial_augment
from data import Windows, index_batches, load_cifar10, load_wikitext, split_train_valid
from utils import UserError

WORDS = "the cat sat on the mat and the dog sat on the log".split()


def write_token_files(folder, n=(400, 90, 70), vocab_size=50, seed=0):
    """wiki.{train,validation,test}.npz in the reference's format (uint16 ids from 1, line sizes);
    `vocab_size` is stored too, so the model stays small."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in zip(("train", "validation", "test"), n):
        tokens = rng.integers(1, vocab_size, count).astype(np.uint16)
        np.savez(folder / f"wiki.{name}.npz", tokens=tokens, sizes=np.array([count // 2, count - count // 2]),
                 vocab_size=np.array(vocab_size))
    return folder


def write_text_files(folder, lines=(40, 8, 8), seed=0):
    """train/valid/test.txt, word-level, valid.txt with a byte-order mark like the real file."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in zip(("train", "valid", "test"), lines):
        text = "".join(" " + " ".join(rng.choice(WORDS, 6)) + " \n" for _ in range(count))
        if name == "valid":
            text = "\ufeff \n = Heading = \n" + text  # BOM, an empty-ish line, and unseen words
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


CLASSES = ("cat", "dog", "ship")


def class_image(label, rng, size=32):
    """A learnable image: the class sets the dominant colour channel."""
    img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    img[..., label % 3] += 150
    return img


def write_image_folder(folder, per_class=(12, 4), suffix=".png", seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    pixels = {}
    for split, count in zip(("train", "test"), per_class):
        for label, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = class_image(label, rng)
                path = folder / split / name / f"{i:04d}{suffix}"
                Image.fromarray(img).save(path, quality=95)
                pixels[path] = img
    return folder, pixels


def write_torchvision_cifar(root, n_per_batch=6, seed=0):
    """cifar-10-batches-py/ exactly as torchvision reads it (pickled dicts, 3072 bytes per image).
    Returns the md5 lists to patch into torchvision's CIFAR10, whose own list pins the real files."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [int(x) for x in rng.integers(0, 10, n_per_batch)]
        images = np.stack([class_image(y, rng).transpose(2, 0, 1).reshape(-1) for y in labels])
        with open(base / name, "wb") as f:
            pickle.dump({"data": images, "labels": labels}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    md5 = {n: hashlib.md5((base / n).read_bytes()).hexdigest() for n in names + ["batches.meta"]}
    return ([[n, md5[n]] for n in names[:5]], [[names[5], md5[names[5]]]],
            {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]})


class TempDir(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        # Never write caches into the user's real home folder.
        patcher = mock.patch.dict(os.environ, {"XDG_CACHE_HOME": str(self.tmp / "user-cache")})
        patcher.start()
        self.addCleanup(patcher.stop)


CPU = torch.device("cpu")


class TestWindows(unittest.TestCase):
    def test_every_token_after_the_first_is_a_target_exactly_once(self):
        stream = torch.arange(1, 24)  # 23 tokens -> 22 targets, windows of 5: 4 full + 1 of 2
        w = Windows(stream, 5)
        self.assertEqual(w.num_windows, 5)
        seen, counted = [], 0
        gen = torch.Generator().manual_seed(3)
        for idx, idx_host in index_batches(w.num_windows, 2, gen):
            inputs, targets = w.batch(idx)
            torch.testing.assert_close(inputs[:, 1:], targets[:, :-1])  # targets are inputs shifted by one
            mask = targets != 0
            seen += targets[mask].tolist()
            counted += w.targets_in(idx_host)
            self.assertEqual(w.targets_in(idx_host), int(mask.sum()))
        self.assertEqual(sorted(seen), stream[1:].tolist())
        self.assertEqual(counted, 22)

    def test_last_window_is_padded_with_zero_targets(self):
        w = Windows(torch.arange(1, 9), 5)  # 8 tokens: windows [1..5]->[2..6], [6,7,8,0,0]->[7,8,0,0,0]
        inputs, targets = w.batch(torch.tensor([1]))
        self.assertEqual(inputs.tolist(), [[6, 7, 8, 0, 0]])
        self.assertEqual(targets.tolist(), [[7, 8, 0, 0, 0]])

    def test_streams_interleave_contiguous_streams_and_score_every_target_once(self):
        stream = torch.arange(1, 104)  # 103 tokens: 102 targets
        w = Windows(stream, 4, streams=3)  # 26 windows -> 9 per stream, 27 in all
        self.assertEqual((w.per_stream, w.num_windows), (9, 27))
        batches = list(index_batches(w.num_windows, 3, order=w.stream_order()))
        self.assertEqual(len(batches), 9)
        for s, (idx, idx_host) in enumerate(batches):  # batch s: window s of streams 0, 1, 2
            self.assertEqual(idx.tolist(), [s, 9 + s, 18 + s])
        for s in range(8):  # each stream's next window continues exactly where its last one ended
            _, t_now = w.batch(batches[s][0])
            x_next, _ = w.batch(batches[s + 1][0])
            self.assertTrue(torch.equal(x_next[:, 0], t_now[:, -1]))
        targets = torch.cat([w.batch(i)[1].flatten() for i, _ in batches])
        self.assertEqual(sorted(targets[targets != 0].tolist()), list(range(2, 104)))
        self.assertEqual(sum(w.targets_in(h) for _, h in batches), 102)
        self.assertEqual([w.targets_in(h) for _, h in batches][-2:], [10, 8])  # the tail is padding

    def test_shuffle_is_seeded_and_differs_between_epochs(self):
        def order(seed):
            return torch.cat([i for i, _ in index_batches(50, 8, torch.Generator().manual_seed(seed))])
        torch.testing.assert_close(order(1), order(1))
        self.assertFalse(torch.equal(order(1), order(2)))
        self.assertEqual(sorted(order(1).tolist()), list(range(50)))
        self.assertEqual([len(i) for i, _ in index_batches(50, 8)][-1], 2)  # the remainder is kept


class TestWikitext(TempDir):
    def test_word_ids_follow_first_appearance_after_the_special_words(self):
        # the ids are part of the data's checksum: another order would make earlier runs unresumable
        self.assertEqual(data.build_vocab(["b", "a", "<eos>", "b", "c", "<unk>"]),
                         ["<pad>", "<unk>", "<eos>", "b", "a", "c"])

    def test_token_files(self):
        folder = write_token_files(self.tmp / "tok")
        corpus = load_wikitext(folder, CPU, download=False)
        self.assertEqual(corpus.vocab_size, 50)
        self.assertIsNone(corpus.vocab)
        self.assertEqual({s: t.numel() for s, t in corpus.splits.items()}, dict(train=400, valid=90, test=70))
        self.assertEqual(corpus.splits["train"].dtype, torch.int64)
        expected = np.load(folder / "wiki.validation.npz")["tokens"]
        self.assertEqual(corpus.splits["valid"].tolist(), expected.tolist())
        self.assertIn("token files", corpus.source)

    def test_token_files_without_vocab_size_use_gpt1_vocabulary(self):
        folder = self.tmp / "tok"
        folder.mkdir()
        for name in ("train", "validation", "test"):
            np.savez(folder / f"wiki.{name}.npz", tokens=np.array([1, 40472, 5], dtype=np.uint16), sizes=np.array([3]))
        self.assertEqual(load_wikitext(folder, CPU, download=False).vocab_size, 40479)

    def test_bad_token_files_are_refused_with_one_line(self):
        ids = "token ids must lie in 1..49 (0 is padding)"
        cases = {
            "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable .npz file"),
            "no tokens": (lambda p: np.savez(p, sizes=np.array([3])), "has no 'tokens' array (it has: sizes)"),
            "padding": (lambda p: np.savez(p, tokens=np.array([0, 3, 4], dtype=np.uint16)), f"{ids}, found 0..4"),
            "beyond": (lambda p: np.savez(p, tokens=np.array([3, 50]), vocab_size=np.array(50)), f"{ids}, found 3..50"),
            "fractions": (lambda p: np.savez(p, tokens=np.array([2.0, 3.5])), "a 1-D integer array of at least 2 ids"),
            "one id": (lambda p: np.savez(p, tokens=np.array([2])), "a 1-D integer array of at least 2 ids, got int64"),
            "a table": (lambda p: np.savez(p, tokens=np.ones((2, 2), int)), "integer array of at least 2 ids"),
            "a fractional vocabulary": (lambda p: np.savez(p, tokens=np.array([2, 3]), vocab_size=np.array(50.5)),
                                        "'vocab_size' is not a whole number"),
            "two vocabularies": (lambda p: np.savez(p, tokens=np.array([2, 3]), vocab_size=np.array([50, 60])),
                                 "'vocab_size' is not a whole number"),
        }
        for case, (damage, said) in cases.items():
            with self.subTest(case=case):
                folder = write_token_files(self.tmp / case)
                damage(folder / "wiki.test.npz")
                with self.assertRaises(UserError) as ctx:
                    load_wikitext(folder, CPU, download=False)
                self.assertIn("wiki.test.npz", str(ctx.exception))
                self.assertIn(said, str(ctx.exception))
                self.assertNotIn("\n", str(ctx.exception))
        (self.tmp / "file").write_text("")  # refused by the system, not damaged: its words, not a guess
        with self.assertRaisesRegex(UserError, f"^{re.escape(str(self.tmp / 'file' / 'x.npz'))} cannot be read: "
                                               "Not a directory$"):
            data.read_tokens_npz(self.tmp / "file" / "x.npz")

    def test_word_level_text(self):
        folder = write_text_files(self.tmp / "txt")
        corpus = load_wikitext(folder, CPU, download=False)
        vocab = corpus.vocab
        self.assertEqual(vocab[:3], ["<pad>", "<unk>", "<eos>"])
        self.assertEqual(corpus.vocab_size, len(vocab))
        self.assertEqual(len(set(vocab)), len(vocab))
        self.assertNotIn("\ufeff", "".join(vocab))
        valid = [vocab[i] for i in corpus.splits["valid"].tolist()]
        self.assertEqual(valid[:5], ["<eos>", "<unk>", "<unk>", "<unk>", "<eos>"])  # "= Heading =" is unseen
        self.assertEqual(corpus.unseen, {"valid": 3, "test": 0})  # counted: an <unk> in the text itself is not
        self.assertNotIn("=", [vocab[i] for i in corpus.splits["train"].tolist()])
        self.assertEqual(valid.count("<eos>"), 2 + 8)  # one per line
        train_words = sum(len(line.split()) + 1 for line in (folder / "train.txt").read_text().splitlines())
        self.assertEqual(corpus.splits["train"].numel(), train_words)

    def test_a_literal_pad_in_the_text_is_scored_as_unknown_not_dropped_as_padding(self):
        folder = write_text_files(self.tmp / "txt")
        (folder / "train.txt").write_text(" the <pad> cat \n")
        (folder / "test.txt").write_text(" the <pad> cat \n")
        corpus = load_wikitext(folder, CPU, download=False)
        for split in ("train", "test"):  # id 0 is never a target: the word would go unscored
            self.assertEqual([corpus.vocab[i] for i in corpus.splits[split].tolist()], ["the", "<unk>", "cat", "<eos>"])

    def test_empty_text_file_is_refused(self):
        folder = write_text_files(self.tmp / "txt")
        (folder / "test.txt").write_text("\n\n")
        with self.assertRaisesRegex(UserError, "test.txt is empty"):
            load_wikitext(folder, CPU, download=False)

    def test_incomplete_folder_names_what_is_missing(self):
        folder = write_text_files(self.tmp / "txt")
        (folder / "train.txt").unlink()
        with self.assertRaisesRegex(UserError, "missing: train.txt"):
            load_wikitext(folder, CPU)

    def test_offline_download_fails_with_a_message_naming_the_files(self):
        with mock.patch("urllib.request.urlopen", side_effect=urllib.error.URLError("no network")):
            with self.assertRaises(UserError) as ctx:
                load_wikitext(self.tmp / "empty", CPU)
        message = str(ctx.exception)
        for name in ("wiki.train.npz", "train.txt", "valid.txt", "test.txt", "no network", str(self.tmp / "empty")):
            self.assertIn(name, message)
        self.assertFalse((self.tmp / "empty" / "train.txt").exists())
        # the reason in words, as the system gives it, not an object's repr
        for error, said in ((urllib.error.URLError(socket.gaierror(-2, "Name or service not known")),
                             ": Name or service not known"),
                            (urllib.error.HTTPError("u", 404, "Not Found", {}, None), ": HTTP Error 404: Not Found"),
                            (TimeoutError(), ": TimeoutError")):
            with mock.patch("urllib.request.urlopen", side_effect=error), self.assertRaises(OSError) as ctx:
                utils.fetch("https://example.org/wiki.train.npz")
            self.assertEqual(str(ctx.exception), "https://example.org/wiki.train.npz" + said)
        # a connection that closes early: fewer bytes than the server announced are refused, all of them are not
        for length, cut in (("2048", True), ("1000", False), (None, False)):
            response = mock.MagicMock()
            response.__enter__.return_value.read.return_value = b"x" * 1000
            response.__enter__.return_value.headers = {"Content-Length": length} if length else {}
            with mock.patch("urllib.request.urlopen", return_value=response):
                if cut:
                    with self.assertRaisesRegex(OSError, r"cut short \(1,000 of 2,048 bytes\)$"):
                        utils.fetch("https://example.org/wiki.train.npz")
                else:
                    self.assertEqual(utils.fetch("https://example.org/wiki.train.npz"), b"x" * 1000)

    def _fake_archive(self):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for split, member in data.WIKITEXT_MEMBERS.items():
                z.writestr(member, f" {split} words here \n second line \n")
        return buf.getvalue()

    def test_download_is_verified_and_unpacked(self):
        blob = self._fake_archive()
        response = mock.MagicMock()
        response.__enter__.return_value.read.return_value = blob
        with mock.patch("urllib.request.urlopen", return_value=response):
            with self.assertRaisesRegex(UserError, "checksum"):
                load_wikitext(self.tmp / "bad", CPU)
            self.assertFalse((self.tmp / "bad" / "train.txt").exists())
            with mock.patch.object(data, "WIKITEXT_MD5", hashlib.md5(blob).hexdigest()):
                corpus = load_wikitext(self.tmp / "good", CPU)
        self.assertEqual((self.tmp / "good" / "valid.txt").read_text(), " valid words here \n second line \n")
        self.assertIn("train", corpus.vocab)


class TestCifar(TempDir):
    def test_image_folder_decodes_exactly_and_splits_disjointly(self):
        folder, pixels = write_image_folder(self.tmp / "cifar")
        images = load_cifar10(folder, CPU)
        self.assertEqual(images.classes, list(CLASSES))
        self.assertEqual(images.source, f"image folders (train/, test/) in {folder}")
        sizes = {s: len(y) for s, (_, y) in images.splits.items()}
        self.assertEqual(sizes, dict(train=32, valid=4, test=12))  # 36 train images: 10% to valid
        x, y = images.splits["test"]
        self.assertEqual((x.dtype, tuple(x.shape[1:])), (torch.uint8, (3, 32, 32)))
        # PNG is lossless: every test image comes back exactly, with its class label
        decoded = sorted((bytes(im.permute(1, 2, 0).numpy()), label) for im, label in zip(x, y.tolist()))
        expected = sorted((bytes(img), CLASSES.index(path.parent.name)) for path, img in pixels.items()
                          if path.parent.parent.name == "test")
        self.assertEqual(decoded, expected)
        self.assertNotEqual(y.tolist(), sorted(y.tolist()))  # a fixed shuffle: any prefix mixes classes
        # train and valid are disjoint and together are the whole training folder
        train, valid = images.splits["train"][0], images.splits["valid"][0]
        everything = {bytes(im.numpy()) for im in torch.cat([train, valid])}
        self.assertEqual(len(everything), 36)

    def test_an_image_is_named_as_damaged_or_as_refused_by_the_system(self):
        from PIL import Image
        folder, _ = write_image_folder(self.tmp / "cifar")
        image = sorted((folder / "train" / CLASSES[0]).iterdir())[0]
        image.write_bytes(image.read_bytes()[:60])
        with self.assertRaisesRegex(UserError, f"^cannot decode image {re.escape(str(image))}: "):
            load_cifar10(folder, CPU)
        refused = PermissionError(13, "Permission denied")
        with mock.patch.object(Image, "open", side_effect=refused), self.assertRaisesRegex(
                UserError, f"^cannot read image {re.escape(str(image))}: Permission denied$"):
            load_cifar10(folder, CPU)

    def test_split_is_fixed_and_disjoint_at_full_size(self):
        a_train, a_valid = split_train_valid(50_000)
        b_train, _ = split_train_valid(50_000)
        self.assertEqual((len(a_train), len(a_valid)), (45_000, 5_000))
        torch.testing.assert_close(a_train, b_train)
        self.assertEqual(len(set(a_train.tolist()) | set(a_valid.tolist())), 50_000)

    def test_jpeg_folder_and_cache(self):
        folder, _ = write_image_folder(self.tmp / "cifar", suffix=".jpg")
        first = load_cifar10(folder, CPU)
        self.assertTrue((folder / data.CACHE_NAME).exists())
        with mock.patch.object(data, "_decode", side_effect=AssertionError("the cache was not used")):
            second = load_cifar10(folder, CPU)
        # lossy, so never CIFAR-10's own pixels, decoded or from the cache alike: the report reads this
        self.assertEqual((first.source, second.source), (f"JPEG (lossy) image folders (train/, test/) in {folder}",) * 2)
        for s in first.splits:
            torch.testing.assert_close(first.splits[s][0], second.splits[s][0])
        # a cache whose arrays do not fit (dtype, labels out of range) is rebuilt, not used
        with np.load(folder / data.CACHE_NAME) as z:
            arrays = dict(z)
        for damage in (dict(train_x=arrays["train_x"].astype(np.float32)), dict(test_y=arrays["test_y"] + 7)):
            np.savez(folder / data.CACHE_NAME, **dict(arrays, **damage))
            third = load_cifar10(folder, CPU)
            for s in first.splits:
                self.assertTrue(torch.equal(first.splits[s][0], third.splits[s][0]))
                self.assertTrue(torch.equal(first.splits[s][1], third.splits[s][1]))
        # as many images, each of them new: the cache's arrays would fit, its fingerprint (sizes, times) does not
        write_image_folder(self.tmp / "cifar", suffix=".jpg", seed=1)
        redrawn = load_cifar10(folder, CPU)
        (folder / data.CACHE_NAME).unlink()
        self.assertFalse(torch.equal(redrawn.splits["train"][0], first.splits["train"][0]))
        self.assertTrue(torch.equal(redrawn.splits["train"][0], load_cifar10(folder, CPU).splits["train"][0]))
        # a changed folder invalidates the cache
        write_image_folder(self.tmp / "cifar", per_class=(13, 4), suffix=".jpg", seed=1)
        changed = load_cifar10(folder, CPU).splits
        self.assertEqual(len(changed["train"][1]) + len(changed["valid"][1]), 13 * 3)

    def test_images_rewritten_at_the_same_sizes_are_decoded_again(self):
        folder, _ = write_image_folder(self.tmp / "cifar", suffix=".bmp")
        first = load_cifar10(folder, CPU)
        sizes = sorted(p.stat().st_size for p in folder.rglob("*.bmp"))
        write_image_folder(self.tmp / "cifar", suffix=".bmp", seed=1)  # uncompressed: new pixels, the same sizes
        self.assertEqual(sorted(p.stat().st_size for p in folder.rglob("*.bmp")), sizes)
        self.assertFalse(torch.equal(load_cifar10(folder, CPU).splits["train"][0], first.splits["train"][0]))

    def test_read_only_folder_caches_in_the_user_cache(self):
        folder, _ = write_image_folder(self.tmp / "cifar")
        os.chmod(folder, 0o555)
        self.addCleanup(os.chmod, folder, 0o755)
        load_cifar10(folder, CPU)
        self.assertFalse((folder / data.CACHE_NAME).exists())
        self.assertEqual(len(list((self.tmp / "user-cache").rglob("*.npz"))), 1)
        # an empty or relative XDG_CACHE_HOME is ignored (never a cache in the working folder), and
        # without any home folder the images are decoded again, without a cache
        home = self.tmp / "home"
        for xdg in ("", "relative"):
            cwd = os.getcwd()
            os.chdir(self.tmp)
            try:
                with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": xdg, "HOME": str(home)}):
                    load_cifar10(folder, CPU)
            finally:
                os.chdir(cwd)
            self.assertFalse((self.tmp / "relative").exists() or (self.tmp / "vit-lm-study").exists())
            self.assertEqual(len(list((home / ".cache" / "vit-lm-study").glob("*.npz"))), 1)
        shutil.rmtree(home)
        with mock.patch.object(Path, "home", side_effect=RuntimeError("Could not determine home directory.")), \
                mock.patch.dict(os.environ, {"XDG_CACHE_HOME": ""}):
            splits = load_cifar10(folder, CPU).splits
        self.assertEqual(len(splits["test"][1]), 4 * len(CLASSES))
        self.assertFalse(home.exists())

    def test_bad_image_folders_are_refused(self):
        folder, _ = write_image_folder(self.tmp / "differ")
        shutil.rmtree(folder / "test" / "ship")
        with self.assertRaisesRegex(UserError, "classes differ.*ship"):
            load_cifar10(folder, CPU)
        for split in ("train", "test"):
            (self.tmp / "empty" / split / "cat").mkdir(parents=True)
        with self.assertRaisesRegex(UserError, "holds no images"):
            load_cifar10(self.tmp / "empty", CPU)
        folder, _ = write_image_folder(self.tmp / "nested")
        (folder / "train" / "cat" / "more").mkdir()  # read by torchvision's ImageFolder: not left out in silence
        with self.assertRaisesRegex(UserError, f"^{re.escape(str(folder / 'train' / 'cat' / 'more'))} is a folder "
                                    "inside a class folder"):
            load_cifar10(folder, CPU)
        for gone in ("test", "train"):  # half a tree is no CIFAR-10 to fetch into it
            folder, _ = write_image_folder(self.tmp / f"no_{gone}")
            shutil.rmtree(folder / gone)
            with mock.patch("urllib.request.urlopen") as fetch, self.assertRaisesRegex(UserError, "^" + re.escape(
                    f"{folder / gone} is missing: an image folder tree holds train/<class>/* and test/<class>/*")):
                load_cifar10(folder, CPU)
            fetch.assert_not_called()
        from PIL import Image
        folder, _ = write_image_folder(self.tmp / "deep")
        deep = folder / "train" / "cat" / "0001.png"  # 16 bits a channel: converting to RGB would clip it to 255
        Image.fromarray(np.full((32, 32), 1000, dtype=np.uint16)).save(deep)
        with self.assertRaisesRegex(UserError, f"^{re.escape(str(deep))} has more than 8 bits per channel"):
            load_cifar10(folder, CPU)
        folder, _ = write_image_folder(self.tmp / "sizes")  # one image of another size, then all of a split
        Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(folder / "test" / "dog" / "0001.png")
        with self.assertRaisesRegex(UserError, rf"^images in {re.escape(str(folder / 'test'))} differ in size: "
                                    r"\[\(24, 24, 3\), \(32, 32, 3\)\]"):
            load_cifar10(folder, CPU)
        for p in (folder / "test").rglob("*.png"):
            Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(p)
        with self.assertRaisesRegex(UserError, "^train and test images differ in size in "):
            load_cifar10(folder, CPU)

    def test_torchvision_format(self):
        train_list, test_list, meta = write_torchvision_cifar(self.tmp / "tv")
        import torchvision
        with mock.patch.multiple(torchvision.datasets.CIFAR10, train_list=train_list, test_list=test_list, meta=meta):
            images = load_cifar10(self.tmp / "tv", CPU, download=False)
        self.assertEqual({s: len(y) for s, (_, y) in images.splits.items()}, dict(train=27, valid=3, test=6))
        self.assertEqual(images.classes[0], "class0")
        x, y = images.splits["test"]
        raw = pickle.loads((self.tmp / "tv" / "cifar-10-batches-py" / "test_batch").read_bytes())
        self.assertEqual(sorted(zip(map(bytes, x.reshape(6, -1).numpy()), y.tolist())),
                         sorted(zip(map(bytes, raw["data"]), raw["labels"])))
        with self.assertRaises(UserError) as ctx:  # against the real CIFAR-10's checksums: damaged, not missing
            load_cifar10(self.tmp / "tv", CPU, download=False)
        self.assertIn(f"{self.tmp / 'tv' / 'cifar-10-batches-py'} fails torchvision's checksums", str(ctx.exception))

    def test_runs_started_together_on_a_fresh_machine_wait_for_one_download(self):
        train_list, test_list, meta = write_torchvision_cifar(self.tmp / "published")
        published = {p.name: p.read_bytes() for p in (self.tmp / "published" / "cifar-10-batches-py").iterdir()}
        fetched = []

        def download(url, root, filename, md5):  # as torchvision's: the files written in place, one after another
            fetched.append(root)
            base = Path(root) / "cifar-10-batches-py"
            base.mkdir(parents=True, exist_ok=True)
            for name, content in published.items():
                (base / name).write_bytes(content[:100])
                time.sleep(0.05)
                (base / name).write_bytes(content)
        import torchvision
        loaded = {}
        with mock.patch.multiple(torchvision.datasets.CIFAR10, train_list=train_list, test_list=test_list, meta=meta), \
                mock.patch("torchvision.datasets.cifar.download_and_extract_archive", download):
            runs = [threading.Thread(target=lambda i=i: loaded.update({i: load_cifar10(self.tmp / "fresh", CPU)}))
                    for i in range(2)]
            for run in runs:
                run.start()
            for run in runs:
                run.join(60)
        self.assertEqual(len(fetched), 1)
        self.assertEqual(sorted(loaded), [0, 1])
        self.assertEqual(loaded[0].sha256, loaded[1].sha256)

    def test_a_file_given_as_the_data_folder_or_above_it_is_named_before_any_download(self):
        (self.tmp / "file").write_text("")
        for load, folder in itertools.product((load_cifar10, load_wikitext), ("file", "file/cifar10/train")):
            said = f"{self.tmp / folder}: {self.tmp / 'file'}" if "/" in folder else f"{self.tmp / 'file'}"
            with mock.patch("urllib.request.urlopen") as fetch, self.assertRaisesRegex(
                    UserError, f"^{re.escape(said)} is a file, not the data's folder$"):
                load(self.tmp / folder, CPU)
            fetch.assert_not_called()

    def test_the_folder_above_the_data_is_named_with_the_one_to_give_before_any_download(self):
        data = self.tmp / "data"
        write_image_folder(data / "cifar10", per_class=(1, 1))
        write_token_files(data / "wikitext2")
        write_text_files(data / "words")
        for load, inner, what in ((load_cifar10, "cifar10", "CIFAR-10"), (load_wikitext, "wikitext2", "Wikitext-2")):
            with mock.patch("urllib.request.urlopen") as fetch, self.assertRaisesRegex(UserError, re.escape(
                    f"{data} holds no {what}, but {data / inner} in it does: give that folder instead")):
                load(data, CPU)
            fetch.assert_not_called()
        with self.assertRaisesRegex(UserError, re.escape(f"but {data / 'words'} in it does")):
            load_wikitext(data, CPU, "words")
        unpacked = self.tmp / "unpacked"  # wikitext-2-v1.zip unpacked by hand, in the folder or as it comes
        for where in (unpacked, unpacked / "wikitext-2"):
            where.mkdir(parents=True, exist_ok=True)
            for name in ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"):
                (where / name).write_text(" a b \n")
            with mock.patch("urllib.request.urlopen") as fetch, self.assertRaisesRegex(UserError, re.escape(
                    f"{where} holds Wikitext-2's own files (wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens); "
                    f"they are read as train.txt, valid.txt, test.txt in {unpacked}: copy them there under those "
                    f"names")):
                load_wikitext(unpacked, CPU)
            fetch.assert_not_called()
            shutil.rmtree(unpacked)
        (data / "tv" / "cifar-10-batches-py").mkdir(parents=True)
        (data / "tv" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
        for part in (data / "cifar10" / "train", data / "tv" / "cifar-10-batches-py"):  # a folder inside the data
            with mock.patch("urllib.request.urlopen") as fetch, self.assertRaisesRegex(UserError, re.escape(
                    f"{part} is a part of the data, not its folder: give {part.parent} instead")):
                load_cifar10(part, CPU)
            fetch.assert_not_called()

    def test_missing_cifar_offline_names_what_to_put_where(self):
        with self.assertRaises(UserError) as ctx:
            load_cifar10(self.tmp / "nothing", CPU, download=False)
        self.assertIn("cifar-10-python.tar.gz", str(ctx.exception))
        self.assertIn(str(self.tmp / "nothing"), str(ctx.exception))
        with mock.patch("urllib.request.urlopen", side_effect=urllib.error.URLError("offline")), \
                self.assertRaisesRegex(UserError, "could not be downloaded"):
            load_cifar10(self.tmp / "data" / "cifar10", CPU)
        self.assertEqual(list(self.tmp.iterdir()), [])  # the folders the download made are gone
        (self.tmp / "other").mkdir()  # a folder of something else, given by mistake: left as it was
        with mock.patch("urllib.request.urlopen", side_effect=urllib.error.URLError("offline")), \
                self.assertRaisesRegex(UserError, "could not be downloaded"):
            load_cifar10(self.tmp / "other", CPU)
        self.assertEqual(list(self.tmp.rglob("*")), [self.tmp / "other"])
        archive = self.tmp / "cut" / "cifar-10-python.tar.gz"  # a download cut short: damaged, not missing
        archive.parent.mkdir()
        archive.write_bytes(b"\x1f\x8b" + bytes(1000))
        with mock.patch("urllib.request.urlopen", side_effect=urllib.error.URLError("offline")), \
                self.assertRaisesRegex(UserError, f"^{re.escape(str(archive))} fails torchvision's checksum \\(incomplete "
                                                  f"or damaged\\) and could not be downloaded \\(offline\\)"):
            load_cifar10(archive.parent, CPU)


class TestAugment(unittest.TestCase):
    def setUp(self):
        self.images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)

    def test_shape_and_normalisation(self):
        out = augment(self.images, torch.Generator().manual_seed(0))
        self.assertEqual((out.shape, out.dtype), (self.images.shape, torch.float32))
        plain = normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
        expected = torch.tensor([(1 - m) / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)])
        torch.testing.assert_close(plain, expected)

    def test_a_flipped_crop_is_the_crop_flipped(self):
        plain = augment(self.images, torch.Generator().manual_seed(2), flip=False)
        real = torch.rand
        # the crop draws as before (float64), then every flip drawn
        with mock.patch("torch.rand", lambda *a, **k: torch.zeros(*a) if len(a) == 1 else real(*a, **k)):
            flipped = augment(self.images, torch.Generator().manual_seed(2))
        torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-4, rtol=0)

    def test_rectangular_images(self):
        images = torch.randint(0, 256, (4, 3, 24, 40), dtype=torch.uint8)
        same = augment(images, torch.Generator().manual_seed(0), flip=False, scale=(1, 1), ratio=(1, 1))
        torch.testing.assert_close(same, normalize(images), atol=1e-5, rtol=0)
        for policy in AUGMENTS:
            self.assertEqual(augment(images, torch.Generator().manual_seed(0), policy=policy).shape, images.shape)

    def test_the_input_is_left_untouched_whatever_its_dtype(self):
        for images in (self.images, self.images.float()):
            before = images.clone()
            for policy in ("reference", "strong"):
                augment(images, torch.Generator().manual_seed(0), policy=policy)
                self.assertTrue(torch.equal(images, before))

    def test_full_crop_is_identity_and_flip_flips(self):
        gen = torch.Generator().manual_seed(0)
        same = augment(self.images, gen, flip=False, scale=(1, 1), ratio=(1, 1))
        torch.testing.assert_close(same, normalize(self.images), atol=1e-5, rtol=0)
        with mock.patch("torch.rand", side_effect=lambda *a, **k: torch.zeros(*a)):  # every flip drawn
            flipped = augment(self.images, gen, scale=(1, 1), ratio=(1, 1))
        torch.testing.assert_close(flipped, normalize(self.images).flip(-1), atol=1e-5, rtol=0)

    def test_crops_lie_within_the_image_and_the_reference_ranges(self):
        top, left, h, w = crop_params(20_000, 32, 32, torch.Generator().manual_seed(0))
        self.assertTrue(((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32)).all())
        area = (h * w).float() / 1024
        self.assertGreaterEqual(area.min().item(), 0.75)  # 0.8 of the area, less whole-pixel rounding
        aspect = (w.float() / h.float())
        self.assertTrue(((aspect > 0.85) & (aspect < 1.17)).all())
        self.assertGreater(len(set(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist()))), 100)
        # a box as wide as the image fits, as in torchvision; its top takes every place from 0 to the last
        top, left, h, w = crop_params(2_000, 40, 32, torch.Generator().manual_seed(0), scale=(0.8, 0.8), ratio=(1, 1))
        self.assertEqual((set(h.tolist()), set(w.tolist()), set(left.tolist()), set(top.tolist())),
                         ({32}, {32}, {0}, set(range(9))))

    def test_crop_is_a_bilinear_resize_of_its_box(self):
        gen = torch.Generator().manual_seed(5)
        out = augment(self.images, gen, flip=False)
        top, left, h, w = crop_params(16, 32, 32, torch.Generator().manual_seed(5))
        x = normalize(self.images)
        for i in range(16):
            box = x[i:i + 1, :, top[i]:top[i] + h[i], left[i]:left[i] + w[i]]
            ref = F.interpolate(box, size=(32, 32), mode="bilinear", align_corners=False)[0]
            # borders differ: interpolate clamps at the box edge, grid_sample reads the pixel beyond it
            torch.testing.assert_close(out[i, :, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-4, rtol=0)

    def test_each_image_gets_its_own_parameters_and_seeds_repeat(self):
        same = self.images[:1].expand(16, -1, -1, -1)
        out = augment(same, torch.Generator().manual_seed(1))
        self.assertGreater(len({bytes(o.numpy()) for o in out}), 12)
        torch.testing.assert_close(out, augment(same, torch.Generator().manual_seed(1)))


class TestStrongAugment(unittest.TestCase):
    """The strong policy's operations: each against torchvision's own where it has one, identity at
    magnitude 0, and drawn per image."""

    def setUp(self):
        g = torch.Generator().manual_seed(0)
        # smooth images with structure, so that geometry and sharpness have something to act on
        base = F.interpolate(torch.rand(6, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear")
        self.images = (base * 255).round().to(torch.uint8)

    def op(self, name, magnitude, images=None):
        x = (self.images if images is None else images).float()
        n = x.shape[0]
        return trivial_augment(x, None, torch.full((n,), TA_OPS.index(name)), torch.full((n,), float(magnitude)))

    def test_magnitude_zero_is_the_identity(self):
        images = self.images.clone()
        images[:, :, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)  # black and white pixels too
        for name in TA_OPS:
            if name != "autocontrast":  # has no magnitude, as in torchvision
                with self.subTest(op=name):
                    torch.testing.assert_close(self.op(name, 0.0, images), images.float(), atol=1e-4, rtol=0)

    def test_operations_equal_torchvision_at_their_largest_magnitude(self):
        import torchvision.transforms.v2.functional as TF
        x, f = self.images.float() / 255, 1.9  # factor 1 + 0.9 at magnitude 1
        expected = {
            ("brightness", 1): TF.adjust_brightness(x, f) * 255,
            ("contrast", 1): TF.adjust_contrast(x, f) * 255,
            ("saturation", -1): TF.adjust_saturation(x, 0.1) * 255,
            ("sharpness", 1): TF.adjust_sharpness(x, f) * 255,
            ("posterize", 1): TF.posterize(self.images, 4).float(),
            ("posterize", 0.3): TF.posterize(self.images, 7).float(),  # 8 - round(4 x 0.3) bits
            ("autocontrast", 0.5): TF.autocontrast(x) * 255,
            ("solarize", 0.5): TF.solarize(self.images, 128).float(),  # pixels above 127.5: 128 and up
        }
        for (name, m), want in expected.items():
            with self.subTest(op=name):
                # torchvision's float grey is 0.2989 R (PIL's 0.299): a difference below 0.03 of 255
                torch.testing.assert_close(self.op(name, m), want, atol=0.03, rtol=0)
        flat = self.images.clone()
        flat[:, 1] = 77  # a channel of one value: left as it is
        stretched = self.op("autocontrast", 0.5, flat)
        torch.testing.assert_close(stretched, TF.autocontrast(flat).float(), atol=1, rtol=0)  # torchvision's rounded
        self.assertTrue((stretched[:, 1] == 77).all())
        geometry = {("rotate", 1): TF.rotate(self.images, 30.0), ("rotate", -1): TF.rotate(self.images, -30.0),
                    ("translate_x", 1): TF.affine(self.images, 0.0, [-14, 0], 1.0, [0.0, 0.0]),
                    ("translate_y", -1): TF.affine(self.images, 0.0, [0, 14], 1.0, [0.0, 0.0]),
                    ("shear_x", 1): TF.affine(self.images, 0.0, [0, 0], 1.0, [math.degrees(math.atan(0.3)), 0.0]),
                    ("shear_y", -1): TF.affine(self.images, 0.0, [0, 0], 1.0, [0.0, -math.degrees(math.atan(0.3))])}
        for (name, m), want in geometry.items():  # nearest-neighbour: equal but for rounding at pixel edges
            with self.subTest(op=name):
                agree = (self.op(name, m) == want.float()).float().mean().item()
                self.assertGreater(agree, 0.97, name)

    def test_each_image_draws_its_own_operation_and_magnitude(self):
        same = self.images[:1].expand(64, -1, -1, -1).float()
        out = trivial_augment(same, torch.Generator().manual_seed(3))
        distinct = {bytes(o.numpy()) for o in out}
        self.assertGreater(len(distinct), 40)  # identity draws and autocontrast repeat; the rest differ
        self.assertTrue(((out >= 0) & (out <= 255)).all())
        torch.testing.assert_close(out, trivial_augment(same, torch.Generator().manual_seed(3)))

    def test_batched_equals_one_image_at_a_time(self):
        # The batch is grouped by operation and put back in order: each image must get its own draw.
        g = torch.Generator().manual_seed(4)
        x = self.images.float().repeat(5, 1, 1, 1)[:26]
        ops = torch.randperm(26, generator=g) % len(TA_OPS)  # every operation twice, shuffled
        m = torch.rand(26, generator=g) * 2 - 1
        out = trivial_augment(x, None, ops, m)
        for i in range(26):
            with self.subTest(op=TA_OPS[ops[i]]):
                torch.testing.assert_close(out[i:i + 1], trivial_augment(x[i:i + 1], None, ops[i:i + 1], m[i:i + 1]),
                                           atol=1e-3, rtol=0)

    def test_translation_is_a_zero_padded_shift_within_the_padding(self):
        x = normalize(self.images)
        # the strong policy without crop, flip or operation: each image is the original moved by its
        # own shift of at most 4 pixels, zero-padded (0 before normalising)
        with mock.patch.object(augment_module, "trivial_augment", lambda x, generator: x):
            out = augment(self.images, torch.Generator().manual_seed(0), flip=False, scale=(1, 1), ratio=(1, 1),
                          policy="strong")
        zero = normalize(torch.zeros(1, 3, 1, 1))
        padded = F.pad(x - zero, (4, 4, 4, 4)) + zero
        shifts = set()
        for i in range(6):
            found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                     if torch.allclose(out[i], padded[i, :, 4 - dy:36 - dy, 4 - dx:36 - dx], atol=1e-5)]
            self.assertEqual(len(found), 1, f"image {i} is no single shift of the original")
            shifts.add(found[0])
        self.assertGreater(len(shifts), 2)
        dot = torch.zeros(400, 3, 9, 9, dtype=torch.uint8)
        dot[:, :, 4, 4] = 255  # a white pixel in the middle: where it lands is the shift
        with mock.patch.object(augment_module, "trivial_augment", lambda x, generator: x):
            out = augment(dot, torch.Generator().manual_seed(0), flip=False, scale=(1, 1), ratio=(1, 1),
                          policy="strong")
        where = out[:, 0].flatten(1).argmax(1)
        self.assertEqual((set((where // 9).tolist()), set((where % 9).tolist())), (set(range(9)), set(range(9))))
        with self.assertRaisesRegex(ValueError, "unknown augmentation"):
            augment(self.images, torch.Generator(), policy="wild")


class TestMix(unittest.TestCase):
    def setUp(self):
        self.images = torch.arange(16, dtype=torch.float32).view(16, 1, 1, 1).expand(16, 3, 8, 8).contiguous()
        self.labels = torch.arange(16)  # label i on image i (all pixels i): the mixing can be read back

    def test_mixup_blends_images_with_the_label_weight(self):
        out, labels_b, lam = mix(self.images, self.labels, torch.Generator().manual_seed(0), mixup=0.4)
        self.assertTrue(0 <= lam <= 1)
        want = lam * self.labels.float() + (1 - lam) * labels_b.float()
        torch.testing.assert_close(out[:, 0, 0, 0], want)
        self.assertEqual(sorted(labels_b.tolist()), list(range(16)))  # a permutation of the batch

    def test_cutmix_label_mass_is_the_exact_pixel_fraction(self):
        for seed in range(10):
            out, labels_b, lam = mix(self.images, self.labels, torch.Generator().manual_seed(seed), cutmix=1.0)
            moved = labels_b != self.labels
            from_b = (out == labels_b.float().view(16, 1, 1, 1)).float().mean((1, 2, 3))
            torch.testing.assert_close(from_b[moved], torch.full((int(moved.sum()),), 1 - lam))
            self.assertTrue(((out == self.labels.float().view(16, 1, 1, 1)) | (from_b[:, None, None, None] > 0)).all())

    def test_the_weight_follows_its_beta_distribution_for_any_alpha(self):
        g, reference = torch.Generator().manual_seed(0), np.random.default_rng(0)
        for alpha in (0.001, 0.4, 50.0):  # torch's own Beta(0.001) gives 0.01 < lam < 0.99 a quarter of the time
            lams = np.array([mix(self.images, self.labels, g, mixup=alpha)[2] for _ in range(1000)])
            want = reference.beta(alpha, alpha, 200_000)
            for stat, delta in ((lambda v: ((v < 0.01) | (v > 0.99)).mean(), 0.05),
                                (lambda v: (v * (1 - v)).mean(), 0.01)):  # about 4 standard errors
                self.assertAlmostEqual(stat(lams), stat(want), delta=delta, msg=f"alpha {alpha}")
        for alpha in (1e-320, 1e308):  # below float32's range, and at float64's end: a weight all the same
            lams = [mix(self.images, self.labels, g, mixup=alpha, cutmix=alpha)[2] for _ in range(20)]
            self.assertTrue(all(0 <= lam <= 1 for lam in lams), lams)

    def test_both_alphas_alternate_between_mixup_and_cutmix(self):
        kinds = set()
        for seed in range(20):
            out, _, lam = mix(self.images, self.labels, torch.Generator().manual_seed(seed), mixup=1.0, cutmix=1.0)
            kinds.add("cutmix" if torch.equal(out, out.round()) else "mixup")
        self.assertEqual(kinds, {"mixup", "cutmix"})


if __name__ == "__main__":
    unittest.main()
