"""Independent NumPy float64 reference of the Qwen3 forward pass (transformers models/qwen3/modeling_qwen3.py
semantics) and of AWQ GEMM dequantization. Shares no code with fixtures.py on purpose.

Weights use the layout of fixtures.write_checkpoint: "<linear>.weight" is W [in, out] (y = x @ W);
embed_tokens / lm_head are [vocab, hidden].
"""

import numpy as np

# To read column 8c + j of a packed int32, shift right by 4 * READ_NIBBLE[j] (AutoAWQ GEMM order).
READ_NIBBLE = (0, 4, 1, 5, 2, 6, 3, 7)


def unpack_nibbles(packed):
    """int32 [R, C] -> int16 [R, 8C] of values 0..15, column 8c+j read from nibble READ_NIBBLE[j]."""
    u = np.ascontiguousarray(packed, dtype=np.int32).view(np.uint32)
    shifts = np.array([4 * n for n in READ_NIBBLE], np.uint32)
    return ((u[:, :, None] >> shifts) & np.uint32(0xF)).astype(np.int16).reshape(u.shape[0], -1)


def awq_unpack(qweight, qzeros, scales, group):
    """W[k, n] = (q[k, n] - z[k // group, n]) * scales[k // group, n], float64 [K, N]."""
    q, z = unpack_nibbles(qweight), unpack_nibbles(qzeros)
    g = np.arange(q.shape[0]) // group
    return (q - z[g]).astype(np.float64) * scales.astype(np.float64)[g]


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return 0.5 * x * (1.0 + np.tanh(0.5 * x))  # = x * sigmoid(x), without exp overflow warnings


def rope(x, positions, theta):
    """NeoX rotate-half RoPE on x [T, heads, d] at integer positions [T]."""
    d = x.shape[-1]
    inv_freq = float(theta) ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]
    emb = np.concatenate([ang, ang], axis=-1)[:, None, :]
    rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * np.cos(emb) + rotated * np.sin(emb)


def softmax(s, axis=-1):
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def f16(x):
    return np.asarray(x).astype(np.float16).astype(np.float64)


def f16_rows(x):
    """Each row rounded to fp16 after scaling by the power of two that puts its absmax in [2^14, 2^15)."""
    e = np.frexp(np.abs(x).max(axis=-1, keepdims=True))[1]
    return f16(np.ldexp(x, 15 - e)) * np.ldexp(1.0, e - 15)


def attend(q, k, v, fp16_weights=False):
    """Causal GQA attention. q [T, nh, d], k/v [S, nkv, d] (S >= T; query t sits at position S - T + t).
    Query head h uses kv head h // (nh / nkv). Returns [T, nh * d]. fp16_weights rounds the scaled q and the
    softmax weights (not their sum) to fp16."""
    T, nh, d = q.shape
    S, nkv, _ = k.shape
    kv_of = np.arange(nh) // (nh // nkv)
    q = f16(q * d**-0.5) if fp16_weights else q * d**-0.5
    scores = np.einsum("thd,shd->hts", q, k[:, kv_of])
    qpos, kpos = np.arange(S - T, S)[:, None], np.arange(S)[None, :]
    scores = np.where(kpos <= qpos, scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p = (f16(e) if fp16_weights else e) / e.sum(axis=-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v[:, kv_of]).reshape(T, nh * d)


def forward(weights, config, ids, stats=None, kv_dtype=None, prompt_fp16=False, fp16_weights=True):
    """Logits float64 [T, vocab] for token ids [T] at positions 0..T-1.
    If `stats` is a dict it receives per-layer maxima of |silu(gate)*up| ("mlp_act") and of the residual
    stream after the layer ("residual"), as lists. kv_dtype=np.float16 rounds k (after RoPE) and v the way
    an fp16 KV cache does, to size that error. prompt_fp16 also rounds what the batched prompt kernels round
    to fp16: the linears' input rows (scaled per row), the dequantized weights (unless not fp16_weights), q
    and the softmax weights."""
    w, c = weights, config
    if prompt_fp16 and fp16_weights:
        w = {n: f16(a) if n.endswith("proj.weight") else a for n, a in w.items()}
    rows = f16_rows if prompt_fp16 else (lambda a: a)
    nh, nkv, hd, eps = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
    ids = np.asarray(ids, np.int64)
    T, pos = len(ids), np.arange(len(ids))
    x = w["model.embed_tokens.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rows(rms_norm(x, w[p + "input_layernorm.weight"], eps))
        q = (h @ w[p + "self_attn.q_proj.weight"]).reshape(T, nh, hd)
        k = (h @ w[p + "self_attn.k_proj.weight"]).reshape(T, nkv, hd)
        v = (h @ w[p + "self_attn.v_proj.weight"]).reshape(T, nkv, hd)
        q = rope(rms_norm(q, w[p + "self_attn.q_norm.weight"], eps), pos, c["rope_theta"])
        k = rope(rms_norm(k, w[p + "self_attn.k_norm.weight"], eps), pos, c["rope_theta"])
        if kv_dtype is not None:
            k, v = k.astype(kv_dtype).astype(np.float64), v.astype(kv_dtype).astype(np.float64)
        x = x + rows(attend(q, k, v, prompt_fp16)) @ w[p + "self_attn.o_proj.weight"]
        h = rows(rms_norm(x, w[p + "post_attention_layernorm.weight"], eps))
        act = silu(h @ w[p + "mlp.gate_proj.weight"]) * (h @ w[p + "mlp.up_proj.weight"])
        x = x + rows(act) @ w[p + "mlp.down_proj.weight"]
        if stats is not None:
            stats.setdefault("mlp_act", []).append(float(np.abs(act).max()))
            stats.setdefault("residual", []).append(float(np.abs(x).max()))
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def greedy_trace(weights, config, ids, n):
    """Greedy continuation of n tokens (no eos stop). Returns (tokens, margins) where margins[i] is the gap
    between the best and second-best logit at step i divided by that step's logit std."""
    seq, out, margins = list(ids), [], []
    for _ in range(n):
        logits = forward(weights, config, seq)[-1]
        top2 = np.sort(logits)[-2:]
        margins.append(float((top2[1] - top2[0]) / logits.std()))
        tok = int(np.argmax(logits))
        out.append(tok)
        seq.append(tok)
    return out, margins


def greedy(weights, config, ids, n):
    return greedy_trace(weights, config, ids, n)[0]
