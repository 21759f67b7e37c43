"""The experiment: a GPT trained for a fixed time budget, then scored by prepare.evaluate_bpb.

    uv run train.py [--description "what this run changes"]

Owned by the agent: edit freely (architecture, optimizer, loop). Hyperparameters live in
model.json; the data, sequence length, budget and metric are fixed by ground.json and
prepare.py. Every outcome (success, crash, interrupt) is recorded by the harness into
results.tsv and sessions/ — this file only calls it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare
from prepare import Tokenizer, evaluate_bpb, make_dataloader

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 512
    window_pattern: str = "SSSL"
    attention: str = "sdpa"          # fa3 | cudnn | flex | sdpa | reference (PLATFORM decides)
    mlp: str = "plain"               # triton (ReLU^2 fused into the matmuls, prepare.relu2_mlp) | plain (PLATFORM decides)
    embedding_dtype: str = "float32"
    rotary_dtype: str = "float32"


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_ve(layer_idx, n_layer):
    """Value embeddings on alternating layers, the last always included (upstream)."""
    return layer_idx % 2 == (n_layer - 1) % 2


def apply_rotary_emb(x, cos, sin):
    """Halves (x1, x2) -> (x1 cos + x2 sin, x2 cos - x1 sin), written as x * cos + swap(x) * (sin, -sin)
    on a (..., 2, D/2) view: upstream's arithmetic bit for bit, but without slices and cat the compiled
    backward needs no zero-filled slice_scatter — 9 ms less per default step on an H200 (314.8 -> 305.6 ms,
    tests/profile_step.py)."""
    halves = x.unflatten(-1, (2, -1))
    signed_sin = torch.stack([sin, -sin], -2)
    return (halves * cos.unsqueeze(-2) + halves.flip(-2) * signed_sin).flatten(-2)


# ---------------------------------------------------------------------------
# Attention backends: q, k, v are (B, T, H, D); key k is visible to query q iff 0 <= q - k <= window
# ---------------------------------------------------------------------------

def attention_reference(q, k, v, window):
    """Plain softmax attention with an explicit mask (tests only: O(T^2) memory)."""
    T = q.size(1)
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.size(-1))
    pos = torch.arange(T, device=q.device)
    diff = pos[:, None] - pos[None, :]
    scores = scores.masked_fill(~((diff >= 0) & (diff <= window)), float("-inf"))
    return (scores.softmax(-1) @ vf).transpose(1, 2).to(q.dtype)


def _sdpa_local(q, k, v, window):
    """Sliding window via SDPA on blocks of `window` queries against 2 x window keys:
    memory O(T x window), no dense T x T mask. q, k, v are (B, H, T, D). The blocks are folded
    into the head dimension: SDPA's fused kernels take 4-D inputs only (5-D runs the math path)."""
    B, H, T, D = q.shape
    C = window
    nb = -(-T // C)
    pad_end = nb * C - T
    qb = F.pad(q, (0, 0, 0, pad_end)).reshape(B, H * nb, C, D)
    kp = F.pad(k, (0, 0, C, pad_end))
    vp = F.pad(v, (0, 0, C, pad_end))
    kb = kp.unfold(2, 2 * C, C).transpose(-1, -2).reshape(B, H * nb, 2 * C, D)     # overlapping blocks: one copy
    vb = vp.unfold(2, 2 * C, C).transpose(-1, -2).reshape(B, H * nb, 2 * C, D)
    a = torch.arange(C, device=q.device)[:, None]
    j = torch.arange(2 * C, device=q.device)[None, :]
    band = (j >= a) & (j <= a + C)                     # 0 <= q - k <= window inside the block pair
    first = band & (j >= C)                            # block 0: the front padding is not a key
    mask = torch.stack([first] + [band] * (nb - 1)) if nb > 1 else first[None]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask.repeat(H, 1, 1)[None])
    return out.view(B, H, nb * C, D)[:, :, :T]


def attention_sdpa(q, k, v, window):
    T = q.size(1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if window >= T - 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = _sdpa_local(q, k, v, window)
    return y.transpose(1, 2)


_BLOCK_MASKS: dict = {}
_FLEX = None
FLEX_KERNEL_OPTIONS = None        # e.g. {"BLOCK_M": 128}; None = PyTorch's defaults (fastest measured, bench_attention.py)


def _flex_fn():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX = torch.compile(flex_attention, dynamic=False) if prepare.get_platform()["compile"] or \
            prepare.get_platform()["device"] == "cuda" else flex_attention
    return _FLEX


def flex_block_mask(T, window, device):
    """Block masks are built once per (sequence length, window, device) and reused."""
    key = (T, window, str(device))
    if key not in _BLOCK_MASKS:
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx <= window)
        _BLOCK_MASKS[key] = create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
    return _BLOCK_MASKS[key]


def attention_flex(q, k, v, window):
    T = q.size(1)
    if window >= T - 1:            # full causal layer: SDPA (cuDNN on Hopper) beats flex, see prefer_cudnn_sdpa
        return attention_sdpa(q, k, v, window)
    bm = flex_block_mask(T, window, q.device)
    y = _flex_fn()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm,
                   kernel_options=FLEX_KERNEL_OPTIONS)
    return y.transpose(1, 2)


def attention_fa3(q, k, v, window):
    fa3, why = prepare.load_fa3(prepare.get_platform()["capability"])
    assert fa3 is not None, f"fa3 selected but not loadable: {why}"
    out = fa3.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
    return out[0] if isinstance(out, tuple) else out


def attention_cudnn(q, k, v, window):
    """Windowed layers on cuDNN's fused kernel through cudnn-frontend (prepare.cudnn_attention); full-causal
    layers through SDPA, which reaches the same kernel."""
    if window >= q.size(1) - 1:
        return attention_sdpa(q, k, v, window)
    return prepare.cudnn_attention(q, k, v, window)


def prefer_cudnn_sdpa(platform) -> str:
    """Full-causal layers go through SDPA; on Hopper+ cuDNN's kernel is the fastest one there
    (H200, B128 H4 T2048 D128 bf16 fwd+bwd: cuDNN 4.8 ms, flash 7.6 ms, flex 6.9 ms —
    tests/bench_attention.py). Set once, globally, before compilation."""
    cc = platform["capability"]
    if platform["device"] != "cuda" or not cc or cc[0] < 9 or not torch.backends.cudnn.is_available():
        return "SDPA backend: PyTorch default order"
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        sdpa_kernel(order, set_priority=True).__enter__()     # held for the whole run
    except TypeError:                                          # torch without set_priority
        return "SDPA backend: PyTorch default order (no priority API in this torch)"
    return "SDPA backend: cuDNN first for full-context layers (Hopper+: fastest measured)"


ATTENTION = {"reference": attention_reference, "sdpa": attention_sdpa, "flex": attention_flex, "fa3": attention_fa3,
             "cudnn": attention_cudnn}


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels = 32
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False) if has_ve(layer_idx, config.n_layer) else None
        self.attend = ATTENTION[config.attention]
        self.fused_rope = self.head_dim & (self.head_dim - 1) == 0          # prepare.rope_norm: power-of-two heads

    def forward(self, x, ve, cos_sin, window):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            ve = ve.view(B, T, self.n_kv_head, self.head_dim)
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))   # input-dependent, per head
            v = v + gate.unsqueeze(-1) * ve.to(v.dtype)
        cos, sin = cos_sin
        if self.fused_rope and q.is_cuda and torch.compiler.is_compiling() and prepare.triton is not None:
            # apply_rotary_emb then norm, as the two lines below, in two Triton row kernels whose backward starts
            # from the normed q, k (kept for attention anyway) instead of a saved copy of the rotated ones
            # (prepare.rope_norm). Another rotary or QK-norm: change the lines below and drop this branch.
            q, k = prepare.rope_norm(q, cos, sin).to(v.dtype), prepare.rope_norm(k, cos, sin).to(v.dtype)
        else:
            q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
            q, k = norm(q).to(v.dtype), norm(k).to(v.dtype)                  # QK-norm
        if self.n_kv_head < self.n_head:       # GQA: the backends here take as many k, v heads as q heads
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=2) for t in (k, v))
        y = self.attend(q, k, v, window)
        return self.c_proj(y.contiguous().view(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.fused = config.mlp == "triton" and config.n_embd % 8 == 0       # TMA: rows of whole 16-byte units

    def forward(self, x):
        if self.fused and torch.is_autocast_enabled(x.device.type):
            # ReLU^2 only (another activation: change the line below and drop this branch); the same math with
            # the activation inside the matmuls, so the (tokens, 4d) pre-activation is never stored
            dt = torch.get_autocast_dtype(x.device.type)
            return prepare.relu2_mlp(x.to(dt), self.c_fc.weight.to(dt), self.c_proj.weight.to(dt))
        return self.c_proj(F.relu(self.c_fc(x)).square())        # ReLU^2


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window):
        x = x + self.attn(norm(x), ve, cos_sin, window)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.window_sizes = self._compute_window_sizes(config)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        head_dim = config.n_embd // config.n_head
        kv_dim = config.n_kv_head * head_dim
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(config.vocab_size, kv_dim)
                                           for i in range(config.n_layer) if has_ve(i, config.n_layer)})
        self.rotary_seq_len = config.sequence_len * 10
        cos, sin = self._precompute_rotary_embeddings(self.rotary_seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        torch.nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        torch.nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        s = 3 ** 0.5 * self.config.n_embd ** -0.5     # uniform with the std of N(0, 1/n_embd)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                torch.nn.init.uniform_(lin.weight, -s, s)
            torch.nn.init.zeros_(block.attn.c_proj.weight)
            torch.nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                torch.nn.init.zeros_(block.attn.ve_gate.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        for ve in self.value_embeds.values():
            torch.nn.init.uniform_(ve.weight, -s, s)
        cos, sin = self._precompute_rotary_embeddings(self.rotary_seq_len, self.config.n_embd // self.config.n_head,
                                                      device=self.cos.device)
        self.cos, self.sin = cos, sin
        emb_dtype = getattr(torch, self.config.embedding_dtype)
        self.transformer.wte.to(dtype=emb_dtype)
        for ve in self.value_embeds.values():
            ve.to(dtype=emb_dtype)

    def _precompute_rotary_embeddings(self, seq_len, head_dim, base=10000, device=None):
        channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (base ** (channel_range / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)
        dt = getattr(torch, self.config.rotary_dtype)
        return freqs.cos().to(dt)[None, :, None, :], freqs.sin().to(dt)[None, :, None, :]

    @staticmethod
    def _compute_window_sizes(config):
        """'L' = full context, 'S' = half; the last layer is always full (upstream)."""
        long_w, short_w = config.sequence_len, config.sequence_len // 2
        sizes = [{"L": long_w, "S": short_w}[config.window_pattern[i % len(config.window_pattern)]]
                 for i in range(config.n_layer)]
        sizes[-1] = long_w
        return sizes

    def estimate_flops(self):
        """Training FLOPs per token: 6 x (non-embedding params) + attention (12 h q window)."""
        nparams = sum(p.numel() for p in self.parameters())
        exclude = (self.transformer.wte.weight.numel() + sum(ve.weight.numel() for ve in self.value_embeds.values())
                   + self.resid_lambdas.numel() + self.x0_lambdas.numel())
        h, q, t = self.config.n_head, self.config.n_embd // self.config.n_head, self.config.sequence_len
        attn = sum(12 * h * q * min(w, t) for w in self.window_sizes)
        return 6 * (nparams - exclude) + attn

    def setup_optimizer(self, m, ortho_dtype):
        model_dim = self.config.n_embd
        matrix_params = list(self.transformer.h.parameters())
        scale = (model_dim / 768) ** -0.5     # AdamW LRs tuned at width 768 (upstream)
        print(f"Scaling AdamW LRs by 1/sqrt({model_dim}/768) = {scale:.6f}")
        betas = tuple(m.adam_betas)
        groups = [
            dict(kind="adamw", params=list(self.lm_head.parameters()), lr=m.unembedding_lr * scale, betas=betas, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=list(self.transformer.wte.parameters()), lr=m.embedding_lr * scale, betas=betas, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=list(self.value_embeds.parameters()), lr=m.embedding_lr * scale, betas=betas, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=[self.resid_lambdas], lr=m.scalar_lr * 0.01, betas=betas, eps=1e-10, weight_decay=0.0),
            dict(kind="adamw", params=[self.x0_lambdas], lr=m.scalar_lr, betas=(0.96, 0.95), eps=1e-10, weight_decay=0.0),
        ]
        for shape in sorted({p.shape for p in matrix_params}):
            groups.append(dict(kind="muon", params=[p for p in matrix_params if p.shape == shape], lr=m.matrix_lr,
                               momentum=0.95, ns_steps=5, beta2=0.95, weight_decay=m.weight_decay))
        groups = [g for g in groups if g["params"]]
        opt = MuonAdamW(groups, ortho_dtype=ortho_dtype)
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        return opt

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.size()
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.window_sizes[i])
        x = norm(x)
        logits = self.lm_head(x)
        softcap = 15
        if targets is not None and reduction == "mean" and torch.compiler.is_compiling():
            # compiled: one read of the logits each way; eager (CPU, MPS, Volta/Turing) keeps
            # F.cross_entropy below, whose fused log_softmax makes fewer full-size temporaries
            flat, flat_targets = logits.view(-1, logits.size(-1)), targets.view(-1)
            if flat.is_cuda and prepare.triton is not None:       # Triton row kernels, hardware tanh
                return prepare.softcap_cross_entropy_rows(flat, flat_targets, softcap).sum() / (flat_targets != -1).sum()
            return softcap_cross_entropy(flat, flat_targets, softcap)
        logits = softcap * torch.tanh(logits.float() / softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction)


def softcap_cross_entropy(logits, targets, softcap):
    """Mean cross-entropy of z = softcap * tanh(logits / softcap) (float32 math) over targets != -1.

    Written for speed at the default shapes (262k rows x 8192 logits per micro-step), in plain ops so
    the compiled graph stays cacheable across runs (an autograd.Function here cost 13 s more start-up
    on every repeated run): |z| <= softcap, so log-sum-exp needs no running max and the target logit
    is a masked sum — the forward is one read of the 16-bit logits, and every gradient is pointwise,
    so the backward is one pass that recomputes z from them instead of keeping a float32 copy;
    tanh(u) = 2 sigmoid(2u) - 1 is one exp, where libdevice's tanh made the kernels compute-bound.
    F.cross_entropy on float32 logits: ~9 ms per micro-step on an H200; this: ~7.5 (profile_step.py);
    on CUDA with triton, prepare.softcap_cross_entropy_rows (same math, hardware tanh) is used instead."""
    assert softcap <= 60, "exp(softcap) must not overflow float32 in the max-free log-sum-exp"
    z = softcap * (2 * torch.sigmoid(logits.float() * (2 / softcap)) - 1)
    onehot = targets[:, None] == torch.arange(logits.size(1), device=logits.device)
    lse = z.exp().sum(-1).log()
    z_target = torch.where(onehot, z, 0.0).sum(-1)
    valid = targets != -1
    return torch.where(valid, lse - z_target, 0.0).sum() / valid.sum()


# ---------------------------------------------------------------------------
# Optimizer: MuonAdamW (AdamW for embeddings/head/scalars, Muon for matrices)
# ---------------------------------------------------------------------------

# Polar Express coefficients (Amsel et al. 2025), as in upstream / modded-nanogpt
POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def adamw_step(p, grad, exp_avg, exp_avg_sq, step_t, lr_t, beta1_t, beta2_t, eps_t, wd_t):
    """Decoupled-weight-decay Adam on one parameter; moments may be fp32 for a 16-bit parameter."""
    pf = p.float() if p.dtype != exp_avg.dtype else p
    g = grad.to(exp_avg.dtype)
    pf.mul_(1 - lr_t * wd_t)
    exp_avg.lerp_(g, 1 - beta1_t)
    exp_avg_sq.lerp_(g.square(), 1 - beta2_t)
    bias1 = 1 - beta1_t ** step_t
    bias2 = 1 - beta2_t ** step_t
    denom = (exp_avg_sq / bias2).sqrt() + eps_t
    pf.add_(exp_avg / denom * (-lr_t / bias1))
    if pf is not p:
        p.copy_(pf)


def orthogonalize(g, ns_steps, dtype):
    """Polar Express: ~UV^T of g's SVD, batched over the leading dim."""
    X = g.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    if g.size(-2) > g.size(-1):
        for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
    else:
        for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


def muon_step(stacked_grads, stacked_params, momentum_buffer, second_momentum_buffer, momentum_t, lr_t, wd_t,
              beta2_t, ns_steps: int, red_dim: int, ortho_dtype: torch.dtype):
    # Nesterov momentum
    momentum = momentum_t.to(stacked_grads.dtype)
    momentum_buffer.lerp_(stacked_grads, 1 - momentum)
    g = stacked_grads.lerp_(momentum_buffer, momentum)
    g = orthogonalize(g, ns_steps, ortho_dtype)
    # NorMuon variance reduction: per-row/column second moment, norm preserved
    beta2 = beta2_t.to(g.dtype)
    v_mean = g.float().square().mean(dim=red_dim, keepdim=True)
    red_dim_size = g.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * red_dim_size).sqrt()
    second_momentum_buffer.lerp_(v_mean.to(second_momentum_buffer.dtype), 1 - beta2.to(second_momentum_buffer.dtype))
    step_size = second_momentum_buffer.clamp_min(1e-10).rsqrt()
    scaled_sq_sum = (v_mean * red_dim_size) * step_size.float().square()
    v_norm_new = scaled_sq_sum.sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g * (step_size * (v_norm / v_norm_new.clamp_min(1e-10))).to(g.dtype)
    # Cautious weight decay (only where the update and the weight agree in sign) + update
    lr = lr_t.to(stacked_params.dtype)
    wd = wd_t.to(stacked_params.dtype)
    g = g.to(stacked_params.dtype)
    mask = (g * stacked_params) >= 0
    stacked_params.sub_(lr * g + lr * wd * stacked_params * mask)


class MuonAdamW(torch.optim.Optimizer):
    """Param groups carry kind='adamw' or kind='muon'. fp16 parameters keep fp32 moments."""

    def __init__(self, param_groups, ortho_dtype=torch.bfloat16):
        super().__init__(param_groups, defaults={})
        self.ortho_dtype = ortho_dtype
        # 0-d CPU tensors: changing a schedule value does not recompile the fused step
        self._t = {k: torch.tensor(0.0) for k in ("step", "lr", "b1", "b2", "eps", "wd", "mom", "mlr", "mwd", "mb2")}
        self._adamw, self._muon = adamw_step, muon_step

    def compile_steps(self):
        self._adamw = torch.compile(adamw_step, dynamic=False, fullgraph=True)
        self._muon = torch.compile(muon_step, dynamic=False, fullgraph=True)

    @staticmethod
    def moment_dtype(p):
        return torch.float32 if p.dtype == torch.float16 else p.dtype

    def _step_adamw(self, group):
        t = self._t
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, dtype=self.moment_dtype(p))
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.moment_dtype(p))
            state["step"] += 1
            t["step"].fill_(state["step"])
            t["lr"].fill_(group["lr"])
            t["b1"].fill_(group["betas"][0])
            t["b2"].fill_(group["betas"][1])
            t["eps"].fill_(group["eps"])
            t["wd"].fill_(group["weight_decay"])
            self._adamw(p, p.grad, state["exp_avg"], state["exp_avg_sq"], t["step"], t["lr"], t["b1"], t["b2"], t["eps"], t["wd"])

    def _step_muon(self, group):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        p = params[0]
        state = self.state[p]
        shape, device = p.shape, p.device
        mdtype = self.moment_dtype(p)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros(len(params), *shape, dtype=mdtype, device=device)
            sshape = (len(params), shape[-2], 1) if shape[-2] >= shape[-1] else (len(params), 1, shape[-1])
            state["second_momentum_buffer"] = torch.zeros(sshape, dtype=mdtype, device=device)
        red_dim = -1 if shape[-2] >= shape[-1] else -2
        grads = torch.stack([q.grad for q in params]).to(mdtype)
        stacked = torch.stack(params)
        t = self._t
        t["mom"].fill_(group["momentum"])
        t["mb2"].fill_(group["beta2"] if group["beta2"] is not None else 0.0)
        t["mlr"].fill_(group["lr"] * max(1.0, shape[-2] / shape[-1]) ** 0.5)
        t["mwd"].fill_(group["weight_decay"])
        self._muon(grads, stacked, state["momentum_buffer"], state["second_momentum_buffer"], t["mom"], t["mlr"],
                   t["mwd"], t["mb2"], group["ns_steps"], red_dim, self.ortho_dtype)
        torch._foreach_copy_(params, list(stacked.unbind(0)))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            elif group["kind"] == "muon":
                self._step_muon(group)


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------

def lr_multiplier(progress, m):
    if progress < m.warmup_ratio:
        return progress / m.warmup_ratio if m.warmup_ratio > 0 else 1.0
    if progress < 1.0 - m.warmdown_ratio:
        return 1.0
    cooldown = (1.0 - progress) / m.warmdown_ratio
    return cooldown + (1 - cooldown) * m.final_lr_frac


def muon_momentum(step):
    frac = min(step / 300, 1)        # 0.85 -> 0.95 over the first 300 steps
    return (1 - frac) * 0.85 + frac * 0.95


def weight_decay_at(progress, m):
    return m.weight_decay * (1 - progress)


# ---------------------------------------------------------------------------
# Setup: configs, platform, model, optimizer — each decision printed with its reason
# ---------------------------------------------------------------------------

def build_config(m, T, vocab_size, platform, attention=None, mlp=None):
    base_dim = m.depth * m.aspect_ratio
    model_dim = -(-base_dim // m.head_dim) * m.head_dim        # round up to a whole number of heads
    n_head = model_dim // m.head_dim
    assert model_dim % n_head == 0, f"model_dim {model_dim} must divide into {n_head} heads"
    return GPTConfig(sequence_len=T, vocab_size=vocab_size, n_layer=m.depth, n_head=n_head, n_kv_head=n_head,
                     n_embd=model_dim, window_pattern=m.window_pattern, attention=attention or platform["attention"],
                     mlp=mlp or platform["mlp"], embedding_dtype=platform["embedding_dtype"], rotary_dtype=platform["dtype"])


# ---------------------------------------------------------------------------
# Several processes (torchrun): data parallel, gradients all-reduced before the optimizer step
# ---------------------------------------------------------------------------

def setup_distributed(device_type, world):
    """(rank, world_size, local_rank, control group). One process: (0, 1, 0, None).
    NCCL carries gradients; a gloo group agrees on step time and loss on the host, so the
    ranks share one clock and one LR schedule without a GPU sync."""
    if world == 1:
        return 0, 1, 0, None
    import torch.distributed as dist
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo") if device_type == "cuda" else None
    return rank, world, local, control


def broadcast_parameters(model):
    import torch.distributed as dist
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def all_reduce_gradients(model, world):
    """Average the gradients over ranks: one flat all-reduce per dtype."""
    import torch.distributed as dist
    groups = {}
    for p in model.parameters():
        if p.grad is not None:
            groups.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in groups.values():
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= world
        for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(f)


def agree(values, world, group):
    """Mean of a few host floats over ranks (identical on every rank afterwards)."""
    if world == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return [v / world for v in t.tolist()]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def main():
    ap = argparse.ArgumentParser(description="Train the GPT for the time budget and record the run.")
    ap.add_argument("--description", help="what this run changes (default: the HEAD commit subject)")
    args = ap.parse_args()
    t_start = time.time()

    s = prepare.settings()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        m, changes = prepare.effective_model(prepare.load_model(), s, world)
    except prepare.ConfigError as e:
        prepare.fail(str(e))
    P = prepare.get_platform()
    T, budget = s.max_seq_len, s.time_budget_s
    rank, world, local_rank, control = setup_distributed(P["device"], world)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")     # rank 0 prints and records; the others only compute
    tokenizer = Tokenizer.from_directory()
    device = torch.device("cuda", local_rank) if P["device"] == "cuda" else torch.device(P["device"])
    config = build_config(m, T, tokenizer.get_vocab_size(), P)
    fallback = prepare.confirm_cudnn_attention(P, (m.device_batch_size, T, config.n_head, config.n_embd // config.n_head),
                                               GPT._compute_window_sizes(config), device)
    config.attention = P["attention"]          # flex/sdpa when cuDNN refused these shapes
    run = prepare.start_run(tokenizer, m, changes, args.description, extra={"world_size": world}) if rank == 0 else None

    torch.manual_seed(42)                      # the only seed; data order is fixed by the loader
    torch.set_float32_matmul_precision("high")
    dtype = getattr(torch, P["dtype"])
    autocast = (torch.amp.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    if run:
        print(f"run_id: {run.run_id}  commit: {run.git['commit']}{' (dirty)' if run.git['dirty'] else ''}")
        print("versions: " + ", ".join(f"{k} {v}" for k, v in run.record["versions"].items() if v))
    if world > 1:
        print(f"distributed: {world} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
              f"each {m.device_batch_size} rows per micro-step")
    print(f"mode: {s.mode} ({s.mode_reason}); T={T}, budget={budget:g}s, eval_tokens={s.eval_tokens:,}")
    for line in prepare.describe_changes(changes, s, world):
        print(f"  {line}")
    print("\n".join(prepare.platform_lines(P)))
    if fallback:
        print(f"!! {fallback}")
    if P["attention"] in ("cudnn", "flex", "sdpa"):
        print(f"  {prefer_cudnn_sdpa(P)}")
    prepare.eval_rows(tokenizer, s, verbose=True)

    print(f"model config: {config}")
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    if world > 1:
        broadcast_parameters(model)
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.estimate_flops()
    print(f"parameters: {num_params:,}  FLOPs/token: {flops_per_token:.3e}")

    tokens_per_fwdbwd = m.device_batch_size * T * world
    grad_accum = m.total_batch_size // tokens_per_fwdbwd
    print(f"batch: {m.total_batch_size:,} tokens/step = {m.device_batch_size} x {T} x {grad_accum} accumulation steps"
          + (f" x {world} processes" if world > 1 else ""))
    optimizer = model.setup_optimizer(m, getattr(torch, P["ortho_dtype"]))
    scaler = torch.amp.GradScaler(device.type) if P["use_grad_scaler"] else None
    if P["compile"]:
        optimizer.compile_steps()
        model = torch.compile(model, dynamic=False)

    train_loader = make_dataloader(tokenizer, m.device_batch_size, T, "train", device=device, rank=rank, world_size=world)
    x, y, epoch = next(train_loader)

    # -- training loop: the clock starts after `excluded_steps` (compilation, warmup) --------
    # No host sync inside a step: step n's loss and end time are read while step n+1 is
    # already queued on the GPU, so the GPU never idles waiting for Python. (With cuDNN for
    # the full-context layers this took the H200 step from 333 to 320 ms; not measured apart.)
    excluded = s.excluded_steps
    t_train_start = time.time()
    # On CUDA a step's time is read on the GPU's clock, between the end events of consecutive
    # steps: the host reads step n only after queueing step n+1, and when that queueing runs
    # late its reading lands late too (one step reads long, the next short, the pair sums to
    # two steps). Idle gaps on the GPU (a loader stall, a slow host) still count in full.
    state = {"smooth": 0.0, "total_time": 0.0, "t_last": None, "last_event": None, "skipped": 0}
    loader_wait = 0.0                          # host seconds blocked on the loader (0 when prefetch keeps up)

    def retire(step_i, end_event, train_loss, lrm, progress, epoch):
        """Wait for step `step_i` to finish on the device, then account, check and print it."""
        if end_event is not None:
            end_event.synchronize()
        else:
            sync(device)
        now = time.time()
        if end_event is not None and state["last_event"] is not None:
            dt = state["last_event"].elapsed_time(end_event) / 1000
        else:
            dt = now - (state["t_last"] if state["t_last"] is not None else t_train_start)
        state["t_last"], state["last_event"] = now, end_event
        dt, loss_f = agree([dt, train_loss.item()], world, control)     # one clock, one verdict
        if not math.isfinite(loss_f) or loss_f > 100:
            if run:
                run.crash(f"diverged: train loss {loss_f} at step {step_i}",
                          {"num_steps": step_i, "training_seconds": state["total_time"]})
            sys.exit(1)
        if step_i >= excluded:
            state["total_time"] += dt
        state["smooth"] = 0.9 * state["smooth"] + 0.1 * loss_f
        debiased = state["smooth"] / (1 - 0.9 ** (step_i + 1))
        tok_s = m.total_batch_size / dt
        mfu = 100 * flops_per_token * tok_s / (P["peak_flops"] * world) if P["peak_flops"] else 0.0
        print(f"\rstep {step_i:05d} ({100 * progress:.1f}%) | loss: {debiased:.6f} | lrm: {lrm:.2f} | dt: {dt * 1000:.0f}ms | "
              f"tok/sec: {int(tok_s):,} | mfu: {mfu:.1f}% | epoch: {epoch} | "
              f"remaining: {max(0, budget - state['total_time']):.0f}s    ", end="", flush=True)

    step, pending = 0, None
    while True:
        progress = min(state["total_time"] / budget, 1.0)
        lrm = lr_multiplier(progress, m)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = weight_decay_at(progress, m)
        for _ in range(grad_accum):
            with autocast:
                loss = model(x, y)
            train_loss = loss.detach()
            loss = loss / grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            t_wait = time.perf_counter()
            x, y, epoch = next(train_loader)
            if step >= excluded:
                loader_wait += time.perf_counter() - t_wait
        if world > 1:
            all_reduce_gradients(model, world)
        if scaler:
            scaler.unscale_(optimizer)
            scale_before = scaler.get_scale()
            scaler.step(optimizer)             # skipped when the unscaled grads hold inf/nan
            scaler.update()
            state["skipped"] += scaler.get_scale() < scale_before
        else:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        end_event = None
        if device.type == "cuda":
            end_event = torch.cuda.Event(enable_timing=True)
            end_event.record()
        if pending is not None:
            retire(*pending)
        pending = (step, end_event, train_loss, lrm, progress, epoch)
        if step == 0:
            retire(*pending)                   # the compile step: time it alone
            pending = None
            gc.collect()
            gc.freeze()                       # ~500 ms GC pauses otherwise (upstream)
            gc.disable()
        step += 1
        if (step > excluded and state["total_time"] >= budget) or step == s.max_steps:
            break
    if pending is not None:
        retire(*pending)
    print()
    gc.enable()
    total_time, skipped = state["total_time"], state["skipped"]
    timed_steps = step - excluded

    # -- final evaluation (prepare.evaluate_bpb: the fixed metric) ------------------------------
    model.eval()
    t_eval = time.time()
    with autocast:
        val_bpb = evaluate_bpb(model, tokenizer, m.device_batch_size)
    eval_seconds = time.time() - t_eval
    if not math.isfinite(val_bpb):
        if run:
            run.crash(f"val_bpb is {val_bpb}", {"num_steps": step, "training_seconds": total_time})
        sys.exit(1)

    peak_vram_mb = torch.cuda.max_memory_allocated() / 1024 / 1024 if device.type == "cuda" else 0.0
    mfu = (100 * flops_per_token * m.total_batch_size * timed_steps / total_time / (P["peak_flops"] * world)
           if total_time > 0 and P["peak_flops"] else 0.0)
    metrics = {"val_bpb": val_bpb, "training_seconds": total_time, "total_seconds": time.time() - t_start,
               "startup_seconds": t_train_start - t_start, "eval_seconds": eval_seconds, "peak_vram_mb": peak_vram_mb,
               "mfu_percent": mfu, "total_tokens_M": step * m.total_batch_size / 1e6, "num_steps": step,
               "num_params_M": num_params / 1e6, "depth": m.depth, "skipped_steps": skipped,
               "tokens_per_second": m.total_batch_size * timed_steps / total_time if total_time > 0 else 0.0,
               "world_size": world, "loader_wait_seconds": loader_wait}
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
        if rank != 0:
            return
    row = run.finish(metrics)

    # -- summary: a public API (fixed keys, `key: value`) --------------------------------------
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {total_time:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {step * m.total_batch_size / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {m.depth}")
    print(f"tokens_per_sec:   {metrics['tokens_per_second']:.0f}")
    print(f"run_id:           {run.run_id}")
    print(f"status:           {row['status']}")
    print(f"mode:             {s.mode}")
    print(f"device:           {P['device']}")
    print(f"dtype:            {P['dtype']}")
    print(f"attention:        {P['attention']}")
    print(f"world_size:       {world}")


if __name__ == "__main__":
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:                      # recorded by the harness's excepthook, then printed
        sys.excepthook(*sys.exc_info())
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: triton's nanobind bindings print ~100 "leaked" lines at exit,
    # burying the summary block the agent reads with `tail`. Files are flushed above.
    os._exit(code)
