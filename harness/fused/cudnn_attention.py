"""Causal attention with a sliding window on cuDNN's fused kernel, through NVIDIA's cudnn-frontend.

    python3 tests/test_gpu.py        # against the reference attention, outputs and gradients (CUDA)

PyTorch's SDPA reaches cuDNN's fused attention only for full-causal masks; the frontend's graph
API also takes a diagonal band, so the windowed ('S') layers run on the same kernel
(docs/records/2026-11-26_step-kernels-h100-h200/). Graphs are built once per shape and kept.
"""

from __future__ import annotations

import torch

from harness.fused.attention_op import attention_op

_CUDNN: dict = {}          # "module" -> (module|None, reason); (kind, shapes, window, device) -> built graph


def load_cudnn_frontend():
    """Import cudnn-frontend and check it can talk to the cuDNN torch loaded. (module|None, reason)."""
    if "module" not in _CUDNN:
        try:
            import cudnn
            torch.backends.cudnn.version()          # loads torch's libcudnn first, so the frontend finds it
            backend = cudnn.backend_version()
            _CUDNN["module"] = (cudnn, f"cudnn-frontend {cudnn.__version__} on cuDNN {backend}")
            # whether this cuDNN takes the model's shapes and windows is checked by building the
            # graphs before compiling (harness.attention.confirm_attention), not guessed from versions
        except Exception as e:  # noqa: BLE001 - missing package or library means "not loadable"
            _CUDNN["module"] = (None, f"cudnn-frontend not loadable ({type(e).__name__}: {str(e)[:80]})")
    return _CUDNN["module"]


def build_graph(kind: str, q: torch.Tensor, window: int):
    """Build (once per shape) the cuDNN graph for attention 'fwd' or 'bwd' on (B, T, H, D) tensors."""
    B, T, H, D = q.shape
    key = (kind, B, T, H, D, window, q.dtype, q.device.index)
    if key in _CUDNN:
        return _CUDNN[key]
    cudnn = load_cudnn_frontend()[0]
    io = {torch.bfloat16: cudnn.data_type.BFLOAT16, torch.float16: cudnn.data_type.HALF}[q.dtype]
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=cudnn_handle(q.device))
    dims, strides = [B, H, T, D], [T * H * D, D, H * D, 1]        # (B, T, H, D) memory seen as (B, H, T, D)
    stat_dims, stat_strides = [B, H, T, 1], [H * T, T, 1, 1]
    inputs = {n: graph.tensor(name=n, dim=dims, stride=strides, data_type=io) for n in ("q", "k", "v")}
    # keys j <= i and, for a window w, i - j <= w (FlexAttention / FA3 window_size=(w, 0) semantics)
    band = {"diagonal_alignment": cudnn.diagonal_alignment.TOP_LEFT, "diagonal_band_right_bound": 0}
    if window < T - 1:
        band["diagonal_band_left_bound"] = window + 1
    if kind == "fwd":
        o, stats = graph.sdpa(name="attn", **inputs, generate_stats=True, attn_scale=D ** -0.5, **band)
        o.set_output(True).set_dim(dims).set_stride(strides)
        stats.set_output(True).set_dim(stat_dims).set_stride(stat_strides).set_data_type(cudnn.data_type.FLOAT)
        outputs = {"o": o, "stats": stats}
    else:
        inputs["o"] = graph.tensor(name="o", dim=dims, stride=strides, data_type=io)
        inputs["dO"] = graph.tensor(name="dO", dim=dims, stride=strides, data_type=io)
        inputs["stats"] = graph.tensor(name="stats", dim=stat_dims, stride=stat_strides,
                                       data_type=cudnn.data_type.FLOAT)
        dq, dk, dv = graph.sdpa_backward(name="attn_bwd", **inputs, attn_scale=D ** -0.5, **band)
        for t in (dq, dk, dv):
            t.set_output(True).set_dim(dims).set_stride(strides)
        outputs = {"dq": dq, "dk": dk, "dv": dv}
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    _CUDNN[key] = (graph, {**inputs, **outputs})
    return _CUDNN[key]


def cudnn_handle(device: torch.device):
    key = ("handle", device.index)
    if key not in _CUDNN:
        with torch.cuda.device(device):
            _CUDNN[key] = load_cudnn_frontend()[0].create_handle()
    return _CUDNN[key]


def _cudnn_execute(kind: str, window: int, **tensors: torch.Tensor) -> None:
    graph, names = build_graph(kind, tensors["q"], window)
    device = tensors["q"].device
    cudnn = load_cudnn_frontend()[0]
    handle = cudnn_handle(device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    workspace = torch.empty(max(graph.get_workspace_size(), 1), dtype=torch.uint8, device=device)
    graph.execute({names[n]: t for n, t in tensors.items()}, workspace, handle=handle)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, T, H, _ = q.shape
    o, stats = torch.empty_like(q), torch.empty(B, H, T, 1, dtype=torch.float32, device=q.device)
    _cudnn_execute("fwd", window, q=q, k=k, v=v, o=o, stats=stats)
    return o, stats


def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              stats: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, o, dout = (t.contiguous() for t in (q, k, v, o, dout))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _cudnn_execute("bwd", window, q=q, k=k, v=v, o=o, dO=dout, stats=stats.contiguous(), dq=dq, dk=dk, dv=dv)
    return dq, dk, dv


# causal attention over keys i - window <= j <= i, (B, T, H, D) in and out, bf16/fp16 on CUDA
cudnn_attention = attention_op("cudnn_attention", _forward, _backward, lambda B, H, T: (B, H, T, 1))
