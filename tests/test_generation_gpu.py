"""Generation options end to end on a tiny fixture model with a tiny tokenizer: sampling through the decode
graph (greedy limits, seeds, graphs on and off, the repetition penalty against a host loop over
engine.logits, the first token's distribution), streaming, eos override, array inputs, text, chat, stop
strings, load logging and progress."""

import logging

import numpy as np
import pytest
from fixtures import FIXTURES, greedy_prompt
from sampling_reference import boundary_margin, check_draws, penalize, reference_probs

qwen3_rs = pytest.importorskip("qwen3_rs")
errors = qwen3_rs.errors
pytestmark = pytest.mark.gpu

NAME = "gqa4_hd128"
PROMPT = greedy_prompt(FIXTURES[NAME])
STEPS = 32


@pytest.fixture(scope="module")
def model_dir(tokenizer_model_dir):
    return tokenizer_model_dir


@pytest.fixture(scope="module")
def engine(model_dir):
    return qwen3_rs.Qwen3Engine(model_dir, max_seq_len=256)


@pytest.fixture(scope="module")
def greedy(engine):
    return engine.generate(PROMPT, STEPS, ignore_eos=True)


def sample(engine, seed, n=STEPS, **opts):
    return engine.generate(PROMPT, n, ignore_eos=True, do_sample=True, seed=seed, **opts)


def test_top_k_1_is_greedy(engine, greedy):
    for seed in (0, 1, 2**63):
        assert sample(engine, seed, top_k=1) == greedy
    assert sample(engine, 3, top_k=1, temperature=20.0) == greedy


def test_tiny_temperature_is_greedy(engine, greedy):
    # The fixture's greedy steps have top-2 margins >= 0.16 logits: / 1e-4 leaves the runner-up exp(-1600) = 0.
    for seed in (0, 7):
        assert sample(engine, seed, temperature=1e-4, top_k=0) == greedy


def test_same_seed_same_tokens(engine, greedy):
    a = sample(engine, 5, temperature=1.0, top_k=0)
    assert sample(engine, 5, temperature=1.0, top_k=0) == a
    engine.generate(PROMPT, 8)  # something else in between
    assert sample(engine, 5, temperature=1.0, top_k=0) == a
    b = sample(engine, 6, temperature=1.0, top_k=0)
    assert a != b
    assert a != greedy
    assert all(0 <= t < FIXTURES[NAME].vocab for t in a + b)


def test_graphs_and_no_graphs_sample_alike(model_dir, engine):
    plain = qwen3_rs.Qwen3Engine(model_dir, max_seq_len=256, cuda_graphs=False)
    for opts in (
        dict(temperature=0.9, top_k=40, top_p=0.95, seed=11),
        dict(temperature=1.5, top_k=0, min_p=0.02, repetition_penalty=1.2, seed=12),
    ):
        assert sample(plain, **opts) == sample(engine, **opts)
    assert plain.generate(PROMPT, 16, True, repetition_penalty=1.3) == engine.generate(
        PROMPT, 16, True, repetition_penalty=1.3
    )


def test_repetition_penalty_greedy_matches_host_loop(engine, greedy):
    """transformers' rule over prompt + generated tokens, applied to engine.logits on the host: the device
    presence flags must track every sampled token."""
    out = []
    for _ in range(16):
        row = engine.logits(PROMPT + out)[-1]
        out.append(int(np.argmax(penalize(row, PROMPT + out, 1.3))))
    got = engine.generate(PROMPT, 16, ignore_eos=True, repetition_penalty=1.3)
    assert got == out
    assert got != greedy[:16]  # the penalty changes this continuation from its 8th token on


def test_first_token_distribution(engine):
    """3000 seeds, one token each, against transformers' processors over the engine's own logits."""
    opts = dict(temperature=2.0, top_k=30, top_p=0.9, min_p=0.01, repetition_penalty=1.3)
    row = engine.logits(PROMPT)[-1]
    assert boundary_margin(row, PROMPT, **opts) > 1e-3
    draws = [engine.generate(PROMPT, 1, True, do_sample=True, seed=s, **opts)[0] for s in range(3000)]
    check_draws(draws, reference_probs(row, PROMPT, **opts), "engine first token")


def test_stream_ids(engine, greedy):
    stream = engine.stream_ids(PROMPT, STEPS, ignore_eos=True)
    assert not stream.finished
    got = []
    for t in stream:
        got.append(t)
        assert stream.finished == (len(got) == STEPS)
    assert got == greedy
    assert list(engine.stream_ids(PROMPT, 12, True, do_sample=True, seed=9)) == sample(engine, 9, 12)
    assert list(engine.stream_ids(PROMPT, 0)) == []


def test_another_generation_ends_a_stream(engine, greedy):
    stream = engine.stream_ids(PROMPT, STEPS, ignore_eos=True)
    assert next(stream) == greedy[0]
    assert engine.generate(PROMPT, 4, True) == greedy[:4]
    with pytest.raises(errors.InvalidArgumentError, match="another generation"):
        next(stream)
    stream = engine.stream_ids(PROMPT, STEPS, ignore_eos=True)
    next(stream)
    engine.logits(PROMPT)
    with pytest.raises(errors.InvalidArgumentError):
        next(stream)
    # Abandoning a stream part way leaves the engine as good as new.
    for i, _ in enumerate(engine.stream(PROMPT, STEPS, ignore_eos=True)):
        if i == 3:
            break
    assert engine.generate(PROMPT, STEPS, True) == greedy


def test_eos_token_id_override(engine, greedy):
    k = next(i for i in range(5, STEPS) if greedy[i] not in greedy[:i])
    assert engine.generate(PROMPT, STEPS, eos_token_id=greedy[k]) == greedy[: k + 1]
    other = next(t for t in range(500, 512) if t not in greedy)
    assert engine.generate(PROMPT, STEPS, eos_token_id=[other, greedy[k]]) == greedy[: k + 1]
    assert engine.generate(PROMPT, STEPS, ignore_eos=True, eos_token_id=greedy[k]) == greedy
    assert list(engine.stream_ids(PROMPT, STEPS, eos_token_id=greedy[k])) == greedy[: k + 1]
    with pytest.raises(errors.InvalidArgumentError, match="eos_token_id 512"):
        engine.generate(PROMPT, 4, eos_token_id=512)


def test_bad_sampling_arguments(engine, greedy):
    for kwargs, word in [
        (dict(temperature=0.0), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=2.0), "min_p"),
        (dict(top_k=-2), "top_k"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
    ]:
        with pytest.raises(errors.InvalidArgumentError, match=word):
            engine.generate(PROMPT, 4, do_sample=True, **kwargs)
        with pytest.raises(errors.InvalidArgumentError, match=word):
            engine.stream(PROMPT, 4, do_sample=True, **kwargs)
    assert engine.generate(PROMPT, STEPS, True) == greedy


class ArrayLike:
    """Exposes ids only through the array protocol, as a CPU torch tensor does."""

    def __init__(self, ids):
        self.ids = ids

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.ids, dtype=dtype or np.int64)


def test_array_inputs_and_numpy_output(engine, greedy):
    for ids in (np.array(PROMPT, np.int32), np.array(PROMPT, np.uint16), ArrayLike(PROMPT)):
        assert engine.generate(ids, STEPS, True) == greedy
    out = engine.generate(np.array(PROMPT), STEPS, True, return_numpy=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64 and out.tolist() == greedy
    torch = pytest.importorskip("torch")
    assert engine.generate(torch.tensor(PROMPT), STEPS, True) == greedy


TEXT = "Once upon a time"


def test_generate_text_and_stream(engine):
    tok = engine.tokenizer
    ids = engine.encode(TEXT)
    assert ids == tok.encode(TEXT, add_special_tokens=False).ids and len(ids) == len(TEXT)
    new = engine.generate(ids, 40, True)
    text = engine.generate_text(TEXT, 40, True)
    assert text == tok.decode(new, skip_special_tokens=True)
    chunks = list(engine.stream(TEXT, 40, True))
    assert [c.token_id for c in chunks] == new
    assert "".join(c.text for c in chunks) == text
    raw = list(engine.stream(ids, 40, True, skip_special_tokens=False))
    assert "".join(c.text for c in raw) == tok.decode(new, skip_special_tokens=False)
    assert all(c.text == "" for c in engine.stream(ids, 5, True, decode=False))
    sampled = engine.generate_text(TEXT, 20, True, do_sample=True, seed=3, temperature=1.2)
    assert sampled == engine.generate_text(TEXT, 20, True, do_sample=True, seed=3, temperature=1.2)


def test_stop_strings(engine):
    tok = engine.tokenizer
    ids = engine.encode(TEXT)
    new = engine.generate(ids, 48, True)
    text = engine.generate_text(TEXT, 48, True)
    stop = text[12:15]
    assert len(stop) == 3
    cut = text[: text.find(stop)]
    assert engine.generate_text(TEXT, 48, True, stop_strings=[stop]) == cut
    assert engine.generate_text(TEXT, 48, True, stop_strings=stop) == cut
    assert "".join(c.text for c in engine.stream(TEXT, 48, True, stop_strings=[stop])) == cut
    # token ids: up to the token that completes the stop string (on text with special tokens kept)
    raw = tok.decode(new, skip_special_tokens=False)
    raw_stop = raw[12:15]
    n = next(j for j in range(1, len(new) + 1) if raw_stop in tok.decode(new[:j], skip_special_tokens=False))
    assert engine.generate(ids, 48, True, stop_strings=[raw_stop]) == new[:n]
    assert engine.generate_text(TEXT, 48, True, stop_strings=["no such text \x00"]) == text


def test_chat(engine):
    from qwen3_rs.text import apply_chat_template

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    for thinking in (True, False):
        prompt = apply_chat_template(messages, enable_thinking=thinking)
        assert engine.chat(messages, 24, enable_thinking=thinking) == engine.generate_text(prompt, 24)
    with pytest.raises(ValueError, match="role"):
        engine.chat([{"role": "robot", "content": "x"}])


def test_text_needs_a_tokenizer(make_model):
    bare = qwen3_rs.Qwen3Engine(make_model(NAME)[0], max_seq_len=64)
    with pytest.raises(errors.ModelNotFoundError, match="tokenizer.json"):
        bare.generate_text("hi", 4)
    chunks = list(bare.stream(PROMPT, 4, True))
    assert [c.text for c in chunks] == [""] * 4
    assert [c.token_id for c in chunks] == bare.generate(PROMPT, 4, True)


def test_load_logs_and_progress(model_dir, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="qwen3_rs"):
        e = qwen3_rs.Qwen3Engine(model_dir, max_seq_len=64, progress=True)
    messages = [r.getMessage() for r in caplog.records if r.name == "qwen3_rs"]
    assert any("kernels ready" in m for m in messages), messages
    assert any(m.startswith("loaded 2 layers") for m in messages), messages
    assert any(m.startswith("loaded " + model_dir) for m in messages), messages
    err = capsys.readouterr().err
    assert "[qwen3-rs] compiling kernels" in err and "[qwen3-rs] loading weights" in err and "2/2" in err
    assert e.generate(PROMPT, 2, True) == e.generate(PROMPT, 2, True)


def test_load_callback_error_ends_the_load(model_dir):
    def boom(kind, done, total, name, cached, seconds):
        if kind == "layers":
            raise KeyboardInterrupt("stop loading")

    with pytest.raises(KeyboardInterrupt, match="stop loading"):
        qwen3_rs._qwen3_rs.Qwen3Engine(model_dir, max_seq_len=64, on_event=boom)


def test_hub_repo_id_resolves_through_huggingface_hub(model_dir, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("huggingface_hub")

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        return model_dir

    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    e = qwen3_rs.Qwen3Engine("someone/tiny-qwen3", max_seq_len=64, revision="main")
    assert calls == [("someone/tiny-qwen3", "main")]
    assert e.model_dir == model_dir
    assert len(e.generate(PROMPT, 3, True)) == 3
