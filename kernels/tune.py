"""``polykernels tune``: fill the measured-selection table ahead of time for the shapes of common
models, so a server measures nothing on its first requests (and every rank of a distributed
job reads the same choices).

For each model and token count it builds the layer shapes (q/k/v, o, gate/up, down linears;
int4 weight-only linears for decode; causal prefill attention; paged decode; the MoE experts'
grouped matmul) on random data and asks ``pk.explain`` for each, which measures the runnable
providers once and persists the order (kernels/dispatch/selection.py). Shapes already in the
table are not measured again.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    experts: int = 0      # MoE: experts per layer (top_k of them per token)
    top_k: int = 2


MODELS = {
    "llama-3-8b": Model(4096, 32, 8, 128, 14336),
    "qwen2.5-7b": Model(3584, 28, 4, 128, 18944),
    "mixtral-8x7b": Model(4096, 32, 8, 128, 14336, experts=8, top_k=2),
    "tiny": Model(256, 4, 2, 64, 512, experts=4, top_k=2),   # a quick smoke test of the tool
}
DECODE_CONTEXT = 4096      # tokens per sequence for paged decode
DECODE_BATCH = 8
BLOCK_SIZE = 16


def workloads(model: Model, tokens: int, dtype, device):
    """(name, op, args, kwargs) for one model at ``tokens`` tokens per forward pass."""
    import torch

    import polykernels as pk
    m, t = model, tokens
    rnd = lambda *shape: torch.randn(*shape, dtype=dtype, device=device) * 0.05  # noqa: E731
    x = rnd(t, m.hidden)
    out = []
    linears = {"qkv": ((m.heads + 2 * m.kv_heads) * m.head_dim, m.hidden),
               "o": (m.hidden, m.heads * m.head_dim)}
    if not m.experts:
        linears.update(gate_up=(2 * m.intermediate, m.hidden), down=(m.hidden, m.intermediate))
    for name, (n, k) in linears.items():
        xin = x if k == m.hidden else rnd(t, k)
        w = rnd(n, k)
        out.append((f"linear {name} {n}x{k}", "linear", (xin, w), {}))
        if t <= 16:   # decode-sized: weight-only int4, as servers quantise for memory
            qw, sc, zr = pk.quantize_weight(w, bits=4, group_size=128)
            out.append((f"int4 linear {name} {n}x{k}", "quantized_linear", (xin, qw, sc, zr),
                        {"bits": 4, "group_size": 128}))
    if m.experts:
        routed = t * m.top_k
        sizes = torch.full((m.experts,), routed // m.experts, dtype=torch.int64, device=device)
        sizes[: routed % m.experts] += 1
        w = rnd(m.experts, m.hidden, m.intermediate)
        out.append((f"experts gate {m.experts}x{m.hidden}x{m.intermediate}", "grouped_matmul",
                    (rnd(routed, m.hidden), w, sizes), {}))
    if t > 1:
        q = rnd(1, t, m.heads, m.head_dim)
        kv = rnd(1, t, m.kv_heads, m.head_dim)
        out.append((f"prefill attention S{t}", "attention", (q, kv, kv), {"causal": True}))
    else:
        blocks = DECODE_BATCH * DECODE_CONTEXT // BLOCK_SIZE
        cache = rnd(blocks, BLOCK_SIZE, m.kv_heads, m.head_dim)
        table = torch.arange(blocks, dtype=torch.int32, device=device).reshape(DECODE_BATCH, -1)
        lens = torch.full((DECODE_BATCH,), DECODE_CONTEXT, dtype=torch.int32, device=device)
        out.append((f"paged decode B{DECODE_BATCH} ctx{DECODE_CONTEXT}", "paged_attention",
                    (rnd(DECODE_BATCH, 1, m.heads, m.head_dim), cache, cache, table, lens), {}))
    return out


def main(argv=None) -> int:
    import torch

    import polykernels as pk
    from polykernels.dispatch import selection
    from polykernels.dispatch.accelerator import default_device
    parser = argparse.ArgumentParser(prog="polykernels tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama-3-8b,qwen2.5-7b,mixtral-8x7b",
                        help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--tokens", default="1,16,128,512",
                        help="tokens per forward pass (1 = decode; > 1 = prefill chunk)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the accelerator)")
    args = parser.parse_args(argv)
    if selection.policy() != "measure":
        print("polykernels tune: POLYKERNELS_SELECT=priority is set; nothing to measure")
        return 2
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    device = torch.device(args.device) if args.device else default_device()
    dtype = getattr(torch, args.dtype)
    print(f"polykernels tune on {device} ({pk.accelerator(device).name}), {args.dtype}; table: "
          f"{selection.table_path(device)}")
    for name in args.models.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            for label, op, a, kw in workloads(MODELS[name], tokens, dtype, device):
                t0 = time.perf_counter()
                d = pk.explain(op, *a, **kw)
                spent = (time.perf_counter() - t0) * 1e3
                times = ", ".join(f"{k} {v:.3g} ms" for k, v in sorted(d.times_ms.items(), key=lambda kv: kv[1]))
                print(f"  {name:<13} T={tokens:<4} {label:<36} -> {d.chosen.label if d.chosen else 'none':<18} "
                      f"[{d.how}; {times or 'one candidate'}] ({spent:.0f} ms)", flush=True)
    return 0
