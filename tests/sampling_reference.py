"""Sampling references: the distribution transformers' logits processors define (float64), a model of
kernels/sampling.cu (same thresholds, fixed-point masses, draw order and random numbers, so it predicts
the kernel's tokens), and statistical checks of draws against a distribution."""

import math

import numpy as np

MASK64 = (1 << 64) - 1
THREADS = 1024


def softmax(s):
    s = np.asarray(s, np.float64)
    m = s.max()
    if not np.isfinite(m):
        out = np.zeros_like(s)
        out[np.argmax(s)] = 1.0
        return out
    e = np.exp(s - m)
    return e / e.sum()


def penalize(logits, present, penalty, dtype=np.float64):
    s = np.array(logits, dtype)
    s[np.isnan(s)] = -np.inf
    if penalty != 1.0 and len(present):
        idx = np.unique(np.asarray(present, np.int64))
        v = s[idx]
        r = dtype(penalty)
        s[idx] = np.where(v > 0, v / r, v * r)
    return s


def reference_probs(
    logits, present=(), *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, do_sample=True
):
    """transformers' processors in its order (RepetitionPenalty, Temperature, TopK, TopP, MinP), then the
    softmax; greedy (do_sample=False) is a one-hot at the first largest penalized logit."""
    s = penalize(logits, present, repetition_penalty)
    if not do_sample:
        out = np.zeros(s.size)
        out[int(np.argmax(s))] = 1.0
        return out
    s = s / temperature
    if 0 < top_k < s.size:
        kth = np.sort(s)[-top_k]
        s[s < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(s, kind="stable")
        cum = np.cumsum(softmax(s[order]))
        remove = cum <= 1 - top_p
        remove[-1] = False
        s[order[remove]] = -np.inf
    if min_p and min_p > 0:
        p = softmax(s)
        s[p < min_p * p.max()] = -np.inf
    return softmax(s)


def boundary_margin(logits, present=(), *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    """How far the case is from a truncation boundary (smaller means float rounding could move a token in
    or out): the relative gap at the k-th logit, the top_p distance of the cumulative mass, the min_p
    distance of the probability ratios."""
    s = np.sort(penalize(logits, present, repetition_penalty) / temperature)[::-1]
    margins = [1.0]
    if 0 < top_k < s.size:
        margins.append(s[top_k - 1] - s[top_k])
        s = s[:top_k]
    if top_p < 1.0:
        p = softmax(s)
        above = np.concatenate([[0.0], np.cumsum(p)[:-1]])  # mass of more likely tokens
        margins.append(np.abs(above - top_p).min())
        s = s[above < top_p]
    if min_p and min_p > 0:
        ratio = np.exp(s - s.max())
        margins.append(np.abs(ratio - min_p).min())
    return float(min(margins))


# ---------------------------------------------------------------- a model of kernels/sampling.cu


def mix64(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def draw_bits(seed, pos):
    """The kernel's 64-bit random number for (seed, position)."""
    return mix64(mix64(seed & MASK64) ^ ((0xD1B54A32D192ED03 * (pos & 0xFFFFFFFF)) & MASK64))


def float_keys(x):
    b = np.asarray(x, np.float32).view(np.uint32)
    return np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000)).astype(np.uint32)


def radix_select(keys, weights, target, lower):
    """Lowest key (among keys >= lower) whose larger keys weigh less than target, in 11/11/10-bit passes."""
    prefix, pmask = 0, 0
    keys = keys.astype(np.int64)
    for shift, dmask in ((21, 0x7FF), (10, 0x7FF), (0, 0x3FF)):
        sel = (keys >= lower) & ((keys & pmask) == prefix)
        hist = [0] * 2048
        for b, w in zip(((keys[sel] >> shift) & dmask).tolist(), weights[sel].tolist()):
            hist[b] += int(w)
        gt, acc = [0] * 2048, 0
        for b in range(2047, -1, -1):
            gt[b] = acc
            acc += hist[b]
        b = min(i for i in range(2048) if gt[i] < target)
        target -= gt[b]
        prefix |= b << shift
        pmask |= dmask << shift
    return prefix


class KernelModel:
    """What kernels/sampling.cu computes for one set of logits and options: `token(seed, pos)`."""

    def __init__(
        self,
        logits,
        present=(),
        *,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        repetition_penalty=1.0,
        do_sample=True,
    ):
        x = penalize(logits, present, repetition_penalty, np.float32)
        n = x.size
        self.greedy = int(np.argmax(x))
        self.do_sample = do_sample and bool(np.isfinite(x.max()))
        if not self.do_sample:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            rel = np.exp((x - x.max()) / np.float32(temperature)).astype(np.float32)
        mass = np.rint(rel.astype(np.float64) * 2.0**40).astype(np.uint64)
        keys = float_keys(x)
        lower = 0
        if 0 < top_k < n:
            lower = radix_select(keys, np.ones(n, np.uint64), top_k, 0)
        if top_p < 1.0:
            total = sum(int(m) for m in mass[keys >= lower])
            target = min(max(math.ceil(float(np.float32(top_p)) * float(total)), 1), total)
            lower = max(lower, radix_select(keys, mass, target, lower))
        kept = keys >= lower
        if min_p and min_p > 0:
            kept &= rel >= np.float32(min_p)
        w = np.where(kept, mass, np.uint64(0))
        i = np.arange(n)
        self.order = np.lexsort((i // THREADS, i % THREADS))  # thread-major: thread i % 1024, then round
        self.cum = np.cumsum(w[self.order].astype(object))
        self.total = int(self.cum[-1])
        self.cum_float = self.cum.astype(float)

    def token(self, seed, pos):
        if not self.do_sample:
            return self.greedy
        u = (draw_bits(seed, pos) * self.total) >> 64
        j = int(np.searchsorted(self.cum_float, float(u), side="right"))
        # exact integer search around the float estimate
        while j > 0 and self.cum[j - 1] > u:
            j -= 1
        while self.cum[j] <= u:
            j += 1
        return int(self.order[j])


# ---------------------------------------------------------------- statistics


def check_draws(draws, probs, label=""):
    """Draws must come from `probs`: none outside its support, and (stated tolerance) every bin within 5
    binomial standard deviations (+1) of its expected count, and a chi-square statistic over the bins
    expecting >= 5 draws (the rest pooled) below the 1 - 3.4e-6 quantile (Wilson-Hilferty z < 4.5).
    For a correct sampler with <= 1000 bins the chance of a false failure is below 1e-3."""
    draws = np.asarray(draws, np.int64)
    n = draws.size
    probs = np.asarray(probs, np.float64)
    counts = np.bincount(draws, minlength=probs.size)
    outside = np.nonzero((counts > 0) & (probs == 0))[0]
    assert outside.size == 0, f"{label}: drew tokens outside the kept set: {outside[:10].tolist()}"
    expected = n * probs
    sd = np.sqrt(n * probs * (1 - probs))
    worst = np.argmax(np.abs(counts - expected) - 5 * sd)
    assert np.all(np.abs(counts - expected) <= 5 * sd + 1), (
        f"{label}: token {worst} drawn {counts[worst]} times, expected {expected[worst]:.1f} +- {sd[worst]:.1f}"
    )
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    df = obs.size - 1
    if df < 1:
        return
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    z = ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    assert z < 4.5, f"{label}: chi-square {chi2:.1f} with {df} degrees of freedom (z = {z:.2f})"
