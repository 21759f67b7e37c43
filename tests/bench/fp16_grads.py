"""How much of a training step's gradient survives fp16 at a given loss scale (not a test; prints figures).

    python tests/bench/fp16_grads.py [--rows 16] [--steps 0,30] [--scales 16,18,20,22,24]

The default model.json on real train tokens (T 2048, plain ops, the same weights in every variant): the fp32
gradient of one micro-batch is the reference; fp16 autocast at loss scale 2^k is unscaled and compared per
parameter kind (cosine with the reference, the share of entries that are zero where the reference is not, and
whether anything overflowed); bf16 autocast for comparison. The real run's loss is a mean over
device_batch_size x T tokens and grad_accum micro-steps, so a scale S there acts as S x rows / (128 x 2) here:
the table names each scale as the real run's equivalent (per token; a weight's gradient here sums rows/128 of the
tokens a real micro-step sums, so overflow here is rarer than there). --steps trains the model first (bf16,
train.py's own optimizer and schedules, on other rows) to see later points of a run.
"""

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

REAL_ROWS, REAL_ACCUM = 128, 2          # the default model.json on an H100: 128 x 2048 x 2 accumulation steps


def kind(name: str) -> str:
    for part in ("lm_head", "wte", "value_embeds", "c_q", "c_k", "c_v", "attn.c_proj", "c_fc", "mlp.c_proj",
                 "ve_gate", "lambdas"):
        if part in name:
            return part
    return "other"


def grads(model, x, y, dtype, scale: float) -> dict:
    model.zero_grad(set_to_none=True)
    if dtype is None:
        loss = model(x, y)
    else:
        with torch.autocast(x.device.type, dtype):
            loss = model(x, y)
    (loss / REAL_ACCUM * scale).backward()
    return {n: (p.grad.float() / scale).clone() for n, p in model.named_parameters() if p.grad is not None}


def compare(ref: dict, got: dict) -> dict:
    out = {}
    for n, r in ref.items():
        k = kind(n)
        g = got[n]
        a = out.setdefault(k, {"dot": 0.0, "rr": 0.0, "gg": 0.0, "lost": 0, "nonzero": 0, "inf": False})
        a["inf"] |= not bool(torch.isfinite(g).all())
        g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        a["dot"] += float((r.double() * g.double()).sum())
        a["rr"] += float((r.double() ** 2).sum())
        a["gg"] += float((g.double() ** 2).sum())
        nz = r != 0
        a["nonzero"] += int(nz.sum())
        a["lost"] += int((nz & (g == 0)).sum())
    for a in out.values():
        a["cos"] = a["dot"] / math.sqrt(max(a["rr"] * a["gg"], 1e-300))
        a["norm_ratio"] = math.sqrt(a["gg"] / max(a["rr"], 1e-300))
        a["lost_share"] = a["lost"] / max(a["nonzero"], 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--steps", default="0")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scales", default="16,18,20,22,24", help="log2 of the real run's loss scale")
    args = ap.parse_args()
    import train
    from harness.config import load_model
    from prepare import Tokenizer, make_dataloader
    dev = torch.device(args.device)
    m = load_model(REPO / "model.json")
    plain = {"attention": "sdpa", "mlp": "plain", "rope": "plain", "loss": "plain", "embedding_dtype": "float32",
             "dtype": "float32"}
    torch.manual_seed(42)
    model = train.build_model(train.build_config(m, 2048, 8192, plain), dev)
    optimizer = model.setup_optimizer(m, torch.bfloat16)
    loader = make_dataloader(Tokenizer.from_directory(), args.rows, 2048, "train", device=dev, seed=42)
    probe_x, probe_y, _ = next(loader)
    done = 0
    for target in sorted(int(s) for s in args.steps.split(",")):
        while done < target:             # train.py's optimizer and schedule, bf16, the probe rows never trained on
            x, y, _ = next(loader)
            train.set_schedules(optimizer, m, done, done / max(target, 1) * 0.5)
            with torch.autocast(x.device.type, torch.bfloat16):
                loss = model(x, y)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            done += 1
        ref = grads(model, probe_x, probe_y, None, 1.0)
        rows = [("bf16", compare(ref, grads(model, probe_x, probe_y, torch.bfloat16, 1.0)))]
        for k in (int(s) for s in args.scales.split(",")):
            here = 2.0 ** k * args.rows / REAL_ROWS     # the same weight per token as 2^k in the real run
            rows.append((f"fp16 2^{k}", compare(ref, grads(model, probe_x, probe_y, torch.float16, here))))
        with torch.no_grad():
            probe_loss = float(model(probe_x, probe_y))
        print(f"\n== after {done} steps (probe: {args.rows} rows x 2048, fp32 loss {probe_loss:.4f}) ==", flush=True)
        kinds = sorted(rows[0][1])
        print("variant      " + " ".join(f"{k:>22}" for k in kinds))
        for label, res in rows:
            print(f"{label:<12} " + " ".join(
                f"{res[k]['cos']:.4f}/{res[k]['lost_share']:.3f}{'/INF' if res[k]['inf'] else '    '}".rjust(22)
                for k in kinds))
        print("(each cell: cosine with the fp32 gradient / share of its nonzero entries lost to zero / INF: overflow)")


if __name__ == "__main__":
    main()
