"""Every KernelType the model uses compiles through NVRTC for sm_80, sm_90 and sm_90a (Hopper with
wgmma, what an H100 gets) with no GPU present,
and a second compile is served from the disk cache. Needs the built package and NVRTC (a CUDA
toolkit or the nvidia-cuda-nvrtc wheel, a declared dependency): a missing one fails, not skips."""

import json

import pytest
import qwen3_rs
from qwen3_rs.bench import QWEN3_8B_AWQ

QWEN3_8B = QWEN3_8B_AWQ
ARCHS = ("sm_80", "sm_90", "sm_90a")
TINY = dict(
    QWEN3_8B,
    hidden_size=256,
    intermediate_size=512,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=512,
    quantization_config=dict(QWEN3_8B["quantization_config"], group_size=64),
)


@pytest.mark.parametrize("config", [QWEN3_8B, TINY], ids=["qwen3-8b", "tiny"])
def test_every_kernel_compiles_and_is_cached(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    cache = tmp_path / "cache"
    for arch in ARCHS:
        first = qwen3_rs.compile_kernels(tmp_path, arch, cache)
        keys = [k for k, _ in first]
        assert len(keys) == len(set(keys)) >= 10
        assert not any(cached for _, cached in first), "a fresh cache directory served a kernel"
        second = qwen3_rs.compile_kernels(tmp_path, arch, cache)
        assert second == [(k, True) for k in keys]
    # One module per kernel and architecture, named by key, arch and NVRTC version.
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == len(ARCHS) * len(keys)
    major, minor = qwen3_rs.nvrtc_version()
    assert all(f"-nvrtc{major}.{minor}-" in f for f in files)
    hidden = config["hidden_size"]
    assert any(f.startswith(f"rms_norm-hidden{hidden}-sm_90") for f in files)


def test_shape_is_part_of_the_key(tmp_path):
    """Two shapes give two modules: constants are compiled in, not passed at run time."""
    for name, cfg in (("a", TINY), ("b", dict(TINY, hidden_size=512))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    a = dict(qwen3_rs.compile_kernels(tmp_path / "a", "sm_90", tmp_path / "cache"))
    b = dict(qwen3_rs.compile_kernels(tmp_path / "b", "sm_90", tmp_path / "cache"))
    assert "rms_norm-hidden256" in a and "rms_norm-hidden512" in b
    # Kernels whose shape does not involve hidden_size are shared (served from the cache).
    assert b["qk_norm_rope-head_dim64-n_heads8-n_kv_heads2-q8"] is True
