"""The ReLU^2 MLP at the default shape on the GPU: plain compiled ops vs the fused Triton and Gluon matmuls.

Not a test: prints figures.

    python3 tests/bench/bench_mlp.py [--configs "128,256,64,4,3,8;128,128,64,4,4,8"] \
        [--gluon "128,256,64,3;128,256,32,6"]

Prints the GPU, the time of each matmul alone (cuBLAS without epilogue vs the Triton and Gluon kernels with
it, each kernel's error against a float32 reference on outputs poisoned with NaN beforehand), and one MLP
layer forward+backward per variant (ms, TFLOP/s over the 6 matmuls).
"""

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention  # noqa: E402
from harness.fused import relu2_gluon, relu2_mlp  # noqa: E402

timed = functools.partial(bench_attention.timed, iters=20)
ROWS, D = 128 * 2048, 512            # device_batch_size x sequence_len tokens, n_embd


def plain(x, w_fc, w_proj):
    return F.linear(F.relu(F.linear(x, w_fc)).square(), w_proj)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="auto",
                    help="';'-separated BLOCK_M,BLOCK_N,BLOCK_K,stages_fwd,stages_bwd,warps")
    ap.add_argument("--gluon", default="128,256,32,6;128,256,64,3",
                    help="';'-separated Gluon BLOCK_M,BLOCK_N,BLOCK_K,buffers ('' skips)")
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
    gluon_ok = relu2_gluon.GluonGate().usable(x.device, backward=True)
    for cfg in configs:                          # the Triton kernels first
        name = "auto " + str(relu2_mlp.matmul_config(x.device)) if cfg is None else str(cfg)
        try:
            ms_f = timed(lambda: relu2_mlp.relu2_matmul(x.detach(), w_fc.detach(), config=cfg))
            ms_b = timed(lambda: relu2_mlp.relu2_matmul(dy, w_proj_t, aux=a, config=cfg))
            with relu2_mlp.kernel_choice(None, cfg):
                torch._dynamo.reset()
                fused = torch.compile(lambda *t: torch.autograd.grad(relu2_mlp.relu2_mlp(*t), t, dy), dynamic=False)
                ms = timed(lambda: fused(x, w_fc, w_proj))
                err = ((relu2_mlp.relu2_mlp(x.detach()[:4096], w_fc.detach(), w_proj.detach()).float() - ref).norm()
                       / ref.norm()).item()
        except Exception as e:             # a config that does not fit this card's shared memory
            print(f"  {name}: failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        print(f"  triton {name}: fwd {ms_f:6.3f} ms ({mm_flops / ms_f / 1e9:5.1f} TFLOP/s)  bwd {ms_b:6.3f} ms "
              f"({mm_flops / ms_b / 1e9:5.1f})  MLP fwd+bwd {ms:7.3f} ms ({6 * mm_flops / ms / 1e9:5.1f})  rel err "
              f"{err:.2e}")
    if args.gluon and gluon_ok:
        gluon_variants(args, x.detach(), w_fc.detach(), w_proj.detach(), dy, a, mm_flops)


def rel_err(run, ref):
    """Error of run() against ref, with the caching allocator's next block of that size poisoned with NaN first
    (an element the kernel never writes shows as NaN)."""
    poison = torch.full_like(ref, float("nan"), dtype=torch.bfloat16)
    del poison
    out = run()
    return ((out.float() - ref).norm() / ref.norm()).item()


def gluon_variants(args, x, w_fc, w_proj, dy, a, mm_flops):
    """The Gluon kernels (relu2_gluon.gluon_matmul) per config: each matmul alone with its error, and the
    MLP layer with the Gluon backward, then with the Gluon forward too."""
    ref_f = torch.relu(x.float() @ w_fc.float().t()).square()
    ref_b = (dy.float() @ w_proj.float()) * 2 * a.float().sqrt()
    w_fc_t = w_fc.t().contiguous()
    for cfg in args.gluon.split(";"):
        blocks = tuple(int(v) for v in cfg.split(","))
        kernel = functools.partial(relu2_gluon.gluon_matmul, config=blocks)
        try:
            err_f = rel_err(lambda: kernel(x, w_fc_t), ref_f)
            err_b = rel_err(lambda: kernel(dy, w_proj, aux=a), ref_b)
            ms_f = timed(lambda: kernel(x, w_fc_t))
            ms_b = timed(lambda: kernel(dy, w_proj, aux=a))
        except Exception as e:
            print(f"  gluon {cfg}: failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        print(f"  gluon {cfg}: fwd {ms_f:6.3f} ms ({mm_flops / ms_f / 1e9:5.1f} TFLOP/s, err {err_f:.1e})  "
              f"bwd {ms_b:6.3f} ms ({mm_flops / ms_b / 1e9:5.1f}, err {err_b:.1e})")
        xg, wf, wp = (t.clone().requires_grad_() for t in (x, w_fc, w_proj))
        for forward in (False, True):
            with relu2_mlp.kernel_choice(relu2_gluon.GluonGate(forward=forward, kernel=kernel)):
                torch._dynamo.reset()
                fused = torch.compile(lambda *t: torch.autograd.grad(relu2_mlp.relu2_mlp(*t), t, dy), dynamic=False)
                ms = timed(lambda: fused(xg, wf, wp))
            print(f"    MLP fwd+bwd, Gluon backward{' and forward' if forward else ''}: {ms:7.3f} ms "
                  f"({6 * mm_flops / ms / 1e9:5.1f} TFLOP/s)")


if __name__ == "__main__":
    main()
