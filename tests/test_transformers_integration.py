"""polykernels as a transformers attention implementation (polykernels.integrations.transformers).

Tiny random-weight models, fp32: logits of attn_implementation="polykernels" against "sdpa"
(or "eager" for softcap / attention sinks, which SDPA lacks) on a plain batch, a right-padded
and a left-padded batch, and greedy generate token for token; the mask analysis against exact
dense attention on masks built by transformers itself; the `kernels` name clash (the folder
kernels/ versus Hugging Face's `kernels` package, which transformers probes).

transformers is a test extra (pyproject [test], installed by README's test command): its tests
skip without it (the GPU machine runs `-m gpu` with no extras), and
test_transformers_is_installed fails wherever the full suite runs without it.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHT_STD = 0.3     # peaked attention, so a wrong mask or window changes the logits visibly
ATOL = 1e-4          # fp32; observed differences are ~1e-5 on logits of magnitude ~10


def test_transformers_is_installed():
    """The tests below skip without transformers (for the GPU machine's `-m gpu` run);
    everywhere the full suite runs, README's command installs '.[test]', so a missing
    transformers here is an install problem, not a reason to skip them."""
    assert importlib.util.find_spec("transformers") is not None, "pip install -e '.[test]'"


@pytest.fixture(scope="module")
def pkt():
    pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[test]')")
    import polykernels.integrations.transformers as pkt
    assert pkt.register() == "polykernels"
    return pkt


def _pair(cfg, reference="sdpa"):
    """The same random weights under `reference` and under "polykernels"."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=reference).eval()
    ours = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="polykernels").eval()
    ours.load_state_dict(ref.state_dict())
    assert ref.config._attn_implementation == reference
    assert ours.config._attn_implementation == "polykernels"
    return ref, ours


def _configs():
    from transformers import Gemma2Config, GptOssConfig, LlamaConfig, MistralConfig, Qwen2Config
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=128,
                 initializer_range=WEIGHT_STD)
    return {
        # GQA 4/2
        "llama": (LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **small), "sdpa"),
        # layer 0 full attention, layer 1 sliding window 4 < sequence length 12; GQA 4/2
        "qwen2": (Qwen2Config(num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                              sliding_window=4, max_window_layers=1, **small), "sdpa"),
        # sliding window 5 on every layer; MQA 4/1
        "mistral": (MistralConfig(num_attention_heads=4, num_key_value_heads=1, sliding_window=5,
                                  **small), "sdpa"),
        # softcap 2.0 on the scores, alternating sliding window 5 (SDPA has no softcap: eager)
        "gemma2": (Gemma2Config(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                sliding_window=5, attn_logit_softcapping=2.0, **small), "eager"),
        # attention sinks (s_aux), sliding + full layers, MoE (SDPA has no sinks: eager)
        "gpt_oss": (GptOssConfig(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 num_local_experts=4, num_experts_per_tok=2, sliding_window=5,
                                 layer_types=["sliding_attention", "full_attention"],
                                 **{**small, "intermediate_size": 64}), "eager"),
    }


@pytest.fixture(scope="module")
def models(pkt):
    cache = {}

    def get(name):
        if name not in cache:
            cfg, reference = _configs()[name]
            cache[name] = _pair(cfg, reference)
        return cache[name]
    return get


IDS_SHAPE = (3, 12)


def _masks():
    full = torch.ones(IDS_SHAPE, dtype=torch.long)
    right = full.clone()
    right[1, 8:] = 0
    right[2, 5:] = 0
    left = full.clone()
    left[1, :4] = 0
    left[2, :7] = 0
    return {"none": None, "ones": full, "right": right, "left": left}


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "gemma2", "gpt_oss"])
def test_logits_match(pkt, models, name):
    ref, ours = models(name)
    torch.manual_seed(1)
    ids = torch.randint(0, 128, IDS_SHAPE)
    for padding, mask in _masks().items():
        pkt.path_counts.clear()
        with torch.no_grad():
            want = ref(ids, attention_mask=mask).logits
            got = ours(ids, attention_mask=mask).logits
        valid = torch.ones(IDS_SHAPE, dtype=torch.bool) if mask is None else mask.bool()
        err = (got - want)[valid].abs().max().item()
        assert err < ATOL, f"{name} {padding}: max |logit error| {err} at non-padded positions"
        if name in ("llama", "qwen2", "mistral"):   # SDPA: padded positions agree as well
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        # never silently dense: padded batches go through varlen, the rest through attention
        assert pkt.path_counts["dense"] == 0, (padding, dict(pkt.path_counts))
        if padding in ("right", "left"):
            assert pkt.path_counts["varlen"] > 0, (padding, dict(pkt.path_counts))


@pytest.mark.parametrize("name, padding", [("llama", "left"), ("llama", "none"),
                                           ("qwen2", "left"), ("mistral", "right"),
                                           ("gpt_oss", "left")])
def test_greedy_generate_matches(pkt, models, name, padding):
    ref, ours = models(name)
    torch.manual_seed(2)
    ids = torch.randint(1, 128, IDS_SHAPE)
    mask = _masks()[padding]
    if mask is None:
        ids = ids[:1]
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = ref.generate(ids, **kw)
    got = ours.generate(ids, **kw)
    assert torch.equal(got, want), f"{name} {padding}:\n{got}\n{want}"


def test_static_cache_generate_matches(pkt, models):
    ref, ours = models("qwen2")
    torch.manual_seed(3)
    ids = torch.randint(1, 128, IDS_SHAPE)
    kw = dict(attention_mask=_masks()["left"], max_new_tokens=5, do_sample=False, pad_token_id=0,
              cache_implementation="static")
    assert torch.equal(ours.generate(ids, **kw), ref.generate(ids, **kw))


def test_packed_sequences_take_the_exact_dense_path(pkt, models):
    """Several sequences packed in one row (position_ids restarting, no cache): the mask is
    block-diagonal; the rows no pk call expresses take the exact dense path, counted."""
    ref, ours = models("llama")
    ids = torch.randint(0, 128, (1, 12))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]])
    pkt.path_counts.clear()
    with torch.no_grad():
        want = ref(ids, position_ids=pos, use_cache=False).logits
        got = ours(ids, position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert pkt.path_counts["dense"] + pkt.path_counts["dense_rows"] == 2, dict(pkt.path_counts)


def _sdpa_mask(batch_size, q_length, q_offset=0, **kw):
    """transformers' sdpa_mask, whichever of its signatures is installed (before 5.0 it took
    cache_position instead of q_length / q_offset)."""
    import inspect

    from transformers.masking_utils import sdpa_mask
    if "cache_position" in inspect.signature(sdpa_mask).parameters:
        return sdpa_mask(batch_size=batch_size, cache_position=torch.arange(q_length) + q_offset, **kw)
    return sdpa_mask(batch_size=batch_size, q_length=q_length, q_offset=q_offset, **kw)


def _mask_cases():
    """Masks from transformers' own sdpa_mask: (name, kwargs)."""
    from transformers.masking_utils import (causal_mask_function, chunked_causal_mask_function,
                                            sliding_window_causal_mask_function)
    pad_left = torch.tensor([[1] * 9, [0] * 3 + [1] * 6, [0] * 8 + [1]], dtype=torch.bool)
    pad_right = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] + [0] * 8], dtype=torch.bool)
    holes = torch.tensor([[1] * 9, [1, 1, 0, 0, 1, 1, 1, 1, 1], [1] * 9], dtype=torch.bool)
    right_then_decode = torch.tensor([[1] * 9, [1] * 5 + [0] * 3 + [1]], dtype=torch.bool)
    sw = sliding_window_causal_mask_function(3)
    return [
        ("prefill left", dict(q_length=9, kv_length=9, attention_mask=pad_left)),
        ("prefill right", dict(q_length=9, kv_length=9, attention_mask=pad_right)),
        ("prefill holes", dict(q_length=9, kv_length=9, attention_mask=holes)),
        ("window left", dict(q_length=9, kv_length=9, attention_mask=pad_left, mask_function=sw,
                             local_size=3)),
        ("window right", dict(q_length=9, kv_length=9, attention_mask=pad_right, mask_function=sw,
                              local_size=3)),
        ("window no padding", dict(q_length=9, kv_length=9, mask_function=sw, local_size=3)),
        ("decode left", dict(q_length=1, kv_length=9, q_offset=8, attention_mask=pad_left)),
        ("decode window", dict(q_length=1, kv_length=9, q_offset=8, attention_mask=pad_left,
                               mask_function=sw, local_size=3)),
        ("decode after right padding", dict(q_length=1, kv_length=9, q_offset=8,
                                            attention_mask=right_then_decode)),
        ("chunked prefill", dict(q_length=4, kv_length=9, q_offset=5, attention_mask=pad_left)),
        ("static cache", dict(q_length=4, kv_length=12, q_offset=3,
                              attention_mask=torch.nn.functional.pad(pad_left[:, :7], (0, 5)))),
        ("chunked attention", dict(q_length=9, kv_length=9, attention_mask=pad_left,
                                   mask_function=chunked_causal_mask_function(
                                       4, torch.tensor([0, 3, 8])))),
        ("causal", dict(q_length=9, kv_length=9, attention_mask=pad_left,
                        mask_function=causal_mask_function, allow_is_causal_skip=False)),
    ]


@pytest.mark.parametrize("case", range(13))
@pytest.mark.parametrize("heads", [(4, 2), (2, 2)])
def test_any_transformers_mask_gives_exact_attention(pkt, case, heads):
    """attention_forward on masks built by transformers equals dense attention over the same
    mask (and SDPA with it), whichever path the mask analysis picked."""
    name, kw = _mask_cases()[case]
    batch = kw["attention_mask"].shape[0] if "attention_mask" in kw else 2
    mask = _sdpa_mask(batch, **{"allow_is_causal_skip": True, **kw})
    assert mask is not None, name
    hq, hkv = heads
    nq, nk = kw["q_length"], kw["kv_length"]
    torch.manual_seed(case)
    q = torch.randn(batch, hq, nq, 16) * 2
    k = torch.randn(batch, hkv, nk, 16) * 2
    v = torch.randn(batch, hkv, nk, 16)
    module = torch.nn.Module()
    module.is_causal = True
    got, _ = pkt.attention_forward(module, q, k, v, mask, scaling=0.25)
    want = pkt._dense(module, q, k, v, mask, 0.25, 0.0, None, None, None)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    rep = hq // hkv
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask, scale=0.25)
    torch.testing.assert_close(got, sdpa.transpose(1, 2), atol=2e-5, rtol=0)


def test_structured_masks_are_not_served_densely(pkt):
    """Padding and sliding windows are analysed into pk calls, not the dense fallback."""
    for name, kw in _mask_cases():
        if name in ("prefill holes", "chunked attention"):
            continue
        batch = kw["attention_mask"].shape[0] if "attention_mask" in kw else 2
        mask = _sdpa_mask(batch, **kw)
        plan = pkt._analyse(mask)
        assert plan is not None and plan.has_main, name


def test_dropout_is_refused(pkt):
    module = torch.nn.Module()
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(NotImplementedError, match="dropout"):
        pkt.attention_forward(module, q, q, q, None, dropout=0.1)


# -- the `kernels` name ------------------------------------------------------------------------

def _run(script, env=None, cwd=ROOT):
    """A fresh interpreter in the repository root: `python -c` puts the root on sys.path."""
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_checkout_root_kernels_folder_clashes_without_the_guard():
    """The hazard: from a checkout's root (on sys.path, as with `python -m pytest`),
    transformers' probe for Hugging Face's `kernels` (run when its modeling code is imported)
    imports this repository's kernels/ folder as a second package, whose torch ops collide with
    polykernels'. With the guard (run by register() and by conftest) the probe says "not
    installed" and nothing is imported."""
    pytest.importorskip("transformers")
    proc = _run("""
        import sys
        import polykernels
        from transformers.utils.import_utils import is_kernels_available
        try:
            is_kernels_available()
        except RuntimeError as e:
            print("clash:", "TORCH_LIBRARY" in str(e))
        else:
            print("no clash:", sys.modules.get("kernels"))
        getattr(is_kernels_available, "cache_clear", lambda: None)()
        sys.modules.pop("kernels", None)
        from polykernels.integrations import guard_kernels_name
        guard_kernels_name()
        print("guarded:", is_kernels_available(), sys.modules["kernels"])
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "guarded: False None" in proc.stdout, proc.stdout
    import transformers
    if int(transformers.__version__.split(".")[0]) >= 5:  # 4.x probed without importing
        assert "clash: True" in proc.stdout, proc.stdout


def test_register_guards_the_kernels_name(pkt, monkeypatch):
    calls = []
    monkeypatch.setattr(pkt, "guard_kernels_name", lambda: calls.append(1))
    assert pkt.register() == "polykernels" and calls == [1]


def test_the_genuine_kernels_package_is_kept(tmp_path, monkeypatch):
    """With Hugging Face's `kernels` installed further along sys.path than the checkout's
    folder, the guard imports that one."""
    from polykernels.integrations import _find_genuine_kernels, guard_kernels_name
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = '0.0.1'\nGENUINE = True\n")
    path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != ROOT]
    monkeypatch.setattr(sys, "path", [ROOT] + path + [str(tmp_path / "site")])
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    guard_kernels_name()
    import kernels
    assert getattr(kernels, "GENUINE", False), kernels.__file__
    guard_kernels_name()                      # idempotent
    assert sys.modules["kernels"] is kernels
    monkeypatch.delitem(sys.modules, "kernels")
    monkeypatch.setattr(sys, "path", [ROOT] + path)   # nothing genuine: "not installed"
    if _find_genuine_kernels() is not None:
        return                                # this machine has Hugging Face's kernels installed
    guard_kernels_name()
    assert sys.modules["kernels"] is None and importlib.util.find_spec("kernels") is None


def test_test_process_is_guarded():
    """tests/conftest.py runs the guard: in this process `kernels` is never the checkout's
    folder, whatever sys.path holds."""
    from polykernels.integrations import is_polykernels_source
    mod = sys.modules.get("kernels")
    if mod is not None:
        assert not is_polykernels_source(mod.__spec__), mod.__spec__
    if any(os.path.realpath(p or os.getcwd()) == ROOT for p in sys.path):
        assert "kernels" in sys.modules
