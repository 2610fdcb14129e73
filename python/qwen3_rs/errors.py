"""Exceptions raised by qwen3_rs. Each also derives from the standard exception a caller would
catch for that kind of problem (ValueError, FileNotFoundError, MemoryError, RuntimeError)."""


class Qwen3RsError(Exception):
    """Base class of every qwen3_rs error."""


class ModelNotFoundError(Qwen3RsError, FileNotFoundError):
    """The model directory, or a file it needs, does not exist."""


class ModelFormatError(Qwen3RsError, ValueError):
    """A model file is malformed or does not match config.json (names the file and the problem)."""


class ModelIOError(Qwen3RsError, OSError):
    """A model file could not be read."""


class InvalidArgumentError(Qwen3RsError, ValueError):
    """A call's arguments are invalid (token ids, lengths, devices)."""


class OutOfMemoryError(Qwen3RsError, MemoryError):
    """The GPU has not enough free memory (the message gives bytes needed and free)."""


class CudaUnavailableError(Qwen3RsError, RuntimeError):
    """No usable CUDA driver, GPU or NVRTC library."""


class CudaError(Qwen3RsError, RuntimeError):
    """The CUDA driver reported an error."""


class KernelCompileError(Qwen3RsError, RuntimeError):
    """NVRTC failed to compile a kernel (the message carries the compiler log)."""


class InternalError(Qwen3RsError, RuntimeError):
    """A broken internal invariant; please report it."""


__all__ = [
    "Qwen3RsError",
    "ModelNotFoundError",
    "ModelFormatError",
    "ModelIOError",
    "InvalidArgumentError",
    "OutOfMemoryError",
    "CudaUnavailableError",
    "CudaError",
    "KernelCompileError",
    "InternalError",
]
