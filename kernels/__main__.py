"""``polykernels info`` / ``bench`` / ``tune`` (also ``python -m polykernels ...``)."""
from __future__ import annotations

import argparse
import os
import sys


def _typical_inputs(device):
    """One typical input per op, small enough to build instantly on any device."""
    import torch

    import polykernels as pk
    dt = torch.bfloat16 if device.type != "cpu" else torch.float32
    q = torch.randn(1, 16, 8, 64, dtype=dt, device=device)
    kv = torch.randn(1, 16, 2, 64, dtype=dt, device=device)
    cu = torch.tensor([0, 16], dtype=torch.int32, device=device)
    cache = torch.randn(4, 16, 2, 64, dtype=dt, device=device)
    table = torch.arange(4, dtype=torch.int32, device=device)[None]
    lens = torch.tensor([40], dtype=torch.int32, device=device)
    a = torch.randn(32, 64, dtype=dt, device=device)
    w = torch.randn(48, 64, dtype=dt, device=device)
    qw, sc, _ = pk.quantize_weight(w, bits=4, group_size=32)
    a8, sa = pk.quantize_int8(a, per="row")
    b8, sb = pk.quantize_int8(w, per="row")
    lse = torch.randn(1, 8, 16, device=device)
    return {
        "attention": ((q, kv, kv), {"causal": True}),
        "varlen_attention": ((q[0], kv[0], kv[0], cu, cu, 16, 16), {"causal": True}),
        "paged_attention": ((q[:, :1], cache, cache, table, lens), {}),
        "write_kv_cache": ((kv[0], kv[0], cache.clone(), cache.clone(),
                            torch.arange(16, device=device)), {}),
        "merge_attention_states": ((q, lse, q, lse), {}),
        "matmul": ((a, w.t()), {"activation": "gelu"}),
        "linear": ((a, w), {}),
        "scaled_matmul": ((a8, b8.t(), sa, sb.reshape(-1)), {}),
        "quantized_linear": ((a, qw, sc), {"bits": 4, "group_size": 32}),
        "grouped_matmul": ((a, w.t().reshape(1, 64, 48).expand(2, 64, 48),
                            torch.tensor([20, 12], device=device)), {}),
    }


def _version() -> str:
    """The installed distribution's version, without importing torch."""
    try:
        from importlib.metadata import version
        return version("polykernels")
    except Exception:
        from . import __version__
        return __version__


def _resolve_device(name):
    """(torch.device, None) or (None, a sentence saying why ``name`` cannot be used here)."""
    import torch

    from polykernels.dispatch.accelerator import default_device
    if name is None:
        return default_device(), None
    try:
        device = torch.device(name)
    except RuntimeError as e:
        return None, f"'{name}' is not a torch device name ({e})"
    if device.type == "cuda":
        if not (torch.version.cuda or getattr(torch.version, "hip", None)):
            return None, (f"this torch ({torch.__version__}) is a CPU-only build, so there is no "
                          "'cuda' device; install a CUDA or ROCm build of torch to use a GPU")
        if not torch.cuda.is_available():
            return None, (f"torch {torch.__version__} has GPU support but sees no GPU here "
                          "(no device or no driver)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            return None, f"there is no {device}: {torch.cuda.device_count()} GPU(s) visible"
    return device, None


def _print_cpu() -> None:
    from polykernels.dispatch.accelerator import CPU_FEATURES, cpu_features
    model, have = cpu_features()
    print(f"cpu: {model}, {os.cpu_count()} logical cores")
    print(f"  features: {' '.join(f for f in CPU_FEATURES if f in have) or 'none of interest'}")
    amx = sorted(f for f in have if f.startswith("amx_"))
    print(f"  AMX: {'yes (' + ', '.join(amx) + ')' if amx else 'no'};  "
          f"AVX512-FP16: {'yes' if 'avx512_fp16' in have else 'no'};  "
          f"AVX512-BF16: {'yes' if 'avx512_bf16' in have else 'no'}")


def info(args) -> int:
    import torch

    import polykernels as pk
    print(f"polykernels {pk.__version__}")
    print(f"torch {torch.__version__} (cuda {torch.version.cuda}, hip {getattr(torch.version, 'hip', None)})")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton not installed")
    interp = os.environ.get("TRITON_INTERPRET", "0")
    print(f"TRITON_INTERPRET={interp}")
    _print_cpu()
    device, why_not = _resolve_device(args.device)
    if device is None:
        print(f"polykernels info: cannot use --device {args.device}: {why_not}", file=sys.stderr)
        return 2
    acc = pk.accelerator(device)
    print(f"accelerator: vendor={acc.vendor} device={device} name={acc.name!r} arch={acc.arch} "
          f"triton_target={acc.triton_target} multiprocessors={acc.multiprocessors}")
    from polykernels import _extension
    reason = _extension.unavailable_reason()
    print(f"C++ extension: {'loaded' if reason is None else reason}")
    if reason is None:
        ops = torch.ops.polykernels_C
        forced = os.environ.get("POLYKERNELS_CPU_ISA")
        print(f"  CPU kernel path: {ops.cpu_isa()} (best on this CPU: {ops.detected_cpu_isa()}, "
              f"default: {ops.default_cpu_isa()}"
              + (f"; POLYKERNELS_CPU_ISA={forced}" if forced else "") + ")")
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(
            "polykernels_C::cuda_paged_attention", "CUDA")
        print(f"  CUDA kernels: {'built' if has_cuda else 'not built (CPU-only torch or no nvcc at build time)'}")
    print("\nbackends:")
    for b in pk.backends():
        print(f"  {b['name']:<10} serves {','.join(b['device_types']):<8} "
              f"available={b['available']!s:<5} impls: {', '.join(b['impls']) or '-'}")
    from polykernels.dispatch import registry
    for name, err in registry.load_errors.items():
        print(f"  load error: {name}: {err}")
    print(f"\nselection for a typical input on {device}:")
    for op, (a, kw) in _typical_inputs(device).items():
        decision = pk.explain(op, *a, **kw)
        order = " > ".join(i.label for i in decision.candidates) or "none"
        print(f"  {op:<24} {order}")
        if args.verbose:
            for label, why in decision.refused.items():
                print(f"      refused {label}: {why}")
    return 0


def bench(args, rest) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (os.getcwd(), root):
        if os.path.exists(os.path.join(base, "benchmarks", "suite.py")):
            sys.path.insert(0, base)
            break
    else:
        print("polykernels bench: the benchmarks/ folder was not found (run from a source "
              "checkout: pip install -e . , or cd into it)", file=sys.stderr)
        return 2
    from benchmarks.suite import main as suite_main
    return suite_main(rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="polykernels")
    parser.add_argument("--version", action="version", version=f"polykernels {_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="versions, accelerator, backends, selection per op")
    p_info.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the accelerator)")
    p_info.add_argument("-v", "--verbose", action="store_true", help="show refusal reasons")
    sub.add_parser("bench", help="run the benchmark suite (options: polykernels bench --help)",
                   add_help=False)
    sub.add_parser("tune", help="measure and persist the impl choice for common model shapes "
                   "(options: polykernels tune --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "info":
        return info(args)
    if args.cmd == "tune":
        from .tune import main as tune_main
        return tune_main(rest)
    return bench(args, rest)


if __name__ == "__main__":
    sys.exit(main())
