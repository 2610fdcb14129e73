"""A byte-level tokenizer.json sized for the tiny fixture checkpoints, mirroring Qwen3's special tokens at the
top of the vocabulary (<|im_end|> = vocab - 1 and <|endoftext|> = vocab - 2, the fixtures' eos ids).

Every id decodes to complete UTF-8 (ASCII bytes, whole two- and three-byte characters, ASCII pairs), so
whatever a random model generates decodes the same token by token as all at once. Only ASCII text can be
encoded (one id per byte)."""

import os

# </think>, <think>, <|im_start|>, <|endoftext|>, <|im_end|> take the last five ids, in this order.
SPECIALS = [
    ("</think>", False),
    ("<think>", False),
    ("<|im_start|>", True),
    ("<|endoftext|>", True),
    ("<|im_end|>", True),
]
MULTIBYTE = "éñüßøåçàèìòùâêîôûäëïöÿæœ€£¥©®°±µ¶·¿ÀÉÑÖÜ中文字日本語한국어αβγδλπΣΩжшщфы"


def bytes_to_unicode():
    """GPT-2's byte -> printable character table used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def token_texts(vocab_size):
    """The text of each id below the specials."""
    assert vocab_size >= 128 + len(SPECIALS)
    texts = [chr(b) for b in range(128)]
    texts += list(MULTIBYTE)
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(texts) < vocab_size - len(SPECIALS):
        texts.append(letters[i % 26] + letters[(i // 26) % 26] + letters[(i // 676) % 26] * (i >= 676))
        i += 1
    return texts[: vocab_size - len(SPECIALS)]


def write_tiny_tokenizer(model_dir, vocab_size):
    """Writes model_dir/tokenizer.json for a vocabulary of `vocab_size` ids; returns its path."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    b2u = bytes_to_unicode()
    vocab = {"".join(b2u[b] for b in t.encode("utf-8")): i for i, t in enumerate(token_texts(vocab_size))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    for content, special in SPECIALS:
        token = AddedToken(content, special=special, normalized=False)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    for k, (content, _) in enumerate(SPECIALS):
        assert tok.token_to_id(content) == vocab_size - len(SPECIALS) + k, content
    path = os.path.join(model_dir, "tokenizer.json")
    tok.save(path)
    return path
