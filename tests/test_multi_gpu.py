"""One model over several GPUs (per-layer placement): the same tokens and logits as on one GPU, for a
contiguous split and for an alternating placement that crosses the device boundary between most layers.
Skipped with a reason on machines with fewer than two GPUs. The placement arithmetic itself is tested
without GPUs in src/placement.rs.

The kernels are the same on every device and the hidden state crosses devices as an exact fp32 copy, so the
logits must agree to fp32 rounding (no looser budget is needed than 1e-6 relative)."""

import dataclasses

import numpy as np
import pytest
from fixtures import FIXTURES, PROMPT_NORM_ERR_BUDGET, greedy_prompt, long_prompt, write_checkpoint
from reference import forward

pytestmark = pytest.mark.gpu
qwen3_rs = pytest.importorskip("qwen3_rs")


@pytest.fixture(scope="module", autouse=True)
def two_gpus():
    if qwen3_rs.cuda_device_count() < 2:
        pytest.skip(f"needs 2 GPUs, {qwen3_rs.cuda_device_count()} visible")


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """gqa4_hd128 with 8 layers: long enough for a chain of boundaries."""
    spec = dataclasses.replace(FIXTURES["gqa4_hd128"], layers=8)
    path = str(tmp_path_factory.mktemp("deep"))
    ck = write_checkpoint(path, spec)
    return path, ck["weights"], ck["config"], spec


ALTERNATING = [0, 0, 1, 1, 0, 0, 1, 1]


@pytest.mark.parametrize("kv", ["fp16", "q8"])
def test_placements_agree(deep_model, kv):
    path, weights, cfg, spec = deep_model
    ids = long_prompt(spec)
    one = qwen3_rs.Qwen3Engine(path, devices=[0], max_seq_len=256, kv_cache_dtype=kv)
    split = qwen3_rs.Qwen3Engine(path, devices=[0, 1], max_seq_len=256, kv_cache_dtype=kv)
    alt = qwen3_rs.Qwen3Engine(path, layer_devices=ALTERNATING, max_seq_len=256, kv_cache_dtype=kv)
    assert split.placement["layers"] == [0] * 4 + [1] * 4
    assert alt.placement["layers"] == ALTERNATING
    ref = one.logits(ids)
    for e in (split, alt):
        np.testing.assert_allclose(e.logits(ids), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    if kv == "fp16":
        r = forward(weights, cfg, ids)
        err = np.linalg.norm(ref - r, axis=1) / np.linalg.norm(r, axis=1)
        assert err.max() < PROMPT_NORM_ERR_BUDGET  # logits come from the prompt path
    prompt = greedy_prompt(spec)
    tokens = one.generate(prompt, max_new_tokens=32, ignore_eos=True)
    assert split.generate(prompt, max_new_tokens=32, ignore_eos=True) == tokens
    assert alt.generate(prompt, max_new_tokens=32, ignore_eos=True) == tokens
    # The K/V of a layer on the second device read back the same.
    k1, v1 = one.kv_cache(3, 7)
    k2, v2 = alt.kv_cache(3, 7)
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_array_equal(v1, v2)


@pytest.mark.parametrize("name", ["tied", "kv2"])
def test_fixtures_split_over_two_gpus(make_model, name):
    path = make_model(name)[0]
    one = qwen3_rs.Qwen3Engine(path, devices=[0], max_seq_len=128)
    two = qwen3_rs.Qwen3Engine(path, devices=[1, 0], max_seq_len=128)
    assert two.placement["embed_tokens"] == 1 and two.placement["lm_head"] == 0
    assert set(two.placement["bytes"]) == {0, 1}
    prompt = greedy_prompt(FIXTURES[name])
    assert two.generate(prompt, max_new_tokens=24, ignore_eos=True) == one.generate(
        prompt, max_new_tokens=24, ignore_eos=True
    )


def test_placement_errors(deep_model):
    path = deep_model[0]
    errors = qwen3_rs.errors
    free0 = qwen3_rs.cuda_memory_info(0)[0]
    with pytest.raises(errors.InvalidArgumentError, match="8 layers"):
        qwen3_rs.Qwen3Engine(path, layer_devices=[0, 1, 0])
    with pytest.raises(errors.InvalidArgumentError, match="device 99"):
        qwen3_rs.Qwen3Engine(path, devices=[0, 99])
    with pytest.raises(errors.InvalidArgumentError, match="listed twice"):
        qwen3_rs.Qwen3Engine(path, devices=[0, 0])
    with pytest.raises(errors.InvalidArgumentError, match="device 1"):
        qwen3_rs.Qwen3Engine(path, devices=[0], layer_devices=[0, 1] * 4)
    assert abs(qwen3_rs.cuda_memory_info(0)[0] - free0) < 64 << 20
