"""Fixed logits and option sets shared by the CPU and GPU sampling tests."""

import numpy as np

VOCAB = 200
DRAWS = 20000
SEED = 20240531


def logits():
    """200 logits, spread like a language model's (std 2), with a few large ones, in float32."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 2.0, VOCAB)
    x[rng.choice(VOCAB, 5, replace=False)] += 4.0
    return x.astype(np.float32)


def present():
    """Tokens the repetition penalty applies to: some of the likeliest (positive logits) and some negative."""
    x = logits()
    order = np.argsort(x)[::-1]
    return sorted({int(t) for t in order[:6:2]} | {int(t) for t in order[-40::7]} | {int(order[60])})


# Every option is given (top_k defaults to 50 otherwise); margins to truncation boundaries are checked.
CASES = {
    "plain": dict(temperature=1.0, top_k=0),
    "temperature": dict(temperature=0.7, top_k=0),
    "hot": dict(temperature=2.5, top_k=0),
    "top_k": dict(temperature=1.0, top_k=10),
    "top_p": dict(temperature=1.0, top_k=0, top_p=0.8),
    "min_p": dict(temperature=1.0, top_k=0, min_p=0.05),
    "qwen3_defaults": dict(temperature=0.6, top_k=20, top_p=0.95),
    "penalty": dict(temperature=1.0, top_k=0, repetition_penalty=1.8),
    "everything": dict(temperature=1.3, top_k=30, top_p=0.9, min_p=0.02, repetition_penalty=1.5),
}
