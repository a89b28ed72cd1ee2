"""Tests of the sweep (runs.sh) and the report (plot.py): the configuration list, sharding, GPUs,
failures, skip-if-done, tables against hand-made CSVs, and a real QUICK=1 sweep on fixture data."""
import contextlib
import csv
import io
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
import tempfile
import time
import unittest
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch

import plot
import report
import results
from test_data import TempDir, write_image_folder, write_text_files, write_token_files
from test_train import end_process
from utils import OUT_OF_MEMORY

HERE = Path(__file__).resolve().parent
REFERENCE = {
    "lm_lstm_L1_adam": "--optimizer adam",
    "lm_lstm_L1_adamw": "--optimizer adamw",
    "lm_lstm_L1_sgd": "--optimizer sgd",
    "lm_lstm_L1_momentum": "--optimizer momentum",
    "lm_lstm_L2_adamw": "--layers 2 --optimizer adamw",
    "lm_lstm_L4_adamw": "--layers 4 --optimizer adamw",
    "vit_L2_adam": "--layers 2 --optimizer adam",
    "vit_L2_adamw": "--layers 2 --optimizer adamw",
    "vit_L2_sgd": "--layers 2 --optimizer sgd",
    "vit_L2_momentum": "--layers 2 --optimizer momentum",
    "vit_L4_adamw": "--layers 4 --optimizer adamw",
    "vit_L6_adamw": "--layers 6 --optimizer adamw",
    "vit_L6_adamw_postnorm": "--layers 6 --optimizer adamw --block postnorm",
}
IMPROVED = {"vit_L6_adamw_improved", "vit_L6_adamw_improved_postnorm", "lm_lstm_L1_adamw_improved"}
NORMS = {f"vit_L6_adamw{block}{warmup}_grad_norms" for block in ("", "_postnorm") for warmup in ("", "_warmup_epochs5")}
EXTRAS = {"lm_gru_L1_adam", "lm_gru_L2_adamw", "lm_transformer_L1_adam", "lm_transformer_L2_adamw",
          "lm_transformer_L1_adam_postnorm", "lm_transformer_L2_adamw_postnorm"}
# A stand-in for the runs' python (the sweep itself runs in the real one): records how it was called,
# sleeps SLEEP seconds for runs named SLOW* (FAST seconds for the others), or until the file GATE is made (at most a
# minute), writes a summary (or fails when asked to).
# The sweep itself and its checks (python -c) run in this interpreter, whatever stands in for its runs.
THE_SWEEP_ITSELF = f'[[ $1 == *sweep.py || $1 == -c ]] && exec {shlex.quote(sys.executable)} "$@"'
FAKE_PYTHON = f"""#!/usr/bin/env bash
{THE_SWEEP_ITSELF}
[[ $1 == *plot.py ]] && exit "${{PLOT_CODE:-0}}"
args="$*"; exp=${{args##*--exp_id }}; exp=${{exp%% *}}
echo "$exp ${{CUDA_VISIBLE_DEVICES:-none}} $$ ${{OMP_NUM_THREADS:-none}}" >> "$CALLS"
printf 'a byte that is no UTF-8: \\377\\n'  # the sweep shows and logs any output
if [[ -n ${{SLOW:-}} && $exp == $SLOW* && -n ${{GATE:-}} ]]; then for _ in {{1..600}}; do [[ -e $GATE ]] && break; sleep 0.1; done
elif [[ -n ${{SLOW:-}} && $exp == $SLOW* ]]; then sleep "$SLEEP"; else sleep "${{FAST:-0}}"; fi
if [[ -n ${{FAIL:-}} && $exp == $FAIL* ]]; then [[ -n ${{SAY:-}} ]] && echo "${{SAY//@/$exp}}"; exit "${{CODE:-3}}"; fi
mkdir -p "$LOG_DIR/$exp" && echo '{{"epochs": 50}}' > "$LOG_DIR/$exp/summary.json"
"""
# python3 and py for dry runs: the real python under the names the sweep is told to use.
STUBS = None  # a fresh folder while this module's tests run
USERS = mock.patch.dict(os.environ)  # the environment as the tests found it, given back after them


def setUpModule():  # not at import: a run that imports this file but selects none of its tests leaves nothing
    global STUBS
    # the user's own sweep settings (SEEDS, LOG_DIR, ... exported for runs.sh) are no test's, and neither is a
    # torchrun's environment: set aside while these tests run
    import sweep as sweep_module
    USERS.start()
    for name in (*sweep_module.SETTINGS, "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)
    STUBS = Path(tempfile.mkdtemp(prefix="runs-stubs-"))
    for stub in ("python3", "py"):
        (STUBS / stub).write_text(f'#!/usr/bin/env bash\nexec {shlex.quote(sys.executable)} "$@"\n')
        (STUBS / stub).chmod(0o755)


def tearDownModule():
    shutil.rmtree(STUBS, ignore_errors=True)
    USERS.stop()


def sweep(env, timeout=120, cwd=None):
    """`bash runs.sh` with env, python3 being this interpreter."""
    return subprocess.run(["bash", str(HERE / "runs.sh")], env={**os.environ, "PATH": f"{STUBS}:{os.environ['PATH']}",
                                                                **env}, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def sweep_here(env, argv=()):
    """sweep.py's main in this process, as `bash runs.sh` runs it (TestSweepProcesses runs it so):
    (exit code, stdout, stderr). Much faster than a process with its own torch import per call."""
    import sweep as sweep_module
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(HERE)
        with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = sweep_module.main(list(argv)) or 0
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


def dry_run(through_bash=False, **env):
    """The commands of a dry run (EMBEDDINGS=none unless given: auto depends on the data in place),
    in this process or through `bash runs.sh`."""
    env = dict(dict(DRY_RUN="1", EMBEDDINGS="none"), **env)
    if through_bash:
        proc = sweep(env)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        code, out, err = sweep_here(env)
    assert code == 0, err
    return [line for line in out.splitlines() if " --exp_id " in line]


def exp_ids(lines):
    return [line.split("--exp_id ")[1].split()[0] for line in lines]


class TestSweepList(unittest.TestCase):
    def test_dry_run_lists_exactly_the_reference_extras_improved_and_norms_groups(self):
        lines = dry_run()
        ids = exp_ids(lines)
        self.assertEqual(sorted(e for e in ids if e.endswith("_s42")),
                         sorted(f"{n}_s42" for n in set(REFERENCE) | EXTRAS | IMPROVED))
        self.assertEqual(sorted(e for e in ids if not e.endswith("_s42")),  # norms: three seeds each
                         sorted(f"{n}_s{s}" for n in NORMS for s in (1, 2, 3)))
        norms = [line for line in lines if "_grad_norms_s" in line]
        self.assertTrue(all("--layers 6 " in line and "--grad_norms" in line for line in norms))
        self.assertEqual(sum("--warmup_epochs 5 " in line for line in norms), 6)
        improved = [line for line in lines if "_improved" in line]
        self.assertEqual(len(improved), 3)
        self.assertTrue(all("--recipe improved " in line for line in improved))
        self.assertTrue(all("--epochs 50 " in line for line in improved if "vit_" in line))
        lines = dry_run(RUN_GROUPS="reference extras")
        names = [e.removesuffix("_s42") for e in exp_ids(lines)]
        self.assertEqual(sorted(names), sorted(set(REFERENCE) | EXTRAS))
        for line, name in zip(lines, names):
            script = "train_lm.py" if name.startswith("lm_") else "train_vit.py"
            self.assertIn(f"python3 {script} ", line)
            self.assertIn(f"--epochs {10 if script == 'train_lm.py' else 50} ", line)
            self.assertIn("--resume", line)
            if name in REFERENCE:
                self.assertIn(REFERENCE[name] + " --seed 42 ", line)
        # only differences from the defaults: batch size and learning rate come from the Config
        self.assertFalse(any("--batch_size" in line or "--lr" in line for line in lines))

    def test_the_sweep_names_each_run_as_its_trainer_would(self):
        import config
        import train_lm
        import train_vit
        for embeddings, train_args, quick in (("none", "", ""),  # as a user runs it
                                              ("gpt1", "--lr 0.002 --precision fp32 --compile", ""),
                                              ("/x/glove.6B.npz", "", ""), ("none", "", "1")):
            lines = dry_run(embeddings == "none" and not quick, EMBEDDINGS=embeddings, SEEDS="42 7",
                            TRAIN_ARGS=train_args, QUICK=quick)
            self.assertEqual(len(lines), 2 * 22 + 12)
            for line in lines:
                _, script, *flags = line.split()
                i = flags.index("--exp_id")
                exp_id, flags = flags[i + 1], flags[:i] + flags[i + 2:]
                cfg = config.parse_config((train_lm if script == "train_lm.py" else train_vit).Config, flags)
                if not quick:  # smoke runs keep their configuration's names
                    self.assertEqual(exp_id, cfg.default_exp_id(), line)
                self.assertEqual(cfg.ignored(), [], line)  # the study sets nothing its runs would not use
        self.assertIn("lm_lstm_L1_adam_embeddings-gpt1_s42", exp_ids(lines := dry_run(EMBEDDINGS="gpt1")))
        self.assertIn("lm_lstm_L1_adam_embeddings-glove.6B_s42", exp_ids(dry_run(EMBEDDINGS="/x/glove.6B.npz")))
        self.assertIn("lm_gru_L1_adam_s42", exp_ids(lines))  # the other groups learn theirs
        # TRAIN_ARGS name the runs they change, and ONLY finds a configuration by its name without them too
        self.assertEqual(exp_ids(dry_run(TRAIN_ARGS="--lr 0.002", ONLY="^vit_L2_sgd$")), ["vit_L2_sgd_lr0.002_s42"])
        self.assertEqual(exp_ids(dry_run(TRAIN_ARGS="--mixup=0.8", ONLY="^vit_L6_adamw$")), ["vit_L6_adamw_mixup0.8_s42"])
        # checked at the run's epochs, not the trainer's default: a warmup longer than 10 epochs fits in 50
        self.assertEqual(exp_ids(dry_run(TRAIN_ARGS="--warmup_epochs 20", ONLY="^vit_L2_sgd$")),
                         ["vit_L2_sgd_warmup_epochs20_s42"])
        # smoke runs keep their configuration's names (in their own folder)
        self.assertEqual(sorted(exp_ids(dry_run(QUICK="1"))), sorted(exp_ids(dry_run())))

    def test_auto_embeddings_are_gpt1s_for_the_token_files_there_or_to_be_fetched(self):
        with tempfile.TemporaryDirectory() as tmp:
            words = write_text_files(Path(tmp) / "words")
            for env, name in ((dict(LM_DATA=tmp), "lm_lstm_L1_adam_embeddings-gpt1_s42"),
                              (dict(LM_DATA=str(words)), "lm_lstm_L1_adam_words_s42"),  # named by its data
                              (dict(LM_DATA=tmp, QUICK="1"), "lm_lstm_L1_adam_s42")):
                lines = dry_run(EMBEDDINGS="auto", ONLY="^lm_lstm_L1_adam(_embeddings-gpt1|_words)?$", **env)
                self.assertEqual(exp_ids(lines), [name], env)

    def test_settings_reach_the_commands(self):
        lines = dry_run(EPOCHS_LM="3", EPOCHS_VIT="7", DEVICE="cpu", LOG_DIR="/x", LM_DATA="/lm", VIT_DATA="/vit",
                        PYTHON="py", EMBEDDINGS="/e.npz", ONLY="lstm_L1_adam_embeddings-e$|vit_L2_sgd")
        self.assertEqual(exp_ids(lines), ["lm_lstm_L1_adam_embeddings-e_s42", "vit_L2_sgd_s42"])
        self.assertIn("--epochs 3 --data_folder /lm --embeddings /e.npz --device cpu --log_dir /x", lines[0])
        self.assertIn("--epochs 7 --data_folder /vit --device cpu --log_dir /x", lines[1])
        self.assertTrue(all(line.startswith("py ") for line in lines))
        extra = dry_run(TRAIN_ARGS="--compile --precision fp32", ONLY="lm_lstm_L1_adam$|vit_L6_adamw_improved$")
        self.assertIn("--optimizer adam --seed 42 --compile --precision fp32 --epochs 10", extra[0])
        self.assertIn("--recipe improved --layers 6 --seed 42 --compile --precision fp32 --epochs 50", extra[1])
        quick = dry_run(QUICK="1", ONLY="lm_lstm_L1_adam$|vit_L6_adamw_improved$")
        self.assertIn("--epochs 1 --data_folder ./data/wikitext2 --limit_batches 2", quick[0])
        self.assertIn("--embedding_size 64 --hidden_size 64", quick[0])  # a smoke run's weights take megabytes
        self.assertIn("--log_dir logs/quick", quick[0])
        self.assertIn("--recipe improved --layers 6 --seed 42 --warmup_epochs 1 ", quick[1])  # fits in its epoch
        frozen = dry_run(QUICK="1", EMBEDDINGS="gpt1", ONLY="lm_lstm_L1_adam_embeddings-gpt1$")[0]
        self.assertIn("--batch_size 4 --seq_len 64 --embeddings gpt1 --device", frozen)  # GPT-1's width, 768

    def test_every_setting_the_sweep_reads_is_in_the_docs_table(self):
        import re
        code = (HERE / "sweep.py").read_text()
        read = set(re.findall(r'"([A-Z][A-Z_]+)"', code)) - {"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "WORLD_SIZE"}
        self.assertEqual(len(read), 17, sorted(read))
        table = (HERE / "docs" / "recipes.md").read_text()
        self.assertEqual([name for name in sorted(read) if f"`{name}" not in table], [])

    def test_seeds_and_shards_partition_the_list(self):
        full = exp_ids(dry_run(SEEDS="1 2"))
        self.assertEqual(len(full), 2 * 22 + 3 * 4)
        self.assertEqual(sorted(exp_ids(dry_run(SEEDS="2,1 2", NORMS_SEEDS="3 1 2 1"))), sorted(full))  # twice: once
        self.assertIn("vit_L6_adamw_postnorm_s2", full)
        shards = [exp_ids(dry_run(SEEDS="1 2", SHARD=f"{i}/3")) for i in range(3)]
        self.assertEqual(sorted(sum(shards, [])), sorted(full))
        self.assertEqual(len(set(sum(shards, []))), len(full))
        self.assertTrue(all(abs(len(s) - len(full) / 3) < 1 for s in shards))
        # TRAIN_ARGS that make two configurations one (every ViT a ViT-6): that run is on one shard alone
        one = dict(TRAIN_ARGS="--layers 6", RUN_GROUPS="reference")
        full = exp_ids(dry_run(**one))
        self.assertEqual(len(full), len(set(full)))
        self.assertEqual(sorted(exp_ids(dry_run(SHARD="0/2", **one)) + exp_ids(dry_run(SHARD="1/2", **one))), sorted(full))
        code, _, err = sweep_here(dict(DRY_RUN="1", EMBEDDINGS="none", ONLY="^vit_L[24]_adamw$", **one))
        self.assertEqual((code, err.splitlines()[0]), (0, "warning: TRAIN_ARGS make vit_L4_adamw_s42 and vit_L2_adamw_s42 "
                                                           "one run: vit_L6_adamw_s42"))  # said, not only counted

    def test_a_seed_of_both_seeds_and_norms_seeds_is_said_to_train_the_reference_runs_twice(self):
        code, out, err = sweep_here(dict(DRY_RUN="1", RUN_GROUPS="reference norms", ONLY="^vit_L6", SEEDS="1 42"))
        self.assertEqual((code, out.count(" --exp_id ")), (0, 4 + 12), err)  # said, and run as asked
        said = [line for line in err.splitlines() if "exactly as another" in line]  # not the runs with warmup
        self.assertEqual(said, ["warning: 2 runs train exactly as another does (--grad_norms only logs; SEEDS and "
                                "NORMS_SEEDS share 1): vit_L6_adamw_grad_norms_s1 as vit_L6_adamw_s1, "
                                "vit_L6_adamw_postnorm_grad_norms_s1 as vit_L6_adamw_postnorm_s1; drop the shared seeds "
                                "from one of them to save those runs"])
        code, _, err = sweep_here(dict(DRY_RUN="1", RUN_GROUPS="reference norms", ONLY="^vit_L6"))
        self.assertNotIn("exactly as another", err)

    def test_the_settings_it_reads_are_those_it_lists(self):  # SETTINGS: --help, and the misspelling warning
        import sweep as sweep_module
        read = set()

        class Recording(dict):
            def get(self, name, default=None):
                read.add(name)
                return super().get(name, default)
        with mock.patch.object(os, "environ", Recording(os.environ, DRY_RUN="1")):
            sweep_module.settings()
        theirs = {"CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}  # torch's
        self.assertEqual(read - theirs, set(sweep_module.SETTINGS))

    def test_a_glob_in_only_is_run_as_the_regular_expression_it_is_with_a_warning(self):
        for only, runs, said in (("vit_L6*", 21, True), ("^vit_L6.*", 16, False), ("vit_L[26]*_sgd", 1, False)):
            code, out, err = sweep_here(dict(DRY_RUN="1", EMBEDDINGS="none", RUN_GROUPS="reference improved norms",
                                             ONLY=only))  # a glob's '*' selects vit_L2 too: run, but said
            self.assertEqual((code, out.count(" --exp_id ")), (0, runs), err)
            self.assertEqual(f"warning: ONLY='{only}' is a regular expression, in which '*' repeats the character "
                             f"before it ('.*' is any text)\n" in err, said, err)

    def test_bad_settings_are_refused(self):
        for env, fragment in ((dict(SHARD="3/3"), "SHARD"), (dict(ONLY="nothing-matches"), "no configuration"),
                              (dict(RUN_GROUPS="reference bogus"), "unknown group 'bogus'"),
                              (dict(QUICK="2"), "QUICK must be"), (dict(SEEDS="1 x"), "integers from 0 to 2**63 - 1, got 'x'"),
                              (dict(SEEDS="²"), "got '²'"), (dict(NORMS_SEEDS=str(2 ** 63)), "NORMS_SEEDS"),
                              (dict(EPOCHS_LM="0"), "EPOCHS_LM must be a positive integer"),
                              (dict(EPOCHS_VIT="ten"), "EPOCHS_VIT"), (dict(EPOCHS_LM="²"), "EPOCHS_LM"), (dict(ONLY="(vit"), "not a valid regular"),
                              (dict(DEVICE="tpu"), "DEVICE must be"), (dict(SEEDS=" "), "SEEDS=' ' gives no seed"),
                              (dict(NORMS_SEEDS=" "), "NORMS_SEEDS=' ' gives no seed"),
                              (dict(RUN_GROUPS=" "), "RUN_GROUPS=' ' names no group"),
                              (dict(TRAIN_ARGS='--compile "'), "TRAIN_ARGS is not a line of shell words"),
                              (dict(GPUS="0 a"), "GPUS takes GPU indices or UUIDs"),
                              (dict(GPUS="0 1,00"), "GPUS names GPU 0 twice: two runs sharing a GPU"),
                              (dict(WORLD_SIZE="4"), "WORLD_SIZE=4 is set, as torchrun sets it for its processes"),
                              (dict(TRAIN_ARGS="--compile --epochs 3"), "TRAIN_ARGS cannot set --epochs: its value "
                               "comes from EPOCHS_LM and EPOCHS_VIT"),
                              (dict(TRAIN_ARGS="--see=5"), "TRAIN_ARGS cannot set --seed: its value comes from SEEDS"),
                              (dict(TRAIN_ARGS="--lr 1e-3 --he"), "TRAIN_ARGS cannot ask for --help: python train_lm.py"),
                              (dict(TRAIN_ARGS="-h"), "TRAIN_ARGS cannot ask for --help"),
                              (dict(TRAIN_ARGS="--mixup 0.8", ONLY="^lm_lstm_L1_adam$"), "error: TRAIN_ARGS="
                               "'--mixup 0.8' (train_lm.py --optimizer adam): unrecognized arguments: --mixup 0.8"),
                              (dict(TRAIN_ARGS="--bogus", ONLY="bogus"), "unrecognized arguments: --bogus"),
                              (dict(TRAIN_ARGS="--warmup_epochs 8", EPOCHS_VIT="5", ONLY="^vit_L2_sgd$"),
                               "--warmup_epochs must be in [0, --epochs], got 8.0 with --epochs 5"),
                              (dict(LOG_DIR=str(HERE / "README.md")), "README.md is a file, not a folder"),
                              (dict(VIT_DATA=str(HERE / "README.md")), "VIT_DATA="),
                              (dict(LOG_DIR=str(HERE / "README.md" / "logs")), f"LOG_DIR={HERE / 'README.md' / 'logs'}: "
                               f"{HERE / 'README.md'} is a file, not a folder")):
            code, _, err = sweep_here(dict(DRY_RUN="1", **env))
            self.assertEqual(code, 2, env)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(fragment, err)
        with tempfile.TemporaryDirectory() as tmp:  # where plot.py writes the report at the end, a file: known at once
            (Path(tmp) / "report").write_text("notes\n")
            code, out, err = sweep_here(dict(DRY_RUN="1", LOG_DIR=tmp, ONLY="^vit_L2_sgd$"))
        self.assertEqual((code, err), (2, f"error: {Path(tmp) / 'report'} is a file, where plot.py writes the sweep's "
                                          "report folder at its end; move it away, or give another LOG_DIR\n"))
        with tempfile.TemporaryDirectory() as tmp:  # a run's directory there, which plot.py would refuse too
            (Path(tmp) / "report").mkdir()
            (Path(tmp) / "report" / "config.json").write_text("{}\n")
            code, out, err = sweep_here(dict(DRY_RUN="1", LOG_DIR=tmp, ONLY="^vit_L2_sgd$"))
        self.assertEqual((code, err), (2, f"error: {Path(tmp) / 'report'} is a run directory, where plot.py writes the "
                                          "sweep's report folder at its end; move it away, or give another LOG_DIR\n"))
        for argv, advice in ((["QUICK=1"], "given before it: QUICK=1 bash runs.sh"),
                             (["SEEDS=1 2", "QUICK=yes"], "given before it: SEEDS='1 2' QUICK=yes bash runs.sh"),
                             (["--quick"], "given before it: QUICK=1 bash runs.sh (--help lists them)")):
            with tempfile.TemporaryDirectory() as tmp:  # refused before anything: never the whole study
                code, out, err = sweep_here(dict(LOG_DIR=str(Path(tmp) / "logs")), argv)
                self.assertFalse((Path(tmp) / "logs").exists())
            self.assertEqual((code, out, err), (2, "", f"error: runs.sh takes no arguments (got {shlex.join(argv)}): "
                                                       f"its settings are environment variables, {advice}\n"))
        proc = subprocess.run(["bash", str(HERE / "runs.sh"), "--help"], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHON=sys.executable))  # this interpreter, activated or not
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        table = (HERE / "docs" / "recipes.md").read_text().split("Settings are environment variables")[1]
        documented = {name for cell in re.findall(r"^\| ([^|]+) \|", table, re.M) for name in re.findall(r"`([A-Z_]+)",
                                                                                                         cell)}
        listed = re.search(r"^SETTINGS: (.+)$", proc.stdout, re.M)[1].split(", ")
        self.assertEqual(sorted(listed), sorted(documented))  # docs/recipes.md's table, each setting once
        code, out, err = sweep_here(dict(DRY_RUN="1", ONLY="^vit_L2_sgd$", RUN_GROUP="norms", quick="1", SEEDS_="1"))
        self.assertEqual((code, exp_ids(out.split("== plan")[0].splitlines())), (0, ["vit_L2_sgd_s42"]), err)
        for typo, meant in (("RUN_GROUP", "RUN_GROUPS"), ("quick", "QUICK"), ("SEEDS_", "SEEDS")):  # said, not used
            self.assertIn(f"warning: {typo} is not a setting of the sweep, and is ignored: {meant}?\n", err)
        proc = sweep(dict(DRY_RUN="maybe"))  # through runs.sh, as a user meets it
        self.assertEqual((proc.returncode, proc.stderr.strip()), (2, "error: DRY_RUN must be 1, true or yes (or 0, "
                                                                      "false, no), got 'maybe'"))
        proc = sweep(dict(PYTHON="no-such-python"))
        self.assertEqual((proc.returncode, proc.stderr), (2, "error: PYTHON=no-such-python is not a command here\n"))
        with tempfile.TemporaryDirectory() as tmp:  # an interpreter without torch: no site-packages
            bare = Path(tmp) / "bare-python"
            bare.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
            bare.chmod(0o755)
            proc = sweep(dict(PYTHON=str(bare)))
            self.assertEqual((proc.returncode, proc.stderr), (2, f"error: {bare} has no torch: activate the "
                                                                  f"environment of requirements.txt, or set PYTHON\n"))
        self.assertEqual(len(dry_run(DRY_RUN="On", SHARD="01/013", RUN_GROUPS="reference")), 1)
        self.assertEqual(len(dry_run(SEEDS="7 7 8", ONLY="^vit_L2_sgd$")), 2)  # a repeated seed runs once
        self.assertEqual(exp_ids(dry_run(SEEDS="7 8", ONLY="^vit_L2_sgd_s8$")), ["vit_L2_sgd_s8"])  # printed names match


def fake_sweep(tmp):
    """The environment of a sweep whose runs are FAKE_PYTHON's, on tiny images (the sweep checks its data)."""
    fake, images = tmp / "python", tmp / "images"
    if not fake.exists():  # written once: rewriting a script that a running sweep executes fails ("Text file busy")
        fake.write_text(FAKE_PYTHON)
        fake.chmod(0o755)
    if not images.exists():
        write_image_folder(images, per_class=(40, 10))
    return dict(PYTHON=str(fake), LOG_DIR=str(tmp / "logs"), CALLS=str(tmp / "calls"), DEVICE="cpu",
                VIT_DATA=str(images), PYTHONUTF8="1",  # a UTF-8 locale, as most machines have
                CUDA_VISIBLE_DEVICES="")  # every GPU a fake one: none of the user's shell chosen


class TestSweepMechanics(TempDir):
    def fake(self, through_bash=False, **env):
        """The sweep of FAKE_PYTHON's runs, in this process unless through `bash runs.sh`: the finished
        process, and the calls made (each its run's name and GPU)."""
        calls, env = self.tmp / "calls", dict(fake_sweep(self.tmp), **env)
        proc = sweep(env) if through_bash else subprocess.CompletedProcess("runs.sh", *sweep_here(env))
        made = calls.read_text().split("\n")[:-1] if calls.exists() else []
        return proc, [line.split()[:2] for line in made]

    def test_each_gpu_takes_the_next_run_when_its_last_one_ends(self):
        # the first run is long: its GPU takes nothing else while the other two share the rest
        # (the others take half a second each, so that the two GPUs that share them alternate)
        proc, calls = self.fake(True, GPUS="0 1 2", ONLY="^vit", RUN_GROUPS="reference", SLOW="vit_L2_adam_", SLEEP="4",
                                FAST="0.5")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual(sorted(e for e, _ in calls), sorted(f"{n}_s42" for n in REFERENCE if n.startswith("vit")))
        by_gpu = {}
        for exp, gpu in calls:
            by_gpu.setdefault(gpu, []).append(exp)
        self.assertEqual(sorted(by_gpu), ["0", "1", "2"])
        slow = next(g for g, exps in by_gpu.items() if "vit_L2_adam_s42" in exps)
        self.assertEqual(by_gpu[slow], ["vit_L2_adam_s42"])
        self.assertEqual(sorted(len(v) for g, v in by_gpu.items() if g != slow), [3, 3])
        self.assertIn("3 in parallel", proc.stdout)
        self.assertIn("== plots and tables", proc.stdout)

    def test_gpus_count_the_gpus_this_process_sees(self):
        # under CUDA_VISIBLE_DEVICES (Slurm's allocation), GPUS 0 and 2 are its first and third GPUs
        proc, calls = self.fake(True, GPUS="0 2", ONLY="^vit_L2_(adam|sgd)$", CUDA_VISIBLE_DEVICES="5,6,7", FAST="0.5",
                                OMP_NUM_THREADS="5")
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual(sorted(gpu for _, gpu in calls), ["5", "7"])
        threads = [line.split()[3] for line in (self.tmp / "calls").read_text().splitlines()]
        self.assertEqual(threads, ["5", "5"])  # the user's OMP_NUM_THREADS stands over the sweep's share
        code, _, err = sweep_here(dict(DRY_RUN="1", GPUS="0 3", CUDA_VISIBLE_DEVICES="5,6,7"))
        self.assertEqual((code, err.strip()), (2, "error: GPUS names GPU 3, but CUDA_VISIBLE_DEVICES=5,6,7 shows this "
                                                  "process 3, numbered from 0"))

    @unittest.skipUnless(shutil.which("taskset"), "taskset is not installed")
    def test_each_gpu_gets_its_share_of_the_cpus_this_process_may_use(self):
        env = {k: v for k, v in {**os.environ, **fake_sweep(self.tmp), "GPUS": "0", "ONLY": "^vit_L2_sgd$"}.items()
               if k != "OMP_NUM_THREADS"}  # the sweep's share, not one set by hand
        proc = subprocess.run(["taskset", "-c", "0", "bash", str(HERE / "runs.sh")], env=env, capture_output=True,
                              text=True, timeout=120)  # one CPU of the machine's, as a Slurm job's share
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertEqual((self.tmp / "calls").read_text().split()[3], "1")

    def test_the_cpus_are_shared_equally_among_the_gpus(self):
        import sweep as sweep_module
        for gpus, share in ((["0", "1", "2"], {"3"}), ([], {None})):  # 10 CPUs: 3 each (one idle); no GPUS: as set
            threads = []
            work = sweep_module.Sweep([sweep_module.Run(f"r{i}", "", "", [], None) for i in range(6)], dict(gpus=gpus))
            with mock.patch.object(sweep_module.Sweep, "run_one", lambda _, run, gpu, n: threads.append(n) or 0), \
                    mock.patch("os.sched_getaffinity", return_value=set(range(10)), create=True):
                work.execute()
            self.assertEqual((len(threads), set(threads)), (6, share))

    def test_relative_paths_are_of_the_folder_it_is_started_from(self):
        env = dict(fake_sweep(self.tmp), LOG_DIR="my logs", VIT_DATA="images", ONLY="^vit_L2_sgd$")
        proc = sweep(env, cwd=self.tmp)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertTrue((self.tmp / "my logs" / "vit_L2_sgd_s42.log").is_file())
        script = shlex.quote(str(HERE / "train_vit.py"))
        self.assertIn(f"{script} --layers 2 --optimizer sgd", proc.stdout)  # the script by its path
        self.assertIn("--data_folder images", proc.stdout)
        self.assertIn("== all done: my logs/report", proc.stdout)
        self.assertFalse((HERE / "my logs").exists())

    def test_a_failure_does_not_stop_the_sweep_and_done_runs_are_skipped(self):
        proc, calls = self.fake(ONLY="^vit_L2", FAIL="vit_L2_sgd")
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(len(calls), 4)  # the failure came third; the fourth still ran
        self.assertEqual(proc.stdout.count("== checking VIT_DATA="), 1)  # one folder for every run: read once
        self.assertIn("failed:", proc.stdout)
        self.assertIn("vit_L2_sgd_s42 (exit 3)", proc.stdout)
        proc, calls = self.fake(ONLY="^vit_L2")
        self.assertEqual(proc.returncode, 0)
        self.assertEqual([e for e, _ in calls][4:], ["vit_L2_sgd_s42"])  # only the failed one ran again
        self.assertEqual(proc.stdout.count("done, skipped"), 3)
        proc, _ = self.fake(ONLY="^vit_L2", PLOT_CODE="1")  # every run done, the report not drawn: a failure
        self.assertEqual((proc.returncode, proc.stdout.split("== plots and tables\n")[1]),
                         (1, "== failed:\n   plot.py\n"))
        (self.tmp / "logs" / "vit_L6_adamw_s42.log").mkdir()  # its console log cannot be written: it fails
        proc, calls = self.fake(ONLY="^vit_L6", RUN_GROUPS="reference")
        self.assertEqual(proc.returncode, 1)
        self.assertEqual([e for e, _ in calls][5:], ["vit_L6_adamw_postnorm_s42"])  # the other one still ran
        self.assertIn("vit_L6_adamw_s42 (Is a directory: ", proc.stdout)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)
        log = (self.tmp / "logs" / "vit_L6_adamw_postnorm_s42.log").read_text(encoding="utf-8")
        self.assertIn("a byte that is no UTF-8: \ufffd", log)  # the run's output, whatever bytes it printed
        if Path("/dev/full").exists():  # its console log on a full disk: the system's reason, the log named once
            (self.tmp / "logs" / "vit_L6_adamw_s42.log").rmdir()
            (self.tmp / "logs" / "vit_L6_adamw_s42.log").symlink_to("/dev/full")
            proc, _ = self.fake(ONLY="^vit_L6_adamw$", RUN_GROUPS="reference")
            self.assertIn(f"== vit_L6_adamw_s42: FAILED (No space left on device, log {self.tmp / 'logs'}/"
                          f"vit_L6_adamw_s42.log)\n", proc.stdout)
        proc, _ = self.fake(ONLY="^vit_L4", FAIL="vit_L4")  # every run fails: one line, no report attempted
        self.assertEqual(proc.returncode, 1)
        self.assertIn("every run failed", proc.stdout)
        self.assertNotIn("plot", proc.stdout)

    def test_an_output_on_a_full_disk_stops_every_run_in_one_line_and_the_same_command_resumes(self):
        env = dict(fake_sweep(self.tmp), ONLY="^vit_L2", PATH=f"{STUBS}:{os.environ['PATH']}")
        first = sweep(dict(env, LOG_DIR=str(self.tmp / "logs1")))
        ahead = len(first.stdout[:first.stdout.index("== vit_L2_adam_s42")].encode())  # the plan's lines
        limit, log = 1 << 20, self.tmp / "sweep.log"
        log.write_bytes(b"x" * (limit - ahead))  # an earlier log fills it: the plan fits, the runs' lines do not

        def preexec():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        with open(log, "a") as out:
            full = subprocess.run(["bash", str(HERE / "runs.sh")], env=dict(env, LOG_DIR=str(self.tmp / "logs2")),
                                  stdout=out, stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=preexec)
        self.assertEqual((full.returncode, full.stderr), (2, "error: cannot write the standard output: File too large; "
                                                             "every run stopped; run the same command again to resume\n"))
        again = sweep(dict(env, LOG_DIR=str(self.tmp / "logs2")))
        self.assertEqual(again.returncode, 0, again.stdout + again.stderr)
        self.assertIn("== all done", again.stdout)
        if Path("/dev/full").exists():  # a device every write to fails as a full disk: the plan's own lines
            with open("/dev/full", "w") as out:
                dry = subprocess.run(["bash", str(HERE / "runs.sh")], env=dict(env, DRY_RUN="1"), stdout=out,
                                     stderr=subprocess.PIPE, text=True, timeout=120)
            self.assertEqual((dry.returncode, dry.stderr),
                             (2, "error: cannot write the standard output: No space left on device\n"))

    def test_three_runs_in_a_row_that_fail_with_the_same_error_start_no_more(self):
        said = "error: --compile failed: no C compiler (cc); run without --compile"  # a setting of every run
        proc, calls = self.fake(ONLY="^vit_L2", FAIL="vit_L2", SAY=said, CODE="2")
        self.assertEqual((proc.returncode, len(calls)), (1, 3), proc.stdout + proc.stderr)
        self.assertIn(f"== 3 runs in a row failed alike ({said}): no more runs start; fix that, then run the same "
                      f"command again (finished runs are skipped)\n", proc.stdout)
        self.assertIn("== not started: 1 run, after 3 failed alike\n== every run that started failed", proc.stdout)
        self.assertNotIn("plot", proc.stdout)
        for say, code in (("error: @ is refused", "2"),  # each its own line: the runs', every one tried
                          ("diverged: train loss became nan in epoch 1 by step 1 (of 2)", "3"),  # a result
                          (OUT_OF_MEMORY, "2")):  # as the trainers say it: the run's size
            (self.tmp / "calls").unlink()
            proc, calls = self.fake(ONLY="^vit_L2", FAIL="vit_L2", SAY=say, CODE=code)
            self.assertEqual((proc.returncode, len(calls)), (1, 4), proc.stdout)
            self.assertIn("== every run failed", proc.stdout)
        (self.tmp / "calls").unlink()
        proc, calls = self.fake(ONLY="^vit_L2", FAIL="vit_L2_adam", SAY="error: @ is refused", CODE="2")
        self.assertEqual((proc.returncode, len(calls)), (1, 4))  # two alike, then one that ran: the rest run
        self.assertIn("== failed:\n   vit_L2_adam_s42 (exit 2): error: vit_L2_adam_s42 is refused\n"
                      "   vit_L2_adamw_s42 (exit 2): error: vit_L2_adamw_s42 is refused\n", proc.stdout)
        proc, calls = self.fake(ONLY="^vit_L4", FAIL="vit_L4", SAY="error: @ is refused", CODE="2", GPUS="0 1")
        self.assertIn(f"== vit_L4_adamw_s42: FAILED (exit 2, log {self.tmp / 'logs'}/vit_L4_adamw_s42.log): error: "
                      f"vit_L4_adamw_s42 is refused\n", proc.stdout)  # its output is in its log alone: said here
        diverged = "diverged: train loss became nan in epoch 1 by step 1 (of 2)"  # a result, said as well
        proc, _ = self.fake(ONLY="^vit_L6_adamw$", FAIL="vit_L6", SAY=diverged, CODE="3", GPUS="0")
        self.assertIn(f"/vit_L6_adamw_s42.log): {diverged}\n", proc.stdout)

    def test_a_run_the_sweep_cannot_start_fails_alone_and_every_other_run_still_runs(self):
        import sweep as sweep_module
        runs = [sweep_module.Run(f"r{i}", "reference", "train_vit.py", [], None) for i in range(6)]
        done = []

        def run_one(work, run, gpu, threads):
            done.append(run.exp_id)
            if run.exp_id == "r1":
                raise ValueError("an unforeseen fault")
            return 3 if run.exp_id == "r4" else 0
        work = sweep_module.Sweep(runs, dict(log_dir=str(self.tmp), gpus=["0", "1"]))
        with mock.patch.object(sweep_module.Sweep, "run_one", run_one), contextlib.redirect_stdout(io.StringIO()):
            self.assertIsNone(work.execute())
        self.assertEqual(sorted(done), [r.exp_id for r in runs])
        self.assertEqual(sorted(work.failed), ["r1 (an unforeseen fault)", "r4 (exit 3)"])

    def test_a_gpu_that_fails_every_run_leaves_the_queue_to_the_others(self):
        import sweep as sweep_module

        def execute(bad_gpus, gpus=("0", "1"), fails=None, device="cuda"):  # fails(gpu, k): the GPU's k-th run fails
            runs = [sweep_module.Run(f"r{i}", "reference", "train_vit.py", [], None) for i in range(10)]
            taken, fails = [], fails or (lambda gpu, k: gpu in bad_gpus)

            def run_one(work, run, gpu, threads):  # a faulty GPU fails at once; a run elsewhere takes a while
                taken.append((run.exp_id, gpu))
                failed = fails(gpu, sum(g == gpu for _, g in taken))
                time.sleep(0.05 * (not failed))
                return int(failed)
            work = sweep_module.Sweep(runs, dict(log_dir=str(self.tmp), gpus=list(gpus), device=device))
            out = io.StringIO()
            with mock.patch.object(sweep_module.Sweep, "run_one", run_one), contextlib.redirect_stdout(out):
                self.assertIsNone(work.execute())
                if len(work.failed) == len(runs):  # no report to draw
                    self.assertEqual(sweep_module.finish(work, runs, dict(log_dir=str(self.tmp), shard=(0, 1))), 1)
            return work, taken, out.getvalue()

        work, taken, out = execute({"1"})
        self.assertEqual(sorted(e for e, _ in taken), [f"r{i}" for i in range(10)])  # each run once
        self.assertEqual(sum(g == "1" for _, g in taken), 3)  # three failures in a row, then no more
        self.assertEqual((len(work.failed), work.retired), (3, ["1"]))
        self.assertIn("== GPU 1: 3 runs in a row failed on it; it takes no more (check it: nvidia-smi), the other GPUs "
                      "take the rest", out)
        _, _, out = execute({"1"}, device="cpu")  # GPUS with DEVICE=cpu: workers on the CPU, no GPU named
        self.assertIn("== worker 1: 3 runs in a row failed on it; it takes no more, the other workers take the rest",
                      out)
        self.assertNotIn("GPU", out)
        work, taken, out = execute({"0", "1"})  # the runs, not a GPU: the last one working still tries each
        self.assertEqual((len(taken), len(work.failed), len(work.retired)), (10, 10, 1))
        self.assertIn(f"== taken out of the queue after 3 failed runs in a row: GPU {work.retired[0]}\n== every run "
                      f"failed", out)
        work, _, out = execute({"0", "1"}, device="cpu")
        self.assertIn(f"in a row: worker {work.retired[0]}\n== every run failed", out)
        work, taken, _ = execute({None}, gpus=())  # one worker (no GPUS) is never taken out
        self.assertEqual((len(taken), len(work.failed), work.retired), (10, 10, []))
        work, taken, _ = execute(set(), fails=lambda gpu, k: gpu == "1" and k % 2)  # failures, but never 3 in a row
        self.assertEqual((len(taken), work.retired), (10, []))
        self.assertGreaterEqual(len(work.failed), 3)


METRICS = dict(vit=dict(metric=dict(name="acc", label="accuracy", maximize=True, digits=4), title="ViT"),
               lm=dict(metric=dict(name="ppl", label="perplexity", maximize=False, digits=2), title="LM"))


def write_run(root, exp_id, config, rows, summary=None, changed=None):
    run = Path(root) / exp_id
    run.mkdir(parents=True)
    # as the trainers write it: the configuration's name (the seeds' common name), settings and non-settings
    naming = dict(configuration=exp_id.rsplit("_s", 1)[0], not_settings=["seed", "exp_id", "epochs", "log_dir"],
                  only_logs=["grad_norms"],
                  settings=[k for k in config
                            if k not in ("task", "seed", "epochs", "data_sha256", "data_sizes", "environment", "metric",
                                         "title", "scoring")],
                  **({} if changed is None else dict(changed=changed)))
    stated = METRICS.get(config.get("task"), {})  # as the trainers state their task's metric
    (run / "config.json").write_text(json.dumps(dict(dict(exp_id=exp_id, naming=naming, **stated), **config)))
    if rows is not None:
        with open(run / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["epoch"])
            writer.writeheader()
            writer.writerows(rows)
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def vit_rows(accs, seconds=10.0):
    return [dict(epoch=i + 1, train_loss=2 - a, train_acc=a + 0.05, valid_loss=2 - a, valid_acc=a, lr=3e-4,
                 train_time=seconds, valid_time=1.0, elapsed=(i + 1) * (seconds + 1), images_per_s=4500.0,
                 peak_mem_mb=800.0 + i, mem_pct=1.0) for i, a in enumerate(accs)]


class TestSweepStops(TempDir):
    def test_gpus_without_a_gpu_stop_the_sweep_in_seconds_naming_the_cause(self):
        if torch_cuda_available():
            self.skipTest("a GPU is present: the sweep would use it")
        start = time.perf_counter()
        proc = sweep(dict(GPUS="0", LOG_DIR=str(self.tmp / "logs"), PYTHON=sys.executable))
        self.assertLess(time.perf_counter() - start, 60)
        self.assertEqual(proc.returncode, 2, proc.stdout + proc.stderr)
        self.assertIn("error: DEVICE=cuda", proc.stderr)
        self.assertIn("--gpus all", proc.stderr)
        self.assertEqual([p.name for p in (self.tmp / "logs").iterdir()], [".sweep.lock"])  # no run started

    def test_ctrl_c_stops_every_parallel_run(self):
        fake = self.tmp / "python"
        pids = self.tmp / "pids"
        fake.write_text(f"#!/usr/bin/env bash\n{THE_SWEEP_ITSELF}\n"
                        f"echo $$ >> {shlex.quote(str(pids))}\nexec sleep 60\n")
        fake.chmod(0o755)
        images, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        env = {**os.environ, "PYTHON": str(fake), "GPUS": "0 1", "CUDA_VISIBLE_DEVICES": "", "DEVICE": "cpu",
               "LOG_DIR": str(self.tmp / "logs"), "ONLY": "^vit_L2", "VIT_DATA": str(images)}
        proc = subprocess.Popen(["bash", str(HERE / "runs.sh")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.addCleanup(end_process, proc, signal.SIGTERM)
        deadline = time.time() + 30
        while time.time() < deadline and len(pids.read_text().split() if pids.exists() else []) < 2:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("interrupted", err)
        self.assertNotIn("FAILED", out)  # stopped, not failed: the same command resumes them
        self.assertNotIn("on GPU", out)  # DEVICE=cpu: the two workers share the CPU, and say so
        self.assertRegex(out, r"== vit_L2_\w+ \(worker [01], on the CPU\): ")
        time.sleep(0.5)
        running = [p for p in pids.read_text().split() if alive(p)]
        self.assertEqual(running, [])  # both workers' runs are gone, and no further run started
        self.assertEqual(len(pids.read_text().split()), 2)

    def test_a_run_stopped_by_a_signal_to_it_alone_is_not_done(self):
        fake = self.tmp / "python"  # a trainer terminated on its own (a user's kill of its pid): unfinished
        fake.write_text(f"#!/usr/bin/env bash\n{THE_SWEEP_ITSELF}\n"
                        f"exit 143\n")
        fake.chmod(0o755)
        images, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        proc = sweep(dict(PYTHON=str(fake), LOG_DIR=str(self.tmp / "logs"), ONLY="^vit_L2_sgd$", DEVICE="cpu",
                          VIT_DATA=str(images)))
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        self.assertIn("== vit_L2_sgd_s42: FAILED (terminated, exit 143", proc.stdout)
        self.assertNotIn("all done", proc.stdout)


def alive(pid):
    """A process that exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        return "\tZ" not in next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                if line.startswith("State:"))
    except OSError:
        return False


def torch_cuda_available():
    import torch
    return torch.cuda.is_available()


class TestPlan(TempDir):
    """The sweep's plan: what it will run, and about how long and how much disk."""

    def plan(self, **env):
        defaults = dict(DRY_RUN="1", PYTHON=sys.executable, LOG_DIR=str(self.tmp / "logs"), DEVICE="cpu")
        code, out, err = sweep_here(dict(defaults, **env))  # the plan of a dry run, in this process
        self.assertEqual(code, 0, err)
        return out[out.index("== plan"):]

    def test_estimated_from_finished_epochs_of_the_configuration_else_from_flops(self):
        logs = self.tmp / "logs"
        rows = lambda n: [dict(r, elapsed=30.0 * (i + 1)) for i, r in enumerate(vit_rows([0.5] * n))]  # noqa: E731
        for seed, n in ((7, 10), (42, 4)):  # another seed finished, and this one half-way (to resume)
            write_run(logs, f"vit_L2_adam_s{seed}", dict(task="vit", seed=seed, limit_batches=0), rows(n))
        (logs / "vit_L2_adam_s7" / "best.pt").write_bytes(b"w" * 3_000_000)
        (logs / "vit_L2_adam_s42" / "checkpoint.pt").write_bytes(b"c" * 5_000_000)  # to resume from; not kept
        out = self.plan(ONLY="^vit_L2_adam$", EPOCHS_VIT="10", VIT_DATA=str(self.tmp / "none"))
        self.assertIn("== plan: 1 run on cpu", out)
        self.assertIn("reference 1; 1 to resume", out)
        self.assertIn("time: about 3 min (1 from finished epochs", out)  # 6 epochs left, 30 s each
        # the mean of the two runs' weights and logs; while it runs, its checkpoint too (weights and Adam's two)
        self.assertIn("disk: 2 MB when done (best weights and logs), 6 MB more at most while running", out)
        out = self.plan(ONLY="^vit_L2_(adam|sgd)$", VIT_DATA=str(self.tmp / "none"))
        self.assertIn(f"note: VIT_DATA={self.tmp / 'none'} is not there yet (the sweep fetches it): standard sizes", out)
        self.assertIn("(1 from finished epochs; 1 from FLOPs at 60% of a measured", out)
        # epochs timed on another device say nothing of this one's
        write_run(logs, "vit_L2_sgd_s7", dict(task="vit", seed=7, limit_batches=0,
                                              environment=dict(device="cuda:0", device_name="NVIDIA H100")), rows(2))
        out = self.plan(ONLY="^vit_L2_sgd$", VIT_DATA=str(self.tmp / "none"))
        self.assertIn("(1 from FLOPs at 60% of a measured", out)
        write_run(logs, "vit_L2_sgd_s42", dict(task="vit", seed=42, limit_batches=0, environment=dict(
            device="cuda:0", device_name="NVIDIA H100")), rows(10), summary=dict(epochs=10))  # finished there
        out = self.plan(ONLY="^vit_L2_sgd$", VIT_DATA=str(self.tmp / "none"), SEEDS="42", EPOCHS_VIT="10")
        self.assertIn("1 finished (skipped)", out)
        self.assertIn("time: about 0 s (1 from FLOPs", out)  # skipped: it costs nothing, however it is estimated
        shutil.rmtree(logs / "vit_L2_sgd_s42")
        # nor do times that no epoch took (an edited or damaged metrics.csv): "about nan days" otherwise
        for elapsed in ("nan", "inf", "-50", "1e308"):
            shutil.rmtree(logs / "vit_L2_sgd_s7")
            write_run(logs, "vit_L2_sgd_s7", dict(task="vit", seed=7, limit_batches=0),
                      [dict(r, elapsed=float(elapsed)) for r in rows(1)])
            out = self.plan(ONLY="^vit_L2_sgd$", VIT_DATA=str(self.tmp / "none"))
            self.assertIn("(1 from FLOPs at 60% of a measured", out)
        # nor does a smoke run's (a QUICK run under the configuration's name): two batches are no epoch
        shutil.rmtree(logs / "vit_L2_sgd_s7")
        write_run(logs, "vit_L2_sgd_s7", dict(task="vit", seed=7, limit_batches=2), rows(1))
        out = self.plan(ONLY="^vit_L2_sgd$", VIT_DATA=str(self.tmp / "none"))
        self.assertIn("(1 from FLOPs at 60% of a measured", out)

    def test_on_a_gpu_a_real_sweeps_plan_times_a_few_batches_of_each_configuration(self):
        import plan
        import sweep as sweep_module
        configurations = []

        def timed(run, classes, device):
            configurations.append(run.cfg.naming()["configuration"])
            return 0.5, 0.1  # seconds per training batch, per evaluation batch

        def real_sweeps_plan(**env):  # as the sweep plans before it runs anything, the data not checked
            env = dict(PYTHON=sys.executable, LOG_DIR=str(self.tmp / "logs"), DEVICE="cpu", EMBEDDINGS="none",
                       VIT_DATA=str(self.tmp / "none"), EPOCHS_VIT="10", **env)
            out = io.StringIO()
            with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(out):
                runs, notes = sweep_module.select(sweep_module.settings()), []
                plan.report(runs, 0, notes, CPU, plan.estimate(runs, plan.progress(runs), CPU, notes, timing=True))
            return out.getvalue()
        CPU = torch.device("cpu")
        with mock.patch.object(plan, "TIMED_ON", {"cpu"}), mock.patch.object(plan, "batch_seconds", timed):
            out = real_sweeps_plan(ONLY="^vit_L2_(adam|sgd)$", SEEDS="1 2")
            self.assertEqual(sorted(configurations), ["vit_L2_adam", "vit_L2_sgd"])  # once each, whatever the seed
            # each run: 3 s to start, 10 epochs of 352 training and 40 valid batches, 2 x 79 test batches: 1,819 s
            self.assertIn("time: about 2.0 h (4 from timed batches; compile warm-ups not included)", out)
            # the plan prints within a minute: past TIMING_S of timing, the configurations left are counted in FLOPs
            configurations.clear()  # each timing takes 25 s
            with mock.patch.object(plan.time, "monotonic", lambda: 25.0 * len(configurations)):
                out = real_sweeps_plan(ONLY="^vit_L2_(adam|adamw|sgd|momentum)$", SEEDS="1 2")
            self.assertEqual(configurations, ["vit_L2_adam", "vit_L2_adamw"])  # at 0 and 25 s of the 40
            self.assertIn("(4 from timed batches; 4 from FLOPs at 60% of a measured", out)
            self.assertIn("; the plan times batches for 40 s at most: the rest from FLOPs, a lower bound on a GPU\n", out)
            rows = [dict(r, elapsed=30.0 * (i + 1)) for i, r in enumerate(vit_rows([0.5] * 10))]
            write_run(self.tmp / "logs", "vit_L2_sgd_s1", dict(task="vit", seed=1, limit_batches=0, environment=dict(
                device="cuda:0", device_name="NVIDIA H100")), rows, summary=dict(epochs=10))  # finished elsewhere
            configurations.clear()
            out = real_sweeps_plan(ONLY="^vit_L2_sgd$", SEEDS="1")
            self.assertIn("1 finished (skipped)", out)
            self.assertEqual(configurations, [])  # nothing left to run: nothing timed
            # a dry run stays in seconds: FLOPs, and a word on what they miss there
            out = self.plan(ONLY="^vit_L2_(adam|sgd)$", SEEDS="1 2", VIT_DATA=str(self.tmp / "none"), EPOCHS_VIT="10")
            self.assertEqual(configurations, [])
            self.assertIn("FLOPs make this time a lower bound; the sweep's own plan times their batches", out)
            self.assertIn("(4 from FLOPs at 60% of a measured", out)

    def test_timed_batches_go_through_the_trainers_path(self):
        import plan
        from config import parse_config
        seen, real = [], plan.run_epoch

        def run_epoch(model, task, split, epoch, step, precision, limit):
            frozen = not model.embedding.weight.requires_grad if hasattr(model, "embedding") else None
            seen.append((type(task).__name__, split, step is not None, limit, frozen))
            return real(model, task, split, epoch, step, precision, limit)
        for script, flags, classes, task, frozen in (
                ("train_vit.py", ["--embed_dim", "32", "--hidden_dim", "64", "--num_heads", "4", "--batch_size", "8",
                                  "--recipe", "improved"], 10, "ImageTask", None),
                ("train_lm.py", ["--embedding_size", "16", "--hidden_size", "16", "--seq_len", "8", "--batch_size", "4",
                                 "--embeddings", "table.npz"], 50, "TextTask", True)):
            seen.clear()
            run = SimpleNamespace(script=script, cfg=parse_config(plan.SCRIPTS[script][0].Config, flags))
            with mock.patch.object(plan, "run_epoch", run_epoch):
                seconds = plan.batch_seconds(run, classes, torch.device("cpu"))
            self.assertEqual(len(seconds), 2)
            self.assertTrue(all(s > 0 for s in seconds), seconds)
            self.assertEqual(seen, [(task, "train", True, 3, frozen), (task, "valid", False, 3, frozen)] * 2)

    def test_the_plan_counts_each_split_and_its_batches_as_the_trainers_make_them(self):
        import plan
        from config import parse_config
        images, _ = write_image_folder(self.tmp / "images", per_class=(5, 2))  # 15 images: a valid split of 2
        text, tokens = write_text_files(self.tmp / "text"), write_token_files(self.tmp / "tokens")
        for script, folder, flags in (("train_vit.py", images, ["--layers", "1", "--batch_size", "2"]),
                                      ("train_lm.py", text, ["--seq_len", "16", "--hidden_size", "8",
                                                             "--batch_size", "2"]),
                                      # 400 training tokens: 399 targets, exactly 21 windows of 19
                                      ("train_lm.py", tokens, ["--seq_len", "19", "--batch_size", "3",
                                                               "--batching", "streams"])):
            flags += ["--data_folder", str(folder)]
            trainer = plan.SCRIPTS[script][0]
            config = trainer.Config
            with contextlib.redirect_stdout(io.StringIO()):
                task, model, extra, _ = trainer.build(parse_config(config, flags), torch.device("cpu"))
            run = SimpleNamespace(script=script, cfg=parse_config(config, flags))
            notes = []
            sizes, classes = plan.data_sizes(run, notes)
            self.assertEqual(notes, [])
            self.assertEqual(sizes, tuple(extra["data_sizes"][s] for s in ("train", "valid", "test")), folder)
            if folder != tokens:  # token files are planned over GPT-1's vocabulary, the report's
                self.assertEqual(classes, model.head.out_features if script == "train_vit.py" else extra["vocab_size"])
            # the batches of each pass (the tests: the final and the best-validation model)
            batches = plan.work(run, sizes, classes)[0]
            # and an LM's over carried streams in the reference's windows too: batches of longer windows
            alike = task.alike.num_batches("test") * 256 / 19 if getattr(task, "alike", None) else 0
            self.assertEqual(bool(alike), "streams" in flags)
            self.assertEqual(batches, (task.num_batches("train"), task.num_batches("valid"),
                                       2 * task.num_batches("test") + alike), folder)
            self.assertGreater(batches[0], 2)

    def test_the_flops_of_a_run_count_every_pass_it_makes(self):
        import plan
        from config import parse_config

        def work(script, *flags):  # (train, valid, test FLOPs, learnable), every split 3 batches (or 6)
            run = SimpleNamespace(script=script, cfg=parse_config(plan.SCRIPTS[script][0].Config,
                                                                  ["--limit_batches", "3", *flags]))
            classes = 10 if script == "train_vit.py" else 1000
            batches, (train, evaluation), learnable = plan.work(run, (10 ** 6,) * 3, classes)
            return batches[0] * train, batches[1] * evaluation, batches[2] * evaluation, learnable
        for script in ("train_vit.py", "train_lm.py"):
            train, valid, test, learnable = work(script)
            self.assertEqual(train, 3 * valid)  # a backward pass is twice the forward
            self.assertEqual(test, 2 * valid)  # the final and the best-validation model
            self.assertEqual(work(script, "--limit_batches", "6")[:3], (2 * train, 2 * valid, 2 * test))
            ema = work(script, "--ema", "0.9")  # its average is validated each epoch and tested twice too
            self.assertEqual(ema[:3], (train, 2 * valid, 2 * test), script)
        from models import vit_flops
        patches8 = work("train_vit.py", "--patch_size", "8")[1]  # 16 patches of 8 x 8 x 3 and the CLS token
        self.assertEqual(patches8, 3 * 128 * vit_flops(2, 17, 256, 512, 16, 192, 10))
        frozen = work("train_lm.py", "--embeddings", "table.npz")  # no gradient for the tied table
        self.assertLess(frozen[0], train)
        self.assertEqual(frozen[1:3], (valid, test))
        self.assertEqual(learnable - frozen[3], 1000 * 768)

    def test_a_sweep_larger_than_the_free_space_is_warned_of_before_it_starts(self):
        env = dict(DRY_RUN="1", PYTHON=sys.executable, LOG_DIR=str(self.tmp / "logs"), DEVICE="cpu",
                   ONLY="^vit_L2_adam$", VIT_DATA=str(self.tmp / "none"))
        for free, warned in ((10 ** 12, False), (10 ** 6, True)):
            with mock.patch("shutil.disk_usage", return_value=SimpleNamespace(total=10 ** 12, used=0, free=free)):
                code, out, err = sweep_here(env)
            self.assertEqual(code, 0, err)
            # ViT-2's weights (4 MB) and, while it runs, its checkpoint with Adam's two moments (13 MB)
            self.assertEqual("warning: the sweep needs about 17 MB but" in err, warned, err)
        self.assertIn(f"{self.tmp} has 1 MB free", err)  # its nearest folder that exists

    def test_the_time_of_a_work_queue_is_that_of_its_busiest_worker(self):
        import plan
        # each run, in the list's order, goes to the worker free first: the 4 on one, the four 1s on the other
        self.assertEqual(plan.makespan([4, 1, 1, 1, 1], 2), 4)
        self.assertEqual(plan.makespan([1, 1, 1, 1, 4], 2), 6)  # the long run last: it starts after two short ones
        self.assertEqual(plan.makespan([3, 3, 3], 1), 9)
        self.assertEqual(plan.makespan([5], 3), 5)
        self.assertEqual([plan.duration(s) for s in (99, 100, 5999, 6000, 72 * 3600)],
                         ["99 s", "2 min", "100 min", "1.7 h", "3.0 days"])

    def test_an_embeddings_file_that_does_not_fit_stops_the_sweep_before_any_run(self):
        data = write_token_files(self.tmp / "tokens")  # a vocabulary of 50
        np.savez(self.tmp / "wide.npz", tokens=np.zeros((50, 16), np.float32))  # the models are 768 wide
        env = dict(PYTHON=sys.executable, LOG_DIR=str(self.tmp / "logs"), DEVICE="cpu", LM_DATA=str(data),
                   RUN_GROUPS="reference", ONLY="^lm_lstm_L1_adam_", EMBEDDINGS=str(self.tmp / "wide.npz"))
        code, out, err = sweep_here(env)
        self.assertEqual(code, 2, out + err)
        self.assertIn(f"error: EMBEDDINGS={self.tmp / 'wide.npz'}: embeddings {self.tmp / 'wide.npz'} have shape "
                      f"(50, 16), the data and model need (50, 768)", err)
        self.assertNotIn("== lm_", out)  # no run started
        self.assertEqual([p.name for p in (self.tmp / "logs").iterdir()], [".sweep.lock"])  # the sweep's lock alone
        np.savez(self.tmp / "fits.npz", tokens=np.zeros((50, 768), np.float32))
        import plan
        import sweep as sweep_module
        with mock.patch.dict(os.environ, dict(env, EMBEDDINGS=str(self.tmp / "fits.npz"))), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            plan.check_data(sweep_module.select(sweep_module.settings()))  # accepted

    def test_runs_the_sweep_cannot_continue_are_refused_before_anything_runs(self):
        logs = self.tmp / "logs"
        for exp_id in ("vit_L2_adam_s42", "vit_L2_sgd_s42"):
            write_run(logs, exp_id, dict(task="vit", seed=42, limit_batches=0), vit_rows([0.5, 0.6]), dict(epochs=2))
        env = dict(ONLY="^vit_L2_(adam|sgd)$", VIT_DATA=str(self.tmp / "none"))
        self.assertIn("2 finished (skipped)", self.plan(EPOCHS_VIT="2", **env))
        summary = logs / "vit_L2_adam_s42" / "summary.json"
        kept = summary.read_bytes()
        summary.unlink()  # every epoch, no test yet (stopped in its tests): resumed from its checkpoint, not skipped
        code, out, err = sweep_here(dict(PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu", EPOCHS_VIT="2",
                                         **env))
        self.assertEqual((code, err.strip()), (2, "error: 1 run in the log folder cannot be continued by this sweep: "
                                                  "vit_L2_adam_s42 (stopped after 2 epochs, no checkpoint.pt to go on "
                                                  "from); give another LOG_DIR, or move it away"))
        (logs / "vit_L2_adam_s42" / "checkpoint.pt").write_bytes(b"")
        self.assertIn("reference 2; 1 finished (skipped); 1 to resume", self.plan(EPOCHS_VIT="2", **env))
        (logs / "vit_L2_adam_s42" / "checkpoint.pt").unlink()
        summary.write_bytes(kept)
        code, out, err = sweep_here(dict(PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu", EPOCHS_VIT="1",
                                         ONLY="^vit_L2_adam$", VIT_DATA=str(self.tmp / "none")))
        self.assertEqual((code, err.strip()), (2, "error: 1 run in the log folder cannot be continued by this sweep: "
                                                  "vit_L2_adam_s42 (trained 2 epochs, more than the 1 asked); give "
                                                  "another LOG_DIR, or move it away"))
        code, out, err = sweep_here(dict(PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu", EPOCHS_VIT="4", **env))
        self.assertEqual(code, 2, out + err)
        self.assertEqual(err.strip(), "error: 2 runs in the log folder cannot be continued by this sweep: "
                         "vit_L2_adam_s42 (finished at 2 epochs, no checkpoint.pt to go on from), vit_L2_sgd_s42 "
                         "(finished at 2 epochs, no checkpoint.pt to go on from); give another LOG_DIR, or move those "
                         "runs away")
        self.assertNotIn("== checking", out)
        for exp_id in ("vit_L2_adam_s42", "vit_L2_sgd_s42"):  # with their checkpoints they are resumed
            (logs / exp_id / "checkpoint.pt").write_bytes(b"")
        self.assertIn("reference 2; 2 to resume", self.plan(EPOCHS_VIT="4", **env))
        # a QUICK run under a configuration's name is neither continued nor counted as done
        write_run(logs, "vit_L2_momentum_s42", dict(task="vit", seed=42, limit_batches=2), vit_rows([0.5]),
                  dict(epochs=1))
        code, out, err = sweep_here(dict(DRY_RUN="1", PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu",
                                         EPOCHS_VIT="1", ONLY="^vit_L2_momentum$", VIT_DATA=str(self.tmp / "none")))
        self.assertEqual((code, err.strip()), (2, "error: 1 run in the log folder cannot be continued by this sweep: "
                                                  "vit_L2_momentum_s42 (its limit_batches 2, not 0); give another "
                                                  "LOG_DIR, or move it away"))
        # a run under a cosine schedule goes on to the epochs it started with, no more and no fewer
        write_run(logs, "vit_L6_adamw_improved_s42", dict(task="vit", seed=42, limit_batches=0, scheduler="cosine",
                                                          epochs=50), vit_rows([0.5]))
        (logs / "vit_L6_adamw_improved_s42" / "checkpoint.pt").write_bytes(b"")
        env = dict(RUN_GROUPS="improved", ONLY="^vit_L6_adamw_improved$", VIT_DATA=str(self.tmp / "none"))
        code, out, err = sweep_here(dict(DRY_RUN="1", PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu",
                                         EPOCHS_VIT="10", **env))
        self.assertEqual((code, err.strip()), (2, "error: 1 run in the log folder cannot be continued by this sweep: "
                                                  "vit_L6_adamw_improved_s42 (its cosine schedule spans 50 epochs, not "
                                                  "the 10 asked); give another LOG_DIR, or move it away"))
        self.assertIn("improved 1; 1 to resume", self.plan(EPOCHS_VIT="50", **env))
        # one epoch is one epoch
        (logs / "vit_L6_adamw_improved_s42" / "config.json").write_text(json.dumps(dict(json.loads(
            (logs / "vit_L6_adamw_improved_s42" / "config.json").read_text()), epochs=1)))
        code, out, err = sweep_here(dict(DRY_RUN="1", PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu",
                                         EPOCHS_VIT="10", **env))
        self.assertIn("(its cosine schedule spans 1 epoch, not the 10 asked)", err)
        write_run(logs, "vit_L4_adamw_s42", dict(task="vit", seed=42, limit_batches=0), vit_rows([0.5]))
        code, out, err = sweep_here(dict(DRY_RUN="1", PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu",
                                         EPOCHS_VIT="2", ONLY="^vit_L4_adamw$", VIT_DATA=str(self.tmp / "none")))
        self.assertIn("vit_L4_adamw_s42 (stopped after 1 epoch, no checkpoint.pt to go on from)", err)

    def test_a_finished_run_on_other_data_is_refused_not_skipped_as_done(self):
        import data
        logs, images = self.tmp / "logs", self.tmp / "images"
        write_image_folder(images, per_class=(40, 10))
        write_run(logs, "vit_L2_adam_s42", dict(task="vit", seed=42, limit_batches=0, data_sha256="0" * 64),
                  vit_rows([0.5, 0.6]), dict(epochs=2))  # finished, on other images than VIT_DATA's
        env = dict(PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu", EPOCHS_VIT="2", ONLY="^vit_L2_adam$",
                   VIT_DATA=str(images))
        code, out, err = sweep_here(env)
        self.assertEqual((code, err.strip()), (2, "error: 1 run in the log folder cannot be continued by this sweep: "
                                                  f"vit_L2_adam_s42 (trained on other data than VIT_DATA={images}); "
                                                  "give another LOG_DIR, or move it away"))
        self.assertNotIn("== vit_L2_adam_s42", out)
        config = json.loads((logs / "vit_L2_adam_s42" / "config.json").read_text())  # the same images: done
        config["data_sha256"] = data.load_cifar10(images, torch.device("cpu")).sha256
        (logs / "vit_L2_adam_s42" / "config.json").write_text(json.dumps(config))
        code, out, err = sweep_here(env)
        self.assertEqual(code, 0, out + err)
        self.assertIn("== vit_L2_adam_s42: done, skipped", out)

    def test_a_finished_run_on_another_embeddings_file_of_that_name_is_refused_not_skipped_as_done(self):
        import data, train_lm
        logs, tokens, emb = self.tmp / "logs", write_token_files(self.tmp / "tokens"), self.tmp / "emb.npz"
        np.savez(emb, tokens=np.random.default_rng(0).normal(size=(50, 768)).astype(np.float32))
        exp_id = "lm_lstm_L1_adam_embeddings-emb_s42"
        config = dict(task="lm", seed=42, model="lstm", limit_batches=0, embeddings_sha256="0" * 64,
                      data_sha256=data.load_wikitext(tokens, torch.device("cpu")).sha256)
        write_run(logs, exp_id, config, [dict(epoch=1, train_loss=5.0, train_ppl=150.0, valid_loss=5.0,
                                              valid_ppl=100.0, train_time=1.0, valid_time=1.0, elapsed=2.0,
                                              peak_mem_mb=1.0, mem_pct=1.0)],
                  dict(epochs=1))  # finished, with a file of that name that has been replaced since
        env = dict(PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu", EPOCHS_LM="1", LM_DATA=str(tokens),
                   EMBEDDINGS=str(emb), ONLY="^lm_lstm_L1_adam_embeddings-emb$")
        code, out, err = sweep_here(env)
        self.assertEqual((code, err.strip()), (2, "error: 1 run in the log folder cannot be continued by this sweep: "
                                                  f"{exp_id} (trained on other frozen embeddings than EMBEDDINGS={emb}); "
                                                  "give another LOG_DIR, or move it away"))
        self.assertNotIn(f"== {exp_id}", out)
        path = logs / exp_id / "config.json"  # the file it trained on: done
        path.write_text(json.dumps(dict(json.loads(path.read_text()), embeddings_sha256=train_lm.file_sha256(emb))))
        code, out, err = sweep_here(env)
        self.assertEqual(code, 0, out + err)
        self.assertIn(f"== {exp_id}: done, skipped", out)

    def test_a_dry_run_on_damaged_token_files_says_so_and_plans_on_the_standard_sizes(self):
        data = write_token_files(self.tmp / "tokens")
        (data / "wiki.train.npz").write_bytes(b"not a zip")
        out = self.plan(RUN_GROUPS="extras", ONLY="^lm_gru_L1", LM_DATA=str(data))
        self.assertIn(f"note: LM_DATA={data}: {data / 'wiki.train.npz'} is not a readable .npz file (truncated or "
                      f"corrupt?): not NumPy data: standard sizes", out)

    def test_a_log_folder_that_cannot_be_written_is_found_before_the_data_check(self):
        (self.tmp / "file").write_text("")
        code, out, err = sweep_here(dict(PYTHON=sys.executable, LOG_DIR=str(self.tmp / "file" / "logs"),
                                         DEVICE="cpu", ONLY="^vit_L2_adam$", VIT_DATA=str(self.tmp / "none")))
        self.assertEqual(code, 2, out + err)
        self.assertEqual(err.strip(), f"error: LOG_DIR={self.tmp / 'file' / 'logs'}: {self.tmp / 'file'} is a file, not a "
                                      f"folder")
        self.assertNotIn("== checking", out)

    def test_gpt1s_embeddings_on_word_level_text_stop_the_sweep_before_any_run(self):
        text = write_text_files(self.tmp / "text")
        code, out, err = sweep_here(dict(PYTHON=sys.executable, LOG_DIR=str(self.tmp / "logs"), DEVICE="cpu",
                                         LM_DATA=str(text), ONLY="^lm_lstm_L1_adam_", EMBEDDINGS="gpt1"))
        self.assertEqual((code, err.strip()), (2, f"error: EMBEDDINGS=gpt1 needs the token files, but LM_DATA={text} "
                                                  f"holds word-level text (EMBEDDINGS=none learns them instead)"))
        self.assertNotIn("== lm_", out)

    def test_gpus_beyond_those_torch_sees_are_refused_before_any_run(self):
        import plan
        from utils import UserError
        with mock.patch("torch.cuda.is_available", return_value=True), \
                mock.patch("torch.cuda.device_count", return_value=2), \
                mock.patch.object(plan, "get_device", lambda name: name), \
                mock.patch.dict(os.environ, CUDA_VISIBLE_DEVICES="4,6"):
            self.assertEqual(plan.check_device("cuda", ["0", "1", "GPU-5e3a"]), "cuda")
            with self.assertRaises(UserError) as caught:
                plan.check_device("auto", ["1", "2"])
        self.assertEqual(str(caught.exception), "GPUS names GPU 2, but this process sees 2 GPUs, numbered from 0 "
                                                "(after CUDA_VISIBLE_DEVICES)")

    def test_a_dry_run_plans_a_gpu_sweep_on_a_machine_without_one(self):
        if torch_cuda_available():
            self.skipTest("a GPU is present")
        out = self.plan(GPUS="0,1", CUDA_VISIBLE_DEVICES="", DEVICE="cuda", ONLY="^vit_L2", SEEDS="1, 2")  # commas too
        self.assertIn("== plan: 8 runs on cuda (not here), 2 in parallel", out)
        self.assertIn("not estimated: DEVICE=cuda", out)
        code, out, err = sweep_here(dict(PYTHON=sys.executable, LOG_DIR=str(self.tmp / "logs"), GPUS="0",
                                         CUDA_VISIBLE_DEVICES="", ONLY="^vit_L2_sgd$"))  # a real sweep: refused
        self.assertEqual(code, 2, out + err)
        self.assertTrue(err.startswith("error: DEVICE=cuda (the default with GPUS and in the image), but "), err)
        self.assertNotIn("== vit", out)

    def test_bad_flags_are_one_error_line_naming_the_configuration(self):
        proc = sweep(dict(DRY_RUN="1", TRAIN_ARGS="--bogus", ONLY="^vit_L2_sgd$", PYTHON=sys.executable))
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stderr.strip(), "error: TRAIN_ARGS=--bogus (train_vit.py --layers 2 --optimizer sgd): "
                         "unrecognized arguments: --bogus (see --help)")

    def test_the_estimate_from_flops_and_the_sizes_the_runs_save(self):
        lm = write_text_files(self.tmp / "text", lines=(80, 40, 40))
        vit, _ = write_image_folder(self.tmp / "images", per_class=(440, 44))
        env = dict(QUICK="1", LM_DATA=str(lm), VIT_DATA=str(vit), ONLY="^vit_L2_(adam|sgd)$|^lm_lstm_L1_adam_words$",
                   TRAIN_ARGS="--ema 0.9 --keep_checkpoint")  # best_ema.pt too; checkpoints kept to be measured
        out = self.plan(**env)
        self.assertIn("== plan: 3 runs on cpu", out)
        self.assertIn("(3 from FLOPs at 60% of a measured", out)
        self.assertNotIn("note:", out)  # the data's own sizes, counted
        def disk(plan):  # MB when done, and more at most while running
            said = plan.split("disk: ")[1]
            return float(said.split(" MB")[0]), float(said.split("logs), ")[1].split(" MB")[0])
        done, peak = disk(out)
        _, peak_two = disk(self.plan(**env, GPUS="0 1", DEVICE="cpu", CUDA_VISIBLE_DEVICES=""))  # two checkpoints
        proc = sweep(dict(env, PYTHON=sys.executable, LOG_DIR=str(self.tmp / "logs"), DEVICE="cpu"), timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("== plan: 3 runs on cpu", proc.stdout)
        runs = [p for p in (self.tmp / "logs").iterdir() if p.is_dir() and p.name != "report"]
        self.assertEqual(len(runs), 3)
        actual = sum(f.stat().st_size for p in runs for f in p.iterdir() if f.name != "checkpoint.pt") / 1e6
        self.assertLess(abs(done - actual), 0.1 * actual + 0.5, (done, actual))  # MB, as printed
        # while running: the finished runs' files and the largest checkpoint (one worker: one at a time)
        actual += max((p / "checkpoint.pt").stat().st_size for p in runs) / 1e6
        self.assertLess(abs(peak - actual), 0.1 * actual + 0.5, (peak, actual))
        actual += sorted((p / "checkpoint.pt").stat().st_size for p in runs)[-2] / 1e6
        self.assertLess(abs(peak_two - actual), 0.1 * actual + 0.5, (peak_two, actual))
        self.assertIn("3 finished (skipped)", self.plan(**env))


class TestSweepProcesses(TempDir):
    """The sweep as a user drives it: signals, a second sweep on the same folder, pasted commands."""

    def start(self, **env):
        env = {**os.environ, **fake_sweep(self.tmp), "ONLY": "^vit_L2", "SLOW": "vit", "SLEEP": "60", **env}
        proc = subprocess.Popen(["bash", str(HERE / "runs.sh")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # even under nohup
        self.addCleanup(end_process, proc, signal.SIGTERM)
        return proc

    def running(self, n, timeout=60):
        """The pids of the first n runs, once they have started."""
        calls, deadline = self.tmp / "calls", time.time() + timeout
        while time.time() < deadline and len(calls.read_text().splitlines() if calls.exists() else []) < n:
            time.sleep(0.1)
        return [line.split()[2] for line in calls.read_text().splitlines()]

    def test_int_term_and_hup_stop_every_running_configuration_within_seconds(self):
        for signum, gpus in ((signal.SIGINT, ""), (signal.SIGTERM, ""), (signal.SIGTERM, "0 1"), (signal.SIGHUP, "0 1")):
            with self.subTest(signal=signum.name, gpus=gpus):
                (self.tmp / "calls").unlink(missing_ok=True)
                proc = self.start(GPUS=gpus)
                pids = self.running(2 if gpus else 1)
                start = time.perf_counter()
                proc.send_signal(signum)
                _, err = proc.communicate(timeout=30)
                self.assertLess(time.perf_counter() - start, 10)
                self.assertEqual(proc.returncode, 128 + signum, err)
                self.assertIn("every run stopped; run the same command again to resume", err)
                time.sleep(0.3)
                self.assertEqual([p for p in pids if alive(p)], [])
                self.assertEqual(len((self.tmp / "calls").read_text().splitlines()), len(pids))  # none started after

    def test_a_closed_output_stops_the_sweep_quietly_between_runs(self):
        proc = self.start(SLOW="", FAST="1")  # four runs of a second each, their output shown
        next(line for line in proc.stdout if "no UTF-8" in line)  # the first run's own line
        proc.stdout.close()  # | head: its next line finds no reader
        err = proc.stderr.read()
        proc.stderr.close()
        self.assertEqual(proc.wait(timeout=30), 141, err)
        self.assertNotRegex(err, "Traceback|Error|FAILED|stopped")
        self.assertLess(len((self.tmp / "calls").read_text().splitlines()), 4)  # the rest never started

    def test_a_second_sweep_on_the_same_folder_is_refused_and_touches_nothing(self):
        first = self.start()
        self.running(1)
        log, deadline = self.tmp / "logs" / "vit_L2_adam_s42.log", time.time() + 30
        while b"no UTF-8" not in log.read_bytes() and time.time() < deadline:  # the run's output, relayed
            time.sleep(0.1)
        before = log.read_bytes()
        second = self.start(SLOW="")
        out, err = second.communicate(timeout=60)
        self.assertEqual(second.returncode, 2, err)
        self.assertNotIn("== checking", out)  # refused before it spends anything
        self.assertEqual(err.strip().splitlines()[-1], f"error: another sweep is running on LOG_DIR={self.tmp / 'logs'} "
                         f"(it holds {self.tmp / 'logs'}/.sweep.lock); wait for it to end, or give another LOG_DIR")
        self.assertEqual(log.read_bytes(), before)
        self.assertEqual(len((self.tmp / "calls").read_text().splitlines()), 1)
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)

    def test_the_shards_of_one_list_share_a_folder_and_the_last_to_end_draws_the_report(self):
        # a job array's first task, still running; its runs fail, but the report is of every shard's runs
        gate = self.tmp / "gate"  # the first task's slow run ends once the other tasks have been seen to
        first = self.start(SHARD="0/2", SLOW="vit_L2_adam_", GATE=str(gate), FAIL="vit_L2_")
        self.running(1)
        second = self.start(SHARD="1/2", SLOW="")
        out, err = second.communicate(timeout=60)
        self.assertEqual(second.returncode, 0, err)
        self.assertIn("== plots and tables: left to the sweep still running on LOG_DIR=", out)
        logs = self.tmp / "logs"
        others = {"0/2": f"error: another sweep is running SHARD=0/2 on LOG_DIR={logs} (it holds {logs}/.sweep.0of2.lock)"
                         f"; wait for it to end",
                  "1/3": f"error: a sweep with SHARD=0/2 is running on LOG_DIR={logs}: the shards of one log folder split "
                         f"its list alike (SHARD=i/2)",
                  "0/1": f"error: another sweep is running on LOG_DIR={logs} (it holds {logs}/.sweep.lock); wait for it "
                         f"to end, or give another LOG_DIR"}
        refused = {shard: self.start(SHARD=shard, SLOW="") for shard in others}
        for shard, proc in refused.items():
            _, err = proc.communicate(timeout=60)
            self.assertEqual((proc.returncode, err.strip().splitlines()[-1]), (2, others[shard]))
        gate.touch()
        out, err = first.communicate(timeout=60)
        self.assertEqual(first.returncode, 1, err)
        self.assertIn("== plots and tables\n== failed:\n   vit_L2_adam_s42 (exit 3)\n   vit_L2_sgd_s42 (exit 3)\n", out)
        calls = [line.split()[0] for line in (self.tmp / "calls").read_text().splitlines()]
        self.assertEqual(sorted(calls), sorted(f"vit_L2_{o}_s42" for o in ("adam", "adamw", "sgd", "momentum")))

    def test_a_printed_command_pastes_as_it_is(self):
        odd = self.tmp / "my logs $(touch pwned) 'x'"
        proc = sweep(dict(DRY_RUN="1", LOG_DIR=str(odd), ONLY="^vit_L2_sgd$"))  # printed by runs.sh
        lines = [line for line in proc.stdout.splitlines() if " --exp_id " in line]
        self.assertEqual(len(lines), 1)
        fake = self.tmp / "py"
        fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS"\n')
        fake.chmod(0o755)
        line = lines[0].replace("python3", shlex.quote(str(fake)), 1)
        subprocess.run(["bash", "-c", line], cwd=self.tmp, env={**os.environ, "ARGS": str(self.tmp / "args")},
                       check=True)
        args = (self.tmp / "args").read_text().splitlines()
        self.assertEqual(args[args.index("--log_dir") + 1], str(odd))
        self.assertFalse((self.tmp / "pwned").exists())


class TestPlot(TempDir):
    def make_logs(self):
        logs = self.tmp / "logs"
        base = dict(task="vit", layers=6, optimizer="adamw", lr=3e-4, batch_size=128)
        for seed, (accs, test) in {1: ([0.5, 0.6, 0.7], 0.68), 2: ([0.5, 0.7, 0.6], 0.66)}.items():
            write_run(logs, f"vit_L6_s{seed}", dict(base, block="prenorm", seed=seed), vit_rows(accs),
                      dict(params_learnable=3195146, test_acc=test - 0.01, best_test_acc=test, best_epoch=3))
        write_run(logs, "vit_L6_post_s1", dict(base, block="postnorm", seed=1,
                                               environment=dict(device_name="NVIDIA H100")),
                  vit_rows([0.4, 0.5, 0.55], 20.0), dict(params_learnable=3195146, test_acc=0.5, best_test_acc=0.54,
                                                          best_epoch=3))
        write_run(logs, "vit_L2_s1", dict(base, layers=2, block="prenorm", seed=1), vit_rows([0.3], 12.0),
                  None)  # unfinished: no summary
        write_run(logs, "vit_broken_s1", dict(base, block="prenorm", seed=1), [], None)  # died before epoch 1
        return logs

    def test_a_curve_is_the_mean_over_seeds_to_the_last_epoch_all_reached_and_its_band_their_sample_std(self):
        logs = self.make_logs()
        base = dict(task="vit", layers=6, optimizer="adamw", lr=3e-4, batch_size=128, block="prenorm")
        write_run(logs, "vit_L6_s3", dict(base, seed=3), vit_rows([0.4, 0.8]), None)  # a seed still running
        runs = [r for r in results.find_runs([logs], logs / "report") if r.path.name.startswith("vit_L6_s")]
        self.assertEqual(len(runs), 3)
        xs, mean, std = plot.Group(results.group_key(runs[0]), runs, "vit_L6").curve("valid_acc")
        np.testing.assert_allclose(xs, [1, 2])
        np.testing.assert_allclose(mean, [1.4 / 3, 0.7])
        np.testing.assert_allclose(std, [0.1 / 3 ** 0.5, 0.1])  # ddof 1, as the tables' +- std
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)

    def test_a_runs_best_and_peak_are_over_all_its_epochs(self):
        logs = self.tmp / "logs"
        rows = vit_rows([math.nan, 0.5, 0.6, 0.55])  # a NaN is no result, wherever it stands
        rows[1]["peak_mem_mb"] = 900.0  # the peak in epoch 2, less after it (a resume starts a fresh process)
        write_run(logs, "vit_L6_s1", dict(task="vit", layers=6, seed=1, epochs=4), rows,
                  dict(epochs=4, test_acc=0.5, best_test_acc=0.6))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        with open(logs / "report" / "summary_vit.csv") as f:
            row = next(csv.DictReader(f))
        self.assertEqual((float(row["best_valid_mean"]), float(row["memory_mean"])), (0.6, 900.0))

    def test_the_fastest_to_a_target_counts_a_configuration_only_when_every_seed_reaches_it(self):
        logs = self.tmp / "logs"
        for exp_id, ppls in (("lm_a_s1", [300, 200, 150]), ("lm_b_s1", [250, 180, 170]), ("lm_b_s2", [250, 150, 150])):
            rows = [dict(epoch=e, train_loss=5.0, train_ppl=p, valid_loss=math.log(p), valid_ppl=p, lr=1e-3,
                         train_time=5.0 * e, valid_time=0.0, elapsed=10.0 * e * (1 + (exp_id < "lm_b")),
                         tokens_per_s=1e4, peak_mem_mb=9.0, mem_pct=1.0) for e, p in enumerate(ppls, 1)]
            write_run(logs, exp_id, dict(task="lm", model="lstm", layers=1, seed=int(exp_id[-1]), epochs=3), rows,
                      dict(epochs=3, test_ppl=min(ppls), best_test_ppl=min(ppls)))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        # the target: the median of the best valid perplexities (150 and 160), lower being better; one seed of
        # lm_b never reaches 155, so lm_a (at 60 s, the slower per epoch) is the only one to
        self.assertIn("- Fastest to a valid perplexity of 155.00 (the median of the configurations' best): **lm_a** "
                      "in 60.0 s; 1 of 2 configurations reach it.", (logs / "report" / "summary.md").read_text())

    def test_tables_match_the_fixtures(self):
        logs = self.make_logs()
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        report = logs / "report"
        with open(report / "summary_vit.csv") as f:
            rows = {r["experiment"]: r for r in csv.DictReader(f)}
        self.assertEqual(set(rows), {"vit_L6", "vit_L6_post", "vit_L2 (unfinished)"})
        pre = rows["vit_L6"]
        self.assertEqual(int(pre["seeds"]), 2)
        self.assertAlmostEqual(float(pre["best_valid_mean"]), 0.7)
        self.assertAlmostEqual(float(pre["best_test_mean"]), 0.67)
        self.assertAlmostEqual(float(pre["best_test_std"]), 0.0141421356, places=6)  # sample std of 0.68, 0.66
        self.assertAlmostEqual(float(pre["best_train_mean"]), 0.75)
        self.assertAlmostEqual(float(pre["train_s_mean"]), 10.0)
        self.assertAlmostEqual(float(pre["memory_mean"]), 802.0)
        self.assertEqual(rows["vit_L2 (unfinished)"]["test_mean"], "")  # no test result
        md = (report / "summary_vit.md").read_text()
        self.assertIn("| ViT prenorm | 6 | adamw | vit_L6 | 2 | 3 | 0.7500 ± 0.0000 | 0.7000 ± 0.0000 | "
                      "0.6600 ± 0.0141 | 0.6700 ± 0.0141 |", md)
        self.assertIn("| 3,195,146 |", md)
        self.assertIn("| 20.00 | 1.00 | NVIDIA H100 |", md)  # the cost table names each run's device
        summary = (report / "summary.md").read_text()
        self.assertIn("Fastest per epoch: **vit_L6**, 10.00 s of training per epoch (slowest: 20.00 s).", summary)
        self.assertIn("Best generalisation, selected on validation: **vit_L6**", summary)
        self.assertIn("Pre- vs post-norm (vit_L6 / vit_L6_post, 2 and 1 seeds)", summary)
        self.assertIn("gap (pre - post) +0.1300", summary)
        self.assertIn("Short of their epochs or tests (still running, or stopped), tabulated but not compared: vit_L2.",
                      summary)
        self.assertIn("vit_broken_s1: no finished epoch", summary)
        for name in ("vit_epochs.png", "vit_time.png"):
            self.assertEqual((report / name).read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        self.assertFalse((report / "summary_lm.md").exists())
        config = json.loads((logs / "vit_L6_s1" / "config.json").read_text())
        (logs / "vit_L6_s1" / "config.json").write_text(json.dumps(dict(config, environment=dict(device_name="CPU"))))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("(slowest: 20.00 s); the runs trained on 2 devices (CPU, NVIDIA H100): compare times within one.",
                      (report / "summary.md").read_text())
        config = json.loads((logs / "vit_L6_post_s1" / "config.json").read_text())  # under torchrun, 2 processes
        (logs / "vit_L6_post_s1" / "config.json").write_text(json.dumps(dict(config, world_size=2)))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("| 20.00 | 1.00 | 2 x NVIDIA H100 |", (report / "summary_vit.md").read_text())
        self.assertIn("2 devices (2 x NVIDIA H100, CPU)", (report / "summary.md").read_text())

    def test_a_finished_run_extended_and_still_going_has_no_test_result_of_its_earlier_model(self):
        logs = self.tmp / "logs"
        write_run(logs, "vit_L6_s1", dict(task="vit", layers=6, optimizer="adamw", seed=1, epochs=3),
                  vit_rows([0.5, 0.6]), dict(epochs=1, test_acc=0.5, best_test_acc=0.5))  # --resume --epochs 3
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        with open(logs / "report" / "summary_vit.csv") as f:
            self.assertEqual(next(csv.DictReader(f))["test_mean"], "")
        summary = (logs / "report" / "summary.md").read_text()
        self.assertIn("Short of their epochs or tests (still running, or stopped), tabulated but not compared: vit_L6.", summary)
        self.assertIn("Generated by plot.py from 1 run in ", summary)

    def test_gradient_norms_figure_and_the_pre_post_warmup_table(self):
        logs = self.tmp / "logs"
        base = dict(task="vit", layers=3, optimizer="adamw", lr=3e-4, batch_size=128, grad_norms=True)
        # post-norm without warmup: norms that grow towards the output at the first step
        shapes = {("prenorm", 0): [1.0, 1.0, 1.0], ("prenorm", 5): [1.0, 1.0, 1.0],
                  ("postnorm", 0): [1.0, 2.0, 4.0], ("postnorm", 5): [1.0, 1.5, 3.0]}
        for (block, warmup), first in shapes.items():
            for seed, scale in ((1, 1.0), (2, 1.5)):
                run = write_run(logs, f"vit_{block}_w{warmup}_s{seed}", dict(base, block=block, warmup_epochs=warmup,
                                seed=seed), vit_rows([0.5, 0.6]), dict(best_test_acc=0.6 + 0.01 * seed))
                with open(run / "grad_norms.csv", "w") as f:
                    f.write("epoch,layer,norm\n")
                    for epoch in (0, 1, 2):
                        for layer, v in enumerate(first, 1):
                            f.write(f"{epoch},{layer},{v * scale / (epoch + 1)}\n")
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        report = logs / "report"
        self.assertEqual((report / "vit_grad_norms.png").read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        summary = (report / "summary.md").read_text()
        self.assertIn("Pre- vs post-norm, with and without warmup", summary)
        rows = [line for line in summary.splitlines() if line.startswith("| prenorm") or line.startswith("| postnorm")]
        self.assertEqual(len(rows), 4)
        # block, warmup, seeds, best valid (mean +- std over 2 seeds), best-valid test, last/first ratios
        self.assertEqual(rows[0], "| prenorm | 0 | 2 | 0.6000 ± 0.0000 | 0.6150 ± 0.0071 | 1.00 ± 0.00 | 1.00 ± 0.00 |")
        self.assertEqual(rows[2], "| postnorm | 0 | 2 | 0.6000 ± 0.0000 | 0.6150 ± 0.0071 | 4.00 ± 0.00 | 4.00 ± 0.00 |")
        self.assertEqual(rows[3].split(" | ")[5], "3.00 ± 0.00")

    def test_a_cell_is_the_mean_and_sample_std_of_the_numbers_there_are(self):
        mean, std = plot.mean_std([1.0, math.nan, 3.0, None])  # NaN (a damaged row, a diverged test) is no result
        self.assertEqual(mean, 2.0)
        self.assertAlmostEqual(std, math.sqrt(2))
        self.assertEqual((plot.mean_std([5.0]), plot.mean_std([math.nan])), ((5.0, None), (None, None)))
        for cell, text in (((150.123, 2.0, 2), "150.12 ± 2.00"), ((99_999.0, None, 2), "99,999.00"),
                           ((123_456.7, 12.3, 2), "123,457 ± 12.30"),  # whole past 1e5
                           ((1.5e16, None, 2), "1.5e+16"),  # the perplexity of a diverged run: 3 figures
                           ((0.5, math.inf), "0.5000"), ((math.inf, math.nan), "inf"), ((None, 1.0), "-")):
            self.assertEqual(plot.fmt(*cell), text)

    def test_a_device_of_epochs_before_a_resume_is_named_and_so_is_the_weight_average(self):
        logs = self.tmp / "logs"
        earlier = [dict(device_name="Tesla T4", world_size=1, epochs_done=1), dict(device_name="NVIDIA A100",
                                                                                  world_size=2, epochs_done=2)]
        run = write_run(logs, "vit_L6_s1", dict(task="vit", layers=6, seed=1, epochs=3), vit_rows([0.5, 0.6, 0.7]),
                        dict(epochs=3, test_acc=0.68, best_test_acc=0.69, ema_best_valid_acc=0.72,
                             ema_best_test_acc=0.71))
        config = json.loads((run / "config.json").read_text())  # resumed twice: on a T4, on two A100s, an H100
        (run / "config.json").write_text(json.dumps(dict(config, earlier_environments=earlier,
                                                         environment=dict(device_name="NVIDIA H100"))))
        write_run(logs, "vit_L2_s1", dict(task="vit", layers=2, seed=1, epochs=3), vit_rows([0.4, 0.5, 0.6]),
                  dict(epochs=3, test_acc=0.58, best_test_acc=0.59))
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        tables = (logs / "report" / "summary_vit.md").read_text()
        self.assertIn("| 2 x NVIDIA A100 / NVIDIA H100 / Tesla T4 |", tables)
        self.assertIn("| test accuracy (best-valid EMA) |", tables)
        self.assertIn("| 0.6800 | 0.6900 | 0.7100 |", tables)
        self.assertIn("| 0.5800 | 0.5900 | - |", tables)  # a run without the average
        self.assertIn("- Weight average (EMA) of **vit_L6**: best valid accuracy 0.7200 (the model itself: 0.7000), "
                      "test accuracy of the best-valid EMA 0.7100.", (logs / "report" / "summary.md").read_text())
        self.assertNotIn("EMA) of **vit_L2**", (logs / "report" / "summary.md").read_text())

    def test_only_configurations_that_differ_in_the_block_alone_are_compared_as_pre_and_post_norm(self):
        base = dict(task="vit", layers=6, optimizer="adamw", epochs=2)
        for name, post in (("other_layers", dict(layers=2)), ("other_epochs", dict(epochs=3)), ("alike", {})):
            logs = self.tmp / name
            for block, config in (("prenorm", base), ("postnorm", dict(base, **post))):
                write_run(logs, f"vit_{block}_s1", dict(config, block=block, seed=1),
                          vit_rows([0.5, 0.6, 0.7][:config["epochs"]]), dict(best_test_acc=0.6))
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
            said = "- Pre- vs post-norm (vit_prenorm / vit_postnorm, 1 seed each)" in (
                logs / "report" / "summary.md").read_text()
            self.assertEqual(said, name == "alike", name)

    def test_the_best_generalisation_is_selected_on_validation_lower_being_better_for_perplexity(self):
        logs = self.tmp / "logs"
        for exp_id, (valid, test) in (("lm_a_s1", (150, 160)), ("lm_b_s1", (140, 155)), ("lm_c_s1", (200, 150))):
            rows = [dict(epoch=1, train_loss=5.0, train_ppl=valid, valid_loss=math.log(valid), valid_ppl=valid,
                         lr=1e-3, train_time=5.0, valid_time=1.0, elapsed=6.0, tokens_per_s=1e4, peak_mem_mb=9.0,
                         mem_pct=1.0)]
            b = exp_id == "lm_b_s1"  # scored otherwise, and tested as the others too
            write_run(logs, exp_id, dict(task="lm", model="lstm", layers=1, seed=1, epochs=1,
                                         **dict(scoring="over carried streams (a test's words)") if b else {}), rows,
                      dict(epochs=1, test_ppl=test + 1, best_test_ppl=test, **dict(alike_best_test_ppl=158.25) if b
                           else {}))
        write_run(logs, "lm_d_s1", dict(task="lm", model="lstm", layers=1, seed=1, epochs=1, scoring="<b>bold</b>"),
                  rows, dict(epochs=1, test_ppl=1.0, best_test_ppl=1.0))  # markup: not as the trainers write it
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        summary = (logs / "report" / "summary.md").read_text()  # lm_c has the best test: not a choice by it
        # nor lm_b, the best valid: its perplexity is scored otherwise, so no rival of the others'
        self.assertIn("- Best generalisation, selected on validation among those scored as the reference (lm_b: "
                      "below): **lm_a**, best valid perplexity 150.00, test perplexity of that model 160.00 (final "
                      "model: 161.00).", summary)
        self.assertIn("- Fastest to a valid perplexity of 175.00 (the median of the configurations' best): **lm_a** "
                      "in 6.0 s; 1 of 2 configurations among those scored as the reference (lm_b: below) reach it.",
                      summary)
        # a run scored unlike the others says so beside its numbers; the others say nothing of it
        self.assertIn("- **lm_b** is scored over carried streams (a test's words): test perplexity 158.25.", summary)
        self.assertEqual(summary.count(" is scored "), 1)
        table = (logs / "report" / "summary_lm.md").read_text()  # a column of its own, empty for the others
        self.assertIn("| test perplexity (best-valid model) | test perplexity (best-valid model, scored as the "
                      "reference) |", table)
        self.assertIn("| 155.00 | 158.25 |", table)
        self.assertIn("| 160.00 | - |", table)
        self.assertIn("|\n\nlm_b is scored over carried streams (a test's words).\n\n## Cost", table)  # and no other
        self.assertEqual(table.count(" is scored "), 1)
        self.assertIn(f"{logs / 'lm_d_s1'}: config.json is not as the trainers write it", err.getvalue())

    def test_no_run_with_a_finished_epoch_is_exit_1_and_says_so(self):
        logs = self.tmp / "logs"
        write_run(logs, "vit_L6_s1", dict(task="vit", layers=6, seed=1), [], None)  # each failed before epoch 1
        write_run(logs, "vit_L2_s1", dict(task="vit", layers=2, seed=1), None, None)
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 1)
        summary = (logs / "report" / "summary.md").read_text()
        self.assertIn("**No configuration has run all its epochs yet", summary)
        for name in ("vit_L6_s1", "vit_L2_s1"):
            self.assertIn(f"{logs / name}: no finished epoch (failed or still starting)", summary)
            self.assertIn(f"warning: {logs / name}: no finished epoch", err.getvalue())

    def test_a_smoke_run_of_a_configuration_does_not_rename_its_full_runs(self):
        logs = self.tmp / "logs"
        write_run(logs, "vit_L2_s1", dict(task="vit", layers=2, seed=1, epochs=3), vit_rows([0.4, 0.5, 0.6]),
                  dict(epochs=3, best_test_acc=0.6))
        write_run(self.tmp / "quick", "vit_L2_s1", dict(task="vit", layers=2, seed=1, epochs=1, limit_batches=2),
                  vit_rows([0.1]), dict(epochs=1, best_test_acc=0.1))
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(plot.main(["--log_dir", str(logs), str(self.tmp / "quick")]), 0)
        with open(logs / "report" / "summary_vit.csv") as f:
            self.assertEqual(sorted(r["experiment"] for r in csv.DictReader(f)), ["vit_L2", "vit_L2 (smoke)"])

    def test_one_epoch_of_gradient_norms_has_no_last_epoch_panel_nor_a_warmup_table_without_warmup(self):
        import matplotlib.image
        widths = {}
        for epochs in (1, 2):
            logs = self.tmp / f"logs{epochs}"
            for block in ("prenorm", "postnorm"):
                run = write_run(logs, f"vit_{block}_s1", dict(task="vit", layers=2, block=block, seed=1, epochs=epochs,
                                                               grad_norms=True),
                                vit_rows([0.5, 0.6][:epochs]), dict(epochs=epochs, best_test_acc=0.6))
                (run / "grad_norms.csv").write_text("epoch,layer,norm\n" + "".join(
                    f"{e},{k},{k / (e + 1)}\n" for e in range(epochs + 1) for k in (1, 2)))
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
            widths[epochs] = matplotlib.image.imread(logs / "report" / "vit_grad_norms.png").shape[1]
            summary = (logs / "report" / "summary.md").read_text()
            self.assertIn("- Pre- vs post-norm (vit_prenorm / vit_postnorm, 1 seed each)", summary)
            self.assertNotIn("with and without warmup", summary)  # both without: the line above is the finding
        self.assertLess(widths[1], 0.8 * widths[2])  # panels: the first step and epoch 1; then epoch 2 too

    def test_more_than_eight_configurations_split_into_rows_of_panels(self):
        import matplotlib.image
        heights = {}
        for n in (3, 13):
            logs = self.tmp / f"logs{n}"
            for i in range(n):
                write_run(logs, f"vit_L2_c{i:02d}_s1", dict(task="vit", layers=2, lr=1e-4 * (i + 1), seed=1),
                          vit_rows([0.3, 0.4 + i / 100]), dict(best_test_acc=0.4))
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
            heights[n] = matplotlib.image.imread(logs / "report" / "vit_epochs.png").shape[0]
        self.assertGreater(heights[13], 1.7 * heights[3])  # two rows (7 + 6 configurations), each with its legend
        self.assertLess(heights[13], 2.3 * heights[3])

    def test_damaged_runs_are_listed_and_the_rest_is_reported(self):
        logs = self.make_logs()
        base = dict(task="vit", layers=6, optimizer="adamw", lr=3e-4, batch_size=128, block="prenorm", seed=1)
        cut = write_run(logs, "cut_s1", base, vit_rows([0.5, 0.6]), None)
        text = (cut / "metrics.csv").read_text()
        (cut / "metrics.csv").write_text(text[:-20])  # cut mid-line: the first row survives
        long = write_run(logs, "long_s1", base, vit_rows([0.5, 0.6]), None)
        (long / "metrics.csv").write_text((long / "metrics.csv").read_text().replace("\n2,", "\n2,9,", 1))
        short = write_run(logs, "short_s1", base, vit_rows([0.5, 0.6, 0.7]), None)  # a row missing its last fields
        lines = (short / "metrics.csv").read_text().splitlines(keepends=True)
        (short / "metrics.csv").write_text("".join(lines[:2] + [lines[2].rsplit(",", 2)[0] + "\n"] + lines[3:]))
        write_run(logs, "word_s1", base, [*vit_rows([0.5]), dict(vit_rows([0.6])[0], epoch=2, valid_acc="0x10")], None)
        for name, text in (("under_s1", "1_0"), ("script_s1", "\u0661")):  # what float() alone would read as 10 and 1
            write_run(logs, name, base, [*vit_rows([0.5]), dict(vit_rows([0.6])[0], epoch=2, valid_acc=text)], None)
        write_run(logs, "nan_s1", base, [{k: "nan" for k in vit_rows([0.5])[0]}], None)
        old = write_run(logs, "old_s1", base, [{k: v for k, v in r.items() if k not in ("peak_mem_mb", "mem_pct")}
                                               for r in vit_rows([0.5])], None)  # an older file: fewer columns
        write_run(logs, "nocols_s1", base, [dict(epoch=1, loss=2.0)], None)
        write_run(logs, "badsum_s1", base, vit_rows([0.5]), None)
        (logs / "badsum_s1" / "summary.json").write_text("[1, 2]")
        bad = logs / "badconfig"
        bad.mkdir()
        (bad / "config.json").write_text('["not", "a", "config"]')
        write_run(logs, "unknown_s1", dict(base, task="speech"), vit_rows([0.5]), None)
        stated = METRICS["vit"]  # crafted: a task that is a path, digits that format forever, markup in a label
        for name, change in (("escape_s1", dict(task="../../escape")), ("digits_s1", dict(digits=10 ** 9)),
                             ("markup_s1", dict(label="$\\frac{")), ("title_s1", dict(title="a\n# b")),
                             ("bool_s1", dict(digits=True))):
            metric = dict(stated["metric"], **{k: v for k, v in change.items() if k in stated["metric"]})
            rest = {k: v for k, v in change.items() if k not in metric}
            write_run(logs, name, {**base, **stated, "metric": metric, **rest}, vit_rows([0.5]), None)
        for name, change in (("naming_s1", dict(naming="x")), ("settings_s1", dict(naming=dict(settings=5))),
                             ("epochs_s1", dict(epochs="x")), ("block_s1", dict(block=[1])),
                             ("changed_s1", dict(naming=dict(settings=[], changed=[1])))):
            run = write_run(logs, name, {**base, **stated}, vit_rows([0.5]), None)
            config = json.loads((run / "config.json").read_text())
            (run / "config.json").write_text(json.dumps(dict(config, **change)))
        lm_row = dict(epoch=1, train_loss=5.0, train_ppl=150.0, valid_loss=5.1, valid_ppl=165.0, lr=1e-3, train_time=60.0,
                      valid_time=3.0, elapsed=63.0, tokens_per_s=1e4, peak_mem_mb=900.0, mem_pct=1.0)
        write_run(logs, "a_ppl_s1", {**base, **METRICS["lm"]}, [lm_row], None)  # a vit run with the LM's metric, first
        for seed, last in ((1, 5), (2, 6)):  # seed 1's epoch 1 lacks its last layer: the seeds' norms would not average
            norms = write_run(logs, f"norms_s{seed}", dict(base, seed=seed), vit_rows([0.5]), None) / "grad_norms.csv"
            norms.write_text("epoch,layer,norm\n" + "".join(f"{e},{k},1.0\n" for e in (0, 1) for k in range(1, 7)
                                                             if e == 0 or k <= last))
        orphan = logs / "orphan"
        orphan.mkdir()
        (orphan / "summary.json").write_text("{}")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        summary = (logs / "report" / "summary.md").read_text()
        for name, why in (("cut_s1", "line 3 skipped"), ("long_s1", "line 3 skipped"),
                          ("short_s1", "line 3 skipped (wrong number of fields)"), ("nocols_s1", "lacks"),
                          ("word_s1", "line 3 skipped (valid_acc is '0x10', not a number)"),
                          ("under_s1", "line 3 skipped (valid_acc is '1_0', not a number)"),
                          ("script_s1", "line 3 skipped (valid_acc is '\u0661', not a number)"),
                          ("badsum_s1", "not a JSON object"), ("badconfig", "not a JSON object"),
                          ("unknown_s1", "not as the trainers write it (its task, title, metric or settings"),
                          ("orphan", "no config.json"), *((name, "not as the trainers write it") for name in (
                              "escape_s1", "digits_s1", "markup_s1", "title_s1", "naming_s1", "settings_s1",
                              "epochs_s1", "block_s1", "changed_s1", "bool_s1")),
                          ("a_ppl_s1", "its metric ppl is not that of the other vit runs: not plotted"),
                          ("norms_s1", "grad_norms.csv unreadable (an epoch without the norms of layers 1 to 6)")):
            self.assertIn(f"{name}: ", summary)
            self.assertIn(why, next(line for line in summary.splitlines() if f"{name}: " in line))
            self.assertIn(name, err.getvalue())
        self.assertTrue((logs / "report" / "vit_epochs.png").exists())
        self.assertIn("vit_L6", (logs / "report" / "summary_vit.md").read_text())
        self.assertTrue(old.exists())

    def test_no_runs_is_an_error(self):
        (self.tmp / "empty").mkdir()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(plot.main(["--log_dir", str(self.tmp / "empty")]), 2)
        self.assertEqual(err.getvalue(), f"error: no run directories (with config.json) under {self.tmp / 'empty'}\n")
        for argv, said in ((["logs"], "unrecognized arguments: logs; did you mean --log_dir logs?"),
                           (["--logdir", "logs"], "unrecognized arguments: --logdir logs"),
                           (["--log_dir"], "argument --log_dir: expected at least one argument")):  # a flag, one line
            err = io.StringIO()
            with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as stopped:
                plot.main(argv)
            self.assertEqual((stopped.exception.code, err.getvalue()), (2, f"error: {said} (see --help)\n"))

    def test_a_log_folder_that_is_missing_a_file_or_a_run_is_named_not_left_out(self):
        logs = self.tmp / "logs"
        run = write_run(logs, "vit_s1", dict(task="vit", seed=1), vit_rows([0.5]))
        for folder, said in ((self.tmp / "typo", "does not exist"), (run / "metrics.csv", "is a file, not a folder"),
                             (run, f"is a run directory; give the folder that holds it: --log_dir {logs}")):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                self.assertEqual(plot.main(["--log_dir", str(logs), str(folder)]), 2)
            self.assertEqual(err.getvalue(), f"error: --log_dir {folder} {said}\n")
            self.assertFalse((logs / "report").exists())

    def test_log_folders_given_as_one_list_or_flag_by_flag_are_all_read(self):
        for seed, folder in ((1, "a"), (2, "b")):
            write_run(self.tmp / folder, f"vit_s{seed}", dict(task="vit", seed=seed), vit_rows([0.5]))
        a, b = str(self.tmp / "a"), str(self.tmp / "b")
        for argv in (["--log_dir", a, b], ["--log_dir", a, "--log_dir", b]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                self.assertEqual(plot.main(argv), 0)
            self.assertEqual(out.getvalue(), f"vit: 1 configuration, 2 runs -> {self.tmp / 'a' / 'report'}\n")
        err, cwd = io.StringIO(), os.getcwd()
        with contextlib.redirect_stderr(err):  # "" is no folder; without the flag, logs/ of this folder
            self.assertEqual(plot.main(["--log_dir", a, ""]), 2)
            try:
                os.chdir(self.tmp)
                self.assertEqual(plot.main([]), 2)
            finally:
                os.chdir(cwd)
        self.assertEqual(err.getvalue(), "error: --log_dir is empty; give a folder (. for this one)\n"
                                         "error: --log_dir logs does not exist\n")

    def test_a_run_directory_is_no_report_folder(self):
        run = write_run(self.tmp / "logs", "vit_s1", dict(task="vit", seed=1), vit_rows([0.5]))
        before = sorted(p.name for p in run.iterdir())
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(plot.main(["--log_dir", str(self.tmp / "logs"), "--out_dir", str(run)]), 2)
        self.assertEqual(err.getvalue(), f"error: --out_dir {run} is a run directory; choose another folder\n")
        self.assertEqual(sorted(p.name for p in run.iterdir()), before)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(plot.main(["--log_dir", str(self.tmp / "logs"), "--out_dir", str(run / "metrics.csv")]), 2)
        self.assertEqual(err.getvalue(), f"error: --out_dir {run / 'metrics.csv'} is a file; choose another folder\n")
        os.mkfifo(self.tmp / "pipe")  # a file that is neither a folder nor a regular file, as /dev/null
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(plot.main(["--log_dir", str(self.tmp / "logs"), "--out_dir", str(self.tmp / "pipe")]), 2)
        self.assertEqual(err.getvalue(), f"error: --out_dir {self.tmp / 'pipe'} is a file; choose another folder\n")


class TestAgainstTheReport(TempDir):
    def make_logs(self):
        logs = self.tmp / "logs"
        vit = dict(task="vit", block="prenorm", optimizer="adamw", lr=3e-4, batch_size=128,
                   data_sizes=dict(train=45000, valid=5000, test=10000))
        rows = vit_rows([0.5 + 0.0048 * e for e in range(50)])  # best valid 0.7352
        write_run(logs, "vit_L6_adamw_s42", dict(vit, layers=6, epochs=50), rows,
                  dict(best_test_acc=0.7301, test_acc=0.7290, params_learnable=3195146), changed=dict(layers=6))
        write_run(logs, "vit_L2_sgd_s42", dict(vit, layers=2, optimizer="sgd", epochs=50), vit_rows([0.2]),
                  dict(best_test_acc=0.2), changed=dict(optimizer="sgd", limit_batches=2))
        lm = dict(task="lm", model="lstm", layers=1, optimizer="adam", epochs=10, embeddings="gpt1",
                  data_sha256=json.loads((HERE / "reference.json").read_text())["lm"]["settings"]["data_sha256"])
        lm_rows = [dict(epoch=e, train_loss=5.0, train_ppl=150.0, valid_loss=5.1, valid_ppl=165.0, lr=1e-3,
                        train_time=60.0, valid_time=3.0, elapsed=63.0 * e, tokens_per_s=1e4, peak_mem_mb=900.0,
                        mem_pct=1.0) for e in range(1, 11)]
        write_run(logs, "lm_lstm_L1_adam_s42", lm, lm_rows, dict(best_test_ppl=160.0, test_ppl=161.0),
                  changed=dict(optimizer="adam", embeddings="gpt1"))
        return logs

    def test_perplexity_is_reproduced_within_a_relative_tolerance_and_accuracy_within_points(self):
        ref = report.load_reference()  # 5% of perplexity, 1.5 points of accuracy
        cases = (("lm", 150.0, 148.53, "reproduced"), ("lm", 156.0, 148.53, "not reproduced"),
                 ("lm", 141.0, 148.53, "better than the report"), ("vit", 0.7150, 0.7288, "reproduced"),
                 ("vit", 0.7130, 0.7288, "not reproduced"), ("vit", 0.7450, 0.7288, "better than the report"))
        for task, ours, theirs, said in cases:
            with self.subTest(task=task, ours=ours):
                self.assertEqual(report.verdict(task, ours, theirs, ref), (ours - theirs, said))

    def test_the_summary_opens_with_what_was_reproduced_and_the_tables_show_the_report(self):
        logs = self.make_logs()
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        summary = (logs / "report" / "summary.md").read_text()
        self.assertLess(summary.index("against the reference report"), summary.index("Fastest per epoch"))
        self.assertIn("Config 6 (layers 6 block prenorm optimizer adamw): **reproduced**, test acc 0.7301 against "
                      "the report's 0.7288 (+0.0013", summary)
        self.assertIn("Config 3 (layers 2 block prenorm optimizer sgd): not measured here (vit_L2_sgd: 1 of the "
                      "report's 50 epochs; other settings (limit_batches))", summary)
        self.assertIn("Config 7 (layers 6 block postnorm optimizer adamw): not measured here (no run of it)", summary)
        self.assertIn("Config 1 (model lstm layers 1 optimizer adam): **not reproduced**, test ppl 160 against the "
                      "report's 148.5 (+11.47", summary)
        self.assertIn("overlapped its training split", summary)
        table = (logs / "report" / "summary_vit.md").read_text()
        self.assertIn("| report | difference |", table)
        self.assertIn("\nThe report's validation split overlapped its training split", table)  # beside its numbers
        row = next(line for line in table.splitlines() if "| vit_L6_adamw |" in line)
        self.assertTrue(row.endswith("| 0.7288 (test acc) | +0.0013 |"), row)
        short = next(line for line in table.splitlines() if "| vit_L2_sgd (unfinished) |" in line)
        self.assertTrue(short.endswith("| 0.2352 (best valid acc) |  |"), short)  # 1 of its 50 epochs: not compared
        self.assertIn("- Short of their epochs or tests (still running, or stopped), tabulated but not compared: vit_L2_sgd.",
                      summary)
        lm_row = next(line for line in (logs / "report" / "summary_lm.md").read_text().splitlines() if "lstm_L1" in line)
        self.assertTrue(lm_row.endswith("| 161.00 | 160.00 | 148.53 (test ppl) | +11.47 |"), lm_row)  # two decimals
        config = json.loads((logs / "lm_lstm_L1_adam_s42" / "config.json").read_text())  # one's own token files
        (logs / "lm_lstm_L1_adam_s42" / "config.json").write_text(json.dumps(dict(config, data_sha256="c" * 64)))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("Config 1 (model lstm layers 1 optimizer adam): not measured here (lm_lstm_L1_adam: token files "
                      "other than the report's)", (logs / "report" / "summary.md").read_text())
        # a table of one's own, though its name says gpt1: only --embeddings gpt1 is GPT-1's, made and verified
        (logs / "lm_lstm_L1_adam_s42" / "config.json").write_text(json.dumps(dict(config, embeddings="my_gpt1.npz")))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("(lm_lstm_L1_adam: not GPT-1's frozen embeddings (--embeddings gpt1))",
                      (logs / "report" / "summary.md").read_text())
        config = json.loads((logs / "vit_L6_adamw_s42" / "config.json").read_text())  # two copies of CIFAR-10
        (logs / "vit_L6_adamw_s42" / "config.json").write_text(json.dumps(dict(config, data_sha256="a" * 64)))
        other = write_run(self.tmp / "other", "vit_L6_adamw_s42", dict(config, data_sha256="b" * 64),
                          vit_rows([0.5 + 0.0048 * e for e in range(50)]), dict(best_test_acc=0.7001), changed=dict(layers=6))
        self.assertEqual(plot.main(["--log_dir", str(logs), str(other.parent)]), 0)
        summary = (logs / "report" / "summary.md").read_text()
        for data, value in (("aaaaaaaa", "0.7301"), ("bbbbbbbb", "0.7001")):
            self.assertIn(f"Config 6 (layers 6 block prenorm optimizer adamw): **"
                          f"{'reproduced' if data == 'aaaaaaaa' else 'not reproduced'}**, test acc {value} against the "
                          f"report's 0.7288", summary)
            self.assertIn(f"vit_L6_adamw (data {data}), 1 seed).", summary)
        sizes = dict(train=900, valid=100, test=1000)
        (logs / "vit_L6_adamw_s42" / "config.json").write_text(json.dumps(dict(config, data_sizes=sizes)))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("Config 6 (layers 6 block prenorm optimizer adamw): not measured here (vit_L6_adamw: not "
                      "CIFAR-10's 45,000 / 5,000 / 10,000 images)", (logs / "report" / "summary.md").read_text())
        row = next(line for line in (logs / "report" / "summary_vit.md").read_text().splitlines() if "L6_adamw" in line)
        self.assertTrue(row.endswith("| 0.7288 (test acc) | +0.0013 (not comparable) |"), row)
        (logs / "vit_L6_adamw_s42" / "config.json").write_text(json.dumps(config))
        summary = json.loads((logs / "vit_L6_adamw_s42" / "summary.json").read_text())  # CIFAR-100: as many images
        (logs / "vit_L6_adamw_s42" / "summary.json").write_text(json.dumps(dict(summary, params_total=3218276)))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("Config 6 (layers 6 block prenorm optimizer adamw): not measured here (vit_L6_adamw: a model of "
                      "3,218,276 parameters, not the report's 3,195,146 (other classes or image size))",
                      (logs / "report" / "summary.md").read_text())
        (logs / "vit_L6_adamw_s42" / "summary.json").write_text(json.dumps(summary))
        jpeg = f"JPEG (lossy) image folders (train/, test/) in {logs}"  # as data.py names them
        (logs / "vit_L6_adamw_s42" / "config.json").write_text(json.dumps(dict(config, data_source=jpeg)))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("Config 6 (layers 6 block prenorm optimizer adamw): not measured here (vit_L6_adamw: JPEG "
                      "images, a lossy copy of CIFAR-10's)", (logs / "report" / "summary.md").read_text())
        del config["data_sizes"]  # as a run of a version that did not record them
        (logs / "vit_L6_adamw_s42" / "config.json").write_text(json.dumps(config))
        self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        self.assertIn("(vit_L6_adamw: its data's sizes unrecorded (an older run))",
                      (logs / "report" / "summary.md").read_text())

    def test_what_keeps_a_run_from_measuring_the_reports_configuration(self):
        source = self.make_logs() / "lm_lstm_L1_adam_s42"
        config, summary = (json.loads((source / name).read_text()) for name in ("config.json", "summary.json"))
        rows = list(csv.DictReader((source / "metrics.csv").read_text().splitlines()))

        def said(name, rows=rows, **change):  # the summary's line on the report's LM config 1, of one changed run
            run = write_run(self.tmp / name, "lm_lstm_L1_adam_s42", dict(config, **change), rows, summary)
            with contextlib.redirect_stdout(io.StringIO()):
                self.assertEqual(plot.main(["--log_dir", str(run.parent)]), 0)
            return next(line for line in (run.parent / "report" / "summary.md").read_text().splitlines()
                        if line.startswith("- Config 1 (model lstm"))
        for name, change, why in (
                ("unrecorded", dict(naming={k: v for k, v in config["naming"].items() if k != "changed"}),
                 "other settings"),
                ("lr", dict(naming=dict(config["naming"], changed=dict(optimizer="adam", lr=0.01))),
                 "other settings (lr)"),
                ("words", dict(data_source="word-level text (train/valid/test.txt) in data"),
                 "word-level text, not the report's token files"),
                ("longer", dict(epochs=12, rows=rows + rows[:2]), "12 epochs asked, not the report's 10"),
                ("smoke", dict(epochs=1, rows=rows[:1]), "1 epoch asked, not the report's 10")):
            with self.subTest(name):
                self.assertEqual(said(name, **change), f"- Config 1 (model lstm layers 1 optimizer adam): not measured "
                                                       f"here (lm_lstm_L1_adam: {why}).")
        logged = dict(config["naming"], changed=dict(optimizer="adam", embeddings="gpt1", grad_norms=True))
        self.assertEqual(said("logged", naming=logged), "- Config 1 (model lstm layers 1 optimizer adam): **not "
                         "reproduced**, test ppl 160 against the report's 148.5 (+11.47; lm_lstm_L1_adam, 1 seed).")
        del logged["only_logs"]  # a run that does not say which settings only log: each counts
        self.assertEqual(said("unsaid", naming=logged), "- Config 1 (model lstm layers 1 optimizer adam): not "
                         "measured here (lm_lstm_L1_adam: other settings (grad_norms)).")
        run = write_run(self.tmp / "sgd", "lm_lstm_L1_sgd_s42", dict(config, optimizer="sgd"), rows, summary,
                        changed=dict(optimizer="sgd", embeddings="gpt1"))  # the report's config 3 gives only times
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(plot.main(["--log_dir", str(run.parent)]), 0)
        self.assertIn("(model lstm layers 1 optimizer adam): not measured here (no run of it).\n\n",
                      (run.parent / "report" / "summary.md").read_text())

    def test_one_self_contained_page(self):
        logs = self.make_logs().rename(self.tmp / "logs <b>&amp;")  # text in the page, never markup
        ref = report.load_reference()
        del ref["note"]  # optional
        with mock.patch("plot.load_reference", return_value=ref):
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        page = (logs / "report" / "index.html").read_text()
        self.assertEqual(page.count('src="data:image/png;base64,'), len(list((logs / "report").glob("*.png"))))
        self.assertNotIn("<script", page)
        self.assertNotIn("http", page)  # nothing fetched from a network
        self.assertIn("<table>", page)
        self.assertIn("<b>reproduced</b>", page)
        self.assertIn("logs &lt;b&gt;&amp;amp;.</p>", page)
        self.assertNotIn("<td>---</td>", page)  # a table's rule is no row

    def test_a_page_of_smoke_runs_says_so_first_and_wide_tables_scroll(self):
        logs = self.tmp / "smoke"
        write_run(logs, "vit_L2_sgd_s42", dict(task="vit", block="prenorm", optimizer="sgd", layers=2, epochs=50,
                                               limit_batches=2), vit_rows([0.2]), dict(best_test_acc=0.2))
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(plot.main(["--log_dir", str(logs)]), 0)
        summary = (logs / "report" / "summary.md").read_text()
        self.assertTrue(summary.split("\n")[4].startswith("**Smoke runs only"), summary[:300])
        page = (logs / "report" / "index.html").read_text()
        self.assertLess(page.index('<div class="banner">Smoke runs only'), page.index("<h1>"))
        self.assertIn("overflow-x:auto", page)  # a table wider than the page scrolls, its columns all there
        full = self.make_logs()
        with contextlib.redirect_stdout(io.StringIO()):
            plot.main(["--log_dir", str(full)])
        self.assertNotIn('class="banner"', (full / "report" / "index.html").read_text())
        running = self.tmp / "running"  # a real study on its way: its runs are no smoke runs
        write_run(running, "vit_L2_sgd_s42", dict(task="vit", layers=2, epochs=50, limit_batches=0), vit_rows([0.2]))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            plot.main(["--log_dir", str(running)])
        self.assertIn("**No configuration has run all its epochs yet: the curves so far; nothing is compared.**",
                      (running / "report" / "summary.md").read_text())
        self.assertIn("| vit_L2_sgd (unfinished) |", (running / "report" / "summary_vit.md").read_text())
        self.assertIn(".\n\nNo full run of this study has finished yet: nothing to compare.",  # a paragraph, not in
                      (running / "report" / "summary.md").read_text())                 # the list above it
        write_run(running, "vit_L2_adam_s42", dict(task="vit", layers=2, epochs=1, limit_batches=2), vit_rows([0.2]),
                  dict(best_test_acc=0.2))  # a smoke run beside it: the study is still on its way
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            plot.main(["--log_dir", str(running)])
        self.assertIn("**No configuration has run all its epochs yet", (running / "report" / "summary.md").read_text())

    @unittest.skipUnless(shutil.which("chromium") or shutil.which("chromium-browser"), "no browser installed")
    def test_the_page_renders_in_a_browser(self):
        logs = self.make_logs()
        plot.main(["--log_dir", str(logs)])
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        for width in (1280, 800):  # screenshots to look at: every column of the tables in view or scrollable
            shot = self.tmp / f"page_{width}.png"
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                            f"--window-size={width},2400", (logs / "report" / "index.html").as_uri()],
                           capture_output=True, timeout=120)
            self.assertEqual(shot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
            self.assertGreater(shot.stat().st_size, 50_000)  # a page with figures, not a blank one
            if os.environ.get("SCREENSHOTS"):
                shutil.copy(shot, os.environ["SCREENSHOTS"])


class TestRunsThatMustNotMix(TempDir):
    """Smoke runs and runs of other data or epochs never count as seeds of a real run, in the plan or the report."""

    def report(self, *log_dirs, task="vit"):
        """plot.py on log_dirs, quietly: (exit code, its tables for task, its stderr)."""
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = plot.main(["--log_dir", *map(str, log_dirs)])
        return code, (Path(log_dirs[0]) / "report" / f"summary_{task}.md").read_text(), err.getvalue()

    def test_a_log_folder_holds_its_own_runs_and_smoke_runs_are_never_seeds(self):
        logs = self.tmp / "logs"
        for folder, seed, limit in ((logs, 1, 0), (logs / "quick", 2, 2)):  # logs/quick: QUICK=1's folder
            write_run(folder, f"vit_L2_adam_s{seed}", dict(task="vit", seed=seed, limit_batches=limit, epochs=1),
                      vit_rows([0.5 if limit else 0.7]), dict(epochs=1, best_test_acc=0.5 if limit else 0.7))
        write_run(logs, ".vit_L2_adam_s4.replaced", dict(task="vit", seed=4, limit_batches=0, epochs=1),
                  vit_rows([0.3]), dict(epochs=1, best_test_acc=0.3))  # set aside by --overwrite: no run of logs/
        code, table, _ = self.report(logs)
        self.assertEqual(code, 0)
        table = table.split("## Cost")[0]
        self.assertEqual(table.count("vit_L2_adam"), 1)  # logs/quick/ is not a run of logs/
        self.assertIn("| 0.7000 |", table)  # one seed: the hidden folder's seed 4 is not averaged in
        write_run(logs, "vit_L2_adam_s3", dict(task="vit", seed=3, limit_batches=2, epochs=1), vit_rows([0.1]),
                  dict(epochs=1, best_test_acc=0.1))  # a smoke run beside the real one
        table = self.report(logs)[1].split("## Cost")[0]
        rows = [line for line in table.splitlines() if "vit_L2_adam" in line]
        self.assertEqual(len(rows), 2)  # two configurations: the real one, and the smoke one apart
        real = next(r for r in rows if "(smoke)" not in r)
        self.assertIn("| 1 |", real)  # one seed: the smoke run is not its seed
        out = sweep(dict(DRY_RUN="1", PYTHON=sys.executable, LOG_DIR=str(logs), DEVICE="cpu", ONLY="^vit_L2_adam$",
                         SEEDS="2", VIT_DATA=str(self.tmp / "none"))).stdout
        self.assertNotIn("to resume", out)  # logs/quick/vit_L2_adam_s2 is not this sweep's run

    def test_runs_of_other_data_are_never_averaged(self):
        logs = self.tmp / "logs"
        for seed, data in ((1, "a" * 64), (2, "b" * 64)):
            write_run(logs, f"lm_lstm_L1_adam_s{seed}", dict(task="lm", seed=seed, model="lstm", data_sha256=data),
                      [dict(epoch=1, train_loss=5.0, train_ppl=150.0, valid_loss=5.0, valid_ppl=100.0 * seed,
                            train_time=1.0, valid_time=1.0, elapsed=2.0, peak_mem_mb=1.0, mem_pct=1.0)])
        table = self.report(logs, task="lm")[1]
        self.assertIn("lm_lstm_L1_adam (data aaaaaaaa)", table)
        self.assertIn("lm_lstm_L1_adam (data bbbbbbbb)", table)
        self.assertNotIn("±", table)
        path = logs / "lm_lstm_L1_adam_s2" / "config.json"  # a run that recorded no checksum of its data
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "data_sha256"}))
        self.assertIn("lm_lstm_L1_adam (data unrecorded)", self.report(logs, task="lm")[1])
        path.write_text(json.dumps(dict(json.loads(path.read_text()), data_sha256="b" * 64)))
        for seed in (1, 2):  # the same data now, but two embeddings files under one name (another machine's)
            path = logs / f"lm_lstm_L1_adam_s{seed}" / "config.json"
            config = dict(json.loads(path.read_text()), data_sha256="a" * 64, embeddings_sha256=f"{seed}" * 64)
            path.write_text(json.dumps(config))
        table = self.report(logs, task="lm")[1]
        self.assertIn("lm_lstm_L1_adam (embeddings 11111111)", table)
        self.assertIn("lm_lstm_L1_adam (embeddings 22222222)", table)
        self.assertNotIn("±", table)
        for seed, precision in ((1, "bfloat16"), (2, "float32")):  # one file, --precision auto on two machines
            path = logs / f"lm_lstm_L1_adam_s{seed}" / "config.json"
            config = dict(json.loads(path.read_text()), embeddings_sha256="1" * 64, precision_used=precision)
            path.write_text(json.dumps(config))
        table = self.report(logs, task="lm")[1]
        self.assertIn("lm_lstm_L1_adam (precision bfloat16)", table)
        self.assertIn("lm_lstm_L1_adam (precision float32)", table)
        self.assertNotIn("±", table)

    def test_runs_asked_for_other_epochs_are_never_averaged_nor_compared(self):
        logs = self.tmp / "logs"
        for exp_id, epochs, acc in (("vit_L6_adamw_s1", 2, 0.4), ("vit_L6_adamw_s2", 3, 0.6),
                                    ("vit_L6_adamw_postnorm_s2", 3, 0.5)):
            block = "postnorm" if "postnorm" in exp_id else "prenorm"
            write_run(logs, exp_id, dict(task="vit", seed=int(exp_id[-1]), epochs=epochs, layers=6, block=block,
                                         optimizer="adamw", limit_batches=0), vit_rows([acc] * epochs),
                      dict(epochs=epochs, best_test_acc=acc, test_acc=acc))
        table = self.report(logs)[1]
        self.assertIn("| vit_L6_adamw (2 epochs) | 1 | 2 |", table)
        self.assertIn("| vit_L6_adamw (3 epochs) | 1 | 3 |", table)
        self.assertNotIn("±", table)
        self.assertIn("- Pre- vs post-norm (vit_L6_adamw (3 epochs) / vit_L6_adamw_postnorm, 1 seed each): best valid "
                      "accuracy 0.6000 vs 0.5000", (logs / "report" / "summary.md").read_text())

    def test_a_run_in_two_log_folders_or_a_folder_given_twice_is_one_seed(self):
        logs, copy = self.tmp / "logs", self.tmp / "fetched"  # read first: its path sorts first
        for seed, acc in ((1, 0.5), (2, 0.7)):
            write_run(logs, f"vit_L2_adam_s{seed}", dict(task="vit", seed=seed, limit_batches=0), vit_rows([acc]),
                      dict(epochs=1, best_test_acc=acc))
        shutil.copytree(logs / "vit_L2_adam_s2", copy / "vit_L2_adam_s2")  # fetched from the machine that ran it
        write_run(copy, "vit_L2_adam_s1", dict(task="vit", seed=1, limit_batches=0), vit_rows([0.1]))  # unfinished
        write_run(copy, "vit_L2_adam_s9", dict(task="vit", seed=[9], limit_batches=0), vit_rows([0.4]),
                  dict(epochs=1, best_test_acc=0.4))  # a damaged seed: a run of its own
        _, table, err = self.report(logs, copy, os.path.relpath(logs))
        table = table.split("## Cost")[0]
        self.assertIn("| vit_L2_adam | 3 | 1 | 0.5833 ± 0.1528 | 0.5333 ± 0.1528 |", table)  # seeds 1, 2 and [9]
        self.assertIn(f"{logs / 'vit_L2_adam_s2'}: seed 2 again (as in {copy / 'vit_L2_adam_s2'}): left out",
                      err)
        self.assertIn(f"{copy / 'vit_L2_adam_s1'}: seed 1 again", err)  # the finished run counts, wherever it is
        self.assertEqual(err.count("vit_L2_adam_s2"), 2)  # the folder given twice is read once

    def test_one_name_given_by_hand_to_runs_of_other_settings_is_never_averaged(self):
        logs = self.tmp / "logs"
        for seed, lr in ((1, 1e-3), (2, 3e-4), (3, 3e-4)):
            write_run(logs, f"mine_s{seed}", dict(task="vit", seed=seed, lr=lr, layers=2, limit_batches=0),
                      vit_rows([lr * 1000]), dict(epochs=1, best_test_acc=lr * 1000))
        table = self.report(logs)[1].split("## Cost")[0]
        self.assertIn("| mine (lr 0.001) | 1 |", table)
        self.assertIn("| mine (lr 0.0003) | 2 |", table)  # the two of one setting are seeds

    def test_word_level_runs_are_named_by_their_data_and_never_told_to_resume_token_runs(self):
        import train_lm
        from test_train import LM_TINY, run
        from test_data import write_token_files
        words, tokens = write_text_files(self.tmp / "words"), write_token_files(self.tmp / "tokens")
        logs = self.tmp / "logs"
        tiny = ["--embedding_size", "16", "--hidden_size", "16", "--seq_len", "8", "--batch_size", "4"]
        names = []
        for data in (words, tokens):  # the same flags: two runs, each of its own data
            code, _, err = run(train_lm.main, ["--data_folder", str(data), "--log_dir", str(logs), *tiny, "--epochs",
                                               "1", "--optimizer", "adam", "--device", "cpu", "--no_progress"])
            self.assertEqual(code, 0, err)
            names.append(sorted(p.name for p in logs.iterdir() if p.is_dir() and p.name not in names)[-1])
        self.assertEqual(names, ["lm_lstm_L1_adam_batch_size4_seq_len8_embedding_size16_hidden_size16_words_s42",
                                 "lm_lstm_L1_adam_batch_size4_seq_len8_embedding_size16_hidden_size16_s42"])
        code, _, err = run(train_lm.main, ["--data_folder", str(tokens), "--log_dir", str(logs), *LM_TINY,
                                           "--epochs", "1", "--exp_id", names[0]])
        self.assertEqual(code, 2)
        self.assertIn("holds a run on other data (words, not tokens)", err)
        self.assertNotIn("--resume", err)
        # --resume onto it (or onto a run of the other trainer) is refused alike, before any data is loaded
        code, _, err = run(train_lm.main, ["--data_folder", str(tokens), "--log_dir", str(logs), *LM_TINY,
                                           "--epochs", "1", "--exp_id", names[0], "--resume"])
        self.assertEqual((code, err.splitlines()[-1]), (2, f"error: run directory {logs / names[0]} already exists "
                         "and holds a run on other data (words, not tokens); give another --exp_id, or --overwrite "
                         "to replace it"))
        self.assertNotIn("data:", err)


class TestCommittedResult(TempDir):
    """results/ holds a real run's small files as the trainer wrote them: the reader and the format
    can never drift apart, and the README quotes its numbers."""

    def test_the_committed_runs_are_read_and_plotted_and_the_readme_quotes_them(self):
        import results
        found = results.find_runs([HERE / "results"], HERE / "results" / "report")
        runs = {r.path.name.removesuffix("_s42"): r for r in found}
        names = ("vit_L2_adam", "vit_L2_momentum", "vit_L2_sgd", "vit_L2_adamw", "vit_L4_adamw", "vit_L6_adamw",
                 "vit_L2_adamw_postnorm", "vit_L6_adamw_postnorm")
        self.assertEqual(sorted((name, len(r.rows), r.problems) for name, r in runs.items()),
                         sorted((name, 10, []) for name in names))
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(plot.main(["--log_dir", str(HERE / "results"), "--out_dir", str(self.tmp)]), 0)
        table = (self.tmp / "summary_vit.md").read_text()
        for name, run in runs.items():
            _, layers, optimizer, *block = name.split("_")
            self.assertEqual((run.config["layers"], run.config["optimizer"], run.config["block"], run.config["epochs"],
                              run.config["limit_batches"]), (int(layers[1:]), optimizer, (block or ["prenorm"])[0], 10, 0))
            best = max(row["valid_acc"] for row in run.rows)
            self.assertEqual(run.summary["best_valid_acc"], best)
            self.assertIn(f"{best:.4f}", table)
        # the README's rows: best valid and the best-valid model's test, the others in brackets
        valid, test = ({name: f"{r.summary[key]:.1%}" for name, r in runs.items()} for key in ("best_valid_acc",
                                                                                              "best_test_acc"))
        readme = " ".join((HERE / "README.md").read_text().split())
        self.assertIn(f"| {valid['vit_L2_adam']} ({valid['vit_L2_sgd']}, {valid['vit_L2_momentum']}) best valid, "
                      f"{test['vit_L2_adam']} ({test['vit_L2_sgd']}, {test['vit_L2_momentum']}) test after 10 epochs on "
                      f"a 2-core CPU", readme)
        self.assertIn(f"{valid['vit_L6_adamw']} / {test['vit_L6_adamw']} ({valid['vit_L6_adamw_postnorm']} / "
                      f"{test['vit_L6_adamw_postnorm']}) after 10 epochs on a 2-core CPU", readme)

    def test_the_readme_quotes_the_reports_numbers_as_reference_json_holds_them(self):
        ref = json.loads((HERE / "reference.json").read_text())
        vit = {(c["layers"], c["block"], c["optimizer"]): c for c in ref["vit"]["configs"]}
        pre, post = vit[6, "prenorm", "adamw"], vit[6, "postnorm", "adamw"]
        sgd, momentum, adam = (vit[2, "prenorm", o]["best_valid_acc"] for o in ("sgd", "momentum", "adam"))
        readme = (HERE / "README.md").read_text()
        for quote in (f"reached {pre['best_valid_acc']:.1%} best valid and {pre['test_acc']:.1%} test with 6 pre-norm "
                      f"layers ({post['test_acc']:.1%} test post-norm)",
                      f"# ViT-6: {pre['test_acc']:.1%} test in the report",
                      f"| {pre['best_valid_acc']:.1%} / {pre['test_acc']:.1%} ({post['best_valid_acc']:.1%} / "
                      f"{post['test_acc']:.1%}) |", f"| {adam:.1%} ({sgd:.1%}, {momentum:.1%}) best valid",
                      f"# LSTM-1: {ref['lm']['configs'][0]['test_ppl']:.1f} test perplexity"):
            self.assertIn(quote, " ".join(readme.split()))  # across line breaks


class TestQuickSweep(TempDir):
    def test_quick_sweep_on_fixture_data_produces_every_run_figure_and_table(self):
        lm = write_text_files(self.tmp / "text", lines=(80, 40, 40))
        vit, _ = write_image_folder(self.tmp / "images", per_class=(440, 44))  # 128-image batches fit every split
        logs = self.tmp / "logs"
        # each kind of run of every group (each core, block, recipe; gradient norms with and without
        # warmup), one seed of the norms group; two workers of one thread each (a queue of two "GPUs"
        # on the CPU): the real trainers through the work queue. The names of every configuration
        # are TestSweepList's; the flags that tell them apart, the trainers' tests'.
        lms = ["lm_lstm_L1_adam", "lm_gru_L1_adam", "lm_transformer_L2_adamw_postnorm", "lm_lstm_L1_adamw_improved"]
        vits = ["vit_L2_adam", "vit_L6_adamw_improved", "vit_L6_adamw_grad_norms",
                "vit_L6_adamw_postnorm_warmup_epochs5_grad_norms"]
        self.assertLessEqual(set(lms + vits), set(REFERENCE) | EXTRAS | IMPROVED | NORMS)
        env = dict(QUICK="1", PYTHON=sys.executable, LM_DATA=str(lm), VIT_DATA=str(vit), LOG_DIR=str(logs),
                   DEVICE="cpu", NORMS_SEEDS="1", GPUS="0 1", CUDA_VISIBLE_DEVICES="",
                   ONLY=f"^({'|'.join(lms)})_words$|^({'|'.join(vits)})$")
        proc = sweep(env, timeout=900)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        names = [f"{n}_words_s42" for n in lms] + [f"{n}_s{1 if n in NORMS else 42}" for n in vits]
        self.assertEqual(sorted(p.name for p in logs.iterdir() if p.is_dir() and p.name != "report"), sorted(names))
        for name in names:  # word-level text: the LMs are named so
            self.assertTrue((logs / name / "summary.json").exists(), name)
        report = logs / "report"
        summary = (report / "summary.md").read_text()
        self.assertIn("Smoke runs (`--limit_batches`), tabulated but not compared", summary)
        self.assertNotIn("Fastest per epoch", summary)  # no finding drawn from two batches
        self.assertNotIn("Pre- vs post-norm", summary)
        self.assertIn("(smoke)", (report / "summary_vit.md").read_text())
        for name in ("lm_epochs.png", "lm_time.png", "vit_epochs.png", "vit_time.png", "vit_grad_norms.png"):
            self.assertEqual((report / name).read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        for name in ("summary_lm.md", "summary_lm.csv", "summary_vit.md", "summary_vit.csv", "summary.md"):
            self.assertGreater((report / name).stat().st_size, 100, name)
        self.assertEqual(sweep(env).stdout.count("done, skipped"), 8)


if __name__ == "__main__":
    unittest.main()
