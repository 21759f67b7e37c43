import torch, torch.nn.functional as F
torch.manual_seed(0)
for v in (30., 300., 3000.):
    x = torch.full((4, 512), v, dtype=torch.float16, device='cuda')
    print('rms_norm fp16 value', v, '->', F.rms_norm(x, (512,))[0, :2].tolist())
    with torch.autocast('cuda', dtype=torch.float16):
        y = F.rms_norm(x, (512,))
        print('  under autocast', y.dtype, y[0, :2].tolist())
# relu^2 in fp16: h > 256 overflows
h = torch.tensor([100., 255., 300.], dtype=torch.float16, device='cuda')
print('relu^2 fp16', torch.relu(h).square().tolist())
# SDPA fp16 vs fp32 on random q,k,v of growing scale, causal
for s in (1., 8., 30.):
    q, k, v = (torch.randn(2, 4, 2048, 128, device='cuda') * s for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = F.scaled_dot_product_attention(q.half(), k.half(), v.half(), is_causal=True).float()
    print('sdpa fp16 scale', s, 'rel err', ((got - ref).norm() / ref.norm()).item(), 'nan', bool(got.isnan().any()))
