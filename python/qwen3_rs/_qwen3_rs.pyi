"""Type stubs of the compiled core."""

import os
from typing import Any, Callable, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

TokenIds = Union[Sequence[int], npt.NDArray[np.integer], Any]
"""A list of ints, a 1-D integer numpy array, or anything numpy.asarray accepts (e.g. a CPU torch tensor)."""

# on_event(kind, done, total, name, cached, seconds): kind "kernel" or "layers".
LoadCallback = Callable[[str, int, int, str, bool, float], object]

class TokenStream:
    """The new token ids of one generation, each read as the decode step producing it finishes.
    Starting another generation on the engine, or computing logits, ends it (next() then raises
    InvalidArgumentError)."""

    def __iter__(self) -> TokenStream: ...
    def __next__(self) -> int: ...
    @property
    def finished(self) -> bool:
        """True once the last token has been returned (eos or max_new_tokens reached)."""

class Qwen3Engine:
    """A Qwen3 AWQ 4-bit checkpoint (Hugging Face format) loaded on one GPU.

    Every file is validated before the GPU is touched; errors are `qwen3_rs.errors` exceptions
    naming the file, tensor or field.
    """

    def __init__(
        self,
        model_path: Union[str, os.PathLike[str]],
        device: int = 0,
        max_seq_len: int | None = None,
        kv_cache_dtype: str = "fp16",
        cuda_graphs: bool = True,
        devices: Sequence[int] | None = None,
        layer_devices: Sequence[int] | None = None,
        prefill_chunk: int = 2048,
        on_event: LoadCallback | None = None,
    ) -> None:
        """Loads `model_path` onto GPU `device`, or over `devices` (layers in contiguous ranges
        balanced by free memory), or as `layer_devices` says (one device per layer).
        `max_seq_len` (default: the config's max_position_embeddings) sizes the KV cache, allocated
        once; `kv_cache_dtype` is "fp16" or "q8" (int8 with an fp16 scale per 64 values, 51.6% of
        the fp16 bytes); `cuda_graphs` replays each decode step from captured CUDA graphs.
        Prompts run through batched tensor-core kernels `prefill_chunk` positions at a time (which
        bounds their activation memory); 0 processes them one position at a time.
        `on_event` is called as kernels become ready and layers load; an exception from it ends the load."""
    def generate(
        self,
        ids: TokenIds,
        max_new_tokens: int = 20,
        ignore_eos: bool = False,
        return_numpy: bool = False,
        *,
        do_sample: bool = False,
        temperature: float | None = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        min_p: float | None = None,
        repetition_penalty: float | None = 1.0,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
    ) -> Any:
        """Continuation of `ids` from a fresh sequence; returns the new token ids only (a list, or an
        int64 array with `return_numpy`).

        Greedy unless `do_sample`. Sampling keywords have transformers' names and meanings
        (processors in its order: repetition_penalty, temperature, top_k, top_p, min_p); None turns
        one off. The same `seed` gives the same tokens. Stops after an eos token (included) of
        generation_config.json, or of `eos_token_id` when given, unless `ignore_eos`. Bad values
        raise InvalidArgumentError (a ValueError) naming the argument.
        """
    def stream_ids(
        self,
        ids: TokenIds,
        max_new_tokens: int = 20,
        ignore_eos: bool = False,
        *,
        do_sample: bool = False,
        temperature: float | None = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        min_p: float | None = None,
        repetition_penalty: float | None = 1.0,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
    ) -> TokenStream:
        """Runs the prompt and returns an iterator over the new token ids (arguments as `generate`)."""
    def logits(self, ids: TokenIds) -> npt.NDArray[np.float32]:
        """Logits at every position of `ids`, shape [len(ids), vocab_size]."""
    def time_decode(self, context: int, steps: int = 64) -> float:
        """Seconds per greedy decode step with `context` positions cached (benchmarking)."""
    @property
    def placement(self) -> dict[str, Any]:
        """{"layers": [device of each layer], "embed_tokens", "norm", "lm_head": devices,
        "bytes": {device: bytes of weights and KV cache}}."""
    @property
    def config(self) -> dict[str, Any]:
        """The model's config.json."""
    @property
    def max_seq_len(self) -> int:
        """Positions the KV cache holds."""
    @property
    def kv_cache_dtype(self) -> str:
        """ "fp16" or "q8"."""
    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per position over all layers, scales included."""
    @property
    def kv_cache_bytes(self) -> int:
        """KV-cache bytes allocated on the device."""
    def kv_cache(self, layer: int, length: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One layer's cached (K, V) for the first `length` positions of the last sequence, as fp32
        arrays [num_key_value_heads, length, head_dim]."""

def check_sampling(
    *,
    do_sample: bool = False,
    temperature: float | None = 1.0,
    top_k: int | None = 50,
    top_p: float | None = 1.0,
    min_p: float | None = None,
    repetition_penalty: float | None = 1.0,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> None:
    """Checks sampling keywords as `generate` does, without a GPU: InvalidArgumentError (a ValueError)
    naming the argument and value, or TypeError."""

def cuda_device_count() -> int:
    """Number of visible CUDA devices (0 without a driver or GPU)."""

def compile_kernels(
    model_dir: Union[str, os.PathLike[str]], arch: str, cache_dir: Union[str, os.PathLike[str], None] = None
) -> list[tuple[str, bool]]:
    """Compiles every kernel the model uses for `arch` (e.g. "sm_90"); no GPU needed.

    Returns (kernel key, served from the disk cache) pairs.
    """

def cuda_memory_info(device: int = 0) -> tuple[int, int]:
    """(free, total) bytes of GPU memory."""

def time_prompt_kernels(device: int = 0, rows: int = 2048) -> list[tuple[str, float, int]]:
    """(kernel, seconds per launch, flops) of the prompt kernels at Qwen3-8B shapes for `rows` tokens."""

def nvrtc_version() -> tuple[int, int]:
    """The NVRTC version in use."""

def copy_bandwidth(device: int = 0, bytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read plus bytes written)."""
