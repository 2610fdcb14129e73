"""transformers' Qwen3ForCausalLM loaded with a fixture's dequantized weights (an unquantized model with
the exact values the AWQ checkpoint encodes). Callers importorskip torch and transformers first."""

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def hf_model(weights, config, dtype=torch.float32):
    dropped = ("quantization_config", "torch_dtype", "transformers_version")
    cfg = {k: v for k, v in config.items() if k not in dropped}
    hf_cfg = Qwen3Config(**cfg)
    hf_cfg._attn_implementation = "eager"  # plain softmax(QK^T)V, usable in float64
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(hf_cfg).to(dtype).eval()
    sd = {}
    for name, a in weights.items():
        # fixtures store linears as W [in, out]; nn.Linear keeps [out, in]
        sd[name] = torch.tensor(a.T if name.endswith("_proj.weight") else a, dtype=dtype)
    if config["tie_word_embeddings"]:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, strict=True)
    return model


@torch.no_grad()
def hf_logits(model, ids):
    return model(torch.tensor([list(ids)])).logits[0].double().numpy()


@torch.no_grad()
def hf_greedy(model, ids, n):
    """Greedy continuation of n tokens without eos stop (full recompute each step: tiny models, and no
    dependence on transformers' cache API)."""
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(hf_logits(model, seq)[-1])))
    return seq[len(ids) :]
