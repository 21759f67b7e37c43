"""The experiment: a GPT trained for a fixed time budget, then scored by the harness's evaluate_bpb.

    uv run train.py [--description "what this run changes"] [--seed 43]

Owned by the agent: edit freely (architecture, optimizer, loop, schedule). Hyperparameters live in
model.json; the data, sequence length, budget and metric are fixed by ground.json and the harness
(harness/evaluate.py is the metric). The Session (harness/session.py) owns everything else: set-up,
the budget's clock, the record of every outcome (result, crash, interrupt, early stop) and the summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.session import Session, attention, relu2_mlp, rope_norm, softcap_cross_entropy

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
    attention: str = "sdpa"          # fa4 | fa3 | cudnn | flex | sdpa | reference (harness.attention; PLATFORM decides)
    fused_mlp: bool = False          # ReLU^2 inside two Triton matmuls (harness.fused.relu2_mlp)
    fused_rope: bool = False         # rotary + QK-norm as Triton kernels (harness.fused.rope_norm)
    fused_loss: bool = False         # softcapped cross-entropy as Triton kernels (harness.fused.softcap_loss)
    embedding_dtype: str = "float32"
    rotary_dtype: str = "float32"


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def has_ve(layer_idx, n_layer):
    """Value embeddings on alternating layers, the last always included (upstream)."""
    return layer_idx % 2 == (n_layer - 1) % 2


def apply_rotary_emb(x, cos, sin):
    """Halves (x1, x2) -> (x1 cos + x2 sin, x2 cos - x1 sin), written as x * cos + swap(x) * (sin, -sin)
    on a (..., 2, D/2) view: upstream's arithmetic bit for bit, but without slices and cat, so the
    compiled backward needs no zero-filled slice_scatter (docs/records/2026-11-26_step-kernels-h100-h200/)."""
    halves = x.unflatten(-1, (2, -1))
    signed_sin = torch.stack([sin, -sin], -2)
    return (halves * cos.unsqueeze(-2) + halves.flip(-2) * signed_sin).flatten(-2)


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
        self.ve_gate = None
        if has_ve(layer_idx, config.n_layer):
            self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False)
        self.backend = config.attention
        self.fused_rope = config.fused_rope

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
        if self.fused_rope:
            # the two lines below as two Triton kernels (harness.fused.rope_norm); another rotary or QK-norm:
            # change those lines and drop this branch
            q, k = rope_norm(q, cos, sin), rope_norm(k, cos, sin)
        else:
            q, k = norm(apply_rotary_emb(q, cos, sin)), norm(apply_rotary_emb(k, cos, sin))   # rotary, then QK-norm
        q, k = q.to(v.dtype), k.to(v.dtype)
        if self.n_kv_head < self.n_head:       # GQA: the backends take as many k, v heads as q heads
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=2) for t in (k, v))
        y = attention(q, k, v, window, self.backend)
        return self.c_proj(y.contiguous().view(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.fused = config.fused_mlp

    def forward(self, x):
        if self.fused:
            # the line below with ReLU^2 inside the matmuls (harness.fused.relu2_mlp), so the (tokens, 4d)
            # pre-activation is never stored; another activation: change that line and drop this branch
            return relu2_mlp(x, self.c_fc.weight, self.c_proj.weight)
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
        adamw = dict(kind="adamw", betas=betas, eps=1e-10, weight_decay=0.0)
        groups = [
            dict(adamw, params=list(self.lm_head.parameters()), lr=m.unembedding_lr * scale),
            dict(adamw, params=list(self.transformer.wte.parameters()), lr=m.embedding_lr * scale),
            dict(adamw, params=list(self.value_embeds.parameters()), lr=m.embedding_lr * scale),
            dict(adamw, params=[self.resid_lambdas], lr=m.scalar_lr * 0.01),
            dict(adamw, params=[self.x0_lambdas], lr=m.scalar_lr, betas=(0.96, 0.95)),
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
        if self.config.fused_loss and targets is not None and reduction == "mean":
            # the three lines below as two Triton kernels, one read of the logits each way (harness.fused.softcap_loss)
            return softcap_cross_entropy(logits, targets, softcap)
        logits = softcap * torch.tanh(logits.float() / softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction)


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
        # The steps run uncompiled: compiling them cost ~12 s at every new model shape, for under 1% of a step
        # (docs/records/2026-11-28_new-shape-overhead-h200/). Their scalars are 0-d CPU tensors, read by the
        # kernels without a device sync.
        self._t = {k: torch.tensor(0.0) for k in ("step", "lr", "b1", "b2", "eps", "wd", "mom", "mlr", "mwd", "mb2")}

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
            adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], t["step"], t["lr"], t["b1"], t["b2"],
                       t["eps"], t["wd"])

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
        muon_step(grads, stacked, state["momentum_buffer"], state["second_momentum_buffer"], t["mom"], t["mlr"],
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


def set_schedules(optimizer, m, step, progress):
    """LR, Muon momentum and weight decay for this step; returns the LR multiplier."""
    lrm = lr_multiplier(progress, m)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum(step)
            group["weight_decay"] = weight_decay_at(progress, m)
    return lrm


# ---------------------------------------------------------------------------
# Setup: the model's config from model.json and PLATFORM, decided once
# ---------------------------------------------------------------------------

def build_config(m, T, vocab_size, platform):
    """One dial (depth) -> width -> heads; attention backend and fused kernels from PLATFORM."""
    base_dim = m.depth * m.aspect_ratio
    model_dim = -(-base_dim // m.head_dim) * m.head_dim        # round up to a whole number of heads
    n_head = model_dim // m.head_dim
    assert model_dim % n_head == 0, f"model_dim {model_dim} must divide into {n_head} heads"
    return GPTConfig(sequence_len=T, vocab_size=vocab_size, n_layer=m.depth, n_head=n_head, n_kv_head=n_head,
                     n_embd=model_dim, window_pattern=m.window_pattern, attention=platform["attention"],
                     fused_mlp=platform["mlp"] == "triton" and model_dim % 8 == 0,          # TMA: 16-byte rows
                     fused_rope=platform["rope"] == "triton" and m.head_dim & (m.head_dim - 1) == 0,
                     fused_loss=platform["loss"] == "triton",
                     embedding_dtype=platform["embedding_dtype"], rotary_dtype=platform["dtype"])


def build_model(config, device):
    """The GPT on `device`, initialized."""
    print(f"model config: {config}")
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    return model


# ---------------------------------------------------------------------------
# Main: set up, train for the budget, evaluate (the Session records every outcome)
# ---------------------------------------------------------------------------

def main():
    run = Session.open()                       # arguments, settings, PLATFORM, processes, tokenizer, seed
    m, P = run.model_config, run.platform
    config = build_config(m, run.seq_len, run.vocab_size, P)
    config.attention = run.confirm_attention(config.n_head, config.n_embd // config.n_head,
                                             GPT._compute_window_sizes(config))   # starts the run's record
    model = build_model(config, run.device)
    optimizer = model.setup_optimizer(m, run.ortho_dtype)
    model = run.prepare(model)                 # counted, broadcast, compiled as PLATFORM says
    scaler = run.grad_scaler()                 # fp16 (Volta/Turing): loss scaling; else None
    train_loader = run.train_loader()          # at the device_batch_size this card holds (<= model.json's)
    x, y, epoch = next(train_loader)

    for step in run.steps():                   # until the budget (or max_steps) is spent, or an early stop
        lrm = set_schedules(optimizer, m, step, run.progress)
        for _ in range(run.grad_accum):
            with run.autocast:
                loss = model(x, y)
            train_loss = loss.detach()
            loss = loss / run.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
            x, y, epoch = next(train_loader)
        run.sync_gradients(model)
        if scaler:
            scaler.unscale_(optimizer)
            scaler.step(optimizer)             # skipped when the unscaled grads hold inf/nan
            scaler.update()
        else:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        run.lap(train_loss, lrm=lrm, epoch=epoch)

    run.finish(model)                          # val_bpb (the fixed metric), the record, the `---` summary


if __name__ == "__main__":
    main()
