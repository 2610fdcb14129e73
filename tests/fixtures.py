"""Tiny random Qwen3 checkpoints in the Hugging Face AutoAWQ GEMM format (4-bit, zero points, group G
along K).

`write_checkpoint(path, spec)` writes config.json, generation_config.json and model.safetensors (or shards
+ index) and returns the float64 truth the checkpoint encodes:
  weights: {HF tensor name: float64 array}. Quantized linears appear as "<module>.weight" (e.g.
           "model.layers.0.self_attn.q_proj.weight") holding the dequantized W with shape [in, out], so
           y = x @ W (the transpose of torch's nn.Linear layout). Embeddings / lm_head stay [vocab, hidden];
           norms [dim]. Everything is exactly the value stored in the file (fp16 -> float64, or
           (q - z) * fp16 scale).
  config, generation_config: the dicts written to the json files.
"""

import json
import os
from dataclasses import dataclass, replace

import numpy as np
from safetensors_io import save_model

# Nibble i (bits 4i..4i+3) of a packed int32 holds column 8c + ORDER[i] (AutoAWQ GEMM layout).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def awq_pack(q):
    """q: unsigned ints 0..15 [K, N] -> int32 [K, N/8] in AutoAWQ GEMM nibble order (also used for qzeros)."""
    q = np.asarray(q)
    assert q.ndim == 2 and q.shape[1] % 8 == 0 and q.min() >= 0 and q.max() <= 15
    cols = q.astype(np.uint32).reshape(q.shape[0], -1, 8)
    packed = np.zeros(cols.shape[:2], np.uint32)
    for i, col in enumerate(AWQ_ORDER):
        packed |= cols[:, :, col] << np.uint32(4 * i)
    return packed.view(np.int32)


def rtn_quantize(w, group):
    """Round-to-nearest asymmetric 4-bit quantization of w [K, N] in groups of `group` rows along K.
    Returns (q uint8 [K, N], z uint8 [K/G, N], scales fp16 [K/G, N], dequantized float64 [K, N]).
    Two deliberate details, both keeping |w - deq| <= scale/2 for every element:
    the range [lo, hi] always contains 0 (so the zero point never clips), and the fp16 scale is rounded *up*
    (so (hi - lo)/scale <= 15 and the top value never clips)."""
    K, N = w.shape
    assert K % group == 0
    wg = w.reshape(K // group, group, N)
    lo, hi = np.minimum(wg.min(1), 0.0), np.maximum(wg.max(1), 0.0)
    s = (hi - lo) / 15
    s16 = s.astype(np.float16)
    low = s16.astype(np.float64) < s
    s16[low] = np.nextafter(s16[low], np.float16(np.inf))
    s16[s16 == 0] = 1.0  # an all-zero group: any scale works
    sf = s16.astype(np.float64)
    z = np.clip(np.round(-lo / sf), 0, 15)
    q = np.clip(np.round(wg / sf[:, None]) + z[:, None], 0, 15)
    deq = ((q - z[:, None]) * sf[:, None]).reshape(K, N)
    return q.reshape(K, N).astype(np.uint8), z.astype(np.uint8), s16, deq


@dataclass(frozen=True)
class Spec:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    group: int
    seed: int
    tied: bool = False
    shards: int = 1
    embed_std: float = 1.0
    qk_std: float = 1.0  # scales q_proj/k_proj weights; 5e-3 puts mean(q^2) near rms_norm_eps so eps matters
    # g: post-attention norm x g, gate/up std x g => silu(gate)*up ~ g^4, overflows fp16 at g=16
    mlp_gain: float = 1.0
    rope_theta: float = 1e6
    eps: float = 1e-6
    max_pos: int = 512


# Seeds were picked so that the reference greedy continuation of greedy_prompt() has a top-2 logit margin of
# at least MIN_MARGIN (in units of the logits' std) at all GREEDY_STEPS steps; test_reference.py checks this.
FIXTURES = {
    # Qwen3-8B's head_dim and GQA ratio (32/8), at toy width: q_proj out (1024) != hidden (256).
    "gqa4_hd128": Spec(
        hidden=256, intermediate=512, layers=2, heads=8, kv_heads=2, head_dim=128, vocab=512, group=128, seed=11
    ),
    # Tiny q/k projections: mean(q^2) ~ 2.5e-5, so q_norm/k_norm with eps 1e-5 instead of config's 1e-6
    # changes the logits by ~30% (a known failure mode); the fp16 scales stay normal numbers.
    "kv2": Spec(
        hidden=192,
        intermediate=384,
        layers=3,
        heads=4,
        kv_heads=2,
        head_dim=64,
        vocab=448,
        group=64,
        seed=111,
        qk_std=5e-3,
    ),
    # No lm_head tensor: logits use embed_tokens. One KV head (MQA). A small embedding (as in real tied
    # models) keeps the token's own embedding from dominating the residual, else greedy decoding just repeats
    # the last token.
    "tied": Spec(
        hidden=128,
        intermediate=256,
        layers=2,
        heads=4,
        kv_heads=1,
        head_dim=64,
        vocab=384,
        group=64,
        seed=70,
        tied=True,
        embed_std=0.02,
    ),
    # MLP intermediate and residual stream exceed 65504 (the fp16 max) at some positions.
    "overflow": Spec(
        hidden=256,
        intermediate=512,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=128,
        vocab=512,
        group=128,
        seed=5,
        mlp_gain=16.0,
    ),
    # Two safetensors shards + model.safetensors.index.json.
    "sharded": Spec(
        hidden=384,
        intermediate=1024,
        layers=2,
        heads=8,
        kv_heads=4,
        head_dim=64,
        vocab=640,
        group=128,
        seed=24,
        shards=2,
    ),
}
GREEDY_STEPS = 32
MIN_MARGIN = 0.04
# engine.logits error budget per position (justified in test_engine_gpu.py): ||err|| / ||ref|| and
# max |err| / std(ref); greedy agreement needs 2 * MAX_ERR_BUDGET < MIN_MARGIN.
NORM_ERR_BUDGET = 3e-3
MAX_ERR_BUDGET = 1.5e-2
# The same for logits computed by the batched prompt path, which also rounds activations, dequantized weights,
# q and softmax weights to fp16 (justified in test_engine_gpu.py); 2 * PROMPT_MAX_ERR_BUDGET < MIN_MARGIN too.
PROMPT_NORM_ERR_BUDGET = 6e-3
PROMPT_MAX_ERR_BUDGET = 1.9e-2
GREEDY_PROMPT_LEN = 7
LONG_PROMPT_LEN = 67  # crosses 32- and 64-position boundaries


def eos_ids(spec):
    """Mirrors Qwen3: config eos 151645 (<|im_end|>), generation_config [151645, 151643]."""
    return [spec.vocab - 1, spec.vocab - 2]


def prompt_ids(spec, length, salt=0):
    """Deterministic prompt of `length` ids, never an eos id."""
    rng = np.random.default_rng([spec.seed, length, salt, 7])
    return [int(t) for t in rng.integers(0, spec.vocab - 2, size=length)]


def greedy_prompt(spec):
    return prompt_ids(spec, GREEDY_PROMPT_LEN)


def long_prompt(spec):
    return prompt_ids(spec, LONG_PROMPT_LEN, salt=1)


def make_config(spec):
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": spec.vocab - 2,
        "eos_token_id": spec.vocab - 1,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate,
        "max_position_embeddings": spec.max_pos,
        "max_window_layers": spec.layers,
        "model_type": "qwen3",
        "num_attention_heads": spec.heads,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": spec.kv_heads,
        "quantization_config": {
            "bits": 4,
            "group_size": spec.group,
            "zero_point": True,
            "version": "gemm",
            "quant_method": "awq",
            "modules_to_not_convert": None,
        },
        "rms_norm_eps": spec.eps,
        "rope_scaling": None,
        "rope_theta": spec.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": spec.tied,
        "torch_dtype": "float16",
        "transformers_version": "4.51.3",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": spec.vocab,
    }


def make_generation_config(spec):
    # Only the ids: no sampling defaults, so that an engine honouring generation_config still decodes
    # greedily.
    return {"bos_token_id": spec.vocab - 2, "eos_token_id": eos_ids(spec), "transformers_version": "4.51.3"}


def make_tensors(spec):
    """Returns (checkpoint tensors {name: array as stored}, float64 truth {name: array}, see module doc)."""
    rng = np.random.default_rng(spec.seed)
    H, I, hd, G = spec.hidden, spec.intermediate, spec.head_dim, spec.group
    qo, kvo = spec.heads * hd, spec.kv_heads * hd
    for d in (H, I, qo, kvo, spec.vocab):
        assert d % 32 == 0
    for d in (H, I, qo):  # the input dims of quantized linears
        assert d % G == 0
    tensors, truth = {}, {}

    def half(name, a):
        tensors[name] = np.asarray(a).astype(np.float16)
        truth[name] = tensors[name].astype(np.float64)

    def gain(n, mean=1.0, spread=0.1):  # norm weights: positive, not all equal
        return mean * (1 + spread * rng.standard_normal(n))

    def linear(name, k, n, std):
        q, z, s, deq = rtn_quantize(rng.standard_normal((k, n)) * std, G)
        tensors[name + ".qweight"] = awq_pack(q)
        tensors[name + ".qzeros"] = awq_pack(z)
        tensors[name + ".scales"] = s
        truth[name + ".weight"] = deq

    g = spec.mlp_gain
    # Scales chosen so every sub-block contributes O(1) to the residual; q/k norms ~1.5 give attention scores
    # with std ~2 so that attention is neither uniform nor one-hot, and context changes the logits.
    half("model.embed_tokens.weight", rng.standard_normal((spec.vocab, H)) * spec.embed_std)
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        half(p + "input_layernorm.weight", gain(H))
        linear(p + "self_attn.q_proj", H, qo, spec.qk_std * H**-0.5)
        linear(p + "self_attn.k_proj", H, kvo, spec.qk_std * H**-0.5)
        linear(p + "self_attn.v_proj", H, kvo, H**-0.5)
        half(p + "self_attn.q_norm.weight", gain(hd, 1.5))
        half(p + "self_attn.k_norm.weight", gain(hd, 1.5))
        linear(p + "self_attn.o_proj", qo, H, qo**-0.5)
        half(p + "post_attention_layernorm.weight", gain(H, g))
        linear(p + "mlp.gate_proj", H, I, g * H**-0.5)
        linear(p + "mlp.up_proj", H, I, g * H**-0.5)
        linear(p + "mlp.down_proj", I, H, I**-0.5)
    half("model.norm.weight", gain(H))
    if not spec.tied:
        half("lm_head.weight", rng.standard_normal((spec.vocab, H)) * 4 * H**-0.5)  # logits std ~4
    return tensors, truth


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def write_checkpoint(path, spec, seed=None, shards=None):
    """Write the checkpoint of `spec` (a Spec or a FIXTURES name) into directory `path` (created if needed).
    `seed` / `shards` override the spec's. Returns {"weights", "config", "generation_config", "files"}."""
    spec = FIXTURES[spec] if isinstance(spec, str) else spec
    spec = replace(spec, seed=spec.seed if seed is None else seed, shards=spec.shards if shards is None else shards)
    os.makedirs(path, exist_ok=True)
    tensors, weights = make_tensors(spec)
    config, gen = make_config(spec), make_generation_config(spec)
    write_json(os.path.join(path, "config.json"), config)
    write_json(os.path.join(path, "generation_config.json"), gen)
    files = save_model(tensors, path, spec.shards)
    return {"weights": weights, "config": config, "generation_config": gen, "files": files}
