"""Every architecture of the two studies: one transformer `Block`, the `VisionTransformer` and the
`LanguageModel` with its LSTM, GRU and causal-Transformer cores.

    >>> from models import VisionTransformer, LanguageModel, count_params
    >>> count_params(VisionTransformer(num_layers=2))       # the reference report's table
    1086730
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def count_params(model, learnable_only=True):
    """Parameters counted once each (a tied weight is one parameter)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not learnable_only)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, a residual branch is zeroed for a fraction p
    of the samples and the rest scaled by 1 / (1 - p)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):  # (B, ...)
        if not self.training or self.p == 0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p).to(x.dtype)


class Block(nn.Module):
    """Multi-head self-attention and a GELU MLP, each with a residual and a LayerNorm.

    norm_first=True (pre-norm):  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    norm_first=False (post-norm): x = norm1(x + attn(x)); x = norm2(x + mlp(x))
    """

    def __init__(self, dim, num_heads, hidden_dim, norm_first=True, causal=False, dropout=0.0, drop_path=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.norm_first, self.causal, self.dropout = num_heads, norm_first, causal, dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # one matmul for q, k and v
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(),
            nn.Dropout(dropout) if dropout else nn.Identity(),
            nn.Linear(hidden_dim, dim),
        )
        self.resid_drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def attn(self, x, first_only=False):
        B, T, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        if first_only:  # the first token's query alone; keys and values from every token
            q = F.linear(x[:, :1], self.qkv.weight[:C], self.qkv.bias[:C]).view(B, 1, H, D)
            k, v = F.linear(x, self.qkv.weight[C:], self.qkv.bias[C:]).view(B, T, 2, H, D).unbind(2)
        else:
            # unbind on the (B, T, 3, H, D) view, not on a (3, B, H, T, D) permute: autograd then
            # stacks the three gradients straight into qkv's layout, one copy fewer per Block.
            q, k, v = self.qkv(x).view(B, T, 3, H, D).unbind(2)  # (B, T, H, D) each
        y = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.causal,
                      self.dropout if self.training else 0.0)  # (B, H, T, D)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, q.shape[1], C)))

    def forward(self, x, first_only=False):  # (B, T, C) -> (B, T, C), or (B, 1, C) with first_only
        """first_only: forward(x)[:, :1] at about a quarter of the cost (only the first token's query,
        projection and MLP): the last Block of a ViT, whose head reads the CLS token alone."""
        dp = self.drop_path
        r = x[:, :1] if first_only else x  # the residual stream of the tokens computed
        if self.norm_first:
            r = r + dp(self.attn(self.norm1(x), first_only))
            return r + dp(self.resid_drop(self.mlp(self.norm2(r))))
        r = self.norm1(r + dp(self.attn(x, first_only)))
        return self.norm2(r + dp(self.resid_drop(self.mlp(r))))


def attention(q, k, v, causal, dropout):  # (B, H, T, D) each
    if q.shape[0] == 0:  # a process's slice of a short last batch: flash attention in torch 2.4 refuses it
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)


BLOCKS = {"prenorm": True, "postnorm": False}


def _init_weights(module):
    # ViT/GPT-style init: truncated-normal linears, zero biases; LayerNorm keeps its (1, 0) default.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """ViT for small images: linear patch embedding, CLS token, learned positions, Blocks, and a
    LayerNorm + Linear head on the CLS token, over normalised images (B, C, H, W). drop_path is the
    last Block's rate; Block i of L gets drop_path * i / L (Huang et al.)."""

    def __init__(self, num_layers=2, block="prenorm", embed_dim=256, hidden_dim=512, num_heads=8,
                 patch_size=4, image_size=32, num_channels=3, num_classes=10, dropout=0.0, drop_path=0.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
        if num_layers < 1:
            raise ValueError(f"a ViT needs at least one Block, not {num_layers}")
        self.patch_size = patch_size
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(num_channels * patch_size ** 2, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, hidden_dim, norm_first=BLOCKS[block], dropout=dropout,
                  drop_path=drop_path * (i + 1) / num_layers)
            for i in range(num_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def patchify(self, images):
        B, C, H, W = images.shape
        p = self.patch_size
        x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p), row-major patches

    def layer_parameters(self):  # per Block, input side first: per-layer gradient norms
        return [list(b.parameters()) for b in self.blocks]

    def no_weight_decay(self):  # parameters of 2 or more dimensions that --decay_exempt leaves undecayed
        return {"pos_embed", "cls_token"}

    def forward(self, images):
        x = self.patch_embed(self.patchify(images))  # (B, N, E)
        x = self.drop(torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed)
        for blk in self.blocks[:-1]:
            x = blk(x)
        # The head reads the CLS token alone, so the last Block computes nothing else (exact, and
        # about an eighth of a ViT-6 step saved).
        x = self.blocks[-1](x, first_only=True)  # (B, 1, E)
        return self.head(self.norm(x[:, 0]))  # (B, classes)


class RecurrentCore(nn.Module):
    """nn.LSTM or nn.GRU (batch first) behind the common (x, state) -> (y, state) interface."""

    def __init__(self, kind, input_size, hidden_size, num_layers, dropout=0.0):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = rnn(input_size, hidden_size, num_layers, batch_first=True,
                       dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, x, state=None):
        # Explicitly fp32, autocast or not: autocast's cuDNN RNN path was written for fp16 (it copies
        # the weights into a half-precision buffer every call), and without bf16's range the
        # recurrent gradients could underflow. With TF32 on, fp32 LSTMs run on tensor cores anyway.
        with torch.autocast(x.device.type, enabled=False):
            return self.rnn(x.float(), state)


class TransformerCore(nn.Module):
    """Causal Transformer: Linear input projection, learned positions, causal Blocks. Each window is
    attended to on its own, so the state is always None."""

    def __init__(self, input_size, hidden_size, num_layers, max_len, block="prenorm", num_heads=8,
                 mlp_dim=2048, dropout=0.0):
        super().__init__()
        self.inp = nn.Linear(input_size, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, hidden_size))
        self.blocks = nn.ModuleList(
            Block(hidden_size, num_heads, mlp_dim, norm_first=BLOCKS[block], causal=True, dropout=dropout)
            for _ in range(num_layers))
        # Pre-norm leaves the residual stream unnormalised, so it needs a final LayerNorm (GPT-2).
        self.norm = nn.LayerNorm(hidden_size) if BLOCKS[block] else nn.Identity()
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x, state=None):
        T = x.shape[1]
        if T > self.pos_embed.shape[1]:
            raise ValueError(f"sequence of {T} tokens is longer than the {self.pos_embed.shape[1]} positions")
        x = self.inp(x) + self.pos_embed[:, :T]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), None


CORES = ("lstm", "gru", "transformer")


class LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(h @ weight.T, targets), ignoring target 0, without ever holding
    the full logits: each chunk of rows is one fused log-softmax, and its gradients (softmax - one-hot)
    are formed in the forward pass, accumulated in fp32. Under fp16 they are formed in fp32 too: the
    loss scaler has not scaled them yet, and a 40k-way softmax's small values vanish in fp16."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, grads):
        with torch.autocast(h.device.type, enabled=False):
            return LinearCrossEntropy.chunked(ctx, h, weight, targets, chunk, grads)

    @staticmethod
    def chunked(ctx, h, weight, targets, chunk, grads):
        need_h, need_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        ctx.dtypes = h.dtype, weight.dtype
        w = weight.to(h.dtype)
        low = h.dtype if h.dtype == torch.bfloat16 else torch.float32  # the gradients' matmul dtype
        w_low = w.to(low)
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        keep = (targets != 0)[:, None]
        for start in range(0, h.shape[0], chunk):
            hs, t, k = h[start:start + chunk], targets[start:start + chunk, None], keep[start:start + chunk]
            logits = hs @ w.T  # (chunk, V)
            if logits.dtype == torch.float32 and logits.device.type == "cpu":  # in place: one chunk in memory
                logp = torch.log_softmax(logits, dim=-1, out=logits)
            else:  # one fused pass that also casts a bf16/fp16 chunk up
                logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
            del logits
            total -= logp.gather(1, t).masked_fill_(~k, 0).sum()
            if need_h or need_w:
                probs = logp.exp_().scatter_add_(1, t, torch.full_like(t, -1, dtype=logp.dtype))  # softmax - 1
                probs = probs.to(low)
                if need_h:
                    grad_h[start:start + chunk] = (probs @ w_low).masked_fill_(~k, 0)
                if need_w:  # padding rows contribute nothing: zeroed in the small (chunk, E) factor
                    hs_kept = hs.to(low).masked_fill(~k, 0)
                    if low == torch.float32:
                        grad_w.addmm_(probs.T, hs_kept)  # straight into the fp32 accumulator
                    else:
                        grad_w.add_(probs.T @ hs_kept)
            logp = probs = None  # freed before the next chunk's matmul: one chunk alive at a time
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h.mul(grad_out).to(h_dtype) if grad_h is not None else None,
                grad_w.mul(grad_out).to(w_dtype) if grad_w is not None else None, None, None, None)


def linear_cross_entropy(h, weight, targets, chunk=1024):
    """Summed NLL of targets (0 = padding, ignored) under logits h @ weight.T, in chunks."""
    return LinearCrossEntropy.apply(h, weight, targets, chunk, torch.is_grad_enabled())


class LanguageModel(nn.Module):
    """Token embedding -> core -> Linear + ReLU -> output layer tied to the embedding, with
    `forward(tokens, state=None) -> (logits, state)` for every core. `embeddings` (vocab x
    embedding_size) initialises the embedding and freezes it unless `learn_embeddings`."""

    def __init__(self, core="lstm", num_layers=1, vocab_size=40479, embedding_size=768,
                 hidden_size=512, dropout=0.0, embeddings=None, learn_embeddings=False,
                 max_len=256, block="prenorm", num_heads=8, mlp_dim=2048):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
        # N(0, 1) rows would give the tied output layer huge logits; word_language_model's init.
        with torch.no_grad():
            self.embedding.weight.uniform_(-0.1, 0.1)
            self.embedding.weight[0].zero_()
        if embeddings is not None:
            embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
            if tuple(embeddings.shape) != (vocab_size, embedding_size):
                raise ValueError(f"embeddings have shape {tuple(embeddings.shape)}, the model needs "
                                 f"({vocab_size}, {embedding_size}) (vocabulary x width)")
            with torch.no_grad():
                self.embedding.weight.copy_(embeddings)
            self.embedding.weight.requires_grad_(learn_embeddings)
        if core == "transformer":
            self.core = TransformerCore(embedding_size, hidden_size, num_layers, max_len, block,
                                        num_heads, mlp_dim, dropout)
        elif core in ("lstm", "gru"):
            self.core = RecurrentCore(core, embedding_size, hidden_size, num_layers, dropout)
        else:
            raise ValueError(f"unknown core {core!r}; choose from {', '.join(CORES)}")
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.proj = nn.Sequential(nn.Linear(hidden_size, embedding_size), nn.ReLU())
        self.out = nn.Linear(embedding_size, vocab_size, bias=False)
        self.out.weight = self.embedding.weight  # tied: the same Parameter, counted once

    def no_weight_decay(self):
        return {"core.pos_embed"} if isinstance(self.core, TransformerCore) else set()

    def layer_parameters(self):  # per Block or recurrent layer, input side first
        if isinstance(self.core, TransformerCore):
            return [list(b.parameters()) for b in self.core.blocks]
        rnn = self.core.rnn
        return [[p for n, p in rnn.named_parameters() if n.endswith(f"_l{i}")] for i in range(rnn.num_layers)]

    def forward(self, tokens, state=None, targets=None):
        """tokens (B, T) -> logits (B, T, vocab), state. With targets (B, T), the summed NLL of the
        non-padding targets instead of the logits, computed in chunks (see LinearCrossEntropy)."""
        x = self.drop(self.embedding(tokens))
        h, state = self.core(x, state)
        h = self.proj(self.drop(h))  # (B, T, E)
        if targets is None:
            return self.out(h), state
        # Never traced by torch.compile: traced, its gradients came back as zeros on torch 2.11 without a
        # word; eager, it runs at its matmuls' speed. Disabled here, not by a decorator, which would
        # import Dynamo (seconds) at every start.
        loss = linear_cross_entropy
        if torch.compiler.is_compiling():
            loss = torch.compiler.disable(loss)
        return loss(h.flatten(0, 1), self.out.weight, targets.flatten()), state


# FLOPs by formula, for MFU: forward matmul FLOPs, as the models above compute them.

def vit_flops(layers, tokens=65, d=256, hidden=512, patches=64, patch_dim=48, classes=10, first_only_last=True):
    """Forward matmul FLOPs per image. first_only_last: the last Block computes keys and values for
    every token, the rest for the CLS token alone, as ours does (peers: False)."""
    per_block = tokens * 2 * (d * 3 * d + d * d + 2 * d * hidden) + 2 * 2 * tokens * tokens * d
    last = (tokens * 2 * d * 2 * d + 2 * (d * d + d * d + 2 * d * hidden) + 2 * 2 * tokens * d
            if first_only_last else per_block)
    return (layers - 1) * per_block + last + 2 * patches * patch_dim * d + 2 * d * classes


def lm_train_flops(core, layers, frozen=True, **shape):
    """Training FLOPs per token: 3x the forward, except that a frozen (tied) embedding gets no
    weight gradient, so the output layer costs 2x its forward, not 3x."""
    v, e = shape.get("v", 40479), shape.get("e", 768)
    head = 2 * e * v
    return 3 * (lm_flops(core, layers, **shape) - head) + (2 if frozen else 3) * head


def lm_recurrent_share(core, layers, frozen=True, seq_len=256):
    """The fraction of an LM's training FLOPs in its recurrence, which runs in fp32 (TF32 on a GPU)
    under autocast too; the rest runs in the autocast dtype."""
    if core == "transformer":
        return 0.0
    body = lm_flops(core, layers, seq_len) - lm_flops(core, 0, seq_len)
    return 3 * body / lm_train_flops(core, layers, frozen, seq_len=seq_len)


def lm_flops(core, layers, seq_len=256, v=40479, e=768, h=512, mlp=2048):
    """Forward matmul FLOPs per token."""
    if core == "lstm":
        body = sum(2 * 4 * h * ((e if i == 0 else h) + h) for i in range(layers))
    elif core == "gru":
        body = sum(2 * 3 * h * ((e if i == 0 else h) + h) for i in range(layers))
    else:  # causal attention touches half the scores on average, but kernels compute them all
        body = 2 * e * h + layers * (2 * (h * 3 * h + h * h + 2 * h * mlp) + 2 * 2 * seq_len * h)
    return body + 2 * h * e + 2 * e * v
