"""Architecture tests: the reference parameter counts, shapes, causality, pre vs post norm, tying."""
import subprocess
import sys
import unittest
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from models import (Block, DropPath, LanguageModel, VisionTransformer, count_params, linear_cross_entropy, lm_flops,
                    vit_flops)


class TestParameterCounts(unittest.TestCase):
    def test_vit_matches_reference_table(self):
        for layers, expected in ((2, 1_086_730), (4, 2_140_938), (6, 3_195_146)):
            for block in ("prenorm", "postnorm"):
                with self.subTest(layers=layers, block=block):
                    self.assertEqual(count_params(VisionTransformer(num_layers=layers, block=block)), expected)

    def test_lstm_with_frozen_embeddings_matches_reference(self):
        frozen = torch.zeros(40479, 768)
        for layers, expected in ((1, 3_019_520), (2, 5_120_768), (4, 9_323_264)):
            with self.subTest(layers=layers):
                model = LanguageModel("lstm", layers, embeddings=frozen)
                self.assertEqual(model.embedding.weight.numel(), 31_087_872)
                self.assertEqual(count_params(model), expected)
                self.assertEqual(count_params(model, learnable_only=False), expected + 31_087_872)

    def test_learned_embeddings_are_counted_once_despite_tying(self):
        model = LanguageModel("gru", 1, vocab_size=50, embedding_size=8, hidden_size=6)
        gru = 3 * 6 * (8 + 6) + 2 * 3 * 6
        self.assertEqual(count_params(model), 50 * 8 + gru + (6 * 8 + 8))

    def test_transformer_lm_counted_by_formula_with_a_final_norm_for_prenorm_alone(self):
        e, h, mlp, layers, v, T = 8, 12, 20, 2, 50, 16
        block = (h * 3 * h + 3 * h) + (h * h + h) + (h * mlp + mlp) + (mlp * h + h) + 2 * 2 * h
        body = v * e + (e * h + h) + T * h + layers * block + (h * e + e)  # embedding, input, positions, proj
        for name, final_norm in (("prenorm", 2 * h), ("postnorm", 0)):  # post-norm's output is normalised already
            with self.subTest(block=name):
                model = LanguageModel("transformer", layers, v, e, h, max_len=T, block=name, num_heads=4, mlp_dim=mlp)
                self.assertEqual(count_params(model), body + final_norm)


def tiny_lm(core, **kw):
    torch.manual_seed(0)
    return LanguageModel(core, 2, vocab_size=30, embedding_size=16, hidden_size=16, max_len=12, num_heads=4,
                         mlp_dim=32, **kw).eval()


class TestLanguageModel(unittest.TestCase):
    def test_the_head_is_a_relu_projection_to_the_tied_output_layer(self):
        lm = tiny_lm("gru").eval()
        tokens = torch.randint(1, 30, (3, 7))
        h, _ = lm.core(lm.embedding(tokens))
        torch.testing.assert_close(lm(tokens)[0], torch.relu(lm.proj[0](h)) @ lm.embedding.weight.T)

    def test_a_transformer_lm_refuses_a_window_longer_than_its_positions(self):
        lm = LanguageModel("transformer", 1, 30, 16, 16, num_heads=2, mlp_dim=32, max_len=8)
        self.assertEqual(lm(torch.randint(1, 30, (2, 8)))[0].shape, (2, 8, 30))
        with self.assertRaisesRegex(ValueError, "sequence of 9 tokens is longer than the 8 positions"):
            lm(torch.randint(1, 30, (2, 9)))

    def test_every_core_has_the_same_interface(self):
        tokens = torch.randint(1, 30, (3, 7))
        for core in ("lstm", "gru", "transformer"):
            with self.subTest(core=core):
                logits, state = tiny_lm(core)(tokens)
                self.assertEqual(logits.shape, (3, 7, 30))
                if core == "lstm":
                    self.assertEqual([s.shape for s in state], [(2, 3, 16), (2, 3, 16)])
                elif core == "gru":
                    self.assertEqual(state.shape, (2, 3, 16))
                else:
                    self.assertIsNone(state)

    def test_recurrent_state_carries_context(self):
        model = tiny_lm("lstm")
        tokens = torch.randint(1, 30, (2, 8))
        whole, _ = model(tokens)
        first, state = model(tokens[:, :5])
        second, _ = model(tokens[:, 5:], state)
        torch.testing.assert_close(torch.cat([first, second], 1), whole)

    def test_every_core_is_causal(self):
        tokens = torch.randint(1, 30, (2, 10))
        changed = tokens.clone()
        changed[:, 6:] = (changed[:, 6:] + 7) % 29 + 1
        for core in ("lstm", "gru", "transformer"):
            for block in ("prenorm", "postnorm"):
                with self.subTest(core=core, block=block):
                    model = tiny_lm(core, block=block)
                    a, _ = model(tokens)
                    b, _ = model(changed)
                    torch.testing.assert_close(a[:, :6], b[:, :6])
                    self.assertFalse(torch.allclose(a[:, 6:], b[:, 6:]))

    def test_output_layer_is_the_embedding_and_frozen_embeddings_get_no_gradient(self):
        table = torch.randn(30, 16)
        model = LanguageModel("lstm", 1, vocab_size=30, embedding_size=16, hidden_size=8, embeddings=table)
        self.assertIs(model.out.weight, model.embedding.weight)
        torch.testing.assert_close(model.embedding.weight, table)
        logits, _ = model(torch.randint(1, 30, (2, 5)))
        logits.sum().backward()
        self.assertIsNone(model.embedding.weight.grad)
        self.assertTrue(all(p.grad is not None for p in model.parameters() if p.requires_grad))

    def test_learn_embeddings_unfreezes_them(self):
        model = LanguageModel("lstm", 1, vocab_size=30, embedding_size=16, hidden_size=8,
                              embeddings=torch.randn(30, 16), learn_embeddings=True)
        self.assertTrue(model.embedding.weight.requires_grad)
        self.assertEqual(count_params(model), count_params(model, learnable_only=False))

    def test_embeddings_of_the_wrong_shape_are_refused(self):
        with self.assertRaisesRegex(ValueError, r"shape \(30, 8\).*\(30, 16\)"):
            LanguageModel("lstm", 1, vocab_size=30, embedding_size=16, embeddings=torch.randn(30, 8))

    def test_initial_loss_is_near_uniform(self):
        model = LanguageModel("lstm", 1, vocab_size=1000, embedding_size=64, hidden_size=32)
        logits, _ = model(torch.randint(1, 1000, (4, 16)))
        loss = F.cross_entropy(logits.flatten(0, 1), torch.randint(1, 1000, (64,)))
        self.assertLess(abs(loss.item() - torch.log(torch.tensor(1000.0)).item()), 0.5)

    def test_initialisation_padding_row_zero_positions_and_cls_small_but_not_zero(self):
        torch.manual_seed(0)
        weight = LanguageModel("lstm", 1, vocab_size=1000, embedding_size=64, hidden_size=32).embedding.weight
        self.assertEqual(weight[0].abs().max().item(), 0.0)  # padding: no logit of its own in the tied output
        self.assertTrue(0.04 < weight[1:].std().item() < 0.07)  # uniform in +-0.1
        vit = VisionTransformer(num_layers=1)
        for p in (vit.pos_embed, vit.cls_token):
            self.assertTrue(0.015 < p.std().item() < 0.025, p.std())  # N(0, 0.02)


class TestLinearCrossEntropy(unittest.TestCase):
    def test_equals_cross_entropy_in_value_and_gradients(self):
        torch.manual_seed(0)
        for frozen in (False, True):
            with self.subTest(frozen=frozen):
                h = torch.randn(300, 16, requires_grad=True)
                w = torch.randn(50, 16, requires_grad=not frozen)
                t = torch.randint(0, 50, (300,))  # id 0 is padding: ignored
                ref = F.cross_entropy(h @ w.T, t, ignore_index=0, reduction="sum")
                ref.backward(torch.tensor(0.5))
                ref_h, ref_w = h.grad, w.grad
                h.grad = w.grad = None
                out = linear_cross_entropy(h, w, t, chunk=64)  # 5 chunks, the last partial
                out.backward(torch.tensor(0.5))
                torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-3)
                torch.testing.assert_close(h.grad, ref_h)
                if frozen:
                    self.assertIsNone(w.grad)
                else:
                    torch.testing.assert_close(w.grad, ref_w, rtol=1e-5, atol=1e-5)

    def test_language_model_loss_equals_its_logits_loss(self):
        model = tiny_lm("transformer").train()
        tokens = torch.randint(1, 30, (3, 9))
        targets = tokens.roll(-1, 1)
        targets[2, 5:] = 0
        torch.manual_seed(1)
        logits, _ = model(tokens)
        expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0, reduction="sum")
        torch.manual_seed(1)
        loss, state = model(tokens, targets=targets)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
        self.assertIsNone(state)
        with torch.no_grad():
            torch.testing.assert_close(model(tokens, targets=targets)[0], expected.detach(), rtol=1e-5, atol=1e-4)

    def test_compiled_models_run_it_eagerly_with_the_eager_gradients(self):
        # Traced, it trained nothing on torch 2.11 (every gradient zero) and nothing said so; on a
        # torch where tracing works the gradients alone could not tell, so the graphs are read.
        graphs = []

        def backend(gm, inputs):  # Dynamo's graphs, run as traced
            graphs.append(gm)
            return gm.forward
        for core in ("lstm", "transformer"):
            with self.subTest(core=core):
                graphs.clear()
                model = tiny_lm(core).train()
                tokens = torch.randint(1, 30, (3, 9))
                grads = []
                for run in (model, torch.compile(model, backend=backend)):
                    model.zero_grad()
                    run(tokens[:, :-1], targets=tokens[:, 1:])[0].backward()
                    grads.append([p.grad.clone() for p in model.parameters()])
                traced = [str(node.target) for gm in graphs for node in gm.graph.nodes]
                self.assertTrue(any("embedding" in t for t in traced), traced)  # the model around it is compiled
                self.assertFalse([t for t in traced if "softmax" in t or "autograd_function" in t.lower()], traced)
                for eager, compiled in zip(*grads):
                    self.assertGreater(compiled.abs().sum(), 0)
                    torch.testing.assert_close(compiled, eager)

    def test_the_scripts_start_without_loading_the_compiler(self):
        # Importing Dynamo (torch.compiler.disable does) costs 1-2 s on a CPU, most of torch's own import
        # again, to a script that needs none of it (generate.py, a refused command; torch's optimizers
        # and meta-device models import it): the fused loss is disabled only while a compile traces.
        code = ("import sys, torch\nloaded = set(sys.modules)\nimport train_lm, train_vit, sweep, generate\n"
                "print(sorted(m for m in set(sys.modules) - loaded if m.startswith('torch._dynamo')))")
        out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                             check=True)
        self.assertEqual(out.stdout.strip(), "[]")


class TestBlock(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.x = torch.randn(2, 5, 16)

    def reference_attention(self, blk, x, causal):
        B, T, C = x.shape
        q, k, v = blk.qkv(x).split(C, dim=-1)
        heads = lambda t: t.view(B, T, blk.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-1, -2) / (C // blk.num_heads) ** 0.5
        if causal:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return blk.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))

    def test_pre_and_post_norm_follow_their_formulas(self):
        for causal in (False, True):
            pre = Block(16, 4, 32, norm_first=True, causal=causal).eval()
            with torch.no_grad():  # norms of their own: LayerNorm at its init would hide which one is where
                for norm in (pre.norm1, pre.norm2):
                    norm.weight.uniform_(0.5, 1.5)
                    norm.bias.uniform_(-0.5, 0.5)
            post = Block(16, 4, 32, norm_first=False, causal=causal).eval()
            post.load_state_dict(pre.state_dict())  # the same weights, only the wiring differs
            x = self.x
            h = x + self.reference_attention(pre, pre.norm1(x), causal)
            torch.testing.assert_close(pre(x), h + pre.mlp(pre.norm2(h)))
            h = post.norm1(x + self.reference_attention(post, x, causal))
            torch.testing.assert_close(post(x), post.norm2(h + post.mlp(h)))
            self.assertFalse(torch.allclose(pre(x), post(x)))

    def test_vit_pre_and_post_norm_differ_with_the_same_weights(self):
        pre = VisionTransformer(2, "prenorm", embed_dim=32, hidden_dim=64, num_heads=4).eval()
        post = VisionTransformer(2, "postnorm", embed_dim=32, hidden_dim=64, num_heads=4).eval()
        post.load_state_dict(pre.state_dict())
        images = torch.randn(3, 3, 32, 32)
        self.assertEqual(pre(images).shape, (3, 10))
        self.assertFalse(torch.allclose(pre(images), post(images)))

    def test_first_only_equals_the_first_token_of_the_full_block_with_its_gradients(self):
        for norm_first in (True, False):
            blk = Block(16, 4, 32, norm_first=norm_first).eval()
            x = self.x.clone().requires_grad_()
            full, first = blk(x)[:, :1], blk(x, first_only=True)
            self.assertEqual(first.shape, (2, 1, 16))
            torch.testing.assert_close(first, full)
            weights = torch.randn_like(first)  # a loss that weighs every output differently
            g_full = torch.autograd.grad((full * weights).sum(), [x, *blk.parameters()])
            g_first = torch.autograd.grad((first * weights).sum(), [x, *blk.parameters()])
            for a, b in zip(g_first, g_full):
                torch.testing.assert_close(a, b)

    def test_vit_output_and_gradients_equal_running_every_block_in_full(self):
        for block in ("prenorm", "postnorm"):
            torch.manual_seed(0)
            vit = VisionTransformer(2, block, embed_dim=32, hidden_dim=64, num_heads=4).eval()
            images = torch.randn(3, 3, 32, 32)

            def full():  # what the model computes, spelled out without the last Block's shortcut
                x = vit.patch_embed(vit.patchify(images))
                x = torch.cat([vit.cls_token.expand(3, -1, -1), x], dim=1) + vit.pos_embed
                for blk in vit.blocks:
                    x = blk(x)
                return vit.head(vit.norm(x[:, 0]))
            torch.testing.assert_close(vit(images), full())
            g_ours = torch.autograd.grad(vit(images).square().sum(), list(vit.parameters()))
            g_full = torch.autograd.grad(full().square().sum(), list(vit.parameters()))
            for a, b in zip(g_ours, g_full):
                torch.testing.assert_close(a, b)
        with self.assertRaisesRegex(ValueError, "at least one Block"):
            VisionTransformer(0)

    def test_an_empty_slice_of_a_batch_trains_every_weight_by_zero_past_a_kernel_that_refuses_it(self):
        """Under torchrun a last batch smaller than the process count leaves some processes an empty
        slice; each must still run forward and backward (DDP waits for every weight's gradient), and the
        flash attention kernel of torch 2.4 (and of later versions, for a while) raises on a batch of 0."""
        real = F.scaled_dot_product_attention

        def flash_like(q, *args, **kwargs):
            if q.shape[0] == 0 and torch.backends.cuda.flash_sdp_enabled():
                raise RuntimeError("batch size must be positive")
            return real(q, *args, **kwargs)
        for model, batch in ((VisionTransformer(2, embed_dim=32, hidden_dim=64, num_heads=4, drop_path=0.1),
                              torch.zeros(0, 3, 32, 32)),
                             (LanguageModel("transformer", 2, 50, 16, 32, dropout=0.1, max_len=8, num_heads=4,
                                            mlp_dim=32), torch.zeros(0, 8, dtype=torch.long))):
            with mock.patch.object(F, "scaled_dot_product_attention", flash_like):
                out = model(batch)[0] if isinstance(model, LanguageModel) else model(batch)
                out.sum().backward()
            self.assertEqual(out.shape[0], 0)
            for name, p in model.named_parameters():
                self.assertTrue(p.grad is not None and not p.grad.any(), name)
            self.assertTrue(torch.backends.cuda.flash_sdp_enabled())  # as it was

    def test_heads_must_divide_the_width(self):
        with self.assertRaisesRegex(ValueError, "not divisible"):
            Block(10, 3, 20)

    def test_vit_patches_are_row_major_pixel_blocks(self):
        vit = VisionTransformer(1, patch_size=4)
        images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
        patches = vit.patchify(images)
        self.assertEqual(patches.shape, (2, 64, 48))
        torch.testing.assert_close(patches[1, 9], images[1, :, 4:8, 4:8].reshape(-1))
        torch.testing.assert_close(patches[1, 1], images[1, :, 0:4, 4:8].reshape(-1))  # the second of the top row
        torch.testing.assert_close(patches[0, 10], images[0, :, 4:8, 8:12].reshape(-1))


class TestAnalyticFlops(unittest.TestCase):
    """MFU rests on FLOPs counted by formula; they must equal the matmuls the models run."""

    def counted(self, model, *inputs):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode
        # The math backend spells attention as matmuls, which the counter sees (the CPU flash kernel not).
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            model(*inputs)
        return counter.get_total_flops()

    def test_vit_and_transformer_lm_flops_match_the_counted_matmuls(self):
        for layers in (1, 2, 6):
            self.assertEqual(self.counted(VisionTransformer(layers), torch.randn(2, 3, 32, 32)),
                             2 * vit_flops(layers))
        self.assertGreater(vit_flops(6, first_only_last=False), 1.1 * vit_flops(6))
        lm = LanguageModel("transformer", 2, 500, 48, 32, num_heads=4, mlp_dim=64, max_len=16)
        self.assertEqual(self.counted(lm, torch.randint(1, 500, (2, 16))),
                         2 * 16 * lm_flops("transformer", 2, seq_len=16, v=500, e=48, h=32, mlp=64))

    def test_recurrent_lm_flops_are_two_per_weight_of_its_matrices(self):
        for core in ("lstm", "gru"):  # the counter does not see a fused RNN kernel; each weight is one multiply-add
            for layers in (1, 3):
                lm = LanguageModel(core, layers, 500, 48, 32)  # the tied output layer is the embedding's matrix
                weights = sum(p.numel() for n, p in lm.named_parameters() if p.dim() == 2)
                self.assertEqual(lm_flops(core, layers, v=500, e=48, h=32), 2 * weights, (core, layers))


LOSS_PEAK = """
import sys, torch, torch.nn.functional as F
from pathlib import Path
from models import linear_cross_entropy
def rss(field):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
g = torch.Generator().manual_seed(0)
h = torch.randn(2048, 768, generator=g).requires_grad_()
w = 0.02 * torch.randn(40479, 768, generator=g)
t = torch.randint(1, 40479, (2048,), generator=g)
base = rss("VmRSS")
loss = linear_cross_entropy(h, w, t) if sys.argv[1] == "fused" else F.cross_entropy(h @ w.T, t, reduction="sum")
loss.backward()
print((rss("VmHWM") - base) / 1024)
"""


class TestLossMemory(unittest.TestCase):
    def test_the_fused_loss_peak_memory_is_one_chunk_not_the_logits(self):
        # 2,048 tokens: two 1,024-token chunks of 40,479 fp32 logits (158 MiB each); full logits are
        # 316 MiB, and their log-softmax and gradient as much again each. Measured in a fresh process:
        # the peak resident set (VmHWM) is a process's lifetime peak.
        here = Path(__file__).resolve().parent
        peak = {kind: float(subprocess.run([sys.executable, "-c", LOSS_PEAK, kind], capture_output=True, text=True,
                                           check=True, cwd=here).stdout.split()[-1]) for kind in ("fused", "full")}
        self.assertLess(peak["fused"], 1.5 * 158)
        self.assertGreater(peak["full"], 2.5 * 316)


class TestLanguageModelDropout(unittest.TestCase):
    def test_dropout_acts_on_embeddings_between_layers_and_before_the_head(self):
        model = LanguageModel("lstm", 2, 50, embedding_size=12, hidden_size=8, dropout=0.5)
        self.assertEqual(model.core.rnn.dropout, 0.5)  # between the recurrent layers
        seen = []
        model.drop.register_forward_hook(lambda m, inp, out: seen.append((tuple(inp[0].shape), m.training)))
        tokens = torch.randint(1, 50, (3, 7))
        torch.manual_seed(0)
        a, _ = model.train()(tokens)
        self.assertEqual(seen, [((3, 7, 12), True), ((3, 7, 8), True)])  # embeddings, then the core's output
        b, _ = model(tokens)
        self.assertFalse(torch.allclose(a, b))
        torch.testing.assert_close(model.eval()(tokens)[0], model(tokens)[0])
        self.assertEqual(LanguageModel("lstm", 1, 50, 12, 8).core.rnn.dropout, 0.0)  # one layer: none between

    def test_in_evaluation_every_dropout_is_off_attention_included(self):
        def lm(p):
            return LanguageModel("transformer", 2, 50, 12, 8, dropout=p, max_len=8, num_heads=2, mlp_dim=16)

        def vit(p):
            return VisionTransformer(2, embed_dim=16, hidden_dim=32, num_heads=4, dropout=p)
        for make, x, logits in ((lm, torch.randint(1, 50, (3, 7)), lambda y: y[0]),
                                (vit, torch.randn(2, 3, 32, 32), lambda y: y)):
            with self.subTest(model=make.__name__):
                dropping, plain = make(0.5).eval(), make(0.0).eval()
                plain.load_state_dict(dropping.state_dict())  # the same weights: Dropout and Identity hold none
                torch.testing.assert_close(logits(dropping(x)), logits(plain(x)))

    def test_in_training_the_attention_weights_are_dropped_at_the_models_rate(self):
        models = dict(lm=(LanguageModel("transformer", 2, 50, 12, 8, dropout=0.3, max_len=8, num_heads=2, mlp_dim=16),
                          torch.randint(1, 50, (3, 7))),
                      vit=(VisionTransformer(2, embed_dim=16, hidden_dim=32, num_heads=4, dropout=0.3),
                           torch.randn(2, 3, 32, 32)))
        sdpa = F.scaled_dot_product_attention
        for name, (model, x) in models.items():
            for training, rate in ((True, 0.3), (False, 0.0)):
                with self.subTest(model=name, training=training), \
                        mock.patch.object(F, "scaled_dot_product_attention", wraps=sdpa) as attention:
                    model.train(training)(x)
                    self.assertEqual([c.kwargs["dropout_p"] for c in attention.call_args_list], [rate, rate])


class TestDropPathAndLayers(unittest.TestCase):
    def test_drop_path_drops_whole_samples_in_training_and_is_the_identity_in_eval(self):
        x = torch.randn(400, 5, 8) + 3
        torch.manual_seed(0)
        out = DropPath(0.25).train()(x)
        kept = (out != 0).flatten(1).all(1)
        dropped = (out == 0).flatten(1).all(1)
        self.assertTrue((kept | dropped).all())  # a sample's branch is kept or dropped whole
        torch.testing.assert_close(out[kept], x[kept] / 0.75)  # the kept ones rescaled: same expectation
        self.assertTrue(0.15 < dropped.float().mean().item() < 0.35)
        self.assertTrue(torch.equal(DropPath(0.25).eval()(x), x))

    def test_block_with_drop_path_is_the_plain_block_in_eval_and_rates_grow_with_depth(self):
        for norm_first in (True, False):
            plain = Block(16, 4, 32, norm_first=norm_first).eval()
            dropping = Block(16, 4, 32, norm_first=norm_first, drop_path=0.5)
            dropping.load_state_dict(plain.state_dict())
            x = torch.randn(6, 5, 16)
            torch.testing.assert_close(dropping.eval()(x), plain(x))
            self.assertFalse(torch.allclose(dropping.train()(x), plain(x)))
        vit = VisionTransformer(4, drop_path=0.2, embed_dim=32, hidden_dim=64, num_heads=4)
        self.assertEqual([round(b.drop_path.p, 6) for b in vit.blocks], [0.05, 0.1, 0.15, 0.2])
        self.assertIsInstance(VisionTransformer(2).blocks[0].drop_path, torch.nn.Identity)
        self.assertEqual(count_params(vit), count_params(VisionTransformer(4, embed_dim=32, hidden_dim=64,
                                                                           num_heads=4)))

    def test_layer_parameters_cover_each_block_or_recurrent_layer_once(self):
        vit = VisionTransformer(3, embed_dim=32, hidden_dim=64, num_heads=4)
        for model, layers in ((vit, 3),
                              (LanguageModel("lstm", 3, 50, 16, 16), 3),
                              (LanguageModel("gru", 2, 50, 16, 16), 2),
                              (LanguageModel("transformer", 2, 50, 16, 16, num_heads=4, mlp_dim=32), 2)):
            groups = model.layer_parameters()
            self.assertEqual(len(groups), layers)
            ids = [id(p) for g in groups for p in g]
            self.assertEqual(len(ids), len(set(ids)))
            self.assertTrue(all(g for g in groups))
            self.assertEqual(sum(p.numel() for g in groups for p in g),
                             sum(p.numel() for n, p in model.named_parameters()
                                 if ".blocks." in n or n.startswith("blocks.") or ".rnn." in n))


if __name__ == "__main__":
    unittest.main()
