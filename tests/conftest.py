"""Test configuration shared by every test module.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at the
very top, for the whole CPU suite: Triton kernels then run on CPU tensors through the
interpreter. GPU tests (-m gpu) run on a machine with a GPU and unset it (see
docs/gpu-validation.md).
"""
import os

if os.environ.get("POLYKERNELS_GPU_TESTS", "0") == "0":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests see the fixed priority order, so which impl runs by default does not depend on timing
# noise; measured selection has its own tests (test_selection.py), which switch it on.
os.environ.setdefault("POLYKERNELS_SELECT", "priority")

import pytest  # noqa: E402
import torch  # noqa: E402

# The package folder kernels/ has the import name of Hugging Face's `kernels`, which transformers
# probes for; with the repository root on sys.path (`python -m pytest`) the probe would import
# kernels/ a second time, as `kernels`. Settle that name first (polykernels.integrations).
from polykernels.integrations import guard_kernels_name  # noqa: E402

guard_kernels_name()


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA/ROCm GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


CPU_ISAS = ["scalar", "avx2", "avx512", "avx512_bf16"]


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    """Run the test once per CPU ISA path of the C++ kernels (forced through the extension's
    set_cpu_isa); a path this CPU cannot run is skipped with the reason, and the default path
    is restored afterwards."""
    from polykernels import _extension
    _extension.load()
    ops = torch.ops.polykernels_C
    got = ops.set_cpu_isa(request.param)
    if got != request.param:  # capped: this CPU lacks the ISA, the path cannot run here
        ops.set_cpu_isa(ops.default_cpu_isa())
        pytest.skip(f"CPU has no {request.param} (best: {got})")
    yield got
    ops.set_cpu_isa(ops.default_cpu_isa())
