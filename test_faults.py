"""Faults as a user meets them, through the command line: a full disk, SIGTERM and Ctrl-C (twice),
damaged report inputs, names that would break tables, damaged embeddings, a run missing its
vocabulary, a benchmark's output it cannot write. Each is one line, the exit code of its class,
nothing already written lost, nothing left behind."""
import concurrent.futures
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path
from unittest import mock

import numpy as np

import generate
import train_lm
import train_vit
import utils
from test_data import TempDir, write_image_folder, write_text_files, write_token_files
from test_train import CRASH_LAUNCHER, LM_TINY, VIT_TINY, end_process, results, run, snapshot

HERE = os.path.dirname(os.path.abspath(__file__))

def cli(*argv, fault=None, file_limit=None, cwd=HERE, nohup=False, stdout=subprocess.PIPE):
    """A real process: a script and its flags, under CRASH_LAUNCHER at `fault` ("batch:E:S:SIGTERM"), with at most
    `file_limit` bytes per file written (as `ulimit -f`: writing past it fails as on a full disk), SIGHUP ignored
    with `nohup` (as the nohup command does) and otherwise at its default, whatever the test runner inherited."""
    def preexec():
        if file_limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)
    launcher = ["-c", CRASH_LAUNCHER, fault] if fault else []
    return subprocess.run([sys.executable, *launcher, *map(str, argv)], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=300, preexec_fn=preexec, env=dict(os.environ, PYTHONPATH=HERE))


def here(main, *argv):
    """A script's main in this process, as `cli` above sees its process (the same one line and exit code, without
    a torch import to pay): for refusals that need no process of their own."""
    code, out, err = run(main, [str(a) for a in argv])
    return subprocess.CompletedProcess(argv, code, out, err)


class FaultCase(TempDir):
    def setUp(self):
        super().setUp()
        self.logs = self.tmp / "logs"
        self.images = None

    def vit(self, exp_id, *args, **kwargs):
        if self.images is None:
            self.images, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        return cli("train_vit.py", "--data_folder", self.images, "--log_dir", self.logs, "--exp_id", exp_id,
                   *VIT_TINY, *args, **kwargs)

    def assert_one_line(self, proc, code, prefix, *fragments):
        lines = proc.stderr.strip().splitlines()
        self.assertEqual((proc.returncode, len(lines)), (code, 1), proc.stderr[-3000:])
        self.assertTrue(lines[0].startswith(prefix), lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        return lines[0]

    def leftovers(self, folder):
        return sorted(p.name for p in folder.rglob(".*tmp*"))


class TestFullDisk(FaultCase):
    def test_a_checkpoint_that_does_not_fit_is_one_line_and_resume_continues_bit_exact(self):
        whole = self.vit("whole", "--epochs", "2")
        self.assertEqual(whole.returncode, 0, whole.stderr)
        self.assertEqual(self.vit("run", "--epochs", "1").returncode, 0)
        run_dir = self.logs / "run"
        before = (run_dir / "checkpoint.pt").read_bytes()
        limit = (run_dir / "best.pt").stat().st_size + 4096  # best.pt fits, the checkpoint (3x) does not
        full = self.vit("run", "--epochs", "2", "--resume", file_limit=limit)
        line = self.assert_one_line(full, 2, "error: could not write ", "checkpoint.pt", "free on its disk")
        self.assertNotIn("Traceback", full.stderr)
        self.assertEqual(self.leftovers(self.tmp), [], line)
        self.assertEqual((run_dir / "checkpoint.pt").read_bytes(), before)  # the previous one, intact
        resumed = self.vit("run", "--epochs", "2", "--resume")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertEqual(results(run_dir), results(self.logs / "whole"))

    def test_the_report_on_a_full_disk_or_a_folder_it_cannot_write(self):
        self.assertEqual(self.vit("run", "--epochs", "1").returncode, 0)
        self.assertEqual(cli("plot.py", "--log_dir", self.logs).returncode, 0)
        before = snapshot(self.logs / "report")
        full = cli("plot.py", "--log_dir", self.logs, file_limit=20_000)  # the figures no longer fit
        self.assert_one_line(full, 2, "error: cannot write the report in ", "--out_dir", "MB free there")
        self.assertEqual(self.leftovers(self.logs), [])
        self.assertEqual(snapshot(self.logs / "report"), before)  # each file whole: the old one or a new one
        (self.tmp / "a_file").write_text("")
        blocked = cli("plot.py", "--log_dir", self.logs, "--out_dir", self.tmp / "a_file" / "report")
        self.assert_one_line(blocked, 2, "error: cannot write the report in ", "--out_dir")
        (self.tmp / "loop").symlink_to(self.tmp / "loop")  # a link to itself: no folder can be made there either
        looped = cli("plot.py", "--log_dir", self.logs, "--out_dir", self.tmp / "loop")
        self.assert_one_line(looped, 2, f"error: cannot write the report in {self.tmp / 'loop'}", "--out_dir")

    @unittest.skipUnless(Path("/dev/full").exists(), "needs /dev/full, a device every write to fails as a full disk")
    def test_a_full_standard_output_is_named_as_such_and_the_report_is_whole(self):
        self.assertEqual(self.vit("run", "--epochs", "1").returncode, 0)
        with open("/dev/full", "w") as full:
            proc = cli("plot.py", "--log_dir", self.logs, stdout=full)
        self.assert_one_line(proc, 2, "error: cannot write the standard output: No space left on device",
                             f"(the report is in {self.logs / 'report'})")
        summary = (self.logs / "report" / "summary.md").read_text()
        self.assertIn("Best generalisation, selected on validation: **run**", summary)

    @unittest.skipUnless(Path("/dev/full").exists(), "needs /dev/full, a device every write to fails as a full disk")
    def test_help_on_a_full_standard_output_is_one_line_in_every_script_buffered_or_not(self):
        # argparse drops a failed write of its help (unbuffered), or leaves it to the flush at the exit (buffered)
        for script in ("train_lm.py", "train_vit.py", "generate.py", "bench.py", "gpt1.py", "sweep.py", "plot.py"):
            for unbuffered in ("", "1") if script in ("train_vit.py", "plot.py") else ("",):
                with self.subTest(script=script, unbuffered=unbuffered), open("/dev/full", "w") as full:
                    proc = subprocess.run([sys.executable, script, "--help"], cwd=HERE, stdout=full, text=True,
                                          stderr=subprocess.PIPE, timeout=300,
                                          env=dict(os.environ, PYTHONUNBUFFERED=unbuffered))
                    self.assert_one_line(proc, 2, "error: cannot write the standard output: No space left on device")

    def test_a_standard_output_that_fills_mid_run_ends_it_in_one_line_and_resume_continues_bit_exact(self):
        whole = self.vit("whole", "--epochs", "2")
        self.assertEqual(whole.returncode, 0, whole.stderr)
        ahead = len(whole.stdout[:whole.stdout.index("epoch 1/")].encode())  # the lines before the first epoch's
        limit = 1 << 20  # far above the run's own files
        log = self.tmp / "console.log"
        log.write_bytes(b"x" * (limit - ahead))  # an earlier log fills it up to the first epoch's line
        with open(log, "a") as out:
            full = self.vit("run", "--epochs", "2", file_limit=limit, stdout=out)
        self.assert_one_line(full, 2, "error: cannot write the standard output: File too large")
        self.assertEqual(len((self.logs / "run" / "metrics.csv").read_text().splitlines()), 2)  # its files came first
        resumed = self.vit("run", "--epochs", "2", "--resume")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertEqual(results(self.logs / "run"), results(self.logs / "whole"))

    @unittest.skipUnless(Path("/dev/full").exists(), "needs /dev/full, a device every write to fails as a full disk")
    def test_a_full_standard_output_ends_a_trainer_in_one_line_before_it_writes_anything(self):
        with open("/dev/full", "w") as full:
            proc = self.vit("run", "--epochs", "1", stdout=full)
        self.assert_one_line(proc, 2, "error: cannot write the standard output: No space left on device")
        self.assertFalse((self.logs / "run").exists())
        with open("/dev/full", "w") as full:  # a standard error that cannot take the line: the exit code still says
            refused = subprocess.run([sys.executable, "train_vit.py", "--lr", "-1"], cwd=HERE, stderr=full, timeout=300,
                                     stdout=subprocess.DEVNULL)
        self.assertEqual(refused.returncode, 2)


class TestSignals(FaultCase):
    def test_sigterm_in_the_first_epoch_leaves_no_directory_and_the_same_command_runs(self):
        proc = self.vit("run", "--epochs", "2", fault="batch:1:2:SIGTERM")
        line = self.assert_one_line(proc, 143, "terminated: ", "was removed", "the same command starts it again")
        self.assertNotIn("--resume", line)
        self.assertFalse((self.logs / "run").exists())
        self.assertEqual(self.vit("run", "--epochs", "1").returncode, 0)

    def test_sigterm_after_an_epoch_keeps_it_and_resume_equals_an_uninterrupted_run(self):
        self.assertEqual(self.vit("whole", "--epochs", "3", "--dropout", "0.1").returncode, 0)
        proc = self.vit("run", "--epochs", "3", "--dropout", "0.1", fault="batch:2:3:SIGTERM")
        self.assert_one_line(proc, 143, "terminated: ", "continue with --resume")
        resumed = self.vit("run", "--epochs", "3", "--dropout", "0.1", "--resume")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertEqual(results(self.logs / "run"), results(self.logs / "whole"))

    def test_a_closed_terminal_stops_a_run_cleanly_unless_under_nohup(self):
        proc = self.vit("run", "--epochs", "3", fault="batch:2:3:SIGHUP")
        self.assert_one_line(proc, 129, "hung up: ", "continue with --resume")
        self.assertEqual(len((self.logs / "run" / "metrics.csv").read_text().splitlines()), 2)  # epoch 1 kept
        nohup = self.vit("nohup", "--epochs", "3", fault="batch:2:3:SIGHUP", nohup=True)  # the signal is ignored
        self.assertEqual(nohup.returncode, 0, nohup.stderr)
        self.assertTrue((self.logs / "nohup" / "summary.json").exists())

    def test_a_signal_while_an_error_is_said_changes_nothing(self):
        # torchrun's SIGTERM to the other ranks once one has failed may come while a rank says why it stops
        real = utils.first_line

        def first_line(e):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(e)
        with mock.patch("utils.first_line", first_line):
            proc = here(train_vit.main, "--log_dir", self.logs, "--exp_id", "report", *VIT_TINY)
        self.assert_one_line(proc, 2, "error: --exp_id report")
        self.assertEqual(signal.getsignal(signal.SIGTERM), signal.SIG_DFL)  # this process's own handler back

    def test_a_second_signal_while_stopping_changes_nothing(self):
        signals = (("SIGINT", 130, "interrupted: "), ("SIGTERM", 143, "terminated: "))
        cases = [(f"{name}_{how}", f"batch:1:2:{name}" + ":again" * (how == "again")) for name, _, _ in signals
                 for how in ("once", "again")]  # once; again during the clean-up and at exit
        self.images, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))  # before the runs share it
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # independent runs, two at a time
            procs = list(pool.map(lambda c: self.vit(c[0], "--epochs", "2", fault=c[1]), cases))
        for i, (name, code, word) in enumerate(signals):
            with self.subTest(name):
                once, again = procs[2 * i: 2 * i + 2]
                line = self.assert_one_line(once, code, word, "was removed")
                self.assertEqual(self.assert_one_line(again, code, word), line.replace("_once", "_again"))
        self.assertEqual([p.name for p in self.logs.glob("*") if p.is_dir()], [])
        self.assertEqual(self.vit("kept", "--epochs", "1").returncode, 0)
        again = self.vit("kept", "--epochs", "3", "--resume", fault="batch:2:2:SIGINT:again")
        self.assert_one_line(again, 130, "interrupted: ", "the last finished epoch is saved")
        self.assertEqual(len((self.logs / "kept" / "metrics.csv").read_text().splitlines()), 2)


def write_lm_run(folder, values, exp_id="lm_lstm_L1_adam_s42", cut=None):
    """A finished LM run directory with these valid perplexities (loss is their log, inf allowed)."""
    run = folder / exp_id
    run.mkdir(parents=True)
    config = dict(task="lm", title="Language model", metric=dict(name="ppl", label="perplexity", maximize=False,
                                                                 digits=2),
                  model="lstm", layers=1, optimizer="adam", epochs=len(values), seed=42, exp_id=exp_id,
                  naming=dict(configuration=exp_id[:-4], changed={}, not_settings=["seed", "exp_id"]))
    (run / "config.json").write_text(json.dumps(config))
    lines = ["epoch,train_loss,train_ppl,valid_loss,valid_ppl,train_time,valid_time,elapsed,peak_mem_mb,mem_pct"]
    for e, v in enumerate(values, 1):
        loss = math.log(v) if v < math.inf else 800.0
        lines.append(f"{e},{loss},{v},{loss},{v},1.0,0.5,{1.5 * e},10.0,1.0")
    text = "\n".join(lines) + "\n"
    (run / "metrics.csv").write_text(text[:-cut] if cut else text)
    (run / "summary.json").write_text(json.dumps(dict(epochs=len(values), test_ppl=values[-1],
                                                      best_test_ppl=min(values), params_learnable=10)))
    return run


class TestReportInputs(FaultCase):
    def plot(self, *args, cwd=HERE):
        return cli("plot.py", "--log_dir", self.logs, *args, cwd=cwd)

    def test_infinite_perplexities_are_gaps_and_inf_never_a_crash(self):
        write_lm_run(self.logs, [math.inf, math.inf])
        proc = self.plot()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        table = (self.logs / "report" / "summary_lm.md").read_text()
        self.assertIn("| inf |", table)
        self.assertTrue((self.logs / "report" / "lm_epochs.png").stat().st_size > 1000)
        shutil.rmtree(self.logs)
        write_lm_run(self.logs, [2000.0, math.inf], exp_id="lm_lstm_L1_sgd_s42")  # diverged after one epoch
        proc = self.plot()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("2,000.00", (self.logs / "report" / "summary_lm.md").read_text())
        # finite, but beyond what a log axis spans (a diverged run with a large learning rate): a gap too
        write_lm_run(self.logs, [3000.0, 4.2e284], exp_id="lm_lstm_L1_momentum_s42")
        proc = self.plot()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("| 3,000.00 | 4.2e+284 | 3,000.00 |", (self.logs / "report" / "summary_lm.md").read_text())

    def test_ctrl_c_or_sigterm_is_one_line_and_the_report_stays_as_it_was(self):
        write_lm_run(self.logs, [300.0, 200.0])
        self.assertEqual(self.plot().returncode, 0)
        before = snapshot(self.logs / "report")
        fifo = write_lm_run(self.logs, [250.0], exp_id="lm_lstm_L1_sgd_s42") / "metrics.csv"
        fifo.unlink()
        os.mkfifo(fifo)  # plot.py waits in reading it: a signal then comes mid-report, at a known point
        for signum, code, word in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")):
            proc = subprocess.Popen([sys.executable, "plot.py", "--log_dir", self.logs], cwd=HERE, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.addCleanup(end_process, proc)
            deadline = time.monotonic() + 60
            while True:  # open for writing succeeds once plot.py has opened it for reading
                try:
                    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError:
                    self.assertLess(time.monotonic(), deadline, "plot.py never read the runs")
                    time.sleep(0.05)
            proc.send_signal(signum)
            # The end of the file, too: a signal that lands just before the read blocks is only handled
            # once the read returns (CPython runs handlers between bytecodes), as with any real file.
            os.close(writer)
            _, err = proc.communicate(timeout=60)
            self.assertEqual((proc.returncode, err), (code, f"{word}: the report is incomplete; run plot.py again\n"))
        fifo.unlink()
        self.assertEqual(snapshot(self.logs / "report"), before)
        self.assertEqual(self.leftovers(self.logs), [])

    def test_a_row_cut_short_marks_the_run_damaged_and_the_rest_is_shown(self):
        write_lm_run(self.logs, [300.0, 250.0, 200.0], cut=12)  # the last row loses its end: 200.0 -> 2
        proc = self.plot()
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("metrics.csv line 4 skipped (cut short)", proc.stderr)
        summary = (self.logs / "report" / "summary.md").read_text()
        self.assertIn("## Missing or damaged", summary)
        table = (self.logs / "report" / "summary_lm.md").read_text()
        self.assertIn("250.00", table)  # the best of the whole rows, not the cut value
        self.assertIn("| 2 |", table.replace("| 2 | ", "| 2 |"))  # two epochs counted

    def test_a_damaged_reference_is_named_in_one_line_and_a_missing_one_warned(self):
        write_lm_run(self.logs, [300.0, 250.0])
        code = self.tmp / "code"
        code.mkdir()
        for name in ("plot.py", "report.py", "results.py"):
            shutil.copy(os.path.join(HERE, name), code)
        good = json.loads(Path(HERE, "reference.json").read_text())
        damaged = {"a string": dict(good, tolerance=dict(acc="0.015", ppl_relative=0.05)),
                   "a null": dict(good, lm=dict(good["lm"], configs=[dict(good["lm"]["configs"][0], test_ppl=None)])),
                   "an empty list": [], "an empty object": {}, "a list for its tolerance": dict(good, tolerance=[1]),
                   "a list for settings": dict(good, vit=dict(good["vit"], settings=[50])),
                   "a config without its number": dict(good, lm=dict(good["lm"], configs=[dict(model="lstm", layers=1,
                                                                                               optimizer="adam")])),
                   "a perplexity of 0": dict(good, lm=dict(good["lm"], configs=[dict(good["lm"]["configs"][0],
                                                                                         test_ppl=0)])),
                   "sizes as a list": dict(good, vit=dict(good["vit"], settings=dict(epochs=50, data_sizes=[1]))),
                   "a number for a checksum": dict(good, lm=dict(good["lm"], settings=dict(epochs=10,
                                                                                           data_sha256=5))),
                   "a boolean tolerance": dict(good, tolerance=dict(acc=True, ppl_relative=0.05)),
                   "a NaN tolerance": dict(good, tolerance=dict(acc=0.015, ppl_relative=float("nan"))),
                   "no epochs": dict(good, vit=dict(good["vit"], settings=dict(data_sizes={}))),
                   "configs as an object": dict(good, lm=dict(good["lm"], configs={"1": good["lm"]["configs"][0]}))}
        for what, content in list(damaged.items()) + [("truncated", "{\"source\": "), ("binary", b"\x89PNG\x00\xff")]:
            with self.subTest(what):
                path = code / "reference.json"
                path.write_bytes(content if isinstance(content, bytes) else
                                 content.encode() if isinstance(content, str) else json.dumps(content).encode())
                shutil.rmtree(self.logs / "report", ignore_errors=True)
                proc = self.plot(cwd=code)
                self.assert_one_line(proc, 2, f"error: {path}")
                self.assertNotIn("Traceback", proc.stderr)
                self.assertFalse((self.logs / "report").exists())
        (code / "reference.json").unlink()
        proc = self.plot(cwd=code)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn(f"warning: {code / 'reference.json'} is missing", proc.stderr)


class TestNames(FaultCase):
    def test_the_report_folder_and_names_that_break_tables_are_refused(self):
        for name in ("report", "a|b", "a\tb", "a\nb", ".hidden", "a b", "+x"):
            with self.subTest(name=name):  # refused with the flags, before anything is read or made
                proc = here(train_vit.main, "--log_dir", self.logs, "--exp_id", name, *VIT_TINY)
                self.assert_one_line(proc, 2, "error: --exp_id")
        self.assertFalse(self.logs.exists())
        ok = self.vit("vit-2_lr=3e-4+x.y", "--epochs", "1")
        self.assertEqual(ok.returncode, 0, ok.stderr)

    def test_paths_the_system_refuses_are_one_line(self):
        long = str(self.tmp / ("y" * 300))  # beyond a file name's 255 bytes
        commands = [("train_vit.py", "--data_folder", long, "--device", "cpu"),
                    ("plot.py", "--log_dir", self.tmp, "--out_dir", long), ("sweep.py",)]
        env = dict(os.environ, DRY_RUN="1", LOG_DIR=long, PYTHONPATH=HERE)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            procs = list(pool.map(lambda argv: subprocess.run([sys.executable, *argv], cwd=HERE, capture_output=True,
                                                              text=True, timeout=300, env=env), commands))
        for argv, proc in zip(commands, procs):
            with self.subTest(argv=argv[:2]):
                self.assert_one_line(proc, 2, "error: File name too long: ", "y" * 300)


class TestTorchrunEnvironment(FaultCase):
    def test_a_partial_or_malformed_one_is_one_line_and_a_rank_left_in_a_shell_changes_nothing(self):
        full = dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
        for env in (dict(WORLD_SIZE="2"), dict(full, MASTER_ADDR=""), dict(full, RANK="2"), dict(full, WORLD_SIZE="a"),
                    dict(full, WORLD_SIZE="0"), dict(full, LOCAL_RANK="-1"), dict(full, MASTER_PORT="http")):
            with self.subTest(env=env), mock.patch.dict(os.environ, env):  # said by every process, rank 1's too
                proc = here(train_vit.main, "--log_dir", self.logs, "--data_folder", self.tmp / "none", *VIT_TINY)
                self.assert_one_line(proc, 2, f"error: WORLD_SIZE={env['WORLD_SIZE']}, RANK=",
                                     "not one process of several as torchrun starts them", "unset WORLD_SIZE")
        self.assertFalse(self.logs.exists())
        for name, env in (("alone", dict(RANK="1")), ("one", dict(RANK="1", WORLD_SIZE="1"))):
            with mock.patch.dict(os.environ, env):  # without WORLD_SIZE, or 1: one process, which says and writes all
                proc = self.vit(name, "--epochs", "1")
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertIn("test acc: final", proc.stdout)
            self.assertTrue((self.logs / name / "summary.json").exists())

    def test_another_process_refused_before_the_group_waits_for_torchrun_then_says_its_own_line(self):
        full = dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
        waits = []
        sleep = lambda s: waits.append((s, signal.getsignal(signal.SIGTERM)))  # noqa: E731
        with mock.patch.dict(os.environ, full), mock.patch.object(utils.time, "sleep", sleep):
            proc = here(train_vit.main, "--log_dir", self.logs, "--data_folder", self.tmp / "none", *VIT_TINY,
                        "--batch_size", "7")
        # torchrun's SIGTERM, sent once the first process has ended, ends the wait; not sent, the line is its own
        self.assertEqual(waits, [(utils.FIRST_RANK_GRACE_S, signal.SIG_DFL)])
        self.assert_one_line(proc, 2, "[rank 1] error: --batch_size 7 does not divide over 2 processes")
        with mock.patch.dict(os.environ, dict(full, RANK="0")), mock.patch.object(utils.time, "sleep", sleep):
            proc = here(train_vit.main, "--log_dir", self.logs, "--data_folder", self.tmp / "none", *VIT_TINY,
                        "--batch_size", "7")
        self.assert_one_line(proc, 2, "error: --batch_size 7 does not divide over 2 processes")  # the first: at once

        def stopped(argv):  # torchrun's SIGTERM itself, or Ctrl-C: the process ends at once, and the first says it
            raise KeyboardInterrupt
        with mock.patch.dict(os.environ, full), mock.patch.object(utils.time, "sleep", sleep):
            self.assertEqual(run(utils.cli(stopped), []), (130, "", ""))
        self.assertEqual(len(waits), 1)
        self.assertFalse(self.logs.exists())

    def test_a_stop_signal_once_main_has_failed_is_ignored_not_a_traceback(self):
        # torchrun's SIGTERM reaches a rank whose collective broke as another rank failed: at any moment after its
        # main has raised, while it ignores the stop signals or says why, it must not break in with a traceback
        sent, real, before = [], signal.signal, signal.getsignal(signal.SIGTERM)

        class Broken(utils.UserError):
            def __str__(self):  # read to say why: a signal now (once: a failing test prints it too)
                if not sent:
                    sent.append("said")
                    signal.raise_signal(signal.SIGTERM)
                return "the collective broke"

        def failing(argv):
            raise Broken()

        def late(signum, handler):  # and at the first change of a handler to ignore one after main has raised
            if handler == signal.SIG_IGN and not sent:
                sent.append(signum)
                signal.raise_signal(signal.SIGTERM)
            return real(signum, handler)
        with mock.patch.object(utils.signal, "signal", late):
            try:
                self.assertEqual(run(utils.cli(failing), []), (2, "", "error: the collective broke\n"))
            except utils.Stopped:  # a KeyboardInterrupt: it would end the whole test run
                self.fail("the stop signal broke into the failed main's ending")
        self.assertEqual((sent, signal.getsignal(signal.SIGTERM)), (["said"], before))  # the caller's handler back


class TestDamagedEmbeddings(FaultCase):
    def test_nan_complex_text_and_non_npz_tables_are_refused_before_training(self):
        data = write_token_files(self.tmp / "tokens")
        table = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
        table[7, 3] = np.nan
        cases = {"nan": (table, "NaN or infinite values", "row 7"), "complex": (table.astype(np.complex64), "complex64"),
                 "text": (np.full((50, 16), "x"), "<U1"), "bytes": (b"x", "not a readable .npz file", "not NumPy data"),
                 "missing": (None, "does not exist"), "folder": ("folder", "is a folder, not a file"),
                 "pipe": ("pipe", "is not a file (a pipe or a device?)")}  # never read: it would block, or twice
        for name, (values, *fragments) in cases.items():
            with self.subTest(name):
                path = self.tmp / f"{name}.npz"
                if isinstance(values, str):
                    path.mkdir() if values == "folder" else os.mkfifo(path)
                elif values is not None:
                    path.write_bytes(values) if isinstance(values, bytes) else np.savez(path, tokens=values)
                proc = here(train_lm.main, "--data_folder", data, "--log_dir", self.logs, "--exp_id", name, *LM_TINY,
                            "--embeddings", path)
                prefix = "error: " + "embeddings " * (name not in ("bytes", "missing", "folder"))
                self.assert_one_line(proc, 2, prefix, str(path), *fragments)
        self.assertFalse(self.logs.exists())


class TestGenerateOnDamagedRuns(FaultCase):
    def test_a_word_level_run_without_vocab_txt_is_refused_naming_it(self):
        data = write_text_files(self.tmp / "text")
        proc = here(train_lm.main, "--data_folder", data, "--log_dir", self.logs, "--exp_id", "words", *LM_TINY,
                   "--epochs", "1")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        (self.logs / "words" / "vocab.txt").unlink()
        before = snapshot(self.logs)
        proc = here(generate.main, "--run", self.logs / "words", "--words", "5")
        self.assert_one_line(proc, 2, "error: ", "word-level text", "vocab.txt is missing")
        self.assertEqual(proc.stdout, "")
        self.assertEqual(snapshot(self.logs), before)

    def test_model_args_of_the_wrong_type_choice_or_range_are_one_line(self):
        data = write_token_files(self.tmp / "tokens")
        proc = here(train_lm.main, "--data_folder", data, "--log_dir", self.logs, "--exp_id", "lm", *LM_TINY,
                   "--epochs", "1")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        config = json.loads((self.logs / "lm" / "config.json").read_text())
        for change, why in ((dict(layers=True), "layers is True"), (dict(model="rnn"), "model is 'rnn'"),
                            (dict(num_heads=0), "--num_heads must be at least 1, got 0"),
                            (dict(vocab_size=-3), "vocab_size is -3"),
                            (dict(vocab_size=2 ** 40), "vocab_size is 1099511627776"),
                            (dict(hidden_size=2 ** 40), "--hidden_size 1099511627776 is beyond any model")):
            run = self.tmp / str(change)
            shutil.copytree(self.logs / "lm", run)
            (run / "config.json").write_text(json.dumps(dict(config, model_args=dict(config["model_args"], **change))))
            proc = here(generate.main, "--run", run, "--words", "5", "--prompt", "1 2")
            self.assert_one_line(proc, 2, f"error: {run}/config.json: model_args do not describe a model ({why})")
        run = self.tmp / "top"  # the records beside model_args are not what the model is built from
        shutil.copytree(self.logs / "lm", run)
        (run / "config.json").write_text(json.dumps(dict(config, vocab_size="x", seq_len=None)))
        for prompt in ("1 2", ""):
            proc = here(generate.main, "--run", run, "--words", "5", "--prompt", prompt)
            self.assertEqual((proc.returncode, len(proc.stdout.split())), (0, 5), proc.stderr)


class TestTextItCannotEncode(FaultCase):
    """Names of bytes that are not UTF-8 (an old archive's) and an output whose encoding lacks a character
    (an ASCII locale or pipe) are written escaped, as stderr writes them: never a traceback."""

    def test_a_sweep_on_folders_and_images_named_in_other_bytes_runs_and_reports(self):
        root = self.tmp / os.fsdecode(b"donn\xe9es")
        try:
            root.mkdir()
        except (OSError, UnicodeError):
            self.skipTest("this file system takes only UTF-8 names")
        images, _ = write_image_folder(root / "images", per_class=(40, 10))
        for split in ("train", "test"):  # a class and an image named in Latin-1
            (images / split / "cat").rename(images / split / os.fsdecode(b"chat\xe9"))
        (images / "train" / "dog" / "0000.png").rename(images / "train" / "dog" / os.fsdecode(b"\xe9t\xe9.png"))
        env = dict(os.environ, QUICK="1", ONLY="^vit_L2_adam$", TRAIN_ARGS="--batch_size 8", VIT_DATA=str(images),
                   LOG_DIR=str(root / "logs"), DEVICE="cpu", PYTHON=sys.executable, PYTHONIOENCODING="ascii")
        proc = subprocess.run(["bash", "runs.sh"], cwd=HERE, capture_output=True, text=True, timeout=300, env=env)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)
        self.assertIn("3 classes: chat\\udce9, dog, ship", proc.stdout)
        self.assertTrue((root / "logs" / "vit_L2_adam_batch_size8_s42" / "summary.json").exists())
        self.assertIn("test acc: final", (root / "logs" / "vit_L2_adam_batch_size8_s42.log").read_text())
        self.assertIn("1 run in " + str(root).replace(os.fsdecode(b"\xe9"), "\\udce9"),
                      (root / "logs" / "report" / "summary.md").read_text())

    def test_generated_text_on_an_ascii_output_is_escaped(self):
        data = self.tmp / "text"
        data.mkdir()
        for name in ("train", "valid", "test"):
            (data / f"{name}.txt").write_text(" caf\u00e9 na\u00efve \u2014 the \n" * 40, encoding="utf-8")
        proc = here(train_lm.main, "--data_folder", data, "--log_dir", self.logs, "--exp_id", "words", *LM_TINY,
                   "--epochs", "1")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        proc = subprocess.run([sys.executable, "generate.py", "--run", self.logs / "words", "--words", "30",
                               "--prompt", "caf\u00e9"], cwd=HERE, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONIOENCODING="ascii"))
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        self.assertTrue(proc.stdout.startswith("caf\\xe9 "), proc.stdout)
        self.assertLessEqual({"\\u2014", "na\\xefve"}, set(proc.stdout.split()), proc.stdout)
        if Path("/dev/full").exists():  # a device every write to fails as a full disk
            with open("/dev/full", "w") as full:
                proc = cli("generate.py", "--run", self.logs / "words", "--words", "30", stdout=full)
            self.assert_one_line(proc, 2, "error: cannot write the standard output: No space left on device")


class TestClosedOutput(FaultCase):
    """A reader of the output that ends early (`| head -1`) ends the command quietly, as SIGPIPE ends a C
    program (exit 141), after the report is whole; one started without stdout or stderr (>&-, 2>&-) runs."""

    def closed(self, argv, lines, env=None):
        """(exit code, stderr) of argv with its stdout closed after `lines` lines, each line written as it is
        printed (as in the image: a buffered output written whole at the exit fits in the pipe, and exits 0)."""
        with subprocess.Popen(argv, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=HERE, PYTHONUNBUFFERED="1", **(env or {}))) as proc:
            for _ in range(lines):
                proc.stdout.readline()
            proc.stdout.close()
            err = proc.stderr.read()
            return proc.wait(timeout=120), err

    def test_a_closed_or_missing_output_is_quiet_and_loses_nothing(self):
        code, err = self.closed(["bash", "runs.sh"], 1, dict(DRY_RUN="1", PYTHON=sys.executable))
        self.assertEqual(code, 141, err)
        self.assertNotRegex(err, "error|Error|Exception")
        write_lm_run(self.logs, [300.0, 200.0])
        code, err = self.closed([sys.executable, "plot.py", "--log_dir", self.logs], 0)
        self.assertEqual((code, err), (141, ""))
        for name in ("summary.md", "summary_lm.md", "index.html", "lm_epochs.png"):
            self.assertTrue((self.logs / "report" / name).exists(), name)
        # no stdout at all from the start (>&-, as some job runners start a command): print writes nothing
        proc = subprocess.run(["bash", "-c", "bash runs.sh >&-"], cwd=HERE, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, DRY_RUN="1", ONLY="^vit_L2_sgd$", PYTHON=sys.executable))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotRegex(proc.stderr, "error|Error|Exception")
        images, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))  # no stderr: no progress bars either
        argv = ["train_vit.py", "--data_folder", images, "--log_dir", self.logs, "--exp_id", "vit", "--epochs", "1",
                *(a for a in VIT_TINY if a != "--no_progress")]
        proc = subprocess.run(["bash", "-c", f"{shlex.join([sys.executable, *map(str, argv)])} 2>&-"], cwd=HERE,
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stdout)
        self.assertTrue((self.logs / "vit" / "summary.json").exists())


class TestBenchOutput(FaultCase):
    def test_a_json_file_it_cannot_write_is_refused_before_measuring_and_none_is_needed(self):
        (self.tmp / "file").write_text("")
        for where, said in ((self.tmp / "file" / "bench.json", "cannot write there"), (self.tmp, "is a folder"),
                            (self.tmp / "missing" / "bench.json", "cannot write there")):
            proc = cli("bench.py", "--quick", "--only", "augment", "--json", where)
            self.assert_one_line(proc, 2, "error: ", f"--json {where}{':' * (said[0] == 'c')} {said}")
            self.assertEqual(proc.stdout, "")  # nothing measured
        proc = cli("bench.py", "--quick", "--only", "augment")  # without --json: the table alone
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("| augmentation strong, batch 128, share of a ViT-2 step", proc.stdout)
        if Path("/dev/full").exists():  # a device every write to fails as a full disk: the measurements are kept
            with open("/dev/full", "w") as full:
                proc = cli("bench.py", "--quick", "--only", "augment", "--json", self.tmp / "b.json", stdout=full)
            self.assertEqual((proc.returncode, proc.stderr.splitlines()[-1]),
                             (2, "error: cannot write the standard output: No space left on device"), proc.stderr)
            rows = json.loads((self.tmp / "b.json").read_text())["results"]
            self.assertIn("augmentation strong, batch 128, share of a ViT-2 step", [r["model"] for r in rows])

    def test_the_sections_given_flag_by_flag_all_run_each_once(self):
        stand_ins = ("import sys, bench\n"  # each section replaced by a line saying it ran
                     "bench.bench_loss = lambda *a: print('ran loss') or []\n"
                     "bench.bench_augmentation = lambda *a: print('ran augment') or []\n"
                     "sys.exit(bench.main(sys.argv[1:]))\n")
        proc = subprocess.run([sys.executable, "-c", stand_ins, "--quick", "--device", "cpu", "--only", "loss",
                               "augment", "--only", "loss"], cwd=HERE, capture_output=True, text=True, timeout=120)
        self.assertEqual(re.findall(r"^ran \w+", proc.stdout, re.M), ["ran loss", "ran augment"], proc.stderr)

    def test_a_data_folder_that_is_one_dataset_or_a_typo_is_refused_not_replaced_by_random_data(self):
        (self.tmp / "data" / "cifar10" / "train").mkdir(parents=True)
        (self.tmp / "data" / "wikitext2").mkdir()
        (self.tmp / "data" / "wikitext2" / "wiki.train.npz").write_bytes(b"")
        for folder, said in ((self.tmp / "data" / "cifar10", f"is one dataset; give the folder that holds cifar10/ "
                                                              f"and wikitext2/: --data {self.tmp / 'data'}"),
                             (self.tmp / "data" / "wikitext2", "is one dataset"), (self.tmp / "dtaa", "does not exist")):
            proc = cli("bench.py", "--quick", "--only", "real", "--data", folder)
            self.assert_one_line(proc, 2, "error: ", f"--data {folder} {said}")


if __name__ == "__main__":
    unittest.main()
