import os
import sys
import zlib

import numpy as np
import pytest

# The helper modules (fixtures, reference, safetensors_io) live beside this file; make them importable
# whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fixtures


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "gpu: needs the built qwen3_rs and a CUDA device; skipped when either is missing "
        "(QWEN3_RS_REQUIRE_GPU=1 turns that skip into an error)",
    )


def gpu_unavailable_reason():
    """None when qwen3_rs imports and sees a CUDA device, else why not."""
    try:
        import qwen3_rs
    except Exception as e:  # noqa: BLE001  ImportError, or an OSError from a missing shared library
        return f"qwen3_rs cannot be imported: {type(e).__name__}: {e}"
    try:
        n = qwen3_rs.cuda_device_count()
    except Exception as e:  # noqa: BLE001
        return f"qwen3_rs.cuda_device_count() raised {type(e).__name__}: {e}"
    return None if n > 0 else "qwen3_rs.cuda_device_count() == 0: no CUDA driver or device visible"


def pytest_collection_modifyitems(config, items):
    gpu_items = [it for it in items if it.get_closest_marker("gpu")]
    reason = gpu_unavailable_reason() if gpu_items else None
    if reason is None:
        return
    if os.environ.get("QWEN3_RS_REQUIRE_GPU") == "1":
        raise pytest.UsageError(f"QWEN3_RS_REQUIRE_GPU=1 but {reason}")
    for it in gpu_items:
        it.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def ops():
    """qwen3_rs's single-kernel entry points."""
    from qwen3_rs._qwen3_rs import ops

    return ops


@pytest.fixture
def rng(request):
    """New arrays in every test, reproducible from the test id."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def make_model(tmp_path_factory):
    """make_model(name) -> (path, weights, config) for a fixtures.FIXTURES name; written once per session."""
    cache = {}

    def make(name):
        if name not in cache:
            path = tmp_path_factory.mktemp(name)
            ck = fixtures.write_checkpoint(str(path), name)
            cache[name] = (str(path), ck["weights"], ck["config"])
        return cache[name]

    return make


@pytest.fixture(scope="session")
def tokenizer_model_dir(make_model, tmp_path_factory):
    """The gqa4_hd128 fixture checkpoint plus a tokenizer.json for its 512 ids."""
    import shutil

    from tiny_tokenizer import write_tiny_tokenizer

    name = "gqa4_hd128"
    dst = tmp_path_factory.mktemp("with_tokenizer") / name
    shutil.copytree(make_model(name)[0], dst)
    write_tiny_tokenizer(str(dst), fixtures.FIXTURES[name].vocab)
    return str(dst)
