"""End-to-end tests of both trainers on tiny fixtures: the run directory's files, exact metrics, learning,
refusals (one line, exit code 2, nothing lost), resume equivalence and safe loading."""
import concurrent.futures
import contextlib
import csv
import errno
import fcntl
import importlib.util
import io
import itertools
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

import config
import engine
import optim
import generate
import plot
import rundir
import utils
import train_lm
import train_vit
from augment import normalize
from data import Corpus, ImageData, Windows, load_wikitext
from models import LanguageModel
from test_data import CLASSES, TempDir, write_image_folder, write_text_files, write_token_files

HERE = Path(__file__).resolve().parent
LM_TINY = ["--embedding_size", "16", "--hidden_size", "16", "--seq_len", "8", "--batch_size", "4", "--no_progress",
           "--num_heads", "4", "--mlp_dim", "32", "--device", "cpu", "--keep_checkpoint"]
VIT_TINY = ["--embed_dim", "32", "--hidden_dim", "64", "--num_heads", "4", "--batch_size", "8", "--no_progress",
            "--device", "cpu", "--keep_checkpoint"]
LM_COLUMNS = ["epoch", "train_loss", "train_ppl", "valid_loss", "valid_ppl", "lr", "train_time", "valid_time",
              "elapsed", "tokens_per_s", "peak_mem_mb", "mem_pct"]
VIT_COLUMNS = ["epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "train_time", "valid_time",
               "elapsed", "images_per_s", "peak_mem_mb", "mem_pct"]
TIMES = {"train_time", "valid_time", "elapsed", "tokens_per_s", "images_per_s", "peak_mem_mb", "mem_pct"}


def run(main, argv):
    """Run a CLI in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def end_process(proc, signum=signal.SIGKILL):
    """A process a failed assertion left running: sent signum (SIGTERM: a sweep stops its runs, as for a user),
    its process group killed if it is still there 30 s later (one started in a session of its own), its pipes
    closed."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows


def results(run_dir):
    """metrics.csv without the timing columns, summary.json without times and memory, and
    grad_norms.csv when there is one."""
    rows = [{k: v for k, v in r.items() if k not in TIMES} for r in read_csv(run_dir / "metrics.csv")]
    summary = json.loads((run_dir / "summary.json").read_text())
    norms = read_csv(run_dir / "grad_norms.csv") if (run_dir / "grad_norms.csv").exists() else None
    return rows, {k: v for k, v in summary.items() if "time" not in k and "mem" not in k and k != "elapsed"}, norms


class CliCase(TempDir):
    def setUp(self):
        super().setUp()
        self.logs = self.tmp / "logs"

    def lm(self, *args, data=None, exp_id="run", expect=0):
        data = data or write_text_files(self.tmp / "text")
        code, out, err = run(train_lm.main, ["--data_folder", str(data), "--log_dir", str(self.logs),
                                             "--exp_id", exp_id, *LM_TINY, *args])
        self.assertEqual(code, expect, err)
        return self.logs / exp_id, out, err

    def vit(self, *args, exp_id="run", expect=0):
        folder = self.tmp / "images"
        if not folder.exists():
            write_image_folder(folder, per_class=(40, 10))
        code, out, err = run(train_vit.main, ["--data_folder", str(folder), "--log_dir", str(self.logs),
                                              "--exp_id", exp_id, *VIT_TINY, *args])
        self.assertEqual(code, expect, err)
        return self.logs / exp_id, out, err

    def assert_refused(self, err, *fragments):
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("error: "), err)
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])


class TestLanguageModelCli(CliCase):
    def test_words_of_valid_or_test_that_train_lacks_are_counted_in_a_warning(self):
        data = write_text_files(self.tmp / "text")
        with open(data / "test.txt", "a") as f:
            f.write(" the zebra <unk> zebra \n")  # a literal <unk> is a word of the vocabulary, not an unseen one
        _, out, err = self.lm("--epochs", "1", data=data)
        valid, test = (int(re.search(rf"{s} ([\d,]+) tokens", out)[1].replace(",", "")) for s in ("valid", "test"))
        self.assertIn(f"warning: words not in train.txt are read as <unk>: 3 of valid.txt's {valid:,} "
                      f"({3 / valid:.2%}), 2 of test.txt's {test:,} ({2 / test:.2%})\n", err)
        (data / "valid.txt").write_text(" the cat sat on the mat \n" * 10)
        (data / "test.txt").write_text(" the <unk> sat on the log \n" * 10)
        self.assertNotIn("<unk>", self.lm("--epochs", "1", data=data, exp_id="closed")[2])

    def test_every_core_writes_a_complete_run_directory(self):
        for core in ("lstm", "gru", "transformer"):
            with self.subTest(core=core):
                run_dir, out, _ = self.lm("--model", core, "--layers", "2", "--epochs", "2", exp_id=core)
                self.assertEqual(sorted(p.name for p in run_dir.iterdir()),
                                 ["best.pt", "checkpoint.pt", "config.json", "metrics.csv", "summary.json",
                                  "vocab.txt"])
                rows = read_csv(run_dir / "metrics.csv")
                self.assertEqual(list(rows[0]), LM_COLUMNS)
                self.assertEqual([r["epoch"] for r in rows], ["1", "2"])
                for r in rows:
                    self.assertAlmostEqual(float(r["valid_ppl"]), math.exp(float(r["valid_loss"])), places=6)
                    self.assertGreater(float(r["elapsed"]), 0)
                self.assertAlmostEqual(float(rows[1]["elapsed"]), sum(float(r["train_time"]) + float(r["valid_time"])
                                                                      for r in rows), places=6)
                tokens = int(re.search(r"train (\d+) tokens", out)[1])  # every token but the first is a target
                for r in rows:
                    self.assertAlmostEqual(float(r["tokens_per_s"]) * float(r["train_time"]), tokens - 1, places=6)
                summary = json.loads((run_dir / "summary.json").read_text())
                for split in ("train", "valid"):
                    self.assertAlmostEqual(summary[f"mean_{split}_time"],
                                           sum(float(r[f"{split}_time"]) for r in rows) / 2, places=9)
                self.assertEqual(summary["epochs"], 2)
                self.assertAlmostEqual(summary["elapsed"], float(rows[1]["elapsed"]), places=9)  # valid time too
                for key in ("params_total", "params_learnable", "best_epoch", "best_valid_ppl", "test_loss", "test_ppl",
                            "best_test_loss", "best_test_ppl", "mean_train_time", "mean_valid_time", "peak_mem_mb"):
                    self.assertIn(key, summary)
                best = min(rows, key=lambda r: float(r["valid_ppl"]))
                self.assertEqual(summary["best_epoch"], int(best["epoch"]))
                self.assertAlmostEqual(summary["best_valid_ppl"], float(best["valid_ppl"]))
                config = json.loads((run_dir / "config.json").read_text())
                self.assertEqual((config["model"], config["layers"]), (core, 2))
                self.assertEqual(config["environment"]["torch"], torch.__version__)
                # what the readers take from the run itself: its metric, and which keys are settings
                self.assertEqual(config["metric"], dict(name="ppl", label="perplexity", maximize=False, digits=2))
                self.assertIsNone(config["scoring"])  # windows, as the reference scored them
                settings = config["naming"]["settings"]
                self.assertTrue({"model", "layers", "lr", "embeddings", "precision"} <= set(settings))
                self.assertFalse({"seed", "epochs", "device", "data_folder", "data_format"} & set(settings))
                vocab = (run_dir / "vocab.txt").read_text().splitlines()
                self.assertEqual(vocab[:3], ["<pad>", "<unk>", "<eos>"])
                self.assertEqual(len(vocab), config["vocab_size"])
                weights = torch.load(run_dir / "best.pt", weights_only=True)
                self.assertEqual(weights["epoch"], summary["best_epoch"])
                self.assertIn("data: word-level text", out)

    def test_token_files_with_frozen_pretrained_embeddings(self):
        data = write_token_files(self.tmp / "tok")
        table = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
        np.savez(self.tmp / "emb.npz", tokens=table)
        run_dir, out, _ = self.lm("--embeddings", str(self.tmp / "emb.npz"), "--optimizer", "adam", data=data)
        weights = torch.load(run_dir / "best.pt", weights_only=True)["model"]
        self.assertNotIn("embedding.weight", weights)  # frozen: reloaded from the file, not saved again
        torch.testing.assert_close(generate.load_run(run_dir)[0].embedding.weight, torch.from_numpy(table))
        summary = json.loads((run_dir / "summary.json").read_text())
        self.assertEqual(summary["params_total"] - summary["params_learnable"], 50 * 16)
        config = json.loads((run_dir / "config.json").read_text())
        self.assertEqual(config["effective_weight_decay"], 0.0)  # the reference's Adam has none
        self.assertFalse((run_dir / "vocab.txt").exists())
        self.assertIn("frozen embeddings", out)
        np.save(self.tmp / "emb.npy", table)  # the table alone, as numpy saves one array
        frozen, _, _ = self.lm("--embeddings", str(self.tmp / "emb.npy"), "--optimizer", "adam", data=data,
                               exp_id="npy")
        torch.testing.assert_close(generate.load_run(frozen)[0].embedding.weight, torch.from_numpy(table))
        run_dir, _, _ = self.lm("--embeddings", str(self.tmp / "emb.npy"), "--learn_embeddings", data=data,
                                exp_id="learned")  # trained from the file: saved with the weights, sampled alike
        learned = torch.load(run_dir / "best.pt", weights_only=True)["model"]["embedding.weight"]
        torch.testing.assert_close(generate.load_run(run_dir)[0].embedding.weight, learned)
        np.save(self.tmp / "emb.npy", table[::-1])  # changed since: refused, not sampled with other embeddings
        with self.assertRaisesRegex(utils.UserError, "emb.npy, which is missing or has changed since"):
            generate.load_run(frozen)
        torch.testing.assert_close(generate.load_run(run_dir)[0].embedding.weight, learned)  # its own, in best.pt

    def test_embeddings_that_do_not_fit_are_refused(self):
        data = write_token_files(self.tmp / "tok")
        np.savez(self.tmp / "emb.npz", tokens=np.zeros((49, 16), np.float32))
        _, _, err = self.lm("--embeddings", str(self.tmp / "emb.npz"), data=data, expect=2)
        self.assert_refused(err, "(49, 16)", "(50, 16)")

    def test_the_loss_falls_on_a_learnable_sequence(self):
        folder = self.tmp / "periodic"
        folder.mkdir()
        text = " a b c d e f g h \n" * 60
        for name in ("train.txt", "valid.txt", "test.txt"):
            (folder / name).write_text(text)
        run_dir, _, _ = self.lm("--epochs", "4", "--lr", "0.01", data=folder)
        rows = read_csv(run_dir / "metrics.csv")
        self.assertLess(float(rows[-1]["valid_ppl"]), 2.0)  # from about the vocabulary size (12)
        self.assertLess(float(rows[-1]["train_loss"]), float(rows[0]["train_loss"]) / 2)


class TestVitCli(CliCase):
    def test_run_directory_and_learning(self):
        run_dir, out, _ = self.vit("--epochs", "6", "--lr", "3e-3", "--layers", "2")
        rows = read_csv(run_dir / "metrics.csv")
        self.assertEqual(list(rows[0]), VIT_COLUMNS)
        self.assertEqual(len(rows), 6)
        for r in rows:
            self.assertTrue(0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["valid_acc"]) <= 1)
        summary = json.loads((run_dir / "summary.json").read_text())
        self.assertGreater(summary["best_valid_acc"], 0.6)  # three colour-coded classes: chance is 1/3
        self.assertGreater(summary["best_test_acc"], 0.6)
        self.assertEqual(summary["params_total"], summary["params_learnable"])
        self.assertIn("images_per_s", rows[0])
        self.assertIn("image folders", out)

    def test_postnorm_and_momentum(self):
        run_dir, _, _ = self.vit("--block", "postnorm", "--optimizer", "momentum", "--epochs", "1")
        config = json.loads((run_dir / "config.json").read_text())
        self.assertEqual((config["block"], config["optimizer"], config["effective_weight_decay"]),
                         ("postnorm", "momentum", 5e-4))
        self.assertEqual(config["metric"], dict(name="acc", label="accuracy", maximize=True, digits=4))


class TestExactMetrics(unittest.TestCase):
    def test_the_epoch_line_names_skipped_steps_only_where_there_were_some(self):
        task = mock.Mock(metric="acc", digits=4)
        row = dict(epoch=1, train_loss=1.0, train_acc=0.5, valid_loss=1.25, valid_acc=0.25, train_time=3.0,
                   valid_time=1.0)
        for skipped, said in ((0, ""), (1, "1 step skipped by the fp16 scaler  "),
                              (2, "2 steps skipped by the fp16 scaler  ")):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                engine.log_epoch(dict(row, skipped_steps=skipped), task, 3)
            self.assertEqual(out.getvalue(), f"epoch 1/3  train loss 1.0000 acc 0.5000  valid loss 1.2500 acc 0.2500  "
                                             f"{said}(3.0s + 1.0s)\n")

    def test_epoch_loss_is_the_token_mean_over_uneven_batches(self):
        torch.manual_seed(0)
        stream = torch.randint(1, 40, (203,))
        corpus = type("C", (), {"splits": {"train": stream, "valid": stream, "test": stream}})()
        task = train_lm.TextTask(corpus, seq_len=10, batch_size=7, seed=0)  # 21 windows, last has 2 targets
        model = LanguageModel("gru", 1, vocab_size=40, embedding_size=8, hidden_size=8)
        result = engine.run_epoch(model, task, "valid")
        w = Windows(stream, 10)
        inputs, targets = w.batch(torch.arange(w.num_windows))
        with torch.no_grad():
            logits, _ = model(inputs)
        expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)
        self.assertEqual(result["count"], 202)
        self.assertAlmostEqual(result["loss"], expected.item(), places=5)
        self.assertAlmostEqual(result["metric"], math.exp(expected.item()), places=3)

    def test_divergence_stops_with_the_epoch_and_step(self):
        class NanTask:
            metric, maximize, unit = "acc", True, "images"
            num_batches = staticmethod(lambda split: 3)
            batches = staticmethod(lambda split, epoch: iter([1, 2, 3]))

            def loss(self, model, batch):
                value = model.weight.sum() * (float("nan") if batch == 2 else 1.0)
                return value, 1, torch.zeros(())

        model = torch.nn.Linear(1, 1)
        with self.assertRaisesRegex(engine.Diverged, "epoch 4 by step 3"):
            engine.run_epoch(model, NanTask(), "train", 4, engine.Step(torch.optim.SGD(model.parameters(), lr=0.1)))

    def test_a_diverging_perplexity_is_shown_in_three_figures_not_three_hundred_digits(self):
        self.assertEqual(engine.shown(39402.18638571619, 2), "39,402.19")
        self.assertEqual(engine.shown(math.exp(700), 2), "1.01e+304")
        self.assertEqual(engine.shown(float("inf"), 2), "inf")
        self.assertEqual(train_lm.TextTask.metric_value(None, 800.0, 0.0), math.inf)  # math.exp would raise

    def test_the_progress_bar_shows_the_running_loss_and_metric_from_the_first_batch(self):
        if engine.tqdm is None:
            self.skipTest("tqdm is not installed")

        class Terminal(io.StringIO):
            def isatty(self):
                return True

        class Slow(train_lm.TextTask):  # each batch outlasts tqdm's minimum interval between redraws
            def loss(self, model, batch):
                time.sleep(0.15)
                return super().loss(model, batch)

        torch.manual_seed(0)
        stream = torch.randint(1, 40, (203,))
        corpus = type("C", (), {"splits": {"train": stream, "valid": stream, "test": stream}})()
        task = Slow(corpus, seq_len=10, batch_size=7, seed=0)
        model = LanguageModel("gru", 1, vocab_size=40, embedding_size=8, hidden_size=8)
        with mock.patch("sys.stderr", new=Terminal()) as err:
            engine.run_epoch(model, task, "valid", show=True)
        first = next(line for line in re.split(r"[\r\n]", err.getvalue()) if "ppl=" in line)
        self.assertIn("valid", first)
        self.assertRegex(first, r"1/3 .*loss=3\.\d{4}, ppl=\d{2}\.\d{2}\b")  # after the first of three batches


class ScriptedTask:
    """One weight w, starting at 0: each training batch is the loss -w (SGD at lr 1 adds 1 to w), each
    valid or test batch (w - target)^2; with target 2, epoch 2 of 3 is the best-validation epoch, not the last."""
    metric, label, maximize, digits, unit, title, scoring, alike = "score", "score", False, 4, "examples", "Scripted", \
        None, None
    warnings = ()
    num_batches = staticmethod(lambda split: 5)
    batch_sizes = staticmethod(lambda split: {1})
    target = 2.0

    def batches(self, split, epoch):
        return iter([(split,)] * (1 if split == "train" else 5))

    def loss(self, model, batch):
        w = model.weight.sum()
        return (-w if batch[0] == "train" else (w - self.target) ** 2), 1, torch.zeros(())

    def metric_value(self, loss, accuracy):
        return loss


class TestBestValidationModel(TempDir):
    def train(self, task, *flags):
        def build(cfg, device):
            model = torch.nn.Linear(1, 1, bias=False)
            torch.nn.init.zeros_(model.weight)
            return task, model, dict(task="scripted"), {}
        cfg = config.parse_config(config.TrainConfig, ["--optimizer", "sgd", "--lr", "1", "--weight_decay", "0",
                                                       "--log_dir", str(self.tmp), "--exp_id", "run", "--device",
                                                       "cpu", "--no_progress", *flags])
        with contextlib.redirect_stdout(io.StringIO()):
            return engine.train(cfg, build), read_csv(self.tmp / "run" / "metrics.csv")

    def test_the_best_valid_epoch_not_the_last_is_kept_and_tested(self):
        summary, rows = self.train(ScriptedTask(), "--epochs", "3")
        self.assertEqual([float(r["valid_score"]) for r in rows], [1, 0, 1])
        self.assertEqual((summary["best_epoch"], summary["best_valid_score"]), (2, 0.0))
        self.assertEqual((summary["test_score"], summary["best_test_score"]), (1.0, 0.0))  # final model; best.pt's
        best = torch.load(self.tmp / "run" / "best.pt", weights_only=True)
        self.assertEqual((best["epoch"], best["model"]["weight"].item()), (2, 2.0))

    def test_the_weight_average_keeps_and_tests_its_own_best_epoch(self):
        task = ScriptedTask()
        task.target = 2.5  # the model is best at w = 2 (epoch 2), its lagging average at epoch 3
        summary, rows = self.train(task, "--epochs", "4", "--ema", "0.5")
        ema = [float(r["ema_valid_score"]) for r in rows]
        self.assertEqual((summary["best_epoch"], summary["ema_best_epoch"]), (2, 3))
        self.assertEqual(summary["ema_best_valid_score"], min(ema))
        # valid and test batches score alike: each test is of the weights of its epoch
        self.assertAlmostEqual(summary["ema_best_test_score"], ema[2], places=6)
        self.assertAlmostEqual(summary["ema_test_score"], ema[3], places=6)
        self.assertGreater(ema[3] - ema[2], 0.5)

    def test_limit_batches_bounds_every_pass(self):
        model = torch.nn.Linear(1, 1, bias=False)
        self.assertEqual(engine.run_epoch(model, ScriptedTask(), "valid")["count"], 5)
        self.assertEqual(engine.run_epoch(model, ScriptedTask(), "valid", limit=2)["count"], 2)


class TestRefusals(CliCase):
    def test_bad_flags_exit_2_with_one_line(self):
        cases = [
            (train_lm.main, ["--layers", "0"], "--layers"),
            (train_lm.main, ["--lr", "0"], "--lr"),
            (train_lm.main, ["--lr", "-1"], "--lr"),
            (train_lm.main, ["--batch_size", "0"], "--batch_size"),
            (train_lm.main, ["--seq_len", "1"], "--seq_len"),
            (train_lm.main, ["--optimizer", "rmsprop"], "invalid choice"),
            (train_lm.main, ["--model", "rnn"], "invalid choice"),
            (train_vit.main, ["--block", "sandwich"], "invalid choice"),
            (train_vit.main, ["--device", "tpu"], "invalid choice"),
            (train_vit.main, ["--embed_dim", "30", "--num_heads", "4"], "not divisible"),
            (train_vit.main, ["--embed_dim", "0"], "--embed_dim must be at least 1"),
            (train_vit.main, ["--num_heads", "0"], "--num_heads must be at least 1"),
            (train_lm.main, ["--mlp_dim", "0"], "--mlp_dim must be at least 1"),
            (train_lm.main, ["--hidden_size", "-1"], "--hidden_size must be at least 1"),
            (train_vit.main, ["--resume", "--overwrite"], "exclude"),
            (train_vit.main, ["--log_dir", ""], "--log_dir is empty"),  # not the current folder in silence
            (train_lm.main, ["--data_folder", ""], "--data_folder is empty; give a folder (. for this one)"),
            (train_vit.main, ["--data_folder", ""], "--data_folder is empty"),  # nothing downloaded into this one
            (train_vit.main, ["--layers", str(2 ** 31)], "--layers 2147483648 is beyond any model"),
            (train_vit.main, ["--recipe", "improved", "--epochs", "3"], "got 5.0 with --epochs 3 (--recipe improved "
             "warms up for 5 epochs unless --warmup_epochs says otherwise)"),
            (train_lm.main, ["--embedding_size", str(2 ** 62)], "--embedding_size 4611686018427387904 is beyond"),
            (train_lm.main, ["--seq_len", str(2 ** 62)], "--seq_len must be at least 2 and below 2**31"),
            (train_lm.main, ["--embeddings", "None"], "--embeddings none: leave --embeddings out"),
            (train_lm.main, ["--learn_embeddings"], "--learn_embeddings trains the embeddings loaded with"),
            (train_vit.main, ["--optimiser", "sgd", "--bach_size=8", "--foo"], "unrecognized arguments: --optimiser "
             "sgd --bach_size=8 --foo; did you mean --optimizer, --batch_size? (see --help)"),  # the flags meant
            (train_lm.main, ["--bogus"], "unrecognized arguments: --bogus (see --help)"),
            (train_vit.main, ["--optimizer", "momentum", "--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
            (train_vit.main, ["--scheduler", "cosine", "--min_lr", "0.01", "--lr", "0.001"],
             "--min_lr must be in [0, --lr], got 0.01"),
            (train_vit.main, ["--weight_decay", "-0.1"], "--weight_decay must be >= 0, got -0.1"),
            (train_vit.main, ["--weight_decay", "inf"], "--weight_decay must be a finite number, got inf"),
            (train_lm.main, ["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"),
            (train_vit.main, ["--limit_batches", "-1"], "--limit_batches must be >= 0, got -1"),
            (train_vit.main, ["--grad_clip", "-1"], "--grad_clip must be >= 0, got -1.0"),
            (train_vit.main, ["--ema", "1"], "--ema must be a decay in [0, 1), got 1.0"),
            (train_vit.main, ["--seed", "-1"], "--seed must be >= 0, got -1"),
            (train_vit.main, ["--exp_id", "x" * 201], "--exp_id is 201 bytes long"),
        ]
        for main, argv, fragment in cases:
            with self.subTest(argv=argv):
                code, _, err = run(main, ["--log_dir", str(self.logs), *argv])
                self.assertEqual(code, 2)
                self.assert_refused(err, fragment)
        self.assertFalse(self.logs.exists())

    def test_a_setting_the_configuration_does_not_use_is_warned_of_and_named(self):
        def ignored(main_module, *argv):
            return config.parse_config(main_module.Config, list(argv)).ignored()
        self.assertEqual(ignored(train_lm, "--optimizer", "adam", "--weight_decay", "0.01", "--decay_exempt"), [
            "--weight_decay 0.01 changes nothing here: --optimizer adam has none, as in the reference (adamw has)",
            "--decay_exempt changes nothing here: nothing is weight-decayed"])
        self.assertEqual(ignored(train_vit, "--recipe", "improved", "--optimizer", "sgd", "--momentum", "0.8"),
                         ["--momentum 0.8 changes nothing here: only --optimizer momentum has momentum"])
        self.assertEqual(ignored(train_vit, "--recipe", "improved", "--optimizer", "adam")[0],
                         "--weight_decay 0.05 (--recipe improved) changes nothing here: --optimizer adam has none, "
                         "as in the reference (adamw has)")
        self.assertEqual(ignored(train_vit, "--min_lr", "1e-5", "--warmup_epochs", "1"),
                         ["--min_lr 1e-05 changes nothing here: only --scheduler cosine decays to it"])
        self.assertEqual(ignored(train_lm, "--weight_decay", "0", "--decay_exempt"),
                         ["--decay_exempt changes nothing here: nothing is weight-decayed"])
        for main_module, argv in ((train_vit, ["--optimizer", "sgd"]), (train_vit, ["--optimizer", "adam"]),
                                  (train_vit, ["--recipe", "improved"]), (train_lm, ["--recipe", "improved"]),
                                  (train_vit, ["--block", "postnorm", "--num_heads", "4", "--momentum", "0.5",
                                               "--optimizer", "momentum", "--scheduler", "cosine", "--min_lr", "0"]),
                                  (train_lm, ["--model", "transformer", "--block", "postnorm", "--mlp_dim", "8"])):
            self.assertEqual(ignored(main_module, *argv), [], argv)
        # through the trainer: a warning each, the run named with them all the same, as typed
        run_dir, _, err = self.lm("--model", "gru", "--block", "postnorm", "--epochs", "1", "--limit_batches", "1",
                                  exp_id="")
        self.assertEqual(re.findall(r"^warning: .*", err, re.M), [
            "warning: --block postnorm changes nothing here: the gru core has no LayerNorm",
            "warning: --num_heads 4 changes nothing here: the gru core has no attention",
            "warning: --mlp_dim 32 changes nothing here: the gru core has no MLP",
            "warning: words not in train.txt are read as <unk>: 3 of valid.txt's 61 (4.92%)"])  # the fixture's heading
        saved = json.loads(next(run_dir.glob("lm_gru_L1_adamw_*_s42/config.json")).read_text())
        self.assertEqual(saved["naming"]["changed"]["block"], "postnorm")

    @unittest.skipIf(torch.cuda.is_available(), "CUDA is present")
    def test_cuda_without_cuda(self):
        _, _, err = self.vit("--device", "cuda", expect=2)
        self.assert_refused(err, "CUDA is not usable")

    def test_a_full_run_that_auto_puts_on_the_cpu_says_why_first(self):
        if torch.cuda.is_available():
            self.skipTest("auto chooses this machine's GPU")
        warning = "warning: training on the CPU, since CUDA is not usable ("
        _, _, err = self.vit("--device", "auto", "--epochs", "1")
        self.assertTrue(err.startswith(warning), err)
        self.assertIn("--device cpu silences this", err.splitlines()[0])
        for exp_id, asked in (("smoke", ["--device", "auto", "--limit_batches", "1"]), ("cpu", ["--device", "cpu"])):
            _, _, err = self.vit(*asked, "--epochs", "1", exp_id=exp_id)  # a smoke run, or the CPU asked for
            self.assertNotIn(warning, err)

        (self.tmp / "results.csv").write_text("kept\n")
        for log_dir in ("results.csv", "results.csv/sub"):
            _, _, err = self.vit("--log_dir", str(self.tmp / log_dir), expect=2)
            self.assert_refused(err, f"--log_dir {self.tmp / log_dir}", f"{self.tmp / 'results.csv'} is a file, not a "
                                "folder")
        self.assertEqual((self.tmp / "results.csv").read_text(), "kept\n")

    def test_a_model_larger_than_the_memory_is_refused_before_it_is_built(self):
        _, _, err = self.vit("--layers", "100000000", expect=2)  # would build for minutes until the system kills it
        self.assert_refused(err, "the model would have 854,400,003,843 parameters", "check --layers")
        _, _, err = self.lm("--hidden_size", "2000000000", expect=2)  # no tensor of torch's holds it
        self.assert_refused(err, "the model's tensors would be larger than any memory")
        self.assertFalse(self.logs.exists())
        # 4 bytes a parameter: two layers of 110 fit in 880 bytes, not in 879
        def make(n):
            return torch.nn.Sequential(*(torch.nn.Linear(10, 10) for _ in range(n)))
        with mock.patch("engine.device_memory", return_value=880):
            engine.check_fits(make, 2, torch.device("cpu"))
        with mock.patch("engine.device_memory", return_value=879), self.assertRaisesRegex(
                utils.UserError, "^the model would have 220 parameters, 0.0 GB of weights alone"):
            engine.check_fits(make, 2, torch.device("cpu"))

    def test_batch_larger_than_a_split(self):
        _, _, err = self.vit("--batch_size", "500", expect=2)
        self.assert_refused(err, "--batch_size 500", "smallest split (valid: ")
        _, _, err = self.lm("--batch_size", "500", expect=2)
        self.assert_refused(err, "--batch_size 500 is larger than the smallest split (test: 7 windows of 8 tokens)")

    def test_existing_run_is_never_touched(self):
        run_dir, _, _ = self.lm()
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        _, _, err = self.lm(expect=2)
        self.assert_refused(err, "already exists", "--resume", "--overwrite")
        self.assertEqual({p.name: p.read_bytes() for p in run_dir.iterdir()}, before)
        self.lm("--overwrite")  # starts again
        self.assertNotEqual((run_dir / "metrics.csv").read_bytes(), b"")

    def test_unwritable_log_dir(self):
        (self.tmp / "file").write_text("not a folder")
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        code, _, err = run(train_vit.main, ["--log_dir", str(self.tmp / "file"), "--exp_id", "x", "--data_folder",
                                            str(data), *VIT_TINY])
        self.assertEqual(code, 2)
        self.assert_refused(err, f"--log_dir {self.tmp / 'file'} is a file, not a folder")
        with mock.patch("train_vit.load_cifar10") as load:  # refused before the data is read
            code, _, err = run(train_vit.main, ["--log_dir", str(self.tmp / "file" / "sub"), "--data_folder", str(data),
                                                *VIT_TINY])
        self.assertEqual(code, 2)
        self.assert_refused(err, f"--log_dir {self.tmp / 'file' / 'sub'}: {self.tmp / 'file'} is a file, not a folder")
        load.assert_not_called()
        self.assertEqual((self.tmp / "file").read_text(), "not a folder")

    def test_missing_data_offline(self):
        with mock.patch("urllib.request.urlopen", side_effect=OSError("no network")):
            _, _, err = self.lm(data=self.tmp / "nowhere", expect=2)
        self.assert_refused(err, "train.txt", "nowhere")

    def test_real_process_exit_code_and_stderr(self):
        proc = subprocess.run([sys.executable, "train_vit.py", "--lr", "0", "--log_dir", str(self.logs)],
                              cwd=HERE, capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stderr, "error: --lr must be a positive number, got 0.0\n")


class TestResume(CliCase):
    def test_resume_equals_an_uninterrupted_run(self):
        common = ("--dropout", "0.2", "--model", "lstm", "--layers", "2")  # dropout: the RNG state matters
        whole, _, _ = self.lm(*common, "--epochs", "3", exp_id="whole")
        part, _, _ = self.lm(*common, "--epochs", "2", exp_id="part")
        _, out, _ = self.lm(*common, "--epochs", "3", "--resume", exp_id="part")
        self.assertIn("resuming", out)
        self.assertEqual(results(part), results(whole))
        self.assertEqual(len(read_csv(part / "metrics.csv")), 3)

    def test_resume_repairs_a_row_written_after_the_last_checkpoint(self):
        whole, _, _ = self.vit("--epochs", "3", exp_id="whole")
        part, _, _ = self.vit("--epochs", "2", exp_id="part")
        with open(part / "metrics.csv", "a") as f:  # as if killed after the CSV row of epoch 3
            f.write("3,9,9,9,9,9,9,9,9,9,9,9\n")
        self.vit("--epochs", "3", "--resume", exp_id="part")
        self.assertEqual(results(part), results(whole))

    def test_resume_with_another_config_is_refused(self):
        run_dir, _, _ = self.lm("--epochs", "1")
        before = (run_dir / "checkpoint.pt").read_bytes()
        _, _, err = self.lm("--epochs", "2", "--lr", "0.01", "--resume", expect=2)
        self.assert_refused(err, "different configuration", "lr: 0.001 -> 0.01")
        self.assertEqual((run_dir / "checkpoint.pt").read_bytes(), before)

    def test_full_disk_keeps_the_previous_checkpoint_and_rows(self):
        run_dir = self.logs / "run"
        real_save = torch.save

        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("epoch") == 2 and "history" in obj:
                raise OSError(28, "No space left on device")
            return real_save(obj, f, *a, **k)

        with mock.patch("torch.save", side_effect=save):
            _, _, err = self.vit("--epochs", "3", expect=2)
        self.assert_refused(err, "No space left on device", "checkpoint.pt")
        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        self.assertEqual(ckpt["epoch"], 1)
        self.assertEqual([r["epoch"] for r in read_csv(run_dir / "metrics.csv")], ["1"])  # a row follows its checkpoint
        self.assertEqual([p.name for p in run_dir.iterdir() if p.name.startswith(".")], [])
        self.vit("--epochs", "3", "--resume")
        self.assertEqual([r["epoch"] for r in read_csv(run_dir / "metrics.csv")], ["1", "2", "3"])

    def test_a_crafted_pickle_is_not_executed(self):
        marker = self.tmp / "pwned"

        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        run_dir, _, _ = self.lm("--epochs", "1")
        for save in (lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=4)), torch.save):
            save({"model": Exploit()}, run_dir / "checkpoint.pt")
            with self.assertRaises(utils.UserError):
                rundir.load_torch(run_dir / "checkpoint.pt")
            _, _, err = self.lm("--epochs", "2", "--resume", expect=2)
            # the cause in one line (torch's warning about the pickle's protocol silenced), not torch's advice to
            # load the file unsafely
            self.assert_refused(err, "cannot load", "not a file of this project")
            self.assertRegex(err, r"[Uu]nsupported (operand|global|GLOBAL)")
            self.assertNotIn("weights_only", err)
        with self.assertRaisesRegex(utils.UserError, f"^cannot load {re.escape(str(run_dir))}: Is a directory$"):
            rundir.load_torch(run_dir)  # the system's reason, the path once
        self.assertFalse(marker.exists())


# Runs a trainer and kills it at a point: "batch:E:S" after step S of epoch E's training, "csv:E" after
# that epoch's row, "best:E" or "checkpoint:E" after that file's write. "batch:E:S:SIGTERM" sends
# that signal instead; with ":again" too, the same signal once more while the stopped run cleans up,
# and once more at exit. The trainer's own functions are wrapped here; the product knows nothing of it.
CRASH_LAUNCHER = """
import atexit, os, runpy, signal, sys
import engine, rundir
point, *at = sys.argv[1].split(":")
name, again = (at[2:] + ["SIGKILL"])[0], at[3:] == ["again"]
at = [int(a) for a in at[:2]]
where = dict(epoch=0, steps=0)
def die():
    os.kill(os.getpid(), getattr(signal, name))
def wrapped_cleanup(*args):
    die()
    atexit.register(die)
    return keep_or_remove(*args)
keep_or_remove = engine.keep_or_remove
if again:
    engine.keep_or_remove = wrapped_cleanup
run_epoch, step_call, append_csv, save_torch = engine.run_epoch, engine.Step.__call__, rundir.append_csv, rundir.save_torch
def wrapped_run_epoch(model, task, split, epoch=1, step=None, *args, **kwargs):
    where.update(epoch=epoch, steps=0)
    return run_epoch(model, task, split, epoch, step, *args, **kwargs)
def wrapped_step(self, model, loss):
    step_call(self, model, loss)
    where["steps"] += 1
    if point == "batch" and [where["epoch"], where["steps"]] == at:
        die()
def wrapped_append(path, columns, *rows):
    append_csv(path, columns, *rows)
    if point == "csv" and path.name == "metrics.csv" and rows[-1]["epoch"] == at[0]:
        die()
def wrapped_save(obj, path):
    save_torch(obj, path)
    if path.name == point + ".pt" and obj["epoch"] == at[0]:
        die()
engine.run_epoch, engine.Step.__call__ = wrapped_run_epoch, wrapped_step
rundir.append_csv, rundir.save_torch = wrapped_append, wrapped_save
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def killed_at(fault, argv):
    """Run `argv` (a script and its flags) under CRASH_LAUNCHER, killed at `fault`."""
    return subprocess.run([sys.executable, "-c", CRASH_LAUNCHER, fault, *argv], cwd=HERE, capture_output=True,
                          text=True, timeout=300)


class TestCrashes(CliCase):
    """Real processes killed with SIGKILL at chosen points, then resumed: the same numbers, bit for bit."""

    def train(self, exp_id, *extra, fault=None, data=None):
        argv = ["train_vit.py", "--data_folder", str(data), "--log_dir", str(self.logs),
                "--exp_id", exp_id, "--epochs", "3", "--dropout", "0.1", *VIT_TINY, *extra]
        if fault:
            return killed_at(fault, argv)
        return subprocess.run([sys.executable, *argv], cwd=HERE, capture_output=True, text=True, timeout=300)

    def test_kill_at_any_point_then_resume_equals_the_uninterrupted_run(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))

        def kill_then_resume(exp, fault=None):  # each its own run: two at a time
            killed = self.train(exp, fault=fault, data=data)
            finished = (self.logs / exp / "summary.json").exists()
            return killed, finished, fault and self.train(exp, "--resume", data=data)
        faults = ("batch:2:5", "csv:2", "best:1", "checkpoint:2")
        exps = ["whole"] + ["killed_" + fault.replace(":", "_") for fault in faults]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            done = list(pool.map(kill_then_resume, exps, (None, *faults)))
        self.assertEqual(done[0][0].returncode, 0, done[0][0].stderr)
        for fault, exp, (killed, finished, resumed) in zip(faults, exps[1:], done[1:]):
            with self.subTest(fault=fault):
                self.assertEqual(killed.returncode, -signal.SIGKILL, killed.stderr)
                self.assertFalse(finished)
                self.assertEqual(resumed.returncode, 0, resumed.stderr)
                self.assertEqual(results(self.logs / exp), results(self.logs / "whole"))
                best = torch.load(self.logs / exp / "best.pt", weights_only=True)["model"]
                reference = torch.load(self.logs / "whole" / "best.pt", weights_only=True)["model"]
                self.assertTrue(all(torch.equal(best[k], reference[k]) for k in reference))

    def test_ctrl_c_stops_cleanly_and_the_run_resumes(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        argv = [sys.executable, "train_vit.py", "--data_folder", str(data), "--log_dir", str(self.logs),
                "--exp_id", "ctrl_c", "--epochs", "200", *VIT_TINY]
        proc = subprocess.Popen(argv, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(end_process, proc)
        for line in proc.stdout:
            if line.startswith("epoch 1/"):
                break
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("--resume", err)
        self.assertNotIn("Traceback", err)
        ckpt = torch.load(self.logs / "ctrl_c" / "checkpoint.pt", weights_only=True)
        rows = read_csv(self.logs / "ctrl_c" / "metrics.csv")
        self.assertGreaterEqual(ckpt["epoch"], 1)
        self.assertEqual(len(rows), ckpt["epoch"])  # a stop while the epoch's files are written waits for them all

    def test_divergence_through_the_cli_keeps_the_logs_of_finished_epochs_only(self):
        run_dir, _, err = self.vit("--optimizer", "sgd", "--lr", "1e12", "--epochs", "3", expect=3)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("diverged: ") and "loss became" in lines[0] and "epoch 1" in lines[0])
        self.assertIn(f"no epoch had finished, so {run_dir} was removed", lines[0])
        self.assertFalse(run_dir.exists())  # nothing empty left behind: the same command runs again
        self.vit("--epochs", "1")
        _, _, err = self.vit("--epochs", "2", "--resume", "--lr", "1e12", expect=2)  # a failure on resume
        self.assertIn("cannot resume", err)
        self.assertTrue((run_dir / "summary.json").exists())  # never removes what it did not just create
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        _, _, err = self.vit("--optimizer", "sgd", "--lr", "1e12", "--epochs", "3", "--overwrite", expect=3)
        # --overwrite replaces a run with one that trains: until its first epoch is saved, the old run is kept
        self.assertIn(f"no epoch had finished, so the run it was to replace is back in {run_dir}", err)
        self.assertEqual({p.name: p.read_bytes() for p in run_dir.iterdir()}, before)
        self.assertEqual(sorted(p.name for p in run_dir.parent.iterdir() if p.name.startswith(f".{run_dir.name}.")),
                         [f".{run_dir.name}.lock"])  # nothing left aside

    def test_a_run_directory_linked_to_a_folder_elsewhere_holds_the_run_there(self):
        elsewhere, run_dir = self.tmp / "scratch" / "run", self.logs / "linked"
        elsewhere.mkdir(parents=True)
        self.logs.mkdir()
        run_dir.symlink_to(elsewhere)
        _, _, err = self.vit("--optimizer", "sgd", "--lr", "1e12", "--epochs", "3", exp_id="linked", expect=3)
        self.assertIn(f"no epoch had finished, so {run_dir} was removed", err)
        self.assertFalse(elsewhere.exists())  # nothing half-written: the same command, fixed, runs again
        for seed, flags in ((42, []), (1, ["--overwrite"]), (2, ["--overwrite"])):  # and replaces it there, twice
            self.vit("--epochs", "1", "--seed", str(seed), *flags, exp_id="linked")
            self.assertTrue(run_dir.is_symlink())
            self.assertEqual(json.loads((elsewhere / "config.json").read_text())["seed"], seed)
            self.assertEqual(sorted(p.name for p in self.logs.iterdir()), [".linked.lock", "linked"])
            self.assertEqual(sorted(p.name for p in elsewhere.parent.iterdir()), ["run"])  # nothing left aside
        (self.logs / "loop").symlink_to(self.logs / "loop")  # a link to itself: one line, as any folder not made
        _, _, err = self.vit(exp_id="loop", expect=2)
        self.assert_refused(err, f"cannot write the run directory {self.logs / 'loop'}")


class TestDistributed(CliCase):
    """torchrun with two CPU processes (gloo) against one process with the same global batch."""

    def torchrun(self, script, exp_id, *args, procs=2):
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                script, "--log_dir", str(self.logs), "--exp_id", exp_id, "--device", "cpu", *args]
        env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(self.tmp))  # torchrun's own folders go with the test's
        proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # its workers too, not torchrun alone
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def single(self, script, exp_id, *args):
        argv = [sys.executable, script, "--log_dir", str(self.logs), "--exp_id", exp_id, "--device", "cpu", *args]
        return subprocess.run(argv, cwd=HERE, capture_output=True, text=True, timeout=300)

    def assert_same_numbers(self, a, b, rel=1e-5):
        """Equal up to float rounding (the processes sum their slices in another order)."""
        rows_a, summary_a, norms_a = results(self.logs / a)
        rows_b, summary_b, norms_b = results(self.logs / b)
        self.assertEqual((len(rows_a), len(norms_a or [])), (len(rows_b), len(norms_b or [])))
        pairs = [(f"{k} (epoch {ra['epoch']})", float(ra[k]), float(rb[k]))
                 for ra, rb in zip(rows_a + (norms_a or []), rows_b + (norms_b or [])) for k in ra]
        pairs += [(k, v, summary_b[k]) for k, v in summary_a.items() if isinstance(v, float)]
        for key, x, y in pairs:
            self.assertLessEqual(abs(x - y), rel * max(1.0, abs(y)), key)

    def test_vit_two_processes_equal_one(self):
        # train 105 and test 33 images: each pass ends in a batch of 1, so one process steps on an empty slice
        data, _ = write_image_folder(self.tmp / "images", per_class=(39, 11))
        # augmentation and mixing are drawn for the global batch: the same with any number of processes
        args = ["--data_folder", str(data), *VIT_TINY, "--epochs", "2", "--augment", "strong", "--mixup", "0.5",
                "--cutmix", "1.0", "--ema", "0.9", "--grad_norms"]
        two = self.torchrun("train_vit.py", "two", *args)
        self.assertEqual(two.returncode, 0, two.stderr[-2000:])
        one = self.single("train_vit.py", "one", *args)
        self.assertEqual(one.returncode, 0, one.stderr[-2000:])
        self.assert_same_numbers("two", "one")
        self.assertEqual(two.stdout.count("epoch 2/2"), 1)  # only the first process prints
        self.assertEqual(sorted(p.name for p in (self.logs / "two").iterdir()),
                         ["best.pt", "best_ema.pt", "checkpoint.pt", "config.json", "grad_norms.csv", "metrics.csv",
                          "summary.json"])
        self.assertEqual(json.loads((self.logs / "two" / "config.json").read_text())["world_size"], 2)

    def test_lm_two_processes_equal_one_and_resume(self):
        data = write_text_files(self.tmp / "text", lines=(80, 40, 40))
        args = ["--data_folder", str(data), *LM_TINY, "--model", "lstm", "--layers", "2"]
        whole = self.torchrun("train_lm.py", "whole", *args, "--epochs", "2")
        self.assertEqual(whole.returncode, 0, whole.stderr[-2000:])
        one = self.single("train_lm.py", "one", *args, "--epochs", "2")
        self.assertEqual(one.returncode, 0, one.stderr[-2000:])
        self.assert_same_numbers("whole", "one")
        first = self.torchrun("train_lm.py", "part", *args, "--epochs", "1")
        self.assertEqual(first.returncode, 0, first.stderr[-2000:])
        resumed = self.torchrun("train_lm.py", "part", *args, "--epochs", "2", "--resume")
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-2000:])
        self.assertEqual(results(self.logs / "part"), results(self.logs / "whole"))

    def test_machines_that_do_not_share_the_log_folder_are_refused_before_training(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        apart = self.tmp / "apart.py"  # each process with a log folder of its own, as machines with no shared one
        apart.write_text(f"import os, runpy, sys, time\nsys.path.insert(0, {str(HERE)!r})\n"
                         f"time.sleep = lambda seconds: None  # no waiting for a late file in the test\n"
                         f"sys.argv[sys.argv.index('--log_dir') + 1] += os.environ['RANK']\n"
                         f"runpy.run_path({str(HERE / 'train_vit.py')!r}, run_name='__main__')\n")
        proc = self.torchrun(str(apart), "run", "--data_folder", str(data), *VIT_TINY)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(f"[rank 1] error: process 1 does not see the run directory {self.logs}1/run that the first process "
                      f"made: on several machines, --log_dir must be a folder they all share", proc.stderr)
        self.assertNotIn("epoch 1/", proc.stdout)
        self.assertNotIn("[rank0]: Traceback", proc.stderr)  # the other process: a line at most, never a traceback
        self.assertFalse((Path(f"{self.logs}0") / "run").exists())  # nothing left to refuse the command run again

    def test_a_batch_that_does_not_divide_is_refused_once(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        proc = self.torchrun("train_vit.py", "odd", "--data_folder", str(data), *VIT_TINY, "--batch_size", "7")
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(proc.stderr.count("error: --batch_size 7 does not divide over 2 processes"), 1)

    def test_a_refusal_is_said_though_the_first_process_is_the_last_to_reach_it(self):
        # a loaded machine: the first process starts late, so the other fails first; were it to leave at once,
        # torchrun would stop the first before it says why
        late = self.tmp / "late_first.py"
        late.write_text("import os, runpy, sys, time\nsys.path.insert(0, os.getcwd())\n"
                        "time.sleep(3 if os.environ['RANK'] == '0' else 0)\n"
                        "sys.argv[0] = 'train_vit.py'\nrunpy.run_path('train_vit.py', run_name='__main__')\n")
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        proc = self.torchrun(str(late), "odd", "--data_folder", str(data), *VIT_TINY, "--batch_size", "7")
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(proc.stderr.count("error: --batch_size 7 does not divide over 2 processes"), 1, proc.stderr)


class TestRecipeFlags(CliCase):
    def test_schedule_values(self):
        f = lambda step: optim.lr_factor(step, 100, 10, "cosine", 0.1)  # noqa: E731
        self.assertAlmostEqual(f(0), 0.1)            # warmup starts at lr / warmup_steps
        self.assertAlmostEqual(f(9), 1.0)            # and peaks at the end of the warmup
        self.assertAlmostEqual(f(10), 1.0)
        self.assertAlmostEqual(f(55), 0.55)          # halfway down the cosine: (1 + 0.1) / 2
        self.assertAlmostEqual(f(100), 0.1)          # min_lr at the end
        self.assertTrue(all(f(s) >= f(s + 1) for s in range(10, 100)))
        self.assertEqual(optim.lr_factor(50, 100, 10, "constant"), 1.0)
        # the schedule a run gets: a warmup under the constant rate too (the norms group's), none without one
        model = torch.nn.Linear(1, 1)
        for flags, lrs in ((["--warmup_epochs", "2"], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]), ([], None),
                           (["--warmup_epochs", "0.75"], [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),  # 1.5 steps: 2
                           (["--scheduler", "cosine"], [1.0, 0.853553, 0.5, 0.146447, 0.0, 0.0])):
            cfg = config.parse_config(config.TrainConfig, ["--lr", "1", "--epochs", "2", *flags])
            opt = torch.optim.SGD(model.parameters(), lr=1)
            scheduler = optim.make_scheduler(cfg, opt, 2)
            self.assertEqual(scheduler is None, lrs is None, flags)
            got = []
            for _ in range(6 if scheduler else 0):
                got.append(opt.param_groups[0]["lr"])
                opt.step()
                scheduler.step()
            self.assertEqual([round(v, 6) for v in got], lrs or [], flags)

    def test_improved_recipe_in_the_csv_and_resume(self):
        # every opt-in ViT flag at once; then killed after its epoch-2 checkpoint and resumed
        args = ("--scheduler", "cosine", "--warmup_epochs", "1", "--min_lr", "1e-5", "--lr", "1e-3", "--dropout",
                "0.1", "--drop_path", "0.1", "--augment", "strong", "--mixup", "0.8", "--cutmix", "1.0",
                "--label_smoothing", "0.1", "--ema", "0.9", "--grad_norms", "--grad_clip", "1.0", "--layers", "3")
        run_dir, out, _ = self.vit(*args, "--epochs", "3", exp_id="whole")
        rows = read_csv(run_dir / "metrics.csv")
        lrs = [float(r["lr"]) for r in rows]
        self.assertAlmostEqual(lrs[0], 1e-3)         # the warmup ends with epoch 1
        self.assertTrue(1e-5 < lrs[1] < 1e-3)
        self.assertAlmostEqual(lrs[2], 1e-5)
        self.assertEqual(list(rows[0]), VIT_COLUMNS + ["ema_valid_loss", "ema_valid_acc"])
        self.assertTrue(all(0 <= float(r["ema_valid_acc"]) <= 1 for r in rows))
        self.assertNotEqual([r["ema_valid_loss"] for r in rows], [r["valid_loss"] for r in rows])
        summary = json.loads((run_dir / "summary.json").read_text())
        for key in ("ema_best_epoch", "ema_best_valid_acc", "ema_test_acc", "ema_best_test_acc"):
            self.assertIn(key, summary)
        self.assertEqual(summary["ema_best_valid_acc"], max(float(r["ema_valid_acc"]) for r in rows))
        self.assertTrue((run_dir / "best_ema.pt").exists())
        self.assertIn("EMA final", out)
        norms = read_csv(run_dir / "grad_norms.csv")
        self.assertEqual([(int(r["epoch"]), int(r["layer"])) for r in norms],
                         [(e, layer) for e in range(4) for layer in (1, 2, 3)])  # epoch 0: the first step
        self.assertTrue(all(float(r["norm"]) > 0 for r in norms))
        argv = ["train_vit.py", "--data_folder", str(self.tmp / "images"), "--log_dir",
                str(self.logs), "--exp_id", "part", *VIT_TINY, *args, "--epochs", "3"]
        killed = killed_at("checkpoint:2", argv)
        self.assertEqual(killed.returncode, -signal.SIGKILL, killed.stderr)
        resumed = subprocess.run([sys.executable, *argv, "--resume"], cwd=HERE, capture_output=True, text=True,
                                 timeout=300)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertEqual(results(self.logs / "part"), results(run_dir))

    def test_a_smoke_run_schedules_over_the_batches_it_runs(self):
        run_dir, _, _ = self.vit("--scheduler", "cosine", "--min_lr", "1e-5", "--limit_batches", "2", "--epochs", "2")
        lrs = [float(r["lr"]) for r in read_csv(run_dir / "metrics.csv")]  # 4 steps: halfway, then the end
        self.assertAlmostEqual(lrs[0], 1e-5 + (3e-4 - 1e-5) / 2)
        self.assertAlmostEqual(lrs[1], 1e-5)

    def test_ema_update_arithmetic(self):
        model = torch.nn.Linear(2, 1)
        with torch.no_grad():
            model.weight.fill_(0.0)
        ema = optim.EMA(model, decay=0.99)
        with torch.no_grad():
            model.weight.fill_(1.0)
        ema.update(model)  # update 1: rate min(0.99, 2 / 11)
        torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 1 - 2 / 11))
        for _ in range(999):
            ema.update(model)
        self.assertAlmostEqual(ema.rate(), 0.99)  # (1 + n) / (10 + n) has passed the decay
        with torch.no_grad():
            model.weight.fill_(3.0)
        before = ema.model.weight.clone()
        ema.update(model)
        torch.testing.assert_close(ema.model.weight, 0.99 * before + 0.01 * 3.0)
        self.assertFalse(ema.model.training or ema.model.weight.requires_grad)
        norm = torch.nn.BatchNorm1d(2)  # a model with buffers (none of ours has any): they are copied, not averaged
        ema = optim.EMA(norm, decay=0.99)
        norm(torch.randn(8, 2) + 5)
        ema.update(norm)
        torch.testing.assert_close(ema.model.running_mean, norm.running_mean)

    def test_layer_gradient_norms_are_per_layer_l2_norms_averaged_over_steps(self):
        a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
        norms = engine.LayerGradNorms([list(a.parameters()), list(b.parameters())])
        grads = []
        for step in range(3):
            for p in (*a.parameters(), *b.parameters()):
                p.grad = torch.randn_like(p)
            grads.append([torch.cat([p.grad.flatten() for p in m.parameters()]).norm().item() for m in (a, b)])
            norms.add()
        mean, first, skipped = norms.read()
        self.assertEqual(skipped, 0)
        np.testing.assert_allclose(mean, np.mean(grads, 0), rtol=1e-5)
        np.testing.assert_allclose(first, grads[0], rtol=1e-5)

    def test_mixed_labels_carry_exact_label_mass_in_loss_and_accuracy(self):
        logits = torch.randn(4, 5)

        class Fixed(torch.nn.Module):
            def forward(self, x):
                return logits

        task = train_vit.ImageTask(None, 4, 0)
        y, y_b, lam = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 1, logits[2].argmax().item(), 0]), 0.3
        loss, count, correct = task.loss(Fixed().train(), (None, y, y_b, lam, 4))
        soft = lam * F.one_hot(y, 5) + (1 - lam) * F.one_hot(y_b, 5)  # the soft target, label mass 1 each
        self.assertAlmostEqual(loss.item(), F.cross_entropy(logits, soft.float(), reduction="sum").item(), places=4)
        hits = logits.argmax(1)
        self.assertAlmostEqual(correct.item(), (lam * (hits == y) + (1 - lam) * (hits == y_b)).sum().item(), places=5)

    def test_evaluation_sees_the_plain_images_in_order_whatever_the_epoch(self):
        images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(10) % 3
        data = ImageData({s: (images, labels) for s in ("train", "valid", "test")}, ["a", "b", "c"])
        task = train_vit.ImageTask(data, 4, 0, augment="strong", mixup=0.8, cutmix=1.0)
        for split, epoch in (("valid", 1), ("valid", 7), ("test", 0)):
            batches = list(task.batches(split, epoch))
            self.assertEqual([b[-1] for b in batches], [4, 4, 2])
            self.assertTrue(all(b[3] == 1.0 and torch.equal(b[1], b[2]) for b in batches))  # unmixed
            self.assertTrue(torch.equal(torch.cat([b[0] for b in batches]), normalize(images)))  # not augmented
            self.assertTrue(torch.equal(torch.cat([b[1] for b in batches]), labels))  # not shuffled
        train = list(task.batches("train", 1))
        self.assertFalse(torch.equal(torch.cat([b[0] for b in train]), normalize(images)))

    def test_mixup_or_cutmix_alone_mixes_every_training_batch(self):
        images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        data = ImageData({s: (images, torch.arange(8) % 3) for s in ("train", "valid", "test")}, ["a", "b", "c"])
        for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0)):
            with self.subTest(mixup=mixup, cutmix=cutmix):
                task = train_vit.ImageTask(data, 4, 0, mixup=mixup, cutmix=cutmix)
                self.assertTrue(all(0 < b[3] < 1 for b in task.batches("train", 1)))

    def test_training_batches_are_shuffled_by_seed_and_epoch(self):
        images = torch.zeros((8, 3, 32, 32), dtype=torch.uint8)
        data = ImageData({s: (images, torch.arange(8)) for s in ("train", "valid", "test")}, list("abcdefgh"))

        def order(seed, epoch):
            return torch.cat([b[1] for b in train_vit.ImageTask(data, 4, seed).batches("train", epoch)]).tolist()
        self.assertEqual(sorted(order(0, 1)), list(range(8)))  # each image once
        self.assertNotEqual(order(0, 1), list(range(8)))
        self.assertEqual(order(0, 1), order(0, 1))
        self.assertNotEqual(order(0, 1), order(0, 2))
        self.assertNotEqual(order(0, 1), order(1, 1))

    def test_label_smoothing_on_a_known_case_and_only_in_training(self):
        logits = torch.tensor([[2.0, 0.0, 0.0]])

        class Fixed(torch.nn.Module):
            def forward(self, x):
                return logits

        task = train_vit.ImageTask(None, 1, 0, label_smoothing=0.3)
        model = Fixed()
        log_p = torch.log_softmax(logits, 1)[0]
        target = torch.tensor([0.3 / 3 + 0.7, 0.1, 0.1])  # (1 - eps) one-hot + eps / classes
        y = torch.tensor([0])
        loss, count, correct = task.loss(model.train(), (None, y, y, 1.0, 1))
        self.assertAlmostEqual(loss.item(), -(target * log_p).sum().item(), places=5)
        loss, _, _ = task.loss(model.eval(), (None, y, y, 1.0, 1))
        self.assertAlmostEqual(loss.item(), -log_p[0].item(), places=5)

    def test_grad_clip_bounds_the_update(self):
        model = torch.nn.Linear(4, 1)

        class Task:
            metric, maximize, unit = "acc", True, "images"
            num_batches = staticmethod(lambda split: 1)
            batches = staticmethod(lambda split, epoch: iter([torch.full((8, 4), 100.0)]))

            def loss(self, m, batch):
                return (m(batch) ** 2).sum(), 8, torch.zeros(())

            def metric_value(self, loss, accuracy):
                return accuracy

        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        engine.run_epoch(model, Task(), "train", 1, engine.Step(torch.optim.SGD(model.parameters(), lr=1.0),
                                                               grad_clip=0.01))
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        self.assertLessEqual((after - before).norm().item(), 0.01 + 1e-6)


class TestGenerators(unittest.TestCase):
    def test_each_purpose_epoch_and_seed_draws_its_own_stream_and_the_same_one_again(self):
        def draw(*key):
            return torch.rand(8, generator=utils.epoch_generator(*key))
        keys = [(42, 1, "shuffle"), (42, 1, "augment"), (42, 1, "mix"), (42, 2, "shuffle"), (43, 1, "shuffle")]
        streams = [draw(*key) for key in keys]
        for i, j in itertools.combinations(range(len(keys)), 2):  # data order and augmentation draw apart
            self.assertFalse(torch.equal(streams[i], streams[j]), (keys[i], keys[j]))
        self.assertTrue(torch.equal(draw(42, 1, "augment"), streams[1]))  # a resumed run draws the same


class TestStreams(CliCase):
    def test_training_windows_are_shuffled_by_seed_and_epoch_and_the_rest_read_in_order(self):
        corpus = Corpus({s: torch.arange(1, 34) for s in ("train", "valid", "test")}, 40)  # 8 windows of 4
        starts = list(range(1, 33, 4))

        def order(seed, epoch, split="train", batching="windows"):  # the windows by their first token
            task = train_lm.TextTask(corpus, 4, 2, seed, batching)
            return [int(x) for inputs, _, _ in task.batches(split, epoch) for x in inputs[:, 0]]
        self.assertEqual(sorted(order(0, 1)), starts)
        self.assertNotEqual(order(0, 1), starts)
        self.assertEqual(order(0, 1), order(0, 1))
        self.assertNotEqual(order(0, 1), order(0, 2))
        self.assertNotEqual(order(0, 1), order(1, 1))
        self.assertEqual(order(0, 1, "valid"), starts)
        self.assertEqual(order(0, 1, batching="streams"), [1, 17, 5, 21, 9, 25, 13, 29])  # two streams, in step

    def test_carried_state_equals_one_pass_over_each_whole_stream(self):
        data = write_token_files(self.tmp / "tokens", n=(400, 103, 70))
        corpus = train_lm.load_wikitext(data, torch.device("cpu"))
        task = train_lm.TextTask(corpus, seq_len=4, batch_size=3, seed=0, batching="streams")
        torch.manual_seed(0)
        model = LanguageModel("lstm", 2, corpus.vocab_size, 8, 8).eval()
        result = engine.run_epoch(model, task, "valid")
        # the same three streams, each read in a single forward pass: the state carry is exact
        w = task.windows["valid"]
        seq = w.padded[:w.num_windows * 4 + 1]
        L = w.per_stream * 4
        inputs = torch.stack([seq[k * L:(k + 1) * L] for k in range(3)])
        targets = torch.stack([seq[k * L + 1:(k + 1) * L + 1] for k in range(3)])
        with torch.no_grad():
            whole, _ = model(inputs, targets=targets)
        self.assertEqual(result["count"], 102)
        self.assertAlmostEqual(result["loss"], whole.item() / 102, places=5)
        windows = engine.run_epoch(model, train_lm.TextTask(corpus, 4, 3, 0), "valid")
        self.assertEqual(windows["count"], 102)
        self.assertNotAlmostEqual(windows["loss"], result["loss"], places=4)  # resetting the state differs
        engine.run_epoch(model, task, "train")  # its last state is not the next pass's first
        self.assertEqual(engine.run_epoch(model, task, "valid")["loss"], result["loss"])

    def test_streams_train_through_the_cli(self):
        data = write_token_files(self.tmp / "tokens", n=(400, 103, 600))  # the test split: 3 windows of 256
        run_dir, out, _ = self.lm("--batching", "streams", "--dropout", "0.2", "--grad_clip", "0.5", "--epochs", "2",
                                  "--grad_norms", "--layers", "2", "--ema", "0.5", data=data)
        rows = read_csv(run_dir / "metrics.csv")
        self.assertLess(float(rows[1]["train_loss"]), float(rows[0]["train_loss"]))
        # its perplexities are not windows' (the reference's): config.json says so, for the report to say
        self.assertRegex(json.loads((run_dir / "config.json").read_text())["scoring"], r"^over carried streams \(.*"
                         r"lower than the same model's in independent windows, the reference's way; its best-valid "
                         r"model is also tested in windows of 256, as the reference$")
        # and its best-valid model is tested as the reference tested: independent windows of 256 tokens
        model = generate.load_run(run_dir)[0]
        corpus = train_lm.load_wikitext(data, torch.device("cpu"))
        alike = engine.run_epoch(model, train_lm.TextTask(corpus, 256, 4, 0), "test")
        self.assertEqual(alike["count"], 599)
        summary = json.loads((run_dir / "summary.json").read_text())
        self.assertAlmostEqual(summary["alike_best_test_ppl"], alike["metric"], places=9)
        self.assertNotAlmostEqual(summary["alike_best_test_ppl"], summary["best_test_ppl"], places=3)
        self.assertIn(f"(scored as the reference: {alike['metric']:,.2f}); EMA final", out)
        self.assertEqual(len(read_csv(run_dir / "grad_norms.csv")), 3 * 2)  # epochs 0-2, two LSTM layers
        self.assertIn("ema_valid_ppl", rows[0])
        transformer, _, _ = self.lm("--batching", "streams", "--model", "transformer", data=data, exp_id="transformer")
        config, summary = (json.loads((transformer / f).read_text()) for f in ("config.json", "summary.json"))
        self.assertIsNone(config["scoring"])  # nothing carried: its streams are scored as windows
        self.assertNotIn("alike_best_test_ppl", summary)


class TestGenerate(CliCase):
    def test_top_k_samples_among_the_k_likeliest_only(self):
        torch.manual_seed(0)
        model = LanguageModel("gru", 1, vocab_size=40, embedding_size=8, hidden_size=8).eval()

        def draw(seed, top_k, temperature=2.0):
            return generate.sample(model, [3, 4], 12, temperature, top_k, torch.Generator().manual_seed(seed))
        self.assertNotEqual(draw(1, 0), draw(2, 0))  # among all 39 words: the seed decides
        self.assertEqual(draw(1, 1), draw(2, 1))  # k = 1: the likeliest word each time, whatever the seed
        self.assertEqual(draw(1, 0, 1e-4), draw(1, 1))  # so does a temperature near 0

    def test_word_level_samples_are_text_and_repeat_with_a_seed(self):
        for core in ("lstm", "transformer"):
            with self.subTest(core=core):
                run_dir, _, _ = self.lm("--model", core, "--epochs", "2", "--lr", "0.01", exp_id=core)
                argv = ["--run", str(run_dir), "--words", "20", "--top_k", "5", "--temperature", "0.8",
                        "--prompt", "the cat zebra"]
                code, first, err = run(generate.main, argv + ["--seed", "1"])
                self.assertEqual(code, 0, err)
                self.assertIn("warning: not in the vocabulary, read as <unk>: zebra", err)
                words = first.split()
                vocab = set((run_dir / "vocab.txt").read_text().split())
                self.assertTrue(words and set(words) <= vocab - {"<pad>"}, first)
                self.assertEqual(run(generate.main, argv + ["--seed", "1"])[1], first)
                self.assertNotEqual(run(generate.main, argv + ["--seed", "2"])[1], first)

    def test_a_word_level_sample_is_a_line_per_sentence_after_its_prompt(self):
        vocab = ["<pad>", "<unk>", "<eos>", "the", "cat"]
        self.assertEqual(generate.decode([3, 4, 2, 4, 3, 2], vocab), "the cat\ncat the\n")
        run_dir, _, _ = self.lm("--epochs", "1", exp_id="lines")
        for prompt in ("", "  "):  # no prompt: the sample starts a line, and is all that is printed
            code, out, err = run(generate.main, ["--run", str(run_dir), "--words", "12", "--prompt", prompt])
            self.assertEqual(code, 0, err)
            self.assertEqual(len(out.split()), 12 - out.count("\n") + 1, repr(out))
            self.assertFalse(out[0].isspace(), repr(out))

    def test_recurrent_sampling_with_state_equals_rereading_the_context(self):
        model, _, _ = generate.load_run(self.lm("--epochs", "1")[0])
        self.assertFalse(model.training)  # no dropout: a sample depends on its seed alone
        with_state = generate.sample(model, [3, 4, 5], 10, generator=torch.Generator().manual_seed(0))

        class Stateless(torch.nn.Module):  # the same model, made to reread its whole context
            def forward(self, tokens, state=None):
                return model(tokens)[0], None

        rereading = generate.sample(Stateless(), [3, 4, 5], 10, generator=torch.Generator().manual_seed(0))
        self.assertEqual(with_state, rereading)

    def test_token_id_runs_print_ids_and_say_why(self):
        run_dir, _, _ = self.lm("--epochs", "1", data=write_token_files(self.tmp / "tok"))
        offline = mock.patch.object(generate.Vocabulary, "find", side_effect=OSError("no network"))
        with offline:
            code, out, err = run(generate.main, ["--run", str(run_dir), "--words", "5", "--prompt", "3 7 9"])
        self.assertEqual(code, 0, err)
        self.assertIn("encoder_bpe_40000.json and vocab_40000.bpe in", err)
        ids = [int(t) for t in out.split()]
        self.assertEqual(len(ids), 5)
        self.assertTrue(all(0 < i < 50 for i in ids))
        for prompt in ("0 3", "3 50"):  # padding, and beyond the vocabulary
            with self.subTest(prompt=prompt), offline:
                code, out, err = run(generate.main, ["--run", str(run_dir), "--prompt", prompt])
                self.assertEqual((code, out, err), (2, "", "error: prompt ids must lie in 1..49\n"))
        with offline:
            code, _, err = run(generate.main, ["--run", str(run_dir), "--prompt", "the cat"])
        self.assertEqual(code, 2)  # text needs the vocabulary: the one line says why it is missing and where it goes
        self.assertEqual(err, "error: this run was trained on token ids, and GPT-1's vocabulary is not at hand (no "
                              f"network): put encoder_bpe_40000.json and vocab_40000.bpe into {self.tmp / 'tok'} "
                              "(python gpt1.py --from DIR copies them there from a download made elsewhere); or give "
                              "--prompt as space-separated token ids\n")
        with offline:  # no prompt: a token drawn with the seed starts the sample, the same for the same seed
            samples = [run(generate.main, ["--run", str(run_dir), "--words", "4", "--seed", seed])[:2]
                       for seed in ("1", "1", "2", "3")]
        self.assertEqual([code for code, _ in samples], [0, 0, 0, 0])
        self.assertEqual([len(out.split()) for _, out in samples], [4, 4, 4, 4])
        self.assertEqual(samples[0], samples[1])
        self.assertNotEqual(samples[0], samples[2])
        self.assertGreater(len({out.split()[0] for _, out in samples}), 1)  # the first token too

    def test_token_id_runs_take_text_through_gpt1s_vocabulary(self):
        run_dir, _, _ = self.lm("--epochs", "1", data=write_token_files(self.tmp / "tok"))
        bpe = generate.Vocabulary({"<unk>": 0, "t": 1, "h": 2, "e</w>": 3, "c": 4, "a": 5, "t</w>": 6}, [])
        with mock.patch.object(generate.Vocabulary, "find", return_value=bpe):
            code, out, err = run(generate.main, ["--run", str(run_dir), "--words", "3", "--prompt", "The cat ✓ <unk>"])
            self.assertEqual(code, 0, err)
            self.assertTrue(out.startswith("the cat <unk> <unk>"), out)  # the prompt, then its continuation
            self.assertIn("warning: not in the vocabulary, read as <unk>: ✓\n", err)  # <unk> itself is a word of it


class TestDefaults(unittest.TestCase):
    def test_a_folder_with_both_formats_is_read_and_named_as_its_token_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            write_text_files(write_token_files(tmp))
            self.assertEqual(config.parse_config(train_lm.Config, ["--data_folder", tmp]).default_exp_id(),
                             "lm_lstm_L1_adamw_s42")
            self.assertIsNone(load_wikitext(tmp, torch.device("cpu")).vocab)  # the token files: no word list

    def test_reference_defaults_and_derived_names(self):
        lm = config.parse_config(train_lm.Config, [])
        self.assertEqual((lm.batch_size, lm.lr, lm.epochs, lm.optimizer, lm.seq_len, lm.data_folder),
                         (16, 1e-3, 10, "adamw", 256, "./data/wikitext2"))
        vit = config.parse_config(train_vit.Config, [])
        self.assertEqual((vit.batch_size, vit.lr, vit.weight_decay, vit.momentum, vit.data_folder),
                         (128, 3e-4, 5e-4, 0.9, "./data/cifar10"))
        self.assertEqual(vit.default_exp_id(), "vit_L2_adamw_s42")
        lm = config.parse_config(train_lm.Config, ["--model", "transformer", "--block", "postnorm", "--epochs", "3",
                                                   "--dropout", "0.1", "--embeddings", "/x/glove.6B.npz"])
        self.assertEqual(lm.default_exp_id(), "lm_transformer_L1_adamw_postnorm_dropout0.1_embeddings-glove.6B_s42")
        # a file's name made a plain name; a number in full; the seed as the name's own part only
        lm = config.parse_config(train_lm.Config, ["--lr", "0.00125", "--embeddings", "my table (v2).npz"])
        self.assertEqual(lm.default_exp_id(), "lm_lstm_L1_adamw_lr0.00125_embeddings-my-table--v2-_s42")
        for exp_id, configuration in (("vit_L2_sgd_s42", "vit_L2_sgd"), ("vit_small_s42_try2", "vit_small_try2"),
                                      ("vit_small", "vit_small"), ("vit_s420", "vit_s420")):
            named = config.parse_config(train_vit.Config, ["--exp_id", exp_id])
            self.assertEqual(named.naming()["configuration"], configuration)
        # how a run is computed, not what: one configuration, its runs comparable with the report's
        fast = config.parse_config(train_vit.Config, ["--compile", "--device", "cpu", "--no_progress"])
        self.assertEqual(fast.default_exp_id(), "vit_L2_adamw_s42")
        self.assertEqual(fast.naming()["changed"], {})
        # what a resume may change: nothing the run computes with, not its seed (a replicate of its own)
        self.assertEqual(sorted(fast.naming()["may_differ_on_resume"]), ["compile", "data_folder", "device", "epochs",
                         "exp_id", "keep_checkpoint", "log_dir", "no_progress", "overwrite", "resume"])

    def test_a_recipe_sets_defaults_that_flags_override_and_names_only_the_overrides(self):
        vit = config.parse_config(train_vit.Config, ["--recipe", "improved", "--layers", "6", "--ema", "0.99"])
        self.assertEqual((vit.lr, vit.augment, vit.mixup, vit.warmup_epochs, vit.grad_norms, vit.ema),
                         (1e-3, "strong", 0.8, 5.0, True, 0.99))
        self.assertEqual(vit.default_exp_id(), "vit_L6_adamw_improved_ema0.99_s42")
        self.assertEqual(vit.naming()["changed"]["augment"], "strong")  # compared with the reference's defaults
        lm = config.parse_config(train_lm.Config, ["--recipe=improved", "--seed", "3"])
        self.assertEqual((lm.batching, lm.batch_size, lm.seq_len, lm.dropout), ("streams", 32, 128, 0.4))
        self.assertEqual(lm.default_exp_id(), "lm_lstm_L1_adamw_improved_s3")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            config.parse_config(train_vit.Config, ["--recipe", "improved", "--help"])
        self.assertIn("--augment strong", out.getvalue())  # --help lists what the recipe sets
        self.assertIn("(default: 0.001)", out.getvalue())  # and shows the defaults it makes
        with self.assertRaisesRegex(utils.UserError, "invalid choice: 'best'"):
            config.parse_config(train_vit.Config, ["--recipe", "best"])

    def test_optimizers_are_the_references(self):
        params = torch.nn.Linear(2, 1, bias=False)
        opt, wd, _ = optim.make_optimizer("sgd", params, 0.1, 0.9, 1e-4)
        self.assertEqual((type(opt), opt.defaults["momentum"], opt.defaults["weight_decay"], wd),
                         (torch.optim.SGD, 0, 1e-4, 1e-4))
        opt, _, _ = optim.make_optimizer("momentum", params, 0.1, 0.9, 1e-4)
        self.assertEqual(opt.defaults["momentum"], 0.9)
        opt, wd, _ = optim.make_optimizer("adam", params, 0.1, 0.9, 1e-4)
        self.assertEqual((type(opt), opt.defaults["weight_decay"], wd), (torch.optim.Adam, 0, 0.0))
        opt, wd, _ = optim.make_optimizer("adamw", params, 0.1, 0.9, 1e-4)
        self.assertEqual((type(opt), opt.defaults["weight_decay"]), (torch.optim.AdamW, 1e-4))
        # Fused where this torch has the CPU kernel (Adam/AdamW since 2.4, SGD since 2.5).
        for name, cls in (("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD), ("adam", torch.optim.Adam),
                          ("adamw", torch.optim.AdamW)):
            try:
                cls(params.parameters(), lr=0.1, fused=True)
                has_kernel = True
            except RuntimeError:
                has_kernel = False
            fused = optim.make_optimizer(name, params, 0.1, device=torch.device("cpu"))[0].defaults["fused"]
            self.assertEqual(bool(fused), has_kernel)
        self.assertTrue(optim.make_optimizer("adamw", params, 0.1, device=torch.device("cpu"))[0].defaults["fused"])

    def test_fused_kernels_asked_for_and_fallbacks(self):
        params = torch.nn.Linear(2, 1, bias=False)
        made = []

        class NoFused(torch.optim.AdamW):
            def __init__(self, params, **kwargs):
                made.append(kwargs)
                if kwargs.get("fused"):
                    raise RuntimeError("fused=True requires all the params to be CUDA tensors")
                super().__init__(params, **kwargs)

        with mock.patch.dict(optim.OPTIMIZERS, adamw=(NoFused, optim.OPTIMIZERS["adamw"][1])):
            opt, _, _ = optim.make_optimizer("adamw", params, 0.1, device=torch.device("cuda"))
            self.assertEqual([k.get("fused") for k in made], [True, None])
            self.assertTrue(opt.defaults["foreach"])
            made.clear()
            opt, _, _ = optim.make_optimizer("adamw", params, 0.1, device=torch.device("cpu"))
            self.assertEqual([k.get("fused") for k in made], [True, None])
            self.assertFalse(opt.defaults["foreach"])

    def test_cpu_peak_memory_is_the_programs_own_not_its_parents(self):
        # ru_maxrss starts a program at its parent's peak: a trainer started by a process holding
        # 2 GB would report 2 GB. Its own peak here is torch's import, a few hundred MB.
        held = bytearray(2 * 2 ** 30)
        held[::4096] = b"\1" * len(range(0, len(held), 4096))  # resident, page by page
        code = "import torch, engine; print(engine.peak_memory(torch.device('cpu'))[0])"
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=HERE)
        self.assertLess(float(child.stdout), 1024)
        self.assertGreater(engine.resident_kb("VmHWM"), 2 * 2 ** 20)
        del held

    @unittest.skipUnless(shutil.which("git"), "git is not installed")
    def test_a_run_records_its_commit_and_whether_the_code_differed_from_it(self):
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(HERE / "utils.py", tmp)  # utils.py asks git about the folder it lies in
            spec = importlib.util.spec_from_file_location("utils_elsewhere", Path(tmp) / "utils.py")
            elsewhere = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(elsewhere)
            commit = lambda: elsewhere.environment(torch.device("cpu"))["git_commit"]  # noqa: E731
            self.assertIsNone(commit())  # no repository
            git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", tmp]
            for step in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
                subprocess.run(git + step, check=True)
            head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
            (Path(tmp) / "notes.txt").write_text("untracked: not the code")
            self.assertEqual(commit(), head)
            with open(Path(tmp) / "utils.py", "a") as f:
                f.write("\n# changed\n")
            self.assertEqual(commit(), head + "-dirty")

    def test_cpu_memory_and_precision_fallbacks(self):
        cpu = torch.device("cpu")
        mb, pct = engine.peak_memory(cpu)
        self.assertGreater(mb, 10)
        self.assertTrue(0 < pct < 100)
        self.assertIsNone(utils.choose_precision("auto", cpu)[0])
        self.assertEqual(utils.choose_precision("bf16", cpu)[0], torch.bfloat16)
        with self.assertRaisesRegex(utils.UserError, "fp16 needs CUDA"):
            utils.choose_precision("fp16", cpu)


class TestCompile(CliCase):
    def test_compile_is_in_place_timed_apart_and_changes_no_number(self):
        compiled, seen = [], []
        real_loss = train_vit.ImageTask.loss

        def loss(task, model, batch):
            seen.append((model.training, len(batch[0])))
            return real_loss(task, model, batch)
        with mock.patch("torch.nn.Module.compile", lambda self, *a, **k: compiled.append(type(self).__name__)), \
                mock.patch.object(train_vit.ImageTask, "loss", loss):
            run_dir, out, _ = self.vit("--compile", "--dropout", "0.1", "--epochs", "2", exp_id="compiled")
        plain, _, _ = self.vit("--dropout", "0.1", "--epochs", "2", exp_id="plain")
        self.assertEqual(compiled, ["VisionTransformer"])
        # the warm-up: each batch size an epoch will see, in its mode (108 train images in batches of 8:
        # 8 and 4; 12 valid: 8 and 4; 30 test: 8 and 6)
        self.assertEqual(seen[:5], [(True, 8), (True, 4), (False, 8), (False, 6), (False, 4)])
        self.assertIn("not counted in the epoch times", out)
        summary = json.loads((run_dir / "summary.json").read_text())
        self.assertGreater(summary["compile_seconds"], 0)
        self.assertIsNone(json.loads((plain / "summary.json").read_text())["compile_seconds"])
        keys = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"].keys()
        self.assertFalse(any("_orig_mod" in k for k in keys))
        # the warm-up pass neither trains nor consumes random numbers
        self.assertEqual(results(run_dir)[0], results(plain)[0])

    def test_gradient_norms_are_only_logged_and_change_no_number(self):
        logged, _, _ = self.vit("--grad_norms", "--dropout", "0.1", "--epochs", "2", exp_id="logged")
        plain, _, _ = self.vit("--dropout", "0.1", "--epochs", "2", exp_id="plain")
        self.assertEqual(results(logged)[:2], results(plain)[:2])  # what lets the report compare such runs
        naming = json.loads((logged / "config.json").read_text())["naming"]
        self.assertEqual((naming["changed"]["grad_norms"], naming["only_logs"]), (True, ["grad_norms"]))
        self.assertEqual(len(results(logged)[2]), 3 * 2)  # the first step and 2 epochs, of each of the 2 blocks

    def test_a_model_that_does_not_compile_is_one_line_and_leaves_no_directory(self):
        import torch._dynamo
        real = torch.nn.Module.compile

        def backend(graph, inputs):  # as inductor's on a machine without a C compiler
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        try:
            with mock.patch("torch.nn.Module.compile", lambda self, mode=None: real(self, backend=backend)):
                _, _, err = self.vit("--compile", expect=2)
        finally:
            torch._dynamo.reset()
        self.assert_refused(err, "--compile failed: RuntimeError: InvalidCxxCompiler: No working C++ compiler found; "
                                 "run without --compile")
        self.assertFalse((self.logs / "run").exists())


class TestWarmUpShapesPerProcess(unittest.TestCase):
    def test_each_rank_warms_up_on_the_slices_it_will_really_see(self):
        class Task:  # batches of 8 and a last one of 5 in train; 8 and 3 in valid, 8 and 6 in test
            sizes = dict(train={8, 5}, valid={8, 3}, test={8, 6})

            def batch_sizes(self, split):
                return self.sizes[split]

            def batches(self, split, epoch):
                yield torch.arange(8.0)[:, None], 8

            def loss(self, model, batch):
                seen.append((model.training, len(batch[0])))
                return model(batch[0]).sum(), batch[1], torch.zeros(())
        model = torch.nn.Linear(1, 1)
        for rank, expected in ((0, [(True, 4), (True, 3), (False, 4), (False, 3), (False, 2)]),
                               (1, [(True, 4), (True, 2), (False, 4), (False, 3), (False, 1)])):
            seen = []
            with mock.patch("torch.nn.Module.compile"), mock.patch("utils.world_size", return_value=2), \
                    mock.patch("utils.rank", return_value=rank), contextlib.redirect_stdout(io.StringIO()):
                engine.compile_model(model, Task())
            self.assertEqual(seen, expected, f"rank {rank}")  # tensor_split of 5, 8, 6, 3 over 2 processes


class TestCompiledLmShapes(CliCase):
    @unittest.skipIf(" " in tempfile.gettempdir(), "torch's C++ build fails in a temporary folder whose path has a space")
    def test_after_the_warm_up_an_epoch_with_a_partial_last_batch_valid_and_test_compile_nothing(self):
        # 2,400 train tokens in windows of 64: 38 windows, batches of 32 and 6, so the last batch holds
        # fewer tokens than the loss's chunk of 1,024 (its chunk loop is a shape of the graph); test
        # ends on a batch of 1. Padded with empty windows, every batch has one shape.
        import torch._dynamo
        data = write_token_files(self.tmp / "tokens", n=(2400, 2100, 2200))
        real = engine.compile_model

        def compile_then_forbid_recompiling(*args, **kwargs):
            seconds = real(*args, **kwargs)
            torch._dynamo.config.error_on_recompile = True
            return seconds
        torch._dynamo.reset()
        try:
            with mock.patch.object(engine, "compile_model", compile_then_forbid_recompiling):
                run_dir, out, _ = self.lm("--compile", "--seq_len", "64", "--batch_size", "32", "--epochs", "1",
                                          data=data)
        finally:
            torch._dynamo.config.error_on_recompile = False
            torch._dynamo.reset()
        self.assertIn("compiled the model", out)
        plain, _, _ = self.lm("--seq_len", "64", "--batch_size", "32", "--epochs", "1", data=data, exp_id="plain")
        for (a, b) in zip(results(run_dir)[0], results(plain)[0]):
            for k in a:
                self.assertLessEqual(abs(float(a[k]) - float(b[k])), 1e-5 * abs(float(b[k])), k)

    def test_padding_windows_change_no_number(self):
        data = write_token_files(self.tmp / "tokens", n=(2400, 2100, 2200))
        corpus = load_wikitext(data, torch.device("cpu"))
        task = train_lm.TextTask(corpus, 64, 32, seed=0)
        torch.manual_seed(0)
        model = LanguageModel("lstm", 1, corpus.vocab_size, 16, 16)
        batches = list(task.batches("train", 1))
        self.assertEqual([len(b[0]) for b in batches], [32, 32])
        self.assertEqual(sum(b[2] for b in batches), 2399)  # every real target once, padding never
        inputs, targets, count = batches[-1]
        self.assertTrue((targets[6:] == 0).all())  # windows 6.. are padding
        self.assertEqual(int((targets != 0).sum()), count)
        with torch.no_grad():
            padded = model(inputs, targets=targets)[0]
            alone = model(inputs[:6], targets=targets[:6])[0]
        torch.testing.assert_close(padded, alone)


class TestWeightDecayGroups(CliCase):
    def decayed(self, run_dir):
        config = json.loads((run_dir / "config.json").read_text())
        return config["weight_decay_groups"]

    def test_the_reference_decays_everything_the_improved_recipe_not_norms_biases_positions_cls(self):
        model = train_vit.build_model(dict(layers=2, block="prenorm", embed_dim=32, hidden_dim=64, num_heads=4,
                                           patch_size=4, dropout=0.0, drop_path=0.0, num_classes=3))
        names = {id(p): n for n, p in model.named_parameters()}
        for exempt in (False, True):
            opt, wd, groups = optim.make_optimizer("adamw", model, 1e-3, weight_decay=0.05, exempt=exempt)
            decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
            kept = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
            if not exempt:
                self.assertEqual((decayed, kept), (set(names.values()), set()))
                continue
            self.assertEqual(decayed, {"patch_embed.weight", "head.weight"} | {
                f"blocks.{i}.{w}.weight" for i in (0, 1) for w in ("qkv", "proj", "mlp.0", "mlp.3")})
            self.assertEqual(decayed | kept, set(names.values()))
            self.assertTrue({"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.1.qkv.bias", "norm.bias"}
                            <= kept)
            self.assertEqual(groups["no_decay"], dict(tensors=len(kept), parameters=sum(
                p.numel() for p in model.parameters() if names[id(p)] in kept)))
        lm = LanguageModel("transformer", 1, 50, 16, 16, num_heads=4, mlp_dim=32)
        _, _, groups = optim.make_optimizer("adamw", lm, 1e-3, weight_decay=0.01, exempt=True)
        kept = [n for n, p in lm.named_parameters() if p.ndim < 2 or n == "core.pos_embed"]
        self.assertEqual(groups["no_decay"]["tensors"], len(kept))
        frozen = LanguageModel("lstm", 1, 50, 16, 16, embeddings=torch.zeros(50, 16))  # tied to the output layer
        opt, _, groups = optim.make_optimizer("adamw", frozen, 1e-3, weight_decay=0.01)
        learnable = [p for p in frozen.parameters() if p.requires_grad]
        self.assertEqual(groups["decay"], dict(tensors=len(learnable), parameters=sum(p.numel() for p in learnable)))
        self.assertFalse(any(p is frozen.embedding.weight for p in opt.param_groups[0]["params"]))

    def test_config_json_records_the_groups_of_each_recipe(self):
        reference, _, _ = self.vit("--epochs", "1", "--limit_batches", "1", exp_id="reference")
        improved, _, _ = self.vit("--recipe", "improved", "--epochs", "1", "--limit_batches", "1",
                                  "--warmup_epochs", "1", exp_id="improved")
        total = json.loads((reference / "config.json").read_text())
        self.assertEqual(self.decayed(reference)["no_decay"], dict(tensors=0, parameters=0))
        groups = self.decayed(improved)
        self.assertEqual(groups["decay"]["tensors"], 10)  # patch embedding, head, 4 matrices per block
        self.assertEqual(groups["decay"]["parameters"] + groups["no_decay"]["parameters"],
                         self.decayed(reference)["decay"]["parameters"])
        self.assertTrue(total["decay_exempt"] is False)


class TestResumeChecksWhatMatters(CliCase):
    """Resume refuses what changes the numbers (other data, another precision) and accepts what does
    not (the data moved, the run folder renamed, another GPU of the same precision); a refusal
    changes no file of the run."""

    def test_moved_data_renamed_folder_and_another_precision_reason_are_accepted(self):
        data = write_text_files(self.tmp / "text")
        whole, _, _ = self.lm("--epochs", "3", "--dropout", "0.2", data=data, exp_id="whole")
        self.lm("--epochs", "1", "--dropout", "0.2", data=data, exp_id="cfg")
        # a checkpoint of an earlier version: without a record added since, and a setting added since (its default)
        ckpt = rundir.load_torch(self.logs / "cfg" / "checkpoint.pt")
        del ckpt["config"]["weight_decay_groups"], ckpt["config"]["grad_clip"]
        rundir.save_torch(ckpt, self.logs / "cfg" / "checkpoint.pt")
        moved = self.tmp / "elsewhere"
        data.rename(moved)
        (self.logs / "cfg").rename(self.logs / "cfg_a")
        _, out, _ = self.lm("--epochs", "2", "--dropout", "0.2", "--resume", data=moved, exp_id="cfg_a")
        self.assertIn("resuming", out)
        another = utils.Precision(None, "fp32: asked for, on another GPU")
        # how results are described (the study's title, the digits shown) is no setting either
        with mock.patch("utils.choose_precision", return_value=another), \
                mock.patch.object(train_lm.TextTask, "title", "Wikitext-2, renamed"), \
                mock.patch.object(train_lm.TextTask, "digits", 3):
            _, out, _ = self.lm("--epochs", "3", "--dropout", "0.2", "--resume", data=moved, exp_id="cfg_a")
        self.assertIn("resuming", out)
        self.assertEqual(results(self.logs / "cfg_a"), results(whole))

    def test_a_resume_records_where_the_earlier_epochs_trained_and_the_report_names_both(self):
        run_dir, _, _ = self.vit("--epochs", "1")
        here = json.loads((run_dir / "config.json").read_text())["environment"]["device_name"]
        with mock.patch("utils.device_name", return_value="Another GPU"):  # requeued onto another machine
            self.vit("--epochs", "2", "--resume")
        config = json.loads((run_dir / "config.json").read_text())
        self.assertEqual(config["environment"]["device_name"], "Another GPU")
        self.assertEqual([(e["device_name"], e["world_size"], e["epochs_done"]) for e in config["earlier_environments"]],
                         [(here, 1, 1)])
        code, _, err = run(plot.main, ["--log_dir", str(self.logs)])
        self.assertEqual(code, 0, err)
        self.assertIn(f"| {' / '.join(sorted(['Another GPU', here]))} |", (self.logs / "report" / "summary_vit.md").read_text())
        # a resume that fails before its first epoch ends trained nothing there: not an environment of the run
        with mock.patch("utils.device_name", return_value="A GPU that fails"), \
                mock.patch("engine.run_epoch", side_effect=utils.UserError("the GPU fell off the bus")):
            self.vit("--epochs", "3", "--resume", expect=2)
        self.assertEqual(json.loads((run_dir / "config.json").read_text())["environment"]["device_name"],
                         "A GPU that fails")
        self.vit("--epochs", "3", "--resume")
        config = json.loads((run_dir / "config.json").read_text())
        self.assertEqual([(e["device_name"], e["epochs_done"]) for e in config["earlier_environments"]],
                         [(here, 1), ("Another GPU", 2)])
        # a config.json damaged since: the run goes on, and says what its record lacks
        (run_dir / "config.json").write_text("[]")
        _, out, err = self.vit("--epochs", "4", "--resume")
        self.assertIn("resuming", out)
        self.assertIn(f"warning: {run_dir / 'config.json'} cannot be read (damaged): where its first 3 epochs trained "
                      f"goes unrecorded", err)
        self.assertNotIn("earlier_environments", json.loads((run_dir / "config.json").read_text()))

    def test_fewer_epochs_than_it_trained_are_refused_and_nothing_changes(self):
        run_dir, _, _ = self.lm("--epochs", "2", "--keep_checkpoint")
        before = snapshot(run_dir)
        _, _, err = self.lm("--epochs", "1", "--resume", "--keep_checkpoint", expect=2)
        self.assert_refused(err, "with --epochs 1", "trained 2 epochs already", "--epochs 2 or more")
        self.assertEqual(snapshot(run_dir), before)
        _, out, _ = self.lm("--epochs", "2", "--resume", "--keep_checkpoint")  # the same epochs: tested again
        self.assertIn("resuming", out)

    def test_a_setting_that_adds_columns_is_named_and_a_data_format_that_resolves_alike_is_accepted(self):
        data = write_token_files(self.tmp / "tokens")
        run_dir, _, _ = self.lm("--epochs", "1", "--keep_checkpoint", data=data)
        before = snapshot(run_dir)
        _, _, err = self.lm("--epochs", "2", "--ema", "0.5", "--resume", data=data, expect=2)
        self.assert_refused(err, "with a different configuration (ema: 0.0 -> 0.5)")  # not "a damaged checkpoint"
        self.assertEqual(snapshot(run_dir), before)
        _, out, _ = self.lm("--epochs", "2", "--data_format", "tokens", "--resume", data=data)  # what auto read
        self.assertIn("resuming", out)

    def test_other_epochs_under_a_cosine_schedule_are_refused_and_nothing_changes(self):
        # its learning rate at every step depends on the epochs: 2 epochs then 1 more is no 3-epoch run
        run_dir, _, _ = self.lm("--epochs", "2", "--scheduler", "cosine", "--keep_checkpoint")
        before = snapshot(run_dir)
        _, _, err = self.lm("--epochs", "3", "--scheduler", "cosine", "--resume", expect=2)
        self.assert_refused(err, "with --epochs 3", "cosine schedule spans the 2 epochs", "give --epochs 2")
        self.assertEqual(snapshot(run_dir), before)
        _, out, _ = self.lm("--epochs", "2", "--scheduler", "cosine", "--resume")  # the same epochs: tested again
        self.assertIn("resuming", out)

    def test_other_data_or_precision_are_refused_and_nothing_changes(self):
        data = write_text_files(self.tmp / "text")
        run_dir, _, _ = self.lm("--epochs", "1", data=data)
        before = snapshot(run_dir)
        lines = (data / "train.txt").read_text().splitlines(keepends=True)
        (data / "train.txt").write_text("".join(lines[::-1]))  # the same words, so the same vocabulary size
        _, _, err = self.lm("--epochs", "2", "--resume", data=data, expect=2)
        self.assert_refused(err, "trained on other data", "data_sha256")
        self.assertNotIn("--resume", err.split("trained on other data")[1])
        self.assertEqual(snapshot(run_dir), before)
        (run_dir / "checkpoint.pt").unlink()  # a finished run, as --keep_checkpoint does not leave it
        before = snapshot(run_dir)
        _, _, err = self.lm("--epochs", "2", "--resume", data=data, expect=2)
        self.assert_refused(err, "is finished")
        self.assertEqual(snapshot(run_dir), before)  # vocab.txt too: the run can still be sampled
        (run_dir / "summary.json").unlink()  # finished epochs, nothing to go on from: never restarted over them
        before = snapshot(run_dir)
        _, _, err = self.lm("--epochs", "2", "--resume", data=data, expect=2)
        self.assert_refused(err, "has finished epochs in its metrics.csv but no checkpoint.pt", "--overwrite")
        self.assertEqual(snapshot(run_dir), before)

    def test_another_precision_is_refused(self):
        run_dir, _, _ = self.vit("--epochs", "1")
        before = snapshot(run_dir)
        native = utils.Precision(torch.bfloat16, "bf16: native on compute capability 9.0")
        with mock.patch("utils.choose_precision", return_value=native):
            _, _, err = self.vit("--epochs", "2", "--resume", expect=2)
        self.assert_refused(err, "different configuration", "precision_used: 'float32' -> 'bfloat16'")
        self.assertLess(len(err), 300)
        self.assertEqual(snapshot(run_dir), before)

    def test_other_images_are_refused(self):
        run_dir, _, _ = self.vit("--epochs", "1")
        victim = next((self.tmp / "images" / "train").rglob("*.png"))
        victim.write_bytes(next((self.tmp / "images" / "test").rglob("*.png")).read_bytes())
        _, _, err = self.vit("--epochs", "2", "--resume", expect=2)
        self.assert_refused(err, "trained on other data")


class TestBf16OnCpu(CliCase):
    def test_bf16_autocast_trains_on_cpu(self):
        run_dir, _, _ = self.vit("--precision", "bf16", "--epochs", "1")
        self.assertTrue(math.isfinite(float(read_csv(run_dir / "metrics.csv")[0]["train_loss"])))


if __name__ == "__main__":
    unittest.main()


def snapshot(root):
    """Every file under root and its bytes."""
    return {p: p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def data_module_token_files():
    from data import TOKEN_FILES
    return TOKEN_FILES.values()


class TestErrorLines(unittest.TestCase):
    def test_an_error_without_a_message_is_still_one_line(self):
        for exc, code, start in ((utils.UserError(""), 2, "error: UserError"), (utils.Diverged("  "), 3, "diverged: Diverged")):
            def main(argv=None, exc=exc):
                raise exc
            status, _, err = run(utils.cli(main), [])
            self.assertEqual((status, err.strip()), (code, start))

    def test_running_out_of_memory_is_one_line_that_the_sweep_knows(self):
        for exc in (MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")):
            def main(argv=None, exc=exc):
                raise exc
            status, _, err = run(utils.cli(main), [])
            self.assertEqual((status, err), (2, utils.OUT_OF_MEMORY + "\n"))  # sweep.py goes on after it


class TestDisk(CliCase):
    def test_free_space_is_said_in_gb_or_mb(self):
        for free, said in ((3 * 2 ** 30 // 2, "1.5 GB"), (2 ** 30, "1.0 GB"), (2 ** 30 - 2 ** 20, "1023.0 MB"),
                           (0, "0.0 MB")):
            with mock.patch("shutil.disk_usage", return_value=mock.Mock(free=free)):
                self.assertEqual(utils.free_space(self.tmp), said)
        self.assertEqual(utils.free_space(self.tmp / "not there"), "unknown space")

    def test_torchs_words_for_a_failed_write_are_a_full_disk_any_other_error_is_not(self):
        path = self.tmp / "checkpoint.pt"
        path.write_bytes(b"the previous version")
        for said in ("PytorchStreamWriter failed writing file data/0: file write failed",  # torch's, by version
                     "[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0", "file write failed"):
            with mock.patch("torch.save", side_effect=RuntimeError(said)), self.assertRaises(utils.UserError) as e:
                rundir.save_torch({}, path)
            self.assertTrue(str(e.exception).startswith(f"could not write {path}: the write failed; "), said)
            self.assertEqual(path.read_bytes(), b"the previous version")
        with mock.patch("torch.save", side_effect=RuntimeError("a bug")), self.assertRaisesRegex(RuntimeError, "a bug"):
            rundir.save_torch({}, path)  # not a write that failed: its traceback stands
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), ["checkpoint.pt"])  # no temporary file left

    def test_a_finished_run_keeps_its_logs_and_best_weights_not_its_checkpoint(self):
        argv = [a for a in VIT_TINY if a != "--keep_checkpoint"]
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        code, _, err = run(train_vit.main, ["--data_folder", str(data), "--log_dir", str(self.logs), "--exp_id", "d",
                                            "--epochs", "1", *argv])
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(p.name for p in (self.logs / "d").iterdir()),
                         ["best.pt", "config.json", "metrics.csv", "summary.json"])
        code, _, err = run(train_vit.main, ["--data_folder", str(data), "--log_dir", str(self.logs), "--exp_id", "d",
                                            "--epochs", "2", "--resume", *argv])
        self.assertEqual(code, 2)
        self.assert_refused(err, "--keep_checkpoint")
        self.assertEqual(len(read_csv(self.logs / "d" / "metrics.csv")), 1)  # nothing lost

    def test_frozen_embeddings_are_not_saved_again_and_come_back_from_their_file(self):
        data = write_token_files(self.tmp / "tok")
        table = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
        np.savez(self.tmp / "emb.npz", tokens=table)
        run_dir, _, _ = self.lm("--embeddings", str(self.tmp / "emb.npz"), "--epochs", "2", data=data)
        for name in ("best.pt", "checkpoint.pt"):
            keys = torch.load(run_dir / name, weights_only=True)["model"].keys()
            self.assertFalse({"embedding.weight", "out.weight"} & set(keys), name)
        model, _, _ = generate.load_run(run_dir)
        torch.testing.assert_close(model.embedding.weight, torch.from_numpy(table))
        resumed, _, _ = self.lm("--embeddings", str(self.tmp / "emb.npz"), "--epochs", "3", "--resume", data=data)
        np.savez(self.tmp / "emb.npz", tokens=table + 1)  # the file changed: neither resume nor sampling use it
        _, _, err = self.lm("--embeddings", str(self.tmp / "emb.npz"), "--epochs", "4", "--resume", data=data, expect=2)
        self.assert_refused(err, "embeddings_sha256")
        code, _, err = run(generate.main, ["--run", str(run_dir), "--prompt", "3"])
        self.assertEqual(code, 2)
        self.assert_refused(err, "has changed")

    def test_weights_with_a_tensor_the_model_lacks_do_not_fit_it(self):
        model = torch.nn.Linear(2, 2)
        with self.assertRaises(utils.UserError) as e:
            rundir.load_trained(model, dict(model.state_dict(), extra=torch.zeros(1)), "best.pt")
        self.assertEqual(str(e.exception), "best.pt does not fit the model (missing nothing, unexpected extra)")


class TestCtrlCDuringAWrite(unittest.TestCase):
    def test_ctrl_c_during_a_checkpoint_write_finishes_the_file_then_stops(self):
        # Python's own handler, also where the tests run as a background job (SIGINT ignored)
        self.addCleanup(signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, signal.default_int_handler))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checkpoint.pt"
            state = {"w": torch.arange(100_000.0)}

            def write(f):  # Ctrl-C arrives in the middle of torch.save
                f.write(b"")
                os.kill(os.getpid(), signal.SIGINT)
                torch.save(state, f)
            with self.assertRaises(KeyboardInterrupt):
                rundir.atomic_write(path, write)
            self.assertTrue(torch.equal(torch.load(path, weights_only=True)["w"], state["w"]))  # whole, in place
            self.assertEqual([p.name for p in Path(tmp).iterdir()], ["checkpoint.pt"])  # no temporary left
            self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)  # the handler is back


class TestNothingLost(CliCase):
    """Bad input through the real CLI: one `error:` line, exit 2, every file that existed untouched."""

    def refused(self, script, argv, *fragments, watch=()):
        """The script's main in this process (a traceback would fail the test; a real process's exit
        code and stderr: TestRefusals) refuses argv in one line and changes nothing in `watch`."""
        before = {w: snapshot(w) for w in watch}
        main = {"train_vit.py": train_vit.main, "train_lm.py": train_lm.main, "generate.py": generate.main}[script]
        code, _, err = run(main, [str(a) for a in argv])
        self.assertEqual(code, 2, err)
        self.assert_refused(err.strip().splitlines()[-1] if err.strip() else "", *fragments)
        for w, files in before.items():
            self.assertEqual(snapshot(w), files, w)

    def test_overwrite_deletes_only_a_run_and_only_once_the_new_one_can_start(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        # a folder that is not a run: never deleted
        self.refused("train_vit.py", ["--data_folder", str(data), "--log_dir", str(data), "--exp_id", "train",
                                      "--overwrite", *VIT_TINY], "not a run directory", watch=[data])
        run_dir, _, _ = self.vit("--epochs", "1", exp_id="done")
        # a run that cannot start (batch larger than the data, missing data): the old run stays whole
        self.refused("train_vit.py", ["--data_folder", str(data), "--log_dir", str(self.logs), "--exp_id", "done",
                                      "--overwrite", *VIT_TINY, "--batch_size", "100000"], "larger than", watch=[run_dir])
        self.refused("train_vit.py", ["--data_folder", str(self.tmp / "nothing"), "--log_dir", str(self.logs),
                                      "--exp_id", "done", "--overwrite", *VIT_TINY], watch=[run_dir])
        # one that starts: nothing of the old run is left to be read as the new one's (its --grad_norms file)
        (run_dir / "grad_norms.csv").write_text("epoch,layer,norm\n1,1,5.0\n")
        self.vit("--epochs", "1", "--overwrite", exp_id="done")
        self.assertEqual(sorted(p.name for p in run_dir.iterdir()), ["best.pt", "checkpoint.pt", "config.json",
                                                                     "metrics.csv", "summary.json"])
        self.assertEqual(sorted(p.name for p in self.logs.iterdir()), [".done.lock", "done"])  # the old one is gone
        # a replacement killed in its first epoch left the run it replaces aside: a second --overwrite keeps it there
        old = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        run_dir.rename(self.logs / ".done.replaced")
        run_dir.mkdir()
        (run_dir / "config.json").write_bytes(old["config.json"])
        _, _, err = self.vit("--optimizer", "sgd", "--lr", "1e12", "--epochs", "2", "--overwrite", exp_id="done",
                             expect=3)
        self.assertIn(f"the run it was to replace is back in {run_dir}", err)
        self.assertEqual({p.name: p.read_bytes() for p in run_dir.iterdir()}, old)
        self.assertEqual(sorted(p.name for p in self.logs.iterdir()), [".done.lock", "done"])

    def test_resume_never_writes_into_a_folder_that_is_not_a_run(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        notes = self.tmp / "projects" / "notes"
        notes.mkdir(parents=True)
        (notes / "config.json").write_text('{"mine": 1}')  # a file of that common name, not a run's
        for exp_id in ("notes", "images"):  # and the data's own folder, given as a run
            self.refused("train_vit.py", ["--data_folder", str(data), "--log_dir", str(notes.parent if exp_id == "notes"
                                          else self.tmp), "--exp_id", exp_id, "--resume", *VIT_TINY],
                         "is not a run directory", watch=[notes, data])
        (self.logs / "probed").mkdir(parents=True)  # what a process killed between its folder and its first file
        (self.logs / "probed" / ".write_test").write_text("0")  # leaves: no run, so the command runs
        code, _, err = run(train_vit.main, ["--data_folder", str(data), "--log_dir", str(self.logs), "--exp_id",
                                            "probed", "--epochs", "1", *VIT_TINY])
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(p.name for p in (self.logs / "probed").iterdir() if p.name.startswith(".")), [])

    def test_a_run_that_another_process_starts_while_this_one_looks_is_in_use_not_one_to_resume(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        argv = ["--data_folder", str(data), "--log_dir", str(self.logs), "--exp_id", "shared", "--epochs", "1",
                *VIT_TINY]
        self.assertEqual(run(train_vit.main, argv)[0], 0)
        lock = self.logs / ".shared.lock"
        lock.unlink()  # as before the other process's first step: this one finds no lock to look at
        looks = engine.existing_run

        def started_meanwhile(cfg):  # the other takes the lock and writes its files, then this one looks at them
            fd = os.open(lock, os.O_RDWR | os.O_CREAT)
            self.addCleanup(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return looks(cfg)
        with mock.patch.object(engine, "existing_run", started_meanwhile):
            code, _, err = run(train_vit.main, argv)
        self.assertEqual((code, err.count("\n")), (2, 1), err)
        self.assertIn("is in use by another process", err)

    def test_two_trainers_on_one_run_directory_one_runs_the_other_is_refused(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        argv = [sys.executable, "train_vit.py", "--data_folder", str(data), "--log_dir", str(self.logs),
                "--exp_id", "shared", "--epochs", "3", *VIT_TINY]
        procs = [subprocess.Popen(argv + extra, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for extra in (["--lr", "1e-3"], ["--lr", "2e-3"])]
        for p in procs:
            self.addCleanup(end_process, p)
        errs = [p.communicate(timeout=300)[1] for p in procs]
        results_ = [(p.returncode, err) for p, err in zip(procs, errs)]
        codes = sorted(code for code, _ in results_)
        self.assertEqual(codes, [0, 2], results_)
        err = next(e for code, e in results_ if code == 2)
        self.assertIn("in use by another process", err)
        self.assertEqual(len(read_csv(self.logs / "shared" / "metrics.csv")), 3)  # one run's rows, not two
        lr = json.loads((self.logs / "shared" / "config.json").read_text())["lr"]
        self.assertIn(lr, (1e-3, 2e-3))

    def test_a_run_another_process_is_writing_is_in_use_not_one_to_resume(self):
        import fcntl
        run_dir, _, _ = self.vit("--epochs", "1", exp_id="busy")
        before = snapshot(run_dir)
        fd = os.open(self.logs / ".busy.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # as the process writing it holds it
            for extra in ([], ["--resume", "--epochs", "2"], ["--overwrite"]):
                _, _, err = self.vit(*extra, exp_id="busy", expect=2)
                self.assert_refused(err, f"{run_dir} is in use by another process")
        finally:
            os.close(fd)
        self.assertEqual(snapshot(run_dir), before)
        _, _, err = self.vit(exp_id="busy", expect=2)  # no longer held: a finished run, to --resume
        self.assert_refused(err, "already exists; use --resume")

    def test_a_file_system_without_locks_trains_unguarded_and_says_so(self):
        def no_locks(fd, operation):  # Lustre mounted without -o flock, NFS without its lock daemon
            raise OSError(errno.ENOSYS, "Function not implemented")
        with mock.patch("fcntl.flock", no_locks):
            run_dir, _, err = self.vit("--epochs", "1", exp_id="unlocked")
        self.assertEqual(len(read_csv(run_dir / "metrics.csv")), 1)
        self.assertEqual(err.count(f"warning: {self.logs} takes no file locks (Function not implemented): the run "
                                   f"directory {run_dir} is not guarded against a second process"), 1, err)

    def test_folders_that_are_not_classes(self):
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        for split in ("train", "test"):  # what Jupyter leaves behind: ignored
            (data / split / ".ipynb_checkpoints").mkdir()
            (data / split / ".ipynb_checkpoints" / "x.png").write_bytes((data / "train" / CLASSES[0] / "0000.png").read_bytes())
        (data / "train" / CLASSES[0] / "._0000.png").write_bytes(b"\0\5\26\7")  # macOS's AppleDouble: no image
        run_dir, out, _ = self.vit("--epochs", "1", exp_id="hidden")
        config = json.loads((run_dir / "config.json").read_text())
        self.assertNotIn(".ipynb_checkpoints", config["classes"])
        self.assertIn(", ".join(config["classes"]), out)  # the classes found are logged
        (data / "train" / "zebra").mkdir()  # a class without images shifts every label: refused
        (data / "test" / "zebra").mkdir()
        self.refused("train_vit.py", ["--data_folder", str(data), "--log_dir", str(self.logs), "--exp_id", "empty",
                                      *VIT_TINY], "without images", "zebra")

    def test_damaged_data_files(self):
        text = write_text_files(self.tmp / "text")
        (text / "valid.txt").write_bytes(b"caf\xe9 \xff\xfe\n")
        self.refused("train_lm.py", ["--data_folder", str(text), "--log_dir", str(self.logs), *LM_TINY], "not UTF-8")
        (text / "valid.txt").unlink()
        (text / "valid.txt").mkdir()
        self.refused("train_lm.py", ["--data_folder", str(text), "--log_dir", str(self.logs), *LM_TINY], "valid.txt")
        tokens = write_token_files(self.tmp / "tokens")
        np.savez(tokens / "wiki.validation.npz", tokens=np.arange(1, 40, dtype=np.uint16), vocab_size=np.array(300))
        self.refused("train_lm.py", ["--data_folder", str(tokens), "--log_dir", str(self.logs), *LM_TINY],
                     "disagree on the vocabulary size")
        for name in data_module_token_files():
            np.savez(tokens / name, tokens=np.arange(1, 40, dtype=np.uint16), vocab_size=np.array(10 ** 12))
        self.refused("train_lm.py", ["--data_folder", str(tokens), "--log_dir", str(self.logs), *LM_TINY],
                     "out of range")
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        (data / "train" / CLASSES[0] / "0000.png").unlink()
        (data / "train" / CLASSES[0] / "0000.png").symlink_to(self.tmp / "gone.png")
        self.refused("train_vit.py", ["--data_folder", str(data), "--log_dir", str(self.logs), *VIT_TINY],
                     "cannot read image")

    def test_generate_on_damaged_runs(self):
        run_dir, _, _ = self.lm("--epochs", "1", exp_id="words")
        other, _, _ = self.lm("--epochs", "1", "--hidden_size", "8", exp_id="other")
        vocab = (run_dir / "vocab.txt").read_text()
        best, lacking = torch.load(run_dir / "best.pt", weights_only=True), io.BytesIO()
        torch.save(dict(best, model={k: v for k, v in best["model"].items() if k != "proj.0.bias"}), lacking)
        cases = [("vocab.txt", vocab.splitlines(keepends=True)[:-3], "vocab.txt is damaged"),
                 ("best.pt", lacking.getvalue(), "does not fit the model (missing proj.0.bias, unexpected nothing)"),
                 ("vocab.txt", [w for w in vocab.splitlines(keepends=True) if w != "<unk>\n"] + ["extra\n"],
                  "vocab.txt is damaged"),
                 ("best.pt", (other / "best.pt").read_bytes(), "does not fit the model"),
                 ("best.pt", b"", "cannot load"), ("config.json", "[]", "not a language-model run"),
                 ("config.json", '{"task": "vit", "model_args": {}}', "not a language-model run")]
        for name, content, fragment in cases:
            with self.subTest(name=name, fragment=fragment):
                original = (run_dir / name).read_bytes()
                data = content if isinstance(content, bytes) else "".join(content).encode()
                (run_dir / name).write_bytes(data)
                self.refused("generate.py", ["--run", str(run_dir), "--words", "3"], fragment)
                (run_dir / name).write_bytes(original)
        self.refused("generate.py", ["--run", str(self.tmp), "--words", "3"], f"{self.tmp} is not a run directory (it "
                     "has no config.json): give the folder of a train_lm.py run (logs/<exp_id>)")
        self.refused("generate.py", ["--run", ""], "--run is empty; give the folder of a train_lm.py run")
        self.refused("generate.py", ["--run", str(self.tmp / "typo")], f"--run {self.tmp / 'typo'} does not exist")
        self.refused("generate.py", ["--run", str(run_dir / "best.pt")], "best.pt is a file, not a run directory")
        aside = self.logs / ".lm_a.replaced"  # a run --overwrite has set aside: not one to name
        aside.mkdir()
        (aside / "config.json").write_bytes((run_dir / "config.json").read_bytes())
        self.refused("generate.py", ["--run", str(self.logs), "--words", "3"], f"{self.logs} is a folder of runs, "
                     f"not one run: give one of them, e.g. --run {self.logs / 'other'} (2 there)")
        self.refused("generate.py", ["--run", str(run_dir), "--temperature", "inf"], "temperature")
        self.refused("generate.py", ["--run", str(run_dir), "--words", "0"], "--words must be in 1..100,000, got 0")
        self.refused("generate.py", ["--run", str(run_dir), "--top_k", "-1"], "--top_k must be >= 0, got -1")
        (run_dir / "best.pt").unlink()
        self.refused("generate.py", ["--run", str(run_dir)], "has no best.pt yet (no finished epoch)")

    def test_a_checkpoint_whose_parts_are_not_as_written_is_one_line_and_the_run_stays(self):
        run_dir, _, _ = self.vit("--epochs", "1", "--keep_checkpoint", exp_id="k")
        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        for change, fragment in ((dict(history=[{"x": 1}]), "(its history is missing or damaged)"),
                                 (dict(best=dict(epoch=1, value="x"), best_ema=None), "(its best_ema, best are"),
                                 (dict(best=dict(epoch="1", value=0.5)), "(its best is missing or damaged)"),
                                 (dict(optimizer="x"), "does not fit this run"),
                                 (dict(model={"head.weight": torch.ones(1)}),  # torch's second line, named
                                  "does not fit the model: Error(s) in loading state_dict for VisionTransformer: size "
                                  "mismatch for head.weight"),
                                 (dict(config=dict(lr=torch.ones(1))), "(its config is missing or damaged)")):
            torch.save(dict(ckpt, **change), run_dir / "checkpoint.pt")
            self.refused("train_vit.py", ["--data_folder", str(self.tmp / "images"), "--log_dir", str(self.logs),
                                          "--exp_id", "k", "--resume", "--epochs", "2", *VIT_TINY],
                         f"{run_dir / 'checkpoint.pt'}", fragment, watch=[run_dir])

    def test_damaged_checkpoints_and_names(self):
        run_dir, _, _ = self.vit("--epochs", "1", exp_id="r")
        for content in (b"", b"not a checkpoint", None):
            if content is None:
                torch.save({"model": {}}, run_dir / "checkpoint.pt")
            else:
                (run_dir / "checkpoint.pt").write_bytes(content)
            self.refused("train_vit.py", ["--data_folder", str(self.tmp / "images"), "--log_dir", str(self.logs),
                                          "--exp_id", "r", "--resume", "--epochs", "2", *VIT_TINY], "checkpoint",
                         watch=[run_dir])
        self.refused("train_vit.py", ["--data_folder", str(self.tmp / "images"), "--log_dir", str(self.logs),
                                      "--exp_id", "x" * 300, *VIT_TINY], "at most 200")
        for flag, value in (("--seed", str(2 ** 70)), ("--mixup", "inf"), ("--lr", "nan")):
            self.refused("train_vit.py", ["--data_folder", str(self.tmp / "images"), "--log_dir", str(self.logs),
                                          *VIT_TINY, flag, value], flag.lstrip("-"))
        self.assertFalse(any(p.name.startswith("vit_") for p in self.logs.iterdir()))
        long = config.parse_config(train_vit.Config, [f"--{k}" if v is True else f"--{k}={v}" for k, v in dict(
            dropout=0.1, drop_path=0.2, label_smoothing=0.1, mixup=0.8, cutmix=1.0, ema=0.999, grad_clip=1.0,
            warmup_epochs=5, scheduler="cosine", min_lr=1e-5, augment="strong", grad_norms=True, momentum=0.8,
            embed_dim=128, hidden_dim=256, weight_decay=0.05).items()])
        name = long.default_exp_id()
        self.assertLessEqual(len(name), 120)
        self.assertRegex(name, r"^vit_L2_adamw_[0-9a-f]{10}_s42$")
