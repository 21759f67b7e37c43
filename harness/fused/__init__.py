"""GPU kernels that train.py may call in place of plain PyTorch lines; they import only torch, triton, cudnn and
flash_attn (flash-attn-4, the optional extra fa4), besides the standard library.

    uv run pytest tests/test_model.py -k "triton or gluon or rope"   # the kernels in Triton's CPU interpreter
    python3 tests/test_gpu.py                                        # on a CUDA machine

Every kernel sits behind a torch.library custom op, so a compiled graph that calls it stays in
inductor's on-disk cache. Modules:
  cudnn_attention   causal attention with a sliding window on cuDNN's fused kernel (cudnn-frontend)
  fa4_attention     the same on FlashAttention 4's CuTe DSL kernels (flash-attn-4; Hopper, Blackwell)
  attention_op      the custom-op wiring (forward, backward, fake shapes, autograd) both attention kernels share
  softcap_loss      softcapped cross-entropy as two Triton row kernels
  rope_norm         rotary embedding + QK-norm as two Triton row kernels
  relu2_mlp         the ReLU^2 MLP with its activation inside two persistent TMA Triton matmuls
  relu2_gluon       the MLP backward's matmul as a Hopper (wgmma) Gluon kernel, checked on first use
"""

try:                      # not on macOS / Windows wheels: callers keep their plain-ops lines
    import triton
    import triton.language as tl
except ImportError:
    triton, tl = None, None
