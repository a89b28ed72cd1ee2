"""The CUDA paths, proved on a CPU: precision choice per GPU generation (CUDA queries replaced), a GPU
this torch has no kernels for, the fp16 loss scaler's skipped steps, the loss's gradients in low
precision and under fp16 autocast, restoring random state saved on more GPUs, per-process dropout
and a distributed job in which only one rank fails, the benchmark's peaks and MFU, the container's
entrypoint."""
import contextlib
import json
import os
import subprocess
import sys
import time
import unittest
import warnings
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

import engine
import optim
import plan
import utils
from models import LanguageModel, linear_cross_entropy, lm_recurrent_share
from test_data import TempDir, write_image_folder

HERE = Path(__file__).resolve().parent
CUDA = torch.device("cuda")


def gpu(capability, emulated_bf16=True):
    """The CUDA queries of a GPU of this compute capability (is_bf16_supported says yes where bf16 is
    merely emulated, as torch's default including_emulation=True does on a T4 or V100)."""
    return [mock.patch("torch.cuda.get_device_capability", return_value=capability),
            mock.patch("torch.cuda.is_bf16_supported", return_value=capability >= (8, 0) or emulated_bf16)]


class TestPrecision(unittest.TestCase):
    def choose(self, name, capability, emulated_bf16=True):
        patches = gpu(capability, emulated_bf16)
        for p in patches:
            p.start()
        try:
            return utils.choose_precision(name, CUDA)
        finally:
            for p in patches:
                p.stop()

    def test_auto_is_bf16_only_where_native_and_fp16_below(self):
        for capability, emulated in (((7, 0), True), ((7, 5), True), ((7, 5), False)):
            dtype, why = self.choose("auto", capability, emulated)
            self.assertEqual(dtype, torch.float16, capability)
            self.assertIn(f"{capability[0]}.{capability[1]}", why)
            self.assertIn("loss scaling", why)
        for capability in ((8, 0), (8, 6), (9, 0)):
            dtype, why = self.choose("auto", capability)
            self.assertEqual(dtype, torch.bfloat16, capability)
            self.assertIn("native", why)
        dtype, why = self.choose("bf16", (7, 5))
        self.assertEqual(dtype, torch.bfloat16)  # asked for: honoured, and the reason says it is slow
        self.assertEqual(why, "bf16: asked for (emulated on compute capability 7.5, slow; auto would choose fp16)")
        self.assertEqual(self.choose("fp32", (9, 0))[0], None)
        self.assertEqual(utils.choose_precision("auto", torch.device("cpu")), (None, "fp32: the device is a CPU"))
        self.assertEqual(self.choose("fp16", (7, 5)).scaled, True)  # the loss scaler's cue
        self.assertEqual((self.choose("auto", (9, 0)).name, utils.FP32.name), ("bfloat16", "float32"))

    def test_fp32_matmuls_run_as_tf32_on_a_gpu_only(self):
        flags = torch.backends.cuda.matmul, torch.backends.cudnn
        before = [f.allow_tf32 for f in flags]
        try:
            for f in flags:
                f.allow_tf32 = False
            utils.choose_precision("fp32", torch.device("cpu"))
            self.assertEqual([f.allow_tf32 for f in flags], [False, False])
            self.choose("fp32", (8, 0))
            self.assertEqual([f.allow_tf32 for f in flags], [True, True])
        finally:
            for f, value in zip(flags, before):
                f.allow_tf32 = value


class TestWhyNoCuda(unittest.TestCase):
    """The reason `--device auto` and the sweep give for training on the CPU: one a user can act on."""

    def reason(self, said="", visible=None, devices=True, cuda="13.0"):
        def is_available():
            if said:
                warnings.warn(said)
            return False
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        env.update({} if visible is None else {"CUDA_VISIBLE_DEVICES": visible})
        with mock.patch("torch.version.cuda", cuda), mock.patch("torch.cuda.is_available", is_available), \
                mock.patch.dict(os.environ, env, clear=True), mock.patch("pathlib.Path.exists", return_value=devices):
            return utils.cuda_unusable_reason()

    def test_each_cause_in_words(self):
        self.assertIn("CPU-only build", self.reason(cuda=None))
        old = "CUDA initialization: The NVIDIA driver on your system is too old (found version 12040)."
        self.assertEqual(self.reason(said=old, visible=""), old + " (this torch is built for CUDA 13.0)")
        for visible in ("", " ", "-1"):
            self.assertIn(f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU (check GPUS)",
                          self.reason(visible=visible))
        self.assertIn("start it with --gpus all", self.reason(devices=False))
        self.assertEqual(self.reason(visible="3"), "CUDA reports no usable device among CUDA_VISIBLE_DEVICES=3; this "
                         "torch needs an NVIDIA driver recent enough for CUDA 13.0 (see nvidia-smi)")


def v100(arch_list=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")):
    """A V100 (compute capability 7.0) under a torch built without kernels for it (CUDA 13)."""
    return [mock.patch("torch.cuda.is_available", return_value=True),
            mock.patch("torch.cuda.get_device_capability", return_value=(7, 0)),
            mock.patch("torch.cuda.get_arch_list", return_value=list(arch_list)),
            mock.patch("torch.cuda.get_device_name", return_value="Tesla V100-SXM2-16GB")]


class TestGpuWithoutKernels(TempDir):
    def test_a_v100_under_a_cuda_13_build_is_refused_in_one_line_before_anything_runs(self):
        import plan
        import train_vit
        from test_train import VIT_TINY, run
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        with contextlib.ExitStack() as stack:
            for p in v100():
                stack.enter_context(p)
            for device in ("cuda", "auto"):
                code, out, err = run(train_vit.main, ["--data_folder", str(data), "--log_dir", str(self.tmp / "logs"),
                                                      *VIT_TINY, "--device", device])
                self.assertEqual(code, 2, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
                for fragment in ("error: ", "Tesla V100", "compute capability 7.0", "whl/cu126"):
                    self.assertIn(fragment, err)
                self.assertFalse((self.tmp / "logs").exists())
            with self.assertRaisesRegex(utils.UserError, "compute capability 7.0.*cu126"):
                plan.check_device("cuda")  # the sweep's check, before its first run
            plan.check_device("cpu")
            with mock.patch("torch.cuda.device_count", return_value=2), \
                    mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}):  # GPUS naming a GPU that is not there
                with self.assertRaisesRegex(utils.UserError, "^GPUS names GPU 2, but this process sees 2 GPUs, numbered "
                                                             "from 0$"):
                    plan.check_device("cuda", ["0", "2"])
        with mock.patch("torch.cuda.get_device_capability", return_value=(8, 9)):
            self.assertIsNone(utils.cuda_arch_problem())  # an L40S runs sm_86 kernels
        with mock.patch("torch.cuda.get_device_capability", return_value=(7, 0)), \
                mock.patch("torch.cuda.get_arch_list", return_value=["sm_80", "compute_70"]):
            self.assertIsNone(utils.cuda_arch_problem())  # PTX for 7.0 is compiled for it
        with mock.patch("torch.cuda.get_arch_list", return_value=["sm_80", "compute_80"]):
            with mock.patch("torch.cuda.get_device_capability", return_value=(9, 0)):
                self.assertIsNone(utils.cuda_arch_problem())  # no sm_90 cubin, but PTX 8.0 compiles for 9.0
            with mock.patch("torch.cuda.get_device_capability", return_value=(7, 5)), \
                    mock.patch("torch.cuda.get_device_name", return_value="Tesla T4"):
                self.assertIn("built for 8.0", utils.cuda_arch_problem())  # PTX runs on newer GPUs only


class TestPrecisionInConfig(TempDir):
    def test_the_choice_and_its_reason_are_in_config_json(self):
        import train_vit
        from test_train import VIT_TINY, run
        data, _ = write_image_folder(self.tmp / "images", per_class=(40, 10))
        code, _, err = run(train_vit.main, ["--data_folder", str(data), "--log_dir", str(self.tmp / "logs"),
                                            "--exp_id", "p", *VIT_TINY, "--epochs", "1"])
        self.assertEqual(code, 0, err)
        config = json.loads((self.tmp / "logs" / "p" / "config.json").read_text())
        self.assertEqual((config["precision_used"], config["precision_reason"]), ("float32", "fp32: the device is a CPU"))
        self.assertEqual(config["model_args"]["num_classes"], len(config["classes"]))


class TestLossScalerSteps(unittest.TestCase):
    """A step the fp16 scaler skips (inf gradients) must leave the EMA alone, stay out of the
    gradient-norm means, and be counted."""

    def test_skipped_step_changes_neither_ema_nor_norms(self):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step = engine.Step(opt, scaler=torch.amp.GradScaler("cpu", init_scale=4.0), ema=optim.EMA(model, 0.5),
                           grad_norms=engine.LayerGradNorms([list(m.parameters()) for m in model]))
        x = torch.randn(4, 3)

        def norms():  # per layer, of the unscaled gradients the step left
            return [torch.cat([p.grad.flatten() for p in m.parameters()]).norm().item() for m in model]
        step(model, model(x).square().sum())
        kept = [norms()]
        ema_before = [p.clone() for p in step.ema.model.parameters()]
        weights_before = [p.clone() for p in model.parameters()]
        step(model, model(x).square().sum() * float("inf"))  # every gradient inf or NaN: skipped
        for a, b in zip(ema_before, step.ema.model.parameters()):
            self.assertTrue(torch.equal(a, b))
        for a, b in zip(weights_before, model.parameters()):
            self.assertTrue(torch.equal(a, b))  # the scaler skipped the update itself
        step(model, model(x).square().sum())
        kept.append(norms())
        mean, first, skipped = step.grad_norms.read()
        self.assertEqual((skipped, int(step.skipped)), (1, 1))
        for got, want in zip(mean + first, [(a + b) / 2 for a, b in zip(*kept)] + kept[0]):  # over the kept steps
            self.assertAlmostEqual(got, want, places=5)
        self.assertFalse(any(torch.equal(a, b) for a, b in zip(ema_before, step.ema.model.parameters())))

    def test_fp16_alone_scales_its_loss(self):
        import config
        from test_train import ScriptedTask
        cfg, model = config.parse_config(config.TrainConfig, []), torch.nn.Linear(1, 1)
        for precision, scaled in ((utils.Precision(torch.float16), True), (utils.Precision(torch.bfloat16), False),
                                  (utils.FP32, False)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a CUDA scaler made where there is no CUDA
                sgd = torch.optim.SGD(model.parameters(), lr=0.1)
                step = engine.make_step(model, ScriptedTask(), cfg, sgd, precision)
            self.assertEqual(isinstance(step.scaler, torch.amp.GradScaler), scaled, precision)

        import config
        import rundir
        from test_train import ScriptedTask

        class Overflowing(ScriptedTask):  # the second training batch of epoch 1 overflows in the backward pass
            def batches(self, split, epoch):
                return iter([(split, epoch == 1 and i == 1) for i in range(3 if split == "train" else 1)])

            def loss(self, model, batch):
                loss, count, correct = super().loss(model, batch[:1])
                if batch[1]:
                    loss.register_hook(lambda g: g * float("inf"))
                return loss, count, correct
        cfg = config.parse_config(config.TrainConfig, ["--optimizer", "sgd", "--device", "cpu", "--no_progress"])
        model = torch.nn.Linear(1, 1, bias=False)
        step = engine.Step(torch.optim.SGD(model.parameters(), lr=0.1), scaler=torch.amp.GradScaler("cpu"))
        progress, task = rundir.Progress(), Overflowing()
        rows = [engine.train_one_epoch(model, task, cfg, step, utils.FP32, progress, e)[0] for e in (1, 2)]
        self.assertEqual([r["skipped_steps"] for r in rows], [1, 0])


class TestLossInLowPrecision(unittest.TestCase):
    def setUp(self):
        g = torch.Generator().manual_seed(0)
        self.h = torch.randn(300, 32, generator=g)
        self.w = 0.5 * torch.randn(5000, 32, generator=g)
        self.t = torch.randint(0, 5000, (300,), generator=g)  # some 0s: padding, ignored

    def reference(self):
        h, w = self.h.clone().requires_grad_(), self.w.clone().requires_grad_()
        loss = F.cross_entropy(h @ w.T, self.t, ignore_index=0, reduction="sum")
        loss.backward()
        return loss, h.grad, w.grad

    def fused(self, dtype):
        h, w = self.h.clone().to(dtype).requires_grad_(), self.w.clone().requires_grad_()
        loss = linear_cross_entropy(h, w, self.t, chunk=128)
        (loss * 1024).backward()  # a loss scaler's factor: it must not be applied before the gradients exist
        return loss, h.grad.float() / 1024, w.grad / 1024

    def test_exact_in_fp32_and_close_in_bf16_and_fp16(self):
        ref_loss, ref_h, ref_w = self.reference()
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
            with self.subTest(dtype=dtype):
                loss, grad_h, grad_w = self.fused(dtype)
                self.assertEqual(grad_w.dtype, torch.float32)  # accumulated in fp32, as the weight is
                torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=0)
                scale = ref_w.abs().max()
                torch.testing.assert_close(grad_w / scale, ref_w / scale, rtol=0, atol=tol)
                torch.testing.assert_close(grad_h / ref_h.abs().max(), ref_h / ref_h.abs().max(), rtol=0,
                                           atol=tol)

    def test_fp16_keeps_the_small_softmax_gradients_with_and_without_autocast(self):
        # One token whose other 4,999 classes have logits 20 below the target's: probabilities of
        # about 2e-9, below fp16's smallest subnormal (6e-8). Their weight gradients (p * h) vanish
        # when formed in fp16, before any loss scaling; formed in fp32 they survive. Under fp16
        # autocast, as a training step runs it, too: autocast must not cast those matmuls down.
        p = torch.softmax(torch.tensor([[-20.0] + [0.0] + [-20.0] * 4998]), 1)[0]
        for autocast in (False, True):
            h = torch.tensor([[1.0, 0.0]], dtype=torch.float16, requires_grad=True)
            w = torch.zeros(5000, 2)
            w[:, 0] = -20.0
            w[1, 0] = 0.0
            w.requires_grad_()
            with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
                linear_cross_entropy(h, w, torch.tensor([1])).backward()
            self.assertGreater(w.grad[2:, 0].abs().min().item(), 0, f"autocast {autocast}")
            torch.testing.assert_close(w.grad[2:, 0], p[2:], rtol=1e-3, atol=0)

    def test_under_fp16_autocast_it_matches_cross_entropy(self):
        ref_loss, ref_h, ref_w = self.reference()
        h, w = self.h.clone().requires_grad_(), self.w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = linear_cross_entropy(h.half(), w, self.t, chunk=128)
        loss.backward()
        torch.testing.assert_close(loss, ref_loss, rtol=2e-3, atol=0)
        for got, ref in ((h.grad, ref_h), (w.grad, ref_w)):
            torch.testing.assert_close(got / ref.abs().max(), ref / ref.abs().max(), rtol=0, atol=2e-3)


class TestRecurrentCoreUnderAutocast(unittest.TestCase):
    def test_the_lstm_runs_in_fp32_under_bf16_autocast(self):
        torch.manual_seed(0)
        model = LanguageModel("lstm", 2, vocab_size=50, embedding_size=16, hidden_size=16)
        tokens = torch.randint(1, 50, (2, 7))
        seen = []
        model.core.rnn.register_forward_hook(lambda m, inputs, out: seen.append((inputs[0].dtype, out[0].dtype)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, state = model(tokens)
        self.assertEqual(seen, [(torch.float32, torch.float32)])
        self.assertEqual(state[0].dtype, torch.float32)  # the carried state stays fp32 too
        plain, _ = model(tokens)
        torch.testing.assert_close(logits.float(), plain, atol=0.05, rtol=0)


# Runs a trainer under torchrun where rank 1 alone cannot load its data (wrapped here, test-side).
RANK1_FAILS = """
import os, runpy, sys
import data, utils
real = data.load_cifar10
def load(*args, **kwargs):
    if os.environ.get("RANK") == "1":
        raise utils.UserError("rank 1 cannot read its data")
    return real(*args, **kwargs)
data.load_cifar10 = load
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Rank 1 alone gives NaN logits in its first training step.
RANK1_DIVERGES = """
import os, runpy, sys
import models
real, calls = models.VisionTransformer.forward, []
def forward(self, images):
    calls.append(self.training)
    out = real(self, images)
    return out * float("nan") if os.environ["RANK"] == "1" and self.training and len(calls) == 1 else out
models.VisionTransformer.forward = forward
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def torchrun_vit(tmp, launcher, *args):
    """A tiny ViT on two CPU processes under torchrun, through `launcher` (a test-side wrapper)."""
    data, _ = write_image_folder(tmp / "images", per_class=(40, 10))
    (tmp / "launcher.py").write_text(launcher)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(tmp / "launcher.py"),
            str(HERE / "train_vit.py"), "--data_folder", str(data), "--log_dir", str(tmp / "logs"), "--device", "cpu",
            "--embed_dim", "32", "--hidden_dim", "32", "--num_heads", "4", "--batch_size", "8", *args]
    return subprocess.run(argv, cwd=HERE, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE), MASKS=str(tmp), TMPDIR=str(tmp)))


class TestDistributedFailure(TempDir):
    def test_an_error_on_rank_1_alone_ends_the_job_at_once_with_its_message(self):
        start = time.perf_counter()
        proc = torchrun_vit(self.tmp, RANK1_FAILS)
        self.assertLess(time.perf_counter() - start, 120)  # not torchrun's or the collective's timeout
        self.assertNotEqual(proc.returncode, 0)
        self.assertEqual(proc.stderr.count("[rank 1] error: rank 1 cannot read its data"), 1, proc.stderr[-3000:])
        self.assertNotIn("[rank 0] error", proc.stderr)

    def test_a_loss_that_diverges_on_one_rank_stops_every_rank_at_the_same_step(self):
        proc = torchrun_vit(self.tmp, RANK1_DIVERGES, "--epochs", "1", "--limit_batches", "3", "--no_progress",
                            "--exp_id", "nan")
        self.assertNotEqual(proc.returncode, 0)
        # each rank's loss is checked against every rank's, so rank 0 does not wait on a collective rank 1 left
        self.assertIn("[rank 1] diverged: train loss became nan in epoch", proc.stderr)
        self.assertIn("[rank 0] diverged: train loss became NaN or infinite in another process in epoch", proc.stderr)
        self.assertEqual(proc.stderr.count("in epoch 1 by step 1 (of 3)"), 2, proc.stderr[-3000:])
        self.assertNotIn("another process ended", proc.stderr)
        self.assertFalse((self.tmp / "logs" / "nan").exists())  # no epoch had finished


# Runs a trainer under torchrun and appends each drop-path mask this rank draws to masks_<rank>.txt.
RECORD_MASKS = """
import os, runpy, sys
import models
real = models.DropPath.forward
def forward(self, x):
    y = real(self, x)
    if self.training:
        dropped = (y.flatten(1) == 0).all(1) & (x.flatten(1) != 0).any(1)
        with open(os.path.join(os.environ["MASKS"], f"masks_{os.environ['RANK']}.txt"), "a") as f:
            f.write("".join("01"[int(d)] for d in dropped) + "\\n")
    return y
models.DropPath.forward = forward
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class TestDropoutPerProcess(TempDir):
    def test_each_rank_draws_its_own_masks(self):
        proc = torchrun_vit(self.tmp, RECORD_MASKS, "--drop_path", "0.5", "--epochs", "2", "--limit_batches", "3",
                            "--no_progress")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        masks = [(self.tmp / f"masks_{r}.txt").read_text().split() for r in (0, 1)]
        self.assertEqual(len(masks[0]), 2 * 3 * 2 * 2)  # 2 epochs of 3 steps, 2 blocks, 2 branches each
        self.assertEqual(len(masks[0]), len(masks[1]))
        self.assertTrue(all(len(m) == 4 for m in masks[0] + masks[1]))  # each rank's half of 8 images
        self.assertNotEqual(masks[0], masks[1])
        self.assertNotEqual(masks[0][:12], masks[0][12:])  # and new ones each epoch
        self.assertTrue(any("1" in m for m in masks[0]) and any("0" in m for m in masks[0]))


class TestBenchPeaks(unittest.TestCase):
    def test_names_match_whole_words_and_mfu_uses_each_precisions_ceiling(self):
        for name, peak in (("NVIDIA L40S", 362), ("NVIDIA L4", 121), ("NVIDIA A100-SXM4-80GB", 312),
                           ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA GeForce RTX 4090", None), ("", None)):
            self.assertEqual(plan.published_peak(name, "bf16"), peak, name)
        self.assertEqual(plan.published_peak("Tesla V100-SXM2-16GB", "fp32"), 16)
        self.assertAlmostEqual(plan.mfu(100e12, 0.0, 400e12, 200e12), 0.25)
        self.assertAlmostEqual(plan.mfu(100e12, 1.0, 400e12, 200e12), 0.5)  # all of it in fp32
        share = lm_recurrent_share("lstm", 1, True, 256)
        self.assertTrue(0.1 < share < 0.5, share)  # the recurrence is a fair part, the 40k-way head the rest
        self.assertLess(lm_recurrent_share("lstm", 1, True, 256), lm_recurrent_share("lstm", 4, True, 256))
        self.assertEqual(lm_recurrent_share("transformer", 2, True, 256), 0.0)


class TestContainerEntrypoint(TempDir):
    """docker creates a missing host folder of a volume as root: the image's user cannot write it."""

    def test_an_unwritable_mounted_folder_is_one_line_and_a_writable_one_runs_the_command(self):
        if os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists():
            self.skipTest("as root, setpriv is needed to run the entrypoint as an ordinary user")
        app = self.tmp / "app"
        (app / "data").mkdir(parents=True)
        (app / "logs").mkdir()
        (app / "entrypoint.sh").write_bytes((HERE / "entrypoint.sh").read_bytes())
        self.tmp.chmod(0o755)
        app.chmod(0o777)
        (app / "data").chmod(0o777)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []

        def entrypoint(*command):
            return subprocess.run([*as_user, "bash", str(app / "entrypoint.sh"), *command], capture_output=True,
                                  text=True, timeout=30, env=dict(PATH=os.environ["PATH"], HOME="/nonexistent"))
        (app / "logs").chmod(0o555)  # as docker makes it: root's, not writable by the container's user
        proc = entrypoint("echo", "ran")
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stdout, "")
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertRegex(proc.stderr, r"^error: .*/logs is not writable by uid \d+ .*mkdir -p data logs")
        self.assertIn('--user "$(id -u):$(id -g)"', proc.stderr)
        (app / "logs").chmod(0o777)
        proc = entrypoint("bash", "-c", "echo ran in $PWD with HOME=$HOME")
        self.assertEqual((proc.returncode, proc.stderr), (0, ""))
        self.assertEqual(proc.stdout, f"ran in {app} with HOME=/tmp\n")  # a home it cannot write: /tmp


if __name__ == "__main__":
    unittest.main()
