"""Model locations: a local directory, or a Hugging Face Hub repo id fetched through ``huggingface_hub``."""

from __future__ import annotations

import os
import re

from . import errors

__all__ = ["resolve_model", "looks_like_repo_id"]

# What the engine reads from a repository: config and generation config, tokenizer files, weights.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_repo_id(name: str) -> bool:
    """True for ``"owner/name"`` (the form of a Hub repo id) that is not an existing path."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not os.path.exists(name)


def _offline(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout"})


def resolve_model(model: str | os.PathLike[str], revision: str | None = None) -> str:
    """The local directory of ``model``: the path itself when it is a directory, else (for ``owner/name``)
    the Hub snapshot, downloaded once into the Hugging Face cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` uses
    only the cache).

    Anything else is returned unchanged, so that loading reports the missing path. Raises
    :class:`qwen3_rs.errors.ModelNotFoundError` when ``huggingface_hub`` is not installed, when offline and
    the model is not cached, or when the Hub has no such repository or revision.
    """
    path = os.fspath(model)
    if os.path.isdir(path) or not looks_like_repo_id(path):
        return path
    try:
        import huggingface_hub
    except ImportError:
        raise errors.ModelNotFoundError(
            f"{path!r} is not a local directory; to fetch it from the Hugging Face Hub install huggingface_hub "
            "(pip install huggingface_hub)"
        ) from None
    try:
        return huggingface_hub.snapshot_download(repo_id=path, revision=revision, allow_patterns=ALLOW_PATTERNS)
    except Exception as e:  # noqa: BLE001  huggingface_hub raises many types; all mean "not available"
        where = f"{path!r}" + (f" (revision {revision!r})" if revision else "")
        if _offline(e):
            why = "is not in the local Hugging Face cache, and the Hub cannot be reached (offline?)"
        else:
            why = "could not be fetched from the Hugging Face Hub"
        raise errors.ModelNotFoundError(f"{where} is not a local directory and {why}: {type(e).__name__}: {e}") from e
