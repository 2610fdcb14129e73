"""qwen3_rs: fast Qwen3 AWQ 4-bit inference on NVIDIA GPUs, with a Rust core and its own kernels.

>>> from qwen3_rs import Qwen3Engine
>>> engine = Qwen3Engine("Qwen/Qwen3-8B-AWQ")          # a local directory or a Hugging Face repo id
>>> engine.generate([9707, 11, 1879], max_new_tokens=20)  # token ids, greedy
>>> engine.chat([{"role": "user", "content": "Hi!"}], enable_thinking=False)
"""

import glob
import logging
import os
import sys


def _nvrtc_wheel_library():
    """libnvrtc from the nvidia-cuda-nvrtc wheel, used when no CUDA toolkit provides one."""
    for base in sys.path:
        for pattern in ("nvidia/cu13/lib/libnvrtc.so.*", "nvidia/cuda_nvrtc/lib/libnvrtc.so.*"):
            found = [p for p in glob.glob(os.path.join(base or ".", pattern)) if "builtins" not in p]
            if found:
                return sorted(found)[-1]
    return None


if "QWEN3_RS_NVRTC_FALLBACK" not in os.environ:
    _lib = _nvrtc_wheel_library()
    if _lib:
        os.environ["QWEN3_RS_NVRTC_FALLBACK"] = _lib

logging.getLogger("qwen3_rs").addHandler(logging.NullHandler())

from . import errors  # noqa: E402
from ._qwen3_rs import (  # noqa: E402
    TokenStream,
    __version__,
    check_sampling,
    compile_kernels,
    copy_bandwidth,
    cuda_device_count,
    cuda_memory_info,
    nvrtc_version,
)
from .engine import Qwen3Engine, StreamChunk  # noqa: E402
from .hub import resolve_model  # noqa: E402

__all__ = [
    "Qwen3Engine",
    "StreamChunk",
    "TokenStream",
    "errors",
    "check_sampling",
    "resolve_model",
    "cuda_device_count",
    "compile_kernels",
    "copy_bandwidth",
    "cuda_memory_info",
    "nvrtc_version",
    "__version__",
]
