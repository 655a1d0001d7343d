"""Test configuration shared by every test module.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at the
very top, for the whole CPU suite: Triton kernels then run on CPU tensors through the
interpreter. GPU tests (-m gpu) run on a machine with a GPU and unset it (see GPU.md).
"""
import os

if os.environ.get("POLYKERNELS_GPU_TESTS", "0") == "0":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA/ROCm GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
