"""`Qwen3Engine`: the compiled engine, plus text in and out, chat, streaming, stop strings and Hub model ids."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from . import _qwen3_rs, errors
from .hub import resolve_model
from .progress import LoadProgress
from .stopping import StopMatcher
from .text import StreamDecoder, apply_chat_template, load_tokenizer

logger = logging.getLogger("qwen3_rs")

__all__ = ["Qwen3Engine", "StreamChunk"]

StopStrings = Union[str, Sequence[str], None]


@dataclass(frozen=True)
class StreamChunk:
    """One generated token and the text it completes (often "" inside a multi-byte character; "" too when
    the stream is not decoded)."""

    token_id: int
    text: str


def _sampling(do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed, eos_token_id):
    return dict(
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        eos_token_id=eos_token_id,
    )


class Qwen3Engine(_qwen3_rs.Qwen3Engine):
    """A Qwen3 AWQ 4-bit checkpoint (Hugging Face format) loaded on one or more GPUs.

    ``model`` is a local directory or a Hugging Face Hub repo id (``"Qwen/Qwen3-8B-AWQ"``, fetched through
    ``huggingface_hub`` into its cache; ``revision`` picks a branch, tag or commit). ``progress`` draws
    load progress on stderr (default: when stderr is a terminal); load and compile events are logged to
    the "qwen3_rs" logger either way. The other arguments are those of the compiled engine
    (see ``qwen3_rs._qwen3_rs.Qwen3Engine``).

    Token-id methods (``generate``, ``stream_ids``, ``logits``) need no tokenizer; text methods
    (``generate_text``, ``chat``, ``stream`` on a str) read the model directory's ``tokenizer.json``
    through the ``tokenizers`` package.

    Sampling keywords follow transformers: ``do_sample`` (False: greedy, the default), ``temperature``,
    ``top_k`` (default 50, applied only when sampling; None or 0 turns it off), ``top_p``, ``min_p``,
    ``repetition_penalty`` (also applies to greedy decoding), ``seed`` (the same seed gives the same
    tokens; None draws a fresh one), ``eos_token_id`` (an int or a list, replacing generation_config's).
    """

    def __new__(
        cls,
        model: str | os.PathLike[str],
        device: int = 0,
        max_seq_len: int | None = None,
        kv_cache_dtype: str = "fp16",
        cuda_graphs: bool = True,
        devices: Sequence[int] | None = None,
        layer_devices: Sequence[int] | None = None,
        prefill_chunk: int = 2048,
        *,
        revision: str | None = None,
        progress: bool | None = None,
    ) -> Qwen3Engine:
        path = resolve_model(model, revision=revision)
        reporter = LoadProgress(show=progress)
        start = time.perf_counter()
        try:
            self = super().__new__(
                cls,
                path,
                device,
                max_seq_len,
                kv_cache_dtype,
                cuda_graphs,
                devices,
                layer_devices,
                prefill_chunk,
                on_event=reporter,
            )
        finally:
            reporter.close()
        logger.info("loaded %s in %.1f s", path, time.perf_counter() - start)
        self._model_dir = os.fspath(path)
        self._tokenizer = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything is set up in __new__ (the compiled base class loads the model there).
        pass

    @property
    def model_dir(self) -> str:
        """The local directory the model was loaded from."""
        return self._model_dir

    @property
    def tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` of the model directory's ``tokenizer.json`` (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._model_dir)
        return self._tokenizer

    def _tokenizer_or_none(self):
        try:
            return self.tokenizer
        except (errors.ModelNotFoundError, ImportError):
            return None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens such as ``<|im_start|>`` written out are recognized)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of token ids."""
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=skip_special_tokens)

    # ---------------------------------------------------------------- token ids

    def generate(
        self,
        ids: Any,
        max_new_tokens: int = 20,
        ignore_eos: bool = False,
        *,
        do_sample: bool = False,
        temperature: float | None = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        min_p: float | None = None,
        repetition_penalty: float | None = 1.0,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: StopStrings = None,
        return_numpy: bool = False,
    ) -> Any:
        """Continuation of ``ids`` (a list, numpy array or anything with ``__array__``, e.g. a CPU torch
        tensor) from a fresh sequence; returns the new token ids only, as a list or an int64 numpy array.

        Stops after an eos token (included) unless ``ignore_eos``, after ``max_new_tokens``, or after the
        token that completes one of ``stop_strings`` (matched on the decoded text; needs the tokenizer).
        """
        sampling = _sampling(do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed, eos_token_id)
        if not stop_strings:
            return super().generate(ids, max_new_tokens, ignore_eos, return_numpy, **sampling)
        chunks = self._stream(ids, max_new_tokens, ignore_eos, sampling, stop_strings, False, True)
        tokens = [c.token_id for c in chunks]
        if return_numpy:
            import numpy as np

            return np.asarray(tokens, dtype=np.int64)
        return tokens

    # ---------------------------------------------------------------- text

    def generate_text(
        self,
        prompt: str,
        max_new_tokens: int = 512,
        ignore_eos: bool = False,
        *,
        do_sample: bool = False,
        temperature: float | None = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        min_p: float | None = None,
        repetition_penalty: float | None = 1.0,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: StopStrings = None,
        skip_special_tokens: bool = True,
    ) -> str:
        """The text generated after ``prompt`` (used as is: apply a chat template first for a chat model,
        or use ``chat``). A completed stop string and what follows it are not part of the result."""
        ids = self.encode(prompt)
        sampling = _sampling(do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed, eos_token_id)
        if not stop_strings:
            tokens = super().generate(ids, max_new_tokens, ignore_eos, **sampling)
            return self.decode(tokens, skip_special_tokens=skip_special_tokens)
        chunks = self._stream(ids, max_new_tokens, ignore_eos, sampling, stop_strings, skip_special_tokens, True)
        return "".join(c.text for c in chunks)

    def chat(
        self,
        messages: Iterable[Mapping[str, Any]],
        max_new_tokens: int = 1024,
        *,
        enable_thinking: bool = True,
        do_sample: bool = False,
        temperature: float | None = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        min_p: float | None = None,
        repetition_penalty: float | None = 1.0,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: StopStrings = None,
    ) -> str:
        """The assistant's reply to ``messages`` (dicts with "role" and "content"), rendered with Qwen3's
        chat template. With thinking on the reply starts with its ``<think>...</think>`` block:
        ``qwen3_rs.text.split_thinking`` separates it from the answer."""
        prompt = apply_chat_template(messages, add_generation_prompt=True, enable_thinking=enable_thinking)
        return self.generate_text(
            prompt,
            max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            eos_token_id=eos_token_id,
            stop_strings=stop_strings,
        )

    def stream(
        self,
        prompt: Any,
        max_new_tokens: int = 512,
        ignore_eos: bool = False,
        *,
        do_sample: bool = False,
        temperature: float | None = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        min_p: float | None = None,
        repetition_penalty: float | None = 1.0,
        seed: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: StopStrings = None,
        skip_special_tokens: bool = True,
        decode: bool | None = None,
    ) -> Iterator[StreamChunk]:
        """Generates from ``prompt`` (text, or token ids) and yields a :class:`StreamChunk` per token as
        it is produced: its id and the newly completed text (never part of a multi-byte character).

        ``decode``: None decodes when a tokenizer is available (text prompts need one), False yields ids
        with empty text. Arguments are checked and the prompt is run before this returns; Ctrl-C while
        iterating stops the stream, and starting another generation ends it.
        """
        ids = self.encode(prompt) if isinstance(prompt, str) else prompt
        sampling = _sampling(do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed, eos_token_id)
        return self._stream(ids, max_new_tokens, ignore_eos, sampling, stop_strings, skip_special_tokens, decode)

    def _stream(self, ids, max_new_tokens, ignore_eos, sampling, stop_strings, skip_special_tokens, decode):
        if decode or stop_strings:
            tokenizer = self.tokenizer
        elif decode is None:
            tokenizer = self._tokenizer_or_none()
        else:
            tokenizer = None
        matcher = StopMatcher(stop_strings) if stop_strings else None
        tokens = super().stream_ids(ids, max_new_tokens, ignore_eos, **sampling)
        decoder = StreamDecoder(tokenizer, skip_special_tokens) if tokenizer is not None else None
        return _chunks(tokens, decoder, matcher)


def _chunks(tokens, decoder, matcher) -> Iterator[StreamChunk]:
    for t in tokens:
        done = tokens.finished
        text = ""
        if decoder is not None:
            text = decoder.push(t)
            if done:
                text += decoder.flush()
        if matcher is not None:
            text, stopped = matcher.feed(text)
            if stopped:
                yield StreamChunk(t, text)
                return
            if done:
                text += matcher.flush()
        yield StreamChunk(t, text)
