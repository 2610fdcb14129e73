"""Batched prompt processing (prefill): its kernels against NumPy float64, and the engine's batched path
against the float64 reference and against its own token-by-token path.

Error budget of the prompt kernels. Unlike decode, the prompt path feeds tensor cores with fp16:
  - awq_gemm: each input row is scaled by a power of two (exact) and rounded to fp16 (relative <= 2^-11),
    each weight (q - z) * s is rounded to fp16 (relative <= 2^-11); products accumulate in fp32. An output
    y_n = sum_k x_k w_kn then errs by sum_k x_k w_kn (dx_k + dw_kn) with independent roundings of rms
    2^-11 / sqrt(3) each: rms error sqrt(2/3) 2^-11 ||x * w_n||_2. We allow 6 x 2^-11 ||x * w_n||_2 (7.3 sigma;
    the sum of bounded uniform errors has lighter tails than a Gaussian) plus the fp32 accumulation term of
    the decode tests. Keeping x in fp32 (the decode GEMV) or a missing row scale (fp16 overflow: inf) fail by
    far more: a wrong fragment, group or epilogue is O(||x * w_n||).
  - attention_prefill: q (times head_dim^-0.5 log2 e) and the softmax weights p are rounded to fp16, and an
    int8 cache's dequantized values too. A score errs by <= 2 x 2^-11 sum_d |q_d k_d| / sqrt(hd) (q and, for
    int8, k); a weight's error shifts the output by <= 2^-11 relative, so tol = (2 ds + 3 x 2^-11 + 1e-5 +
    16 sqrt(T) U) x sum_t p_t |v_t|, a worst-case (linear) bound, as the decode attention tests use; weights
    that are fp16 subnormals (< 2^-14) err by up to 2^-25 absolute instead, adding 2^-25 sum_t |v_t|.
End to end these roundings add to the fp16 KV-cache error; the prompt-path budget (PROMPT_*_ERR_BUDGET) is
justified in test_engine_gpu.py from a reference that emulates them. The tests here check it at every prompt
length that matters for chunking, the token-by-token path against the tighter decode budget, and agreement
between the two.
"""

import json
import shutil

import numpy as np
import pytest
from fixtures import (
    FIXTURES,
    GREEDY_STEPS,
    MAX_ERR_BUDGET,
    NORM_ERR_BUDGET,
    PROMPT_MAX_ERR_BUDGET,
    PROMPT_NORM_ERR_BUDGET,
    greedy_prompt,
    prompt_ids,
)
from reference import forward
from test_engine_gpu import check_logits
from test_kernels_gpu import U, assert_within, random_awq, rms_normed
from test_kv_q8_gpu import dequantize_q8, quantize_q8

pytestmark = pytest.mark.gpu
F16_ULP = 2.0**-11


def rows_of(rng, M, K, mag):
    """M rows of very different magnitudes (each row gets its own fp16 scale), up to mag."""
    row_mag = mag * 10.0 ** -(np.arange(M) % 5)
    return (rng.standard_normal((M, K)) * row_mag[:, None]).astype(np.float32)


def gemm_tol(x, W):
    x2, w2 = x.astype(np.float64) ** 2, W**2
    norm = np.sqrt(x2 @ w2)
    return 6 * F16_ULP * norm + 16 * U * np.sqrt(x.shape[1]) * norm


SMALL_GEMM_SHAPES = [(256, 1024, 128), (1024, 256, 128), (192, 128, 64), (128, 64, 64)]
# The Qwen3-8B shapes at the row counts that stress tiling (one row; a full 128-row tile plus one).
GEMM_CASES = [(*shape, m) for shape in SMALL_GEMM_SHAPES for m in (1, 2, 127, 128, 129, 300)] + [
    (*shape, m) for shape in [(4096, 6144, 128), (12288, 4096, 128)] for m in (1, 129)
]


@pytest.mark.parametrize("K,N,G,M", GEMM_CASES)
@pytest.mark.parametrize("mag", [1.0, 1e5])
def test_awq_gemm(ops, rng, K, N, G, M, mag):
    (qw, qz, s), W = random_awq(rng, K, N, G)
    x = rows_of(rng, M, K, mag)
    ref = x.astype(np.float64) @ W
    got = ops.awq_gemm(x, [(qw, qz, s)], G)
    assert_within(got, ref, gemm_tol(x, W), f"{M}x{K}x{N} g{G} mag={mag}")


@pytest.mark.parametrize("K,N,G", [(4096, 4096, 128), (1024, 256, 128), (384, 192, 64)])
@pytest.mark.parametrize("M", [3, 129])
def test_awq_gemm_residual(ops, rng, K, N, G, M):
    (qw, qz, s), W = random_awq(rng, K, N, G)
    x = rows_of(rng, M, K, 1e5)
    residual = (rng.standard_normal((M, N)) * 1e6).astype(np.float32)
    xw = x.astype(np.float64) @ W
    ref = residual + xw
    tol = gemm_tol(x, W) + 2 * U * (np.abs(residual) + np.abs(xw))
    assert_within(ops.awq_gemm(x, [(qw, qz, s)], G, "add", residual), ref, tol, f"{M}x{K}x{N}")


@pytest.mark.parametrize("K,N,G", [(4096, 12288, 128), (256, 512, 128), (192, 384, 64)])
@pytest.mark.parametrize("M", [1, 130])
@pytest.mark.parametrize("norm", [False, True])
def test_awq_gemm_gate_up(ops, rng, K, N, G, M, norm):
    gate, Wg = random_awq(rng, K, N, G)
    up, Wu = random_awq(rng, K, N, G)
    x = rows_of(rng, M, K, 1e4)
    w_norm = (1 + 0.3 * rng.standard_normal(K)).astype(np.float16)
    xin = np.stack([rms_normed(r, w_norm, 1e-6) for r in x]) if norm else x.astype(np.float64)
    g, u = xin @ Wg, xin @ Wu
    sig = 0.5 * (1 + np.tanh(0.5 * g))  # the logistic function, without overflow for large -g
    ref = g * sig * u
    eg, eu = gemm_tol(xin, Wg), gemm_tol(xin, Wu)
    tol = 1.1 * eg * np.abs(u) + np.abs(g * sig) * eu + 1e-5 * np.abs(ref)
    kwargs = {"norm_weight": w_norm, "eps": 1e-6} if norm else {}
    got = ops.awq_gemm(x, [gate, up], G, "silu_mul", **kwargs)
    assert_within(got, ref, tol, f"{M}x{K}x{N} norm={norm}")


def causal_ref(q, k, v):
    """q [M, nh, hd] at the last M of T positions; k, v [nkv, T, hd] float64. Returns out and the tolerance."""
    M, nh, hd = q.shape
    nkv, T, _ = k.shape
    kv_of = np.arange(nh) // (nh // nkv)
    q = q.astype(np.float64)
    s = np.einsum("mhd,htd->mht", q, k[kv_of]) * hd**-0.5
    pos = np.arange(T - M, T)
    s = np.where(np.arange(T)[None, None, :] <= pos[:, None, None], s, -np.inf)
    p = np.exp(s - s.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    out = np.einsum("mht,htd->mhd", p, v[kv_of])
    abs_s = np.einsum("mhd,htd->mht", np.abs(q), np.abs(k[kv_of])) * hd**-0.5
    ds = np.where(np.isfinite(s), 2 * F16_ULP * abs_s + 16 * U * np.sqrt(hd) * abs_s + 4 * U * np.abs(s), 0)
    wv = np.einsum("mht,htd->mhd", p, np.abs(v[kv_of]))
    T_ = np.arange(T - M, T)[:, None, None] + 1
    tol = (2 * ds.max(axis=2, keepdims=True) + 3 * F16_ULP + 1e-5 + 16 * np.sqrt(T_) * U) * wv
    # Weights below 2^-14 are fp16 subnormals: absolute error <= 2^-25 each (the row's sum is >= 1).
    tol += 2.0**-25 * np.einsum("mht,htd->mhd", np.isfinite(s), np.abs(v[kv_of]))
    return out, tol


ATT_SHAPES = [(32, 8, 128), (8, 2, 128), (4, 2, 64), (4, 1, 64), (8, 8, 128), (16, 2, 64)]


# (T, M): the whole prompt, or the last M positions of T (a later chunk reading earlier ones from the cache).
@pytest.mark.parametrize("nh,nkv,hd", ATT_SHAPES)
@pytest.mark.parametrize("T,M", [(1, 1), (33, 33), (100, 37), (130, 130), (600, 64), (1000, 257)])
@pytest.mark.parametrize("dtype", ["fp16", "q8"])
def test_attention_prefill(ops, rng, nh, nkv, hd, T, M, dtype):
    a = np.sqrt(6.0)  # scores of std 6: exp would overflow without the running max
    q = (rng.standard_normal((M, nh, hd)) * a).astype(np.float32)
    k = (rng.standard_normal((nkv, T, hd)) * a).astype(np.float32)
    v = rng.standard_normal((nkv, T, hd)).astype(np.float32)
    if dtype == "fp16":
        kc, vc = k.astype(np.float16), v.astype(np.float16)
        out_ref, tol = causal_ref(q, kc.astype(np.float64), vc.astype(np.float64))
        got = ops.attention_prefill(q, kc, vc)
    else:
        (kq, ks), (vq, vs) = quantize_q8(k), quantize_q8(v)
        out_ref, tol = causal_ref(q, dequantize_q8(kq, ks), dequantize_q8(vq, vs))
        got = ops.attention_prefill(q, kq, vq, k_scale=ks, v_scale=vs)
    assert_within(got, out_ref, tol, f"T={T} M={M} nh={nh} nkv={nkv} hd={hd} {dtype}")


# ---- the engine


CHUNK = 16


@pytest.fixture(scope="module")
def engines(make_model):
    import qwen3_rs

    cache = {}

    def get(name, chunk, dtype="fp16"):
        if (name, chunk, dtype) not in cache:
            path = make_model(name)[0]
            cache[name, chunk, dtype] = qwen3_rs.Qwen3Engine(
                path, max_seq_len=256, prefill_chunk=chunk, kv_cache_dtype=dtype
            )
        return cache[name, chunk, dtype]

    return get


LENGTHS = [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3, 127, 128, 129]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_prefill_logits_every_position(engines, make_model, name):
    """Chunked batched prefill: logits at every position within the engine budget of the reference."""
    _, w, cfg = make_model(name)
    ids = prompt_ids(FIXTURES[name], max(LENGTHS), salt=3)
    ref = forward(w, cfg, ids)
    eng = engines(name, CHUNK)
    for n in LENGTHS:
        check_logits(eng.logits(ids[:n]), ref[:n])


@pytest.mark.parametrize("name", ["gqa4_hd128", "kv2", "overflow"])
@pytest.mark.parametrize("dtype", ["fp16", "q8"])
def test_prefill_agrees_with_token_by_token(engines, make_model, name, dtype):
    """Same logits (to the prompt path's rounding) and the same greedy continuations as processing the
    prompt one position at a time, at every chunking boundary; the token-by-token path itself within the
    decode budget of the reference."""
    spec = FIXTURES[name]
    batched, serial = engines(name, CHUNK, dtype), engines(name, 0, dtype)
    ids = prompt_ids(spec, max(LENGTHS), salt=4)
    a, b = batched.logits(ids), serial.logits(ids)
    if dtype == "fp16":
        _, w, cfg = make_model(name)
        check_logits(b, forward(w, cfg, ids), NORM_ERR_BUDGET, MAX_ERR_BUDGET)
    diff = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    budget = PROMPT_NORM_ERR_BUDGET + NORM_ERR_BUDGET if dtype == "fp16" else 5e-2
    assert diff.max() <= budget, f"batched vs token-by-token: {diff.max():.2e} at {diff.argmax()}"
    tie = 2 * PROMPT_MAX_ERR_BUDGET if dtype == "fp16" else 0.1
    for n in LENGTHS:
        want = serial.generate(ids[:n], max_new_tokens=8, ignore_eos=True)
        got = batched.generate(ids[:n], max_new_tokens=8, ignore_eos=True)
        assert_same_greedy(serial, ids[:n], got, want, tie)


def assert_same_greedy(engine, prompt, got, want, tie):
    """Equal continuations, or a first difference where `engine`'s top two logits are within `tie` std (a
    near-tie that rounding may legitimately flip; these random prompts have no guaranteed margin)."""
    got, want = [int(t) for t in got], [int(t) for t in want]
    if got == want:
        return
    i = next(j for j in range(len(want)) if j >= len(got) or got[j] != want[j])
    row = engine.logits(list(prompt) + want[:i])[-1]
    top2 = np.sort(row)[-2:]
    margin = (top2[1] - top2[0]) / row.std()
    assert margin < tie, f"prompt length {len(prompt)}: greedy differs at step {i}, top-2 margin {margin:.3f} std"


def test_prefill_default_chunk_generates_reference_greedy(make_model):
    import qwen3_rs
    from reference import greedy

    _, w, cfg = make_model("gqa4_hd128")
    prompt = greedy_prompt(FIXTURES["gqa4_hd128"])
    eng = qwen3_rs.Qwen3Engine(make_model("gqa4_hd128")[0])
    out = eng.generate(prompt, max_new_tokens=GREEDY_STEPS, ignore_eos=True)
    assert [int(t) for t in out] == greedy(w, cfg, prompt, GREEDY_STEPS)


@pytest.mark.slow
def test_prefill_32k_prompt(make_model, tmp_path):
    """A 32768-token prompt (16 chunks of the default 2048) within max_seq_len: its last positions' logits
    agree with token-by-token processing."""
    import qwen3_rs

    src = make_model("gqa4_hd128")[0]
    dst = tmp_path / "long"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["max_position_embeddings"] = 40960
    (dst / "config.json").write_text(json.dumps(cfg))
    ids = prompt_ids(FIXTURES["gqa4_hd128"], 32768, salt=5)
    batched = qwen3_rs.Qwen3Engine(str(dst), max_seq_len=32768 + 8)
    a = batched.logits(ids)
    serial = qwen3_rs.Qwen3Engine(str(dst), max_seq_len=32768 + 8, prefill_chunk=0)
    b = serial.logits(ids)
    assert a.shape == b.shape == (32768, cfg["vocab_size"])
    diff = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert diff.max() <= PROMPT_NORM_ERR_BUDGET + NORM_ERR_BUDGET, f"{diff.max():.2e} at position {diff.argmax()}"
    got = batched.generate(ids, max_new_tokens=4, ignore_eos=True)
    want = serial.generate(ids, max_new_tokens=4, ignore_eos=True)
    assert_same_greedy(serial, ids, got, want, 2 * PROMPT_MAX_ERR_BUDGET)
