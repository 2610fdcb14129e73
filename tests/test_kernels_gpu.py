"""Each CUDA kernel (through qwen3_rs._qwen3_rs.ops) against NumPy float64 on random inputs.

Tolerances follow from what the kernels are meant to do: fp32 arithmetic and accumulation, fp16 only for
stored weights, scales, embeddings, norms and the KV cache. U = 2^-24 is the fp32 unit roundoff. A dot product
of K fp32 terms t_k has error ~0.4 U sqrt(K) ||t||_2 when summed sequentially (less as a tree), so we allow
16 U sqrt(K) ||t||_2: ~40x the expected error (a sequential fp32 sum measured at <= 0.12 of it), yet 5-50x
below what a kernel rounding activations or dequantized weights to fp16 (relative 2^-11 per term,
~2.8e-4 ||t||) would produce.
"""

import numpy as np
import pytest
from fixtures import awq_pack
from reference import awq_unpack, rope, silu

pytestmark = pytest.mark.gpu
U = 2.0**-24
F16_HALF_ULP = 2.0**-11  # relative rounding error of fp16 (normal range)


def dot_tol(x, w_sq_fn, k):
    """16 U sqrt(K) ||x * w_n||_2 for every output n; w_sq_fn(x_sq) returns sum_k x_k^2 w_kn^2."""
    return 16 * U * np.sqrt(k) * np.sqrt(w_sq_fn(np.asarray(x, np.float64) ** 2))


def assert_within(got, ref, tol, what=""):
    got = np.asarray(got)
    assert got.dtype == np.float32 and got.shape == ref.shape, (got.dtype, got.shape, ref.shape)
    assert np.isfinite(got).all(), f"{what}: non-finite output"
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > tol
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {bad.size} outside tolerance; worst err/tol "
        f"{(err / np.maximum(tol, 1e-300)).max():.3g}, max err {err.max():.3g}"
    )


def random_awq(rng, K, N, G):
    """Random 4-bit weights with zero points and positive fp16 scales; W from the independent unpacker."""
    q = rng.integers(0, 16, (K, N), dtype=np.uint8)
    z = rng.integers(0, 16, (K // G, N), dtype=np.uint8)
    s = (rng.uniform(0.5, 1.5, (K // G, N)) * 0.02).astype(np.float16)
    qw, qz = awq_pack(q), awq_pack(z)
    return (qw, qz, s), awq_unpack(qw, qz, s, G)


# ---- embedding: fp16 -> fp32 is exact, so the row must come back bit for bit.
@pytest.mark.parametrize("V,H", [(1000, 4096), (512, 256), (448, 192), (384, 128)])
def test_embedding(ops, rng, V, H):
    table = rng.standard_normal((V, H)).astype(np.float16)
    table[:, 0], table[:, 1] = 65504, -6e-8  # fp16 max and a subnormal survive too
    for tok in (0, V - 1, int(rng.integers(1, V - 1))):
        out = ops.embedding(table, tok)
        assert out.dtype == np.float32 and out.shape == (H,)
        assert np.array_equal(out, table[tok].astype(np.float32)), tok


# ---- rms_norm: the result is x_i * w_i * r with one shared r = 1/sqrt(mean(x^2) + eps). r's error is the
# fp32 sum of H squares (<= ~sqrt(H) U typical, 2.3e-6 at H=4096, halved by the square root) plus ~2 ulp of
# rsqrt; each element adds ~2 ulp of products. rtol 1e-5 covers that ~4x; any fp16 step (x up to 1e5 here) or
# a wrong eps (x ~ 1e-3, where mean(x^2) is eps-sized) misses by far more.
@pytest.mark.parametrize("H", [128, 192, 256, 384, 4096])
@pytest.mark.parametrize("mag,eps", [(1.0, 1e-6), (1e5, 1e-6), (1e-3, 1e-6), (1e-3, 1e-5)])
def test_rms_norm(ops, rng, H, mag, eps):
    x = (rng.standard_normal(H) * mag).astype(np.float32)
    w = (1 + 0.2 * rng.standard_normal(H)).astype(np.float16)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt(np.mean(x64**2) + eps) * w.astype(np.float64)
    assert_within(ops.rms_norm(x, w, eps), ref, 1e-5 * np.abs(ref) + 1e-30, f"H={H} mag={mag}")


GEMV_SHAPES = [
    (4096, 6144, 128),  # Qwen3-8B fused q|k|v
    (4096, 4096, 128),  # Qwen3-8B o_proj
    (12288, 4096, 128),  # Qwen3-8B down_proj
    (4096, 1024, 128),  # Qwen3-8B k_proj / v_proj
    (256, 1024, 128),  # gqa4_hd128 q_proj
    (1024, 256, 128),  # gqa4_hd128 o_proj
    (192, 128, 64),  # kv2 k_proj
    (384, 192, 64),  # kv2 down_proj
    (128, 64, 64),  # tied k_proj: N/8 = 8 packed columns
]


# ---- awq_gemv: y = x @ W, W = (q - z) * s. (q - z) * s is exact in fp32 (a 4-bit integer times an 11-bit
# mantissa), so the only error is the fp32 dot product: |err_n| <= 16 U sqrt(K) ||x * W[:, n]||_2 (module
# doc).
@pytest.mark.parametrize("K,N,G", GEMV_SHAPES)
@pytest.mark.parametrize("mag", [1.0, 1e5])
def test_awq_gemv(ops, rng, K, N, G, mag):
    (qw, qz, s), W = random_awq(rng, K, N, G)
    x = (rng.standard_normal(K) * mag).astype(np.float32)
    ref = x.astype(np.float64) @ W
    tol = dot_tol(x, lambda x2: x2 @ W**2, K)
    assert_within(ops.awq_gemv(x, qw, qz, s, G), ref, tol, f"{K}x{N} g{G} mag={mag}")


# ---- awq_gemv_residual: the same dot product plus one fp32 addition (<= U |result| + U |residual|).
@pytest.mark.parametrize("K,N,G", [(4096, 4096, 128), (12288, 4096, 128), (1024, 256, 128), (384, 192, 64)])
@pytest.mark.parametrize("mag", [1.0, 1e5])
def test_awq_gemv_residual(ops, rng, K, N, G, mag):
    (qw, qz, s), W = random_awq(rng, K, N, G)
    x = (rng.standard_normal(K) * mag).astype(np.float32)
    residual = (rng.standard_normal(N) * mag * 10).astype(np.float32)
    xw = x.astype(np.float64) @ W
    ref = residual.astype(np.float64) + xw
    tol = dot_tol(x, lambda x2: x2 @ W**2, K) + 2 * U * (np.abs(residual) + np.abs(xw))
    assert_within(ops.awq_gemv_residual(x, qw, qz, s, G, residual), ref, tol, f"{K}x{N} mag={mag}")


# ---- awq_gate_up: silu(g) * u with g = x @ Wg, u = x @ Wu. Errors Eg, Eu of the two dot products (bound
# above) propagate as |silu'| <= 1.1 times Eg times |u| plus |silu(g)| Eu; evaluating silu and the product
# adds a few ulp (even __expf is within ~2 + 1.16|g| ulp, <= ~1e-5 relative where silu is not ~0): allow 1e-5
# |ref| for it. With mag 1e5 the result reaches ~1e12, far beyond fp16.
@pytest.mark.parametrize("K,N,G", [(4096, 12288, 128), (256, 512, 128), (192, 384, 64), (128, 256, 64)])
@pytest.mark.parametrize("mag", [1.0, 1e5])
def test_awq_gate_up(ops, rng, K, N, G, mag):
    gate, Wg = random_awq(rng, K, N, G)
    up, Wu = random_awq(rng, K, N, G)
    x = (rng.standard_normal(K) * mag).astype(np.float32)
    g, u = x.astype(np.float64) @ Wg, x.astype(np.float64) @ Wu
    ref = silu(g) * u
    eg, eu = dot_tol(x, lambda x2: x2 @ Wg**2, K), dot_tol(x, lambda x2: x2 @ Wu**2, K)
    tol = 1.1 * eg * np.abs(u) + np.abs(silu(g)) * eu + 1e-5 * np.abs(ref) + 1e-30
    if mag > 1:
        assert np.abs(ref).max() > 65504
    assert_within(ops.awq_gate_up(x, gate, up, G), ref, tol, f"{K}x{N} mag={mag}")


# ---- the fused input RMSNorm of awq_gemv / awq_gate_up: x is replaced by x * rsqrt(mean(x^2) + eps) * w_norm
# before the dot product. The fp32 normalization adds a common relative error (sum of squares and rsqrtf,
# well under 1e-6) to every term, so 1e-6 sum_k |x_k W_kn| is added to the dot-product bound.
def rms_normed(x, w_norm, eps):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x) + eps) * w_norm.astype(np.float64)


@pytest.mark.parametrize("K,N,G", [(4096, 6144, 128), (256, 1024, 128), (192, 128, 64)])
@pytest.mark.parametrize("mag", [1.0, 1e5])
def test_awq_gemv_fused_norm(ops, rng, K, N, G, mag):
    (qw, qz, s), W = random_awq(rng, K, N, G)
    x = (rng.standard_normal(K) * mag).astype(np.float32)
    w_norm = rng.uniform(0.5, 2.0, K).astype(np.float16)
    xn = rms_normed(x, w_norm, 1e-6)
    ref = xn @ W
    tol = dot_tol(xn, lambda x2: x2 @ W**2, K) + 1e-6 * (np.abs(xn) @ np.abs(W))
    got = ops.awq_gemv(x, qw, qz, s, G, norm_weight=w_norm, eps=1e-6)
    assert_within(got, ref, tol, f"{K}x{N} g{G} mag={mag}")


@pytest.mark.parametrize("K,N,G", [(4096, 12288, 128), (192, 384, 64)])
def test_awq_gate_up_fused_norm(ops, rng, K, N, G):
    gate, Wg = random_awq(rng, K, N, G)
    up, Wu = random_awq(rng, K, N, G)
    x = (rng.standard_normal(K) * 300).astype(np.float32)
    w_norm = rng.uniform(0.5, 2.0, K).astype(np.float16)
    xn = rms_normed(x, w_norm, 1e-6)
    g, u = xn @ Wg, xn @ Wu
    ref = silu(g) * u
    eg = dot_tol(xn, lambda x2: x2 @ Wg**2, K) + 1e-6 * (np.abs(xn) @ np.abs(Wg))
    eu = dot_tol(xn, lambda x2: x2 @ Wu**2, K) + 1e-6 * (np.abs(xn) @ np.abs(Wu))
    tol = 1.1 * eg * np.abs(u) + np.abs(silu(g)) * eu + 1e-5 * np.abs(ref) + 1e-30
    assert_within(ops.awq_gate_up(x, gate, up, G, norm_weight=w_norm, eps=1e-6), ref, tol, f"{K}x{N}")


def random_half(rng, shape, std):
    out = np.empty(shape, np.float16)
    for i in range(0, shape[0], 8192):  # chunks keep the float32 temporary small for the lm_head shape
        out[i : i + 8192] = rng.standard_normal((min(8192, shape[0] - i), shape[1]), dtype=np.float32) * std
    return out


# ---- half_gemv: y = weight @ x with the fp16 [N, K] lm_head layout; fp32 dot product bound as above.
@pytest.mark.parametrize(
    "N,K,mag",
    [(151936, 4096, 1.0), (512, 256, 1.0), (640, 384, 1.0), (384, 128, 1.0), (512, 256, 1e5), (4096, 4096, 1e5)],
)
def test_half_gemv(ops, rng, N, K, mag):
    weight = random_half(rng, (N, K), 0.05)
    x = (rng.standard_normal(K) * mag).astype(np.float32)
    x64 = x.astype(np.float64)
    ref, tol = np.empty(N), np.empty(N)
    for i in range(0, N, 8192):
        w = weight[i : i + 8192].astype(np.float64)
        ref[i : i + 8192] = w @ x64
        tol[i : i + 8192] = 16 * U * np.sqrt(K) * np.sqrt(w**2 @ x64**2)
    assert_within(ops.half_gemv(x, weight), ref, tol, f"{N}x{K} mag={mag}")


# ---- qk_norm_rope: per-head RMSNorm of q and k (eps), NeoX RoPE at `pos`, k and v rounded to fp16 for the
# cache. q: the norm is good to ~1e-6 relative; the rotation's angle theta = pos * inv_freq is usually formed
# in fp32 (as transformers does), which costs up to a few ulp of theta <= pos: allow 8 U pos radians, times
# the size of the rotated pair, plus 1e-5 of it for norm, sin/cos and products. (At pos 40959 that is 2e-2:
# fp32 angles are that coarse there; a wrong theta, rotate-half vs interleaved pairing, or missing norm is off
# by O(1).) k: the same, then fp16 rounding: + 2^-11 |k| (+ 2^-25 absolute for fp16 subnormals). v: only
# rounded to fp16, so exactly float16(v) (round to nearest even).
QK_SHAPES = [(32, 8, 128), (8, 2, 128), (4, 2, 64), (4, 1, 64), (8, 4, 64)]


def norm_rope_ref(x, w, n, hd, pos, theta, eps):
    x = x.astype(np.float64).reshape(n, hd)
    xn = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * w.astype(np.float64)
    out = rope(xn[None], [pos], theta)[0]
    pair = np.sqrt(xn[:, : hd // 2] ** 2 + xn[:, hd // 2 :] ** 2)  # the rotation keeps each pair's length
    return out.reshape(-1), np.concatenate([pair, pair], axis=-1).reshape(-1)


@pytest.mark.parametrize("nh,nkv,hd", QK_SHAPES)
@pytest.mark.parametrize("pos", [0, 1, 7, 100, 511, 4095, 4096, 40959])
def test_qk_norm_rope(ops, rng, nh, nkv, hd, pos):
    theta, eps = 1e6, 1e-6
    qkv = (rng.standard_normal((nh + 2 * nkv) * hd) * 3).astype(np.float32)
    q_norm = (1 + 0.3 * rng.standard_normal(hd)).astype(np.float16)
    k_norm = (1 + 0.3 * rng.standard_normal(hd)).astype(np.float16)
    q, k, v = ops.qk_norm_rope(qkv, q_norm, k_norm, nh, nkv, hd, pos, theta, eps)
    q_ref, q_pair = norm_rope_ref(qkv[: nh * hd], q_norm, nh, hd, pos, theta, eps)
    k_ref, k_pair = norm_rope_ref(qkv[nh * hd : (nh + nkv) * hd], k_norm, nkv, hd, pos, theta, eps)
    angle_tol = 1e-5 + 8 * U * pos
    assert_within(q, q_ref, q_pair * angle_tol, "q")
    k_tol = k_pair * angle_tol
    assert_within(k, k_ref, k_tol + F16_HALF_ULP * (np.abs(k_ref) + k_tol) + 2.0**-25, "k")
    k = np.asarray(k)
    assert np.array_equal(k, k.astype(np.float16).astype(np.float32)), "k must hold fp16 values"
    v_ref = qkv[(nh + nkv) * hd :].astype(np.float16).astype(np.float32)
    assert np.asarray(v).dtype == np.float32 and np.array_equal(v, v_ref), "v must be exactly float16(v)"


def attention_ref(q, k_cache, v_cache, nh):
    """float64 softmax attention of one query over all cached positions; also the per-output error scale."""
    nkv, _, hd = k_cache.shape
    q = q.astype(np.float64).reshape(nh, hd)
    k, v = k_cache.astype(np.float64), v_cache.astype(np.float64)
    kv_of = np.arange(nh) // (nh // nkv)
    s = np.einsum("hd,htd->ht", q, k[kv_of]) * hd**-0.5
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out = np.einsum("ht,htd->hd", p, v[kv_of])
    # Score error of an fp32 dot product over hd terms (module doc), plus the scaling multiply.
    ds = 16 * U * np.sqrt(hd) * np.sqrt(np.einsum("hd,htd->ht", q**2, k[kv_of] ** 2)) * hd**-0.5
    ds += 4 * U * np.abs(s)
    weighted_abs_v = np.einsum("ht,htd->hd", p, np.abs(v[kv_of]))
    return out.reshape(-1), ds.max(axis=1)[:, None], weighted_abs_v


# ---- attention: out = sum_t p_t v_t. A score error ds shifts each p_t by <= 2 ds relative; exp adds a few
# ulp (even __expf is < 2e-6 relative where p_t is not negligible); the fp32 sums over T positions (softmax
# denominator and sum_t p_t v_t) add ~sqrt(T) U: with 16 sqrt(T) U of headroom. All of these are relative to
# sum_t p_t |v_t|, hence tol = (2 ds + 1e-5 + 16 sqrt(T) U) * sum_t p_t |v_t|. The cache is fp16 in both
# kernel and reference, so its rounding is not an error here; rounding p to fp16 (2^-11) would be.
# GQA ratios 4, 2 and 1 (plain multi-head), head_dim 64 and 128.
ATT_SHAPES = [(32, 8, 128), (8, 2, 128), (4, 2, 64), (4, 1, 64), (8, 8, 128), (4, 4, 64)]


def check_attention(ops, q, k_cache, v_cache, nh, what):
    out_ref, ds, wv = attention_ref(q, k_cache, v_cache, nh)
    T = k_cache.shape[1]
    tol = ((2 * ds + 1e-5 + 16 * np.sqrt(T) * U) * wv).reshape(-1)
    assert_within(ops.attention(q, k_cache, v_cache, nh), out_ref, tol, what)


@pytest.mark.parametrize("nh,nkv,hd", ATT_SHAPES)
@pytest.mark.parametrize("T", [1, 31, 32, 33, 1000, 4097])
# score_std 40: scores up to ~150, so exp overflows fp32 without subtracting the max first
@pytest.mark.parametrize("score_std", [2.0, 40.0])
def test_attention(ops, rng, nh, nkv, hd, T, score_std):
    # q and k of rms a: scores q.k / sqrt(hd) have std a^2, so a = sqrt(score_std).
    a = np.sqrt(score_std)
    q = (rng.standard_normal(nh * hd) * a).astype(np.float32)
    k_cache = (rng.standard_normal((nkv, T, hd)) * a).astype(np.float16)
    v_cache = rng.standard_normal((nkv, T, hd)).astype(np.float16)
    check_attention(ops, q, k_cache, v_cache, nh, f"T={T} nh={nh} nkv={nkv} hd={hd}")


# The longest Qwen3-8B context (max_position_embeddings 40960): many tiles per warp.
@pytest.mark.parametrize("T", [40960])
def test_attention_longest_context(ops, rng, T):
    nh, nkv, hd = 32, 8, 128
    q = (rng.standard_normal(nh * hd) * 2).astype(np.float32)
    k_cache = (rng.standard_normal((nkv, T, hd)) * 2).astype(np.float16)
    v_cache = rng.standard_normal((nkv, T, hd)).astype(np.float16)
    check_attention(ops, q, k_cache, v_cache, nh, f"T={T}")


@pytest.mark.parametrize("needle", [0, 31, 32, 1023, 1024, 2048, 4095, 4096])
def test_attention_needle(ops, rng, needle):
    # One cached key aligned with every query of its group: that position takes nearly all the weight, so the
    # output is ~v[needle]. Dropping or misplacing any single position (block edges, the last one) fails at
    # O(1).
    nh, nkv, hd, T = 32, 8, 128, 4097
    q = rng.standard_normal(nh * hd).astype(np.float32)
    k_cache = rng.standard_normal((nkv, T, hd)).astype(np.float16)
    v_cache = rng.standard_normal((nkv, T, hd)).astype(np.float16)
    group = nh // nkv
    for j in range(nkv):
        # score ~ 4 (|q_h|^2 + cross terms) / sqrt(hd) in ~[30, 60] against ~N(0, 1) elsewhere: weight ~ 1
        k_cache[j, needle] = (q.reshape(nh, hd)[j * group : (j + 1) * group].sum(0) * 4).astype(np.float16)
    out_ref = attention_ref(q, k_cache, v_cache, nh)[0].reshape(nh, hd)
    assert np.abs(out_ref - v_cache[np.arange(nh) // group, needle].astype(np.float64)).max() < 1e-2
    check_attention(ops, q, k_cache, v_cache, nh, f"needle at {needle}")


# ---- argmax: an index, exact. Values are distinct by construction (a permutation of integers), so no ties.
@pytest.mark.parametrize("N", [1, 32, 33, 4096, 151936])
@pytest.mark.parametrize("where", ["first", "last", "random"])
@pytest.mark.parametrize("offset,scale", [(0.0, 1.0), (-1e6, 1.0), (0.0, 1e30), (0.5, 1e-3)])
def test_argmax(ops, rng, N, where, offset, scale):
    x = (rng.permutation(N).astype(np.float64) * scale + offset).astype(np.float32)
    assert len(np.unique(x)) == N
    target = {"first": 0, "last": N - 1, "random": int(rng.integers(N))}[where]
    top = int(np.argmax(x))
    x[[top, target]] = x[[target, top]]
    assert int(np.argmax(x)) == target
    assert ops.argmax(x) == target
