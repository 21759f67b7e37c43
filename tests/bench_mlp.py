"""The ReLU^2 MLP at the default shape on the GPU: plain compiled ops vs the fused Triton matmuls (not a test).

    python3 tests/bench_mlp.py [--configs "128,256,64,4,3,8;128,128,64,4,4,8"]

Prints the GPU, the time of each matmul alone (cuBLAS without epilogue vs the Triton kernel with it),
one MLP layer forward+backward per variant (ms, TFLOP/s over the 6 matmuls) and the fused output's
error against a float32 reference.
"""

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare  # noqa: E402
import bench_attention  # noqa: E402

timed = functools.partial(bench_attention.timed, iters=20)
ROWS, D = 128 * 2048, 512            # device_batch_size x sequence_len tokens, n_embd


def plain(x, w_fc, w_proj):
    return F.linear(F.relu(F.linear(x, w_fc)).square(), w_proj)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="auto", help="';'-separated BLOCK_M,BLOCK_N,BLOCK_K,stages_fwd,stages_bwd,warps")
    args = ap.parse_args()
    configs = [None if c == "auto" else tuple(int(v) for v in c.split(",")) for c in args.configs.split(";")]
    torch.manual_seed(0)
    dt = torch.bfloat16
    x = torch.randn(ROWS, D, device="cuda", dtype=dt, requires_grad=True)
    w_fc = (torch.randn(4 * D, D, device="cuda", dtype=dt) / D ** 0.5).requires_grad_()
    w_proj = (torch.randn(D, 4 * D, device="cuda", dtype=dt) / (4 * D) ** 0.5).requires_grad_()
    dy = torch.randn(ROWS, D, device="cuda", dtype=dt)
    mm_flops = 2 * ROWS * D * 4 * D
    print(f"GPU {torch.cuda.get_device_name()}  torch {torch.__version__}  rows {ROWS}  d {D}  bf16")

    a = F.relu(x.detach() @ w_fc.detach().t()).square()
    w_proj_t = w_proj.detach().t().contiguous()
    ms = timed(lambda: x.detach() @ w_fc.detach().t())
    print(f"  cuBLAS x W_fc^T (no epilogue)        {ms:7.3f} ms  {mm_flops / ms / 1e9:6.1f} TFLOP/s")
    ms = timed(lambda: dy @ w_proj.detach())
    print(f"  cuBLAS dy W_proj (no epilogue)       {ms:7.3f} ms  {mm_flops / ms / 1e9:6.1f} TFLOP/s")
    step = torch.compile(lambda *t: torch.autograd.grad(plain(*t), t, dy), dynamic=False)
    ms = timed(lambda: step(x, w_fc, w_proj))
    print(f"  MLP fwd+bwd, plain compiled          {ms:7.3f} ms  {6 * mm_flops / ms / 1e9:6.1f} TFLOP/s")
    ref = plain(*(t.detach()[:4096].float() if t is x else t.detach().float() for t in (x, w_fc, w_proj)))
    for cfg in configs:
        prepare.RELU2_MM_CONFIG = cfg
        name = "auto " + str(prepare._relu2_mm_config(x.device)) if cfg is None else str(cfg)
        try:
            ms_f = timed(lambda: prepare._relu2_mm(x.detach(), w_fc.detach()))
            ms_b = timed(lambda: prepare._relu2_mm(dy, w_proj_t, aux=a))
            fused = torch.compile(lambda *t: torch.autograd.grad(prepare.relu2_mlp(*t), t, dy), dynamic=False)
            ms = timed(lambda: fused(x, w_fc, w_proj))
            err = ((prepare.relu2_mlp(x.detach()[:4096], w_fc.detach(), w_proj.detach()).float() - ref).norm() / ref.norm()).item()
        except Exception as e:             # a config that does not fit this card's shared memory
            print(f"  {name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        print(f"  triton {name}: fwd {ms_f:6.3f} ms ({mm_flops / ms_f / 1e9:5.1f} TFLOP/s)  bwd {ms_b:6.3f} ms "
              f"({mm_flops / ms_b / 1e9:5.1f})  MLP fwd+bwd {ms:7.3f} ms ({6 * mm_flops / ms / 1e9:5.1f})  rel err {err:.2e}")


if __name__ == "__main__":
    main()
