"""Sanity of the NumPy reference and of the fixtures it is run on (CPU only)."""

import numpy as np
import pytest
from fixtures import (
    FIXTURES,
    GREEDY_STEPS,
    MAX_ERR_BUDGET,
    MIN_MARGIN,
    NORM_ERR_BUDGET,
    PROMPT_MAX_ERR_BUDGET,
    PROMPT_NORM_ERR_BUDGET,
    greedy_prompt,
    long_prompt,
)
from reference import forward, greedy_trace, rms_norm, rope

FP16_MAX = 65504.0


def test_overflow_fixture_exceeds_fp16(make_model):
    _, w, cfg = make_model("overflow")
    stats = {}
    logits = forward(w, cfg, long_prompt(FIXTURES["overflow"]), stats)
    # Both the MLP intermediate silu(gate)*up and the residual stream leave the fp16 range: an engine that
    # keeps either in fp16 gets inf/nan here, while fp32 activations are fine.
    assert max(stats["mlp_act"]) > FP16_MAX
    assert max(stats["residual"]) > FP16_MAX
    assert np.isfinite(logits).all()


def test_ordinary_fixture_stays_small(make_model):
    _, w, cfg = make_model("gqa4_hd128")
    stats = {}
    forward(w, cfg, long_prompt(FIXTURES["gqa4_hd128"]), stats)
    assert max(stats["mlp_act"]) < 100 and max(stats["residual"]) < 100


@pytest.mark.parametrize("name", ["gqa4_hd128", "tied"])
def test_causal(make_model, name):
    _, w, cfg = make_model(name)
    ids = long_prompt(FIXTURES[name])[:20]
    other = ids[:12] + [(t + 1) % cfg["vocab_size"] for t in ids[12:]]
    a, b = forward(w, cfg, ids), forward(w, cfg, other)
    np.testing.assert_allclose(a[:12], b[:12], rtol=1e-12, atol=1e-12)
    assert np.abs(a[12:] - b[12:]).max() > 0.1  # later positions do see the change
    # Context matters: the same token at the last position gives different logits after a different prefix.
    c = forward(w, cfg, other[:19] + ids[19:])
    assert np.abs(a[19] - c[19]).max() > 0.01 * a[19].std()


def test_rope_properties():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 1, 128))
    assert np.allclose(rope(q, [0], 1e6), q)  # position 0 is the identity
    assert np.isclose(np.linalg.norm(rope(q, [77], 1e6)), np.linalg.norm(q))  # a rotation

    def score(m, n):
        return float((rope(q, [m], 1e6) * rope(k, [n], 1e6)).sum())

    assert np.isclose(score(10, 3), score(107, 100)) and np.isclose(score(3, 10), score(1003, 1010))
    assert not np.isclose(score(10, 3), score(3, 10))
    # rotate-half pairs dims i and i + d/2: with only dim 0 set, position 1 moves it to dims 0 and 64 (not 1).
    e0 = np.zeros((1, 1, 128))
    e0[..., 0] = 1
    r = rope(e0, [1], 1e6)[0, 0]
    assert np.isclose(r[0], np.cos(1)) and np.isclose(r[64], np.sin(1)) and np.count_nonzero(r) == 2


def test_rms_norm_eps():
    x = np.full(8, 1e-3)
    assert np.allclose(rms_norm(x, np.ones(8), 1e-6), 1e-3 / np.sqrt(1e-6 + 1e-6))


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_greedy_margins(make_model, name):
    """The GPU tests demand exact greedy agreement; that is only fair when no step is a near tie. Each
    fixture's seed was chosen so the best logit beats the runner-up by >= MIN_MARGIN logit std at every step,
    above twice the engine error budget (max |err| <= 0.019 std on the prompt path, test_engine_gpu.py): an
    engine within budget cannot flip a token."""
    _, w, cfg = make_model(name)
    tokens, margins = greedy_trace(w, cfg, greedy_prompt(FIXTURES[name]), GREEDY_STEPS)
    assert min(margins) >= MIN_MARGIN, (tokens, margins)
    assert len(set(tokens)) >= 8  # not stuck repeating one token


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fp16_kv_cache_error_fits_engine_budget(make_model, name):
    """The engine's dominant error, an fp16 KV cache, emulated here, must sit well inside the budget that
    test_engine_gpu.py allows (normalized 3e-3, max 1.5e-2 std): at most half of it."""
    _, w, cfg = make_model(name)
    ids = long_prompt(FIXTURES[name])
    ref, got = forward(w, cfg, ids), forward(w, cfg, ids, kv_dtype=np.float16)
    assert (np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)).max() <= NORM_ERR_BUDGET / 2
    assert (np.abs(got - ref).max(axis=1) / ref.std(axis=1)).max() <= MAX_ERR_BUDGET / 2
    assert 2 * MAX_ERR_BUDGET < MIN_MARGIN


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_prompt_path_rounding_fits_prompt_budget(make_model, name):
    """The batched prompt path's fp16 roundings (and the fp16 KV cache), emulated, stay within 80% of the
    prompt-path budget of test_engine_gpu.py."""
    _, w, cfg = make_model(name)
    ids = long_prompt(FIXTURES[name])
    ref, got = forward(w, cfg, ids), forward(w, cfg, ids, kv_dtype=np.float16, prompt_fp16=True)
    assert (np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)).max() <= 0.8 * PROMPT_NORM_ERR_BUDGET
    assert (np.abs(got - ref).max(axis=1) / ref.std(axis=1)).max() <= 0.8 * PROMPT_MAX_ERR_BUDGET
    assert 2 * PROMPT_MAX_ERR_BUDGET < MIN_MARGIN


@pytest.mark.parametrize("dtype_name", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_matches_transformers(make_model, name, dtype_name):
    """Reference vs transformers' Qwen3ForCausalLM (CPU, eager attention) holding the same dequantized
    weights. Measured: normalized error <= 1.6e-6 (float64) / 2.6e-6 (float32), max |diff| <= 8e-6 logit std;
    transformers computes RoPE angles in float32 even for a float64 model, hence ~1e-6 rather than 1e-15.
    Tolerance: normalized error <= 2e-5 and max |diff| <= 5e-5 std per position (~10x the measurement; a
    wrong rope_theta, GQA mapping or missing q/k norm gives errors of order 1e-2..1)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hf_reference import hf_logits, hf_model

    _, w, cfg = make_model(name)
    ids = long_prompt(FIXTURES[name])
    ref = forward(w, cfg, ids)
    got = hf_logits(hf_model(w, cfg, getattr(torch, dtype_name)), ids)
    norm_err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    max_err = np.abs(got - ref).max(axis=1) / ref.std(axis=1)
    assert norm_err.max() <= 2e-5, norm_err.max()
    assert max_err.max() <= 5e-5, max_err.max()


def test_kv2_is_sensitive_to_eps(make_model):
    """kv2's q/k projections are tiny, so an engine using eps 1e-5 (a common default) instead of config.json's
    rms_norm_eps 1e-6 shows up as a ~30% logit error, far outside the engine's budget."""
    _, w, cfg = make_model("kv2")
    ids = long_prompt(FIXTURES["kv2"])
    a, b = forward(w, cfg, ids), forward(w, dict(cfg, rms_norm_eps=1e-5), ids)
    assert cfg["rms_norm_eps"] == 1e-6
    assert (np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)).max() > 0.1


@pytest.mark.parametrize("name", ["gqa4_hd128", "kv2"])
def test_rope_theta_matters(make_model, name):
    """rope_theta 1e4 (a common default) instead of config's 1e6 changes the logits far beyond the engine's
    error budget."""
    _, w, cfg = make_model(name)
    ids = long_prompt(FIXTURES[name])
    a, b = forward(w, cfg, ids), forward(w, dict(cfg, rope_theta=1e4), ids)
    assert (np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)).max() > 0.05
