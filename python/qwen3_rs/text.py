"""Text layer for Qwen3: tokenizer loading, the chat template, thinking-block parsing and streaming detokenization.

Pure Python; the ``tokenizers`` package is needed only by :func:`load_tokenizer` (imported lazily).

>>> from qwen3_rs.text import load_tokenizer, apply_chat_template, split_thinking, StreamDecoder
>>> tok = load_tokenizer("path/to/Qwen3-8B-AWQ")
>>> prompt = apply_chat_template([{"role": "user", "content": "Hi"}], enable_thinking=False)
>>> ids = tok.encode(prompt).ids
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import errors

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "load_tokenizer",
    "apply_chat_template",
    "split_thinking",
    "StreamDecoder",
    "THINK_START",
    "THINK_END",
]

THINK_START = "<think>"
THINK_END = "</think>"
_ROLES = ("system", "user", "assistant")
_REPLACEMENT_CHAR = "\ufffd"


def load_tokenizer(model_dir: str | os.PathLike[str]) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` of the model in ``model_dir`` (read from its ``tokenizer.json``).

    Raises :class:`qwen3_rs.errors.ModelNotFoundError` when the directory or its ``tokenizer.json`` is
    missing, and :class:`ImportError` when the ``tokenizers`` package is not installed.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise errors.ModelNotFoundError(f"model directory not found: {model_dir}")
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise errors.ModelNotFoundError(f"tokenizer file not found: {path}")
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError("qwen3_rs.text.load_tokenizer needs the 'tokenizers' package: pip install tokenizers") from e
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise errors.ModelFormatError(f"{path}: cannot be loaded by tokenizers: {e}") from e


def _validate_messages(messages):
    if isinstance(messages, (str, bytes)) or not hasattr(messages, "__iter__"):
        raise ValueError(f"messages must be a list of dicts, got {type(messages).__name__}")
    messages = list(messages)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        if "role" not in m:
            raise ValueError(f"messages[{i}]: missing field 'role'")
        if m["role"] not in _ROLES:
            raise ValueError(f"messages[{i}]: field 'role' is {m['role']!r}, expected one of {', '.join(_ROLES)}")
        if "content" not in m or m["content"] is None:
            raise ValueError(f"messages[{i}]: missing field 'content'")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}]: field 'content' must be a str, got {type(m['content']).__name__}")
        rc = m.get("reasoning_content")
        if rc is not None and not isinstance(rc, str):
            raise ValueError(f"messages[{i}]: field 'reasoning_content' must be a str, got {type(rc).__name__}")
    return messages


def _last_query_index(messages):
    """Index of the last user message that is not a wrapped tool response (as Qwen3's template computes it)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        c = m["content"]
        if m["role"] == "user" and not (c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            return i
    return len(messages) - 1


def apply_chat_template(
    messages: Iterable[Mapping[str, Any]], add_generation_prompt: bool = True, enable_thinking: bool = True
) -> str:
    """The prompt text Qwen3's chat template renders for ``messages`` (without tools).

    ``messages`` is a list of dicts with ``role`` ("system", "user" or "assistant") and ``content`` (str);
    an assistant message may also carry ``reasoning_content`` (str). Each message becomes
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. As in Qwen3's template, assistant turns before the last
    user message lose their ``<think>...</think>`` block (only the text after ``</think>`` is kept, leading
    newlines stripped); assistant turns after it keep their reasoning, normalized to
    ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (the final message always gets that form).

    ``add_generation_prompt`` appends ``<|im_start|>assistant\\n``; with ``enable_thinking=False`` the empty
    block ``<think>\\n\\n</think>\\n\\n`` follows, which is how Qwen3 turns thinking off.

    Raises ValueError naming the message index and field for an unknown role or a missing/non-str content.
    """
    messages = _validate_messages(messages)
    last_query = _last_query_index(messages)
    out = []
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "user" or role == "system":
            out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
            continue
        # assistant
        reasoning = m.get("reasoning_content")
        if reasoning is None:
            reasoning = ""
            if THINK_END in content:
                reasoning = content.split(THINK_END)[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
                content = content.split(THINK_END)[-1].lstrip("\n")
        is_last = i == len(messages) - 1
        if i > last_query and (is_last or reasoning):
            reasoning = reasoning.strip("\n")
            content = content.lstrip("\n")
            out.append(f"<|im_start|>assistant\n<think>\n{reasoning}\n</think>\n\n{content}")
        else:
            out.append(f"<|im_start|>assistant\n{content}")
        out.append("<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
        if not enable_thinking:
            out.append("<think>\n\n</think>\n\n")
    return "".join(out)


def split_thinking(text: str) -> tuple[str, str]:
    """Split generated text into ``(thinking, answer)``.

    * ``"<think>\\nreasoning\\n</think>\\n\\nanswer"`` -> ``("reasoning", "answer")``: the thinking has its
      surrounding newlines stripped, the answer its leading newlines;
    * no ``<think>`` block -> ``("", text)``;
    * an unterminated block (generation stopped while thinking) -> ``(everything after <think>, "")``, with
      leading newlines stripped;
    * ``</think>`` without an opening tag (the prompt ended in ``<think>``) -> the text before it is the thinking.
    Text before ``<think>`` (normally none) is kept at the start of the answer.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    start = text.find(THINK_START)
    end = text.find(THINK_END)
    if start < 0 and end < 0:
        return "", text
    if start < 0 or (0 <= end < start):
        # closing tag only: the opening one was in the prompt
        before, after = "", text[end + len(THINK_END) :]
        thinking = text[:end]
    else:
        before = text[:start]
        rest = text[start + len(THINK_START) :]
        end = rest.find(THINK_END)
        if end < 0:
            return rest.lstrip("\n"), before.strip()
        thinking, after = rest[:end], rest[end + len(THINK_END) :]
    before = before.strip()
    after = after.lstrip("\n")
    answer = before + ("\n" if before and after else "") + after
    return thinking.strip("\n"), answer


class StreamDecoder:
    """Incremental detokenization: feed generated ids one by one, get text as soon as it is complete.

    ``push(token_id)`` returns the text completed by that token (often "", e.g. while the bytes of a
    multi-byte UTF-8 character are split over several tokens); ``flush()`` returns what is still held back
    at the end. The pieces concatenate to ``tokenizer.decode(all_ids, skip_special_tokens=...)`` and, for
    valid UTF-8 output, never contain U+FFFD.

    ``tokenizer`` is anything with ``decode(ids, skip_special_tokens=bool) -> str`` (a ``tokenizers.Tokenizer``).
    Only a window of ids is re-decoded per push: it starts one complete piece back (context for decoders that
    treat the first token specially), so the cost per token stays small however long the stream is.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = bool(skip_special_tokens)
        self._ids = []
        self._prefix = 0  # window start: a boundary where the decoded text was complete
        self._read = 0  # the latest such boundary (>= _prefix)
        self._emitted = 0  # characters of decode(ids[_prefix:]) already returned

    @property
    def ids(self) -> list[int]:
        """The ids pushed so far (a copy)."""
        return list(self._ids)

    def _decode(self, ids):
        return self._tok.decode(ids, skip_special_tokens=self._skip) if ids else ""

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly completed text ("" when nothing is complete yet)."""
        if isinstance(token_id, bool) or not hasattr(token_id, "__index__"):
            raise TypeError(f"token_id must be an int, got {type(token_id).__name__}")
        token_id = token_id.__index__()
        if token_id < 0:
            raise ValueError(f"token_id must be >= 0, got {token_id}")
        self._ids.append(token_id)
        text = self._decode(self._ids[self._prefix :])
        if text.endswith(_REPLACEMENT_CHAR):
            # An unfinished UTF-8 character decodes as a trailing U+FFFD: return only the stable part before it.
            stable = text.rstrip(_REPLACEMENT_CHAR)
            if len(stable) <= self._emitted:
                return ""
            new = stable[self._emitted :]
            self._emitted = len(stable)
            return new
        new = text[self._emitted :]
        # Complete text: move the window to start at the previous complete boundary.
        self._prefix, self._read = self._read, len(self._ids)
        self._emitted = len(self._decode(self._ids[self._prefix :]))
        return new

    def flush(self) -> str:
        """Return the held-back text (an unfinished character comes out as U+FFFD) and close the window."""
        text = self._decode(self._ids[self._prefix :])
        new = text[self._emitted :]
        self._prefix = self._read = len(self._ids)
        self._emitted = 0
        return new

    def reset(self) -> None:
        """Forget all pushed ids (start a new stream)."""
        self._ids = []
        self._prefix = self._read = self._emitted = 0
