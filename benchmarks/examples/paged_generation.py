"""Greedy generation for a Llama-shaped model through polykernels' serving ops, checked token for
token against transformers' ``generate`` on the same weights.

(Examples live under ``benchmarks/examples/``: the repository's top-level folders are fixed, and
this is a runnable end-to-end workload with a timing, next to the per-op benchmarks.)

The model comes from transformers (``LlamaConfig`` with random weights; ``--tiny`` for a few
seconds' run). Its weights are copied into a decode loop of our own:

- every projection (fused QKV, output, fused gate/up with SiLU, down, LM head) is ``pk.linear``;
- the KV cache is paged: per layer ``k_cache`` / ``v_cache`` ``[num_blocks, block_size,
  kv_heads, head_dim]``, blocks handed out from a free list as sequences grow, one block table
  row per sequence; new keys and values are scattered with ``pk.write_kv_cache``;
- attention is one ``pk.varlen_paged_attention`` call per layer and step for the whole batch:
  prompts (prefill: many query rows) and running sequences (decode: one row) go through the same
  call. Sequences arrive staggered (``--arrival-gap``), so most steps mix a new sequence's
  prefill with the others' decode: continuous batching, no padding anywhere.

transformers runs the same prompts as one left-padded batch through ``generate`` (greedy,
"sdpa" attention). The script prints both token lists' agreement and tokens/s for each.

    python benchmarks/examples/paged_generation.py --tiny
    python benchmarks/examples/paged_generation.py            # a ~38M-parameter model
    python benchmarks/examples/paged_generation.py --dtype bfloat16

``main(argv)`` returns a dict with the token lists ("ours", "transformers") and timings, for
tests/test_example_generation.py.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

import polykernels as pk
from polykernels.integrations import guard_kernels_name


# -- the model, from transformers ---------------------------------------------------------------

def build_model(tiny: bool, dtype: torch.dtype, seed: int):
    """A Llama-shaped transformers model with random weights (and no EOS: every sequence
    generates exactly the requested number of tokens on both sides)."""
    guard_kernels_name()      # run from a checkout's root, `kernels/` must not pass for HF's kernels
    from transformers import AutoModelForCausalLM, LlamaConfig
    if tiny:
        shape = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4,
                     num_key_value_heads=2, num_hidden_layers=2, vocab_size=256)
    else:
        shape = dict(hidden_size=768, intermediate_size=2048, num_attention_heads=12,
                     num_key_value_heads=4, num_hidden_layers=4, vocab_size=8192)
    cfg = LlamaConfig(**shape, max_position_embeddings=2048, initializer_range=0.1,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="sdpa")
    return model.to(dtype).eval()


class PagedLlama:
    """Our decode loop's model: the transformers model's weights, run with pk ops."""

    def __init__(self, model, block_size: int, num_blocks: int):
        cfg = model.config
        self.dtype = next(model.parameters()).dtype
        self.hq, self.hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.hq
        self.eps = cfg.rms_norm_eps
        rope = getattr(cfg, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise NotImplementedError(f"rope_type {rope.get('rope_type')}: only the default RoPE")
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        inv_freq = 1.0 / theta ** (torch.arange(0, self.d, 2, dtype=torch.float32) / self.d)
        freqs = torch.outer(torch.arange(cfg.max_position_embeddings, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], -1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        m = model.model
        self.embed = m.embed_tokens.weight.detach()
        self.layers = []
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                ln1=layer.input_layernorm.weight.detach(),
                qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach(),
                o=a.o_proj.weight.detach(),
                ln2=layer.post_attention_layernorm.weight.detach(),
                gate=mlp.gate_proj.weight.detach(), up=mlp.up_proj.weight.detach(),
                down=mlp.down_proj.weight.detach(),
                k_cache=torch.zeros(num_blocks, block_size, self.hkv, self.d, dtype=self.dtype),
                v_cache=torch.zeros(num_blocks, block_size, self.hkv, self.d, dtype=self.dtype)))
        self.norm = m.norm.weight.detach()
        self.lm_head = model.lm_head.weight.detach()
        self.block_size = block_size
        self.free_blocks = list(range(num_blocks - 1, -1, -1))

    def rms_norm(self, x, w):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def rope(self, x, pos):                  # x [T, H, D], pos [T]
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        x1, x2 = x[..., : self.d // 2], x[..., self.d // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, tokens, pos, slots, block_table, seq_lens, cu_q, max_q, last_rows):
        """One step for a packed batch: tokens/pos/slots [T], block_table int32 [S, blocks],
        seq_lens int32 [S] (cached tokens including these), cu_q int32 [S + 1]. Returns the
        next token of each sequence (greedy), from the rows last_rows [S]."""
        h = self.embed[tokens]
        nq, nkv, d = self.hq * self.d, self.hkv * self.d, self.d
        for w in self.layers:
            x = self.rms_norm(h, w["ln1"])
            qkv = pk.linear(x, w["qkv"])
            q = self.rope(qkv[:, :nq].view(-1, self.hq, d), pos)
            k = self.rope(qkv[:, nq:nq + nkv].view(-1, self.hkv, d), pos)
            v = qkv[:, nq + nkv:].view(-1, self.hkv, d)
            pk.write_kv_cache(k, v, w["k_cache"], w["v_cache"], slots)
            attn = pk.varlen_paged_attention(q, w["k_cache"], w["v_cache"], block_table, seq_lens,
                                             cu_q, max_q)          # causal, bottom-right
            h = h + pk.linear(attn.reshape(-1, nq), w["o"])
            x = self.rms_norm(h, w["ln2"])
            h = h + pk.linear(pk.linear(x, w["gate"], activation="silu") * pk.linear(x, w["up"]),
                              w["down"])
        x = self.rms_norm(h[last_rows], self.norm)
        return pk.linear(x, self.lm_head).argmax(-1)


def generate_paged(model: PagedLlama, prompts: list, max_new_tokens: int, arrival_gap: int):
    """Continuous batching: sequence i joins at step i * arrival_gap; each step feeds every
    active sequence its pending tokens (the whole prompt on arrival, then one token) through
    one forward. Returns the generated tokens per sequence."""
    n = len(prompts)
    out = [[] for _ in range(n)]
    cached = [0] * n                          # tokens already in the cache
    blocks = [[] for _ in range(n)]
    max_blocks = max((len(p) + max_new_tokens + model.block_size - 1) // model.block_size
                     for p in prompts)
    step = 0
    while any(len(o) < max_new_tokens for o in out):
        active = [i for i in range(n) if step >= i * arrival_gap and len(out[i]) < max_new_tokens]
        step += 1
        if not active:
            continue
        tokens, pos, slots, lens, q_lens = [], [], [], [], []
        for i in active:
            new = prompts[i] if cached[i] == 0 else [out[i][-1]]
            start = cached[i]
            while len(blocks[i]) * model.block_size < start + len(new):
                blocks[i].append(model.free_blocks.pop())
            p = list(range(start, start + len(new)))
            tokens += new
            pos += p
            slots += [blocks[i][t // model.block_size] * model.block_size + t % model.block_size
                      for t in p]
            cached[i] = start + len(new)
            lens.append(cached[i])
            q_lens.append(len(new))
        table = torch.zeros(len(active), max_blocks, dtype=torch.int32)
        for r, i in enumerate(active):
            table[r, :len(blocks[i])] = torch.tensor(blocks[i], dtype=torch.int32)
        cu = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        nxt = model.forward(torch.tensor(tokens), torch.tensor(pos), torch.tensor(slots),
                            table, torch.tensor(lens, dtype=torch.int32), cu, max(q_lens),
                            cu[1:].long() - 1)
        for r, i in enumerate(active):
            out[i].append(int(nxt[r]))
    for b in blocks:                          # hand the blocks back
        model.free_blocks.extend(reversed(b))
    return out


def generate_transformers(model, prompts: list, max_new_tokens: int):
    """transformers' greedy generate on one left-padded batch; the new tokens per sequence."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0)
    return gen[:, width:].tolist()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny model, a few seconds (CI)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=4, help="number of prompts")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens to generate per prompt")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--arrival-gap", type=int, default=1,
                    help="steps between sequence arrivals (0: all prefill in the first step)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    new_tokens = args.new_tokens or (8 if args.tiny else 32)
    block_size = args.block_size or (4 if args.tiny else 16)

    model = build_model(args.tiny, dtype, args.seed)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    base = 5 if args.tiny else 48
    prompts = [torch.randint(1, vocab, (base + 7 * i + (3 if i % 2 else 0),), generator=gen).tolist()
               for i in range(args.batch)]
    longest = max(len(p) for p in prompts) + new_tokens
    num_blocks = args.batch * ((longest + block_size - 1) // block_size)
    ours = PagedLlama(model, block_size, num_blocks)

    with torch.inference_mode():
        if not args.tiny:                     # warm-up: first calls choose impls, fill caches
            generate_paged(ours, prompts, 2, args.arrival_gap)
        t0 = time.perf_counter()
        toks = generate_paged(ours, prompts, new_tokens, args.arrival_gap)
        t_ours = time.perf_counter() - t0
    if not args.tiny:
        generate_transformers(model, prompts, 2)
    t0 = time.perf_counter()
    ref = generate_transformers(model, prompts, new_tokens)
    t_ref = time.perf_counter() - t0

    total = len(prompts) * new_tokens
    same = sum(a == b for x, y in zip(toks, ref) for a, b in zip(x, y))
    params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama-shaped, {params / 1e6:.1f}M parameters, {args.dtype}; "
          f"{len(prompts)} prompts of {[len(p) for p in prompts]} tokens, {new_tokens} new tokens "
          f"each; paged cache block {block_size}, arrival gap {args.arrival_gap}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"polykernels (paged, pk.linear):  {total / t_ours:8.1f} tokens/s  ({t_ours:.2f} s)")
    print(f"transformers generate (sdpa):    {total / t_ref:8.1f} tokens/s  ({t_ref:.2f} s)")
    print(f"tokens equal: {same}/{total}" + ("" if same == total else "  (MISMATCH)"))
    if same != total and dtype != torch.float32:
        print("(outside fp32 the two sides round differently, so greedy paths may part)")
    return {"ours": toks, "transformers": ref, "prompts": prompts, "ours_s": t_ours,
            "transformers_s": t_ref, "tokens": total, "dtype": args.dtype}


if __name__ == "__main__":
    result = main()
    raise SystemExit(1 if result["dtype"] == "float32" and result["ours"] != result["transformers"]
                     else 0)
