"""Broken checkpoints are rejected with a precise exception before any GPU is touched (these run on CPU-only
machines): qwen3_rs.errors.ModelNotFoundError (a FileNotFoundError) for missing files, ModelFormatError (a
ValueError) for bad contents, each message naming the file, tensor or field at fault."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors_io import load_file, save_file, shard_file_name

qwen3_rs = pytest.importorskip("qwen3_rs")
errors = pytest.importorskip("qwen3_rs.errors")


def test_exception_hierarchy():
    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.ModelFormatError, ValueError)


@pytest.fixture
def broken(make_model, tmp_path):
    """broken(name) -> path of a fresh, writable copy of fixture `name`."""

    def copy(name="gqa4_hd128"):
        dst = str(tmp_path / "ckpt")
        shutil.copytree(make_model(name)[0], dst)
        return dst

    return copy


def edit_json(path, fname, fn):
    p = os.path.join(path, fname)
    with open(p) as f:
        obj = json.load(f)
    fn(obj)
    with open(p, "w") as f:
        json.dump(obj, f)


def edit_tensors(path, fname, fn):
    p = os.path.join(path, fname)
    tensors = load_file(p)
    fn(tensors)
    save_file(tensors, p, {"format": "pt"})


def expect(exc, path, *words):
    """Qwen3Engine(path) raises exactly `exc` (or a subclass) and its message contains one of `words`."""
    with pytest.raises(exc) as info:
        qwen3_rs.Qwen3Engine(path)
    msg = str(info.value)
    assert any(w in msg for w in words), f"{exc.__name__} message {msg!r} names none of {words}"


def test_missing_directory(tmp_path):
    expect(errors.ModelNotFoundError, str(tmp_path / "nope"), "nope")


def test_missing_config(broken):
    path = broken()
    os.remove(os.path.join(path, "config.json"))
    expect(errors.ModelNotFoundError, path, "config.json")


def test_no_safetensors(broken):
    path = broken()
    os.remove(os.path.join(path, "model.safetensors"))
    expect(errors.ModelNotFoundError, path, "safetensors")


def test_missing_shard(broken):
    path = broken("sharded")
    os.remove(os.path.join(path, shard_file_name(1, 2)))
    expect(errors.ModelNotFoundError, path, shard_file_name(1, 2))


@pytest.mark.parametrize(
    "field,edit,words",
    [
        ("hidden_size", lambda c: c.pop("hidden_size"), ["hidden_size"]),
        ("bits", lambda c: c["quantization_config"].update(bits=8), ["bits"]),
        # 96 divides neither hidden 256 nor intermediate 512
        ("group_size", lambda c: c["quantization_config"].update(group_size=96), ["group_size"]),
        ("quant_method", lambda c: c["quantization_config"].update(quant_method="gptq"), ["quant_method", "gptq"]),
        # AutoAWQ "gemv" checkpoints pack nibbles differently: reading them as gemm would give garbage
        ("version", lambda c: c["quantization_config"].update(version="gemv"), ["version", "gemv"]),
        ("zero_point", lambda c: c["quantization_config"].update(zero_point=False), ["zero_point"]),
        ("hidden_size_type", lambda c: c.update(hidden_size="256"), ["hidden_size"]),
    ],
)
def test_bad_config(broken, field, edit, words):
    path = broken()
    edit_json(path, "config.json", edit)
    expect(errors.ModelFormatError, path, *words)


def test_config_not_json(broken):
    path = broken()
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write("{not json")
    expect(errors.ModelFormatError, path, "config.json")


@pytest.mark.parametrize(
    "name,edit",
    [
        ("model.layers.1.mlp.up_proj.qweight", lambda t, n: t.update({n: t[n][:, :-1].copy()})),  # shape
        ("model.layers.0.self_attn.o_proj.qzeros", lambda t, n: t.update({n: t[n][:1].copy()})),  # shape
        ("model.layers.0.self_attn.q_proj.scales", lambda t, n: t.update({n: t[n].astype(np.float32)})),  # dtype
        ("model.layers.1.mlp.down_proj.qweight", lambda t, n: t.update({n: t[n].view(np.uint32)})),  # dtype
        ("model.norm.weight", lambda t, n: t.update({n: t[n][:-32].copy()})),  # shape
        ("model.layers.1.self_attn.k_norm.weight", lambda t, n: t.pop(n)),  # missing
        ("lm_head.weight", lambda t, n: t.pop(n)),  # missing though tie_word_embeddings is false
        ("model.embed_tokens.weight", lambda t, n: t.pop(n)),  # missing
    ],
    ids=[
        "qweight_shape",
        "qzeros_shape",
        "scales_dtype",
        "qweight_dtype",
        "norm_shape",
        "missing_k_norm",
        "missing_lm_head",
        "missing_embed",
    ],
)
def test_bad_tensor(broken, name, edit):
    path = broken()
    edit_tensors(path, "model.safetensors", lambda t: edit(t, name))
    expect(errors.ModelFormatError, path, name)


@pytest.mark.parametrize("fixture,fname", [("gqa4_hd128", "model.safetensors"), ("sharded", shard_file_name(1, 2))])
def test_truncated_file(broken, fixture, fname):
    path = broken(fixture)
    p = os.path.join(path, fname)
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 1000)  # the header still parses; the last tensors' bytes are missing
    expect(errors.ModelFormatError, path, fname)


@pytest.mark.parametrize("kind", ["huge_length", "length_past_end", "shorter_than_8_bytes", "not_json"])
def test_corrupt_header(broken, kind):
    path = broken()
    p = os.path.join(path, "model.safetensors")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        if kind == "huge_length":  # must be refused, not allocated
            f.write(b"\xff" * 8)
        elif kind == "length_past_end":
            f.write((size + 1).to_bytes(8, "little"))
        elif kind == "shorter_than_8_bytes":
            f.truncate(5)
        else:
            f.seek(8)
            f.write(b"#")  # the JSON's opening brace
    expect(errors.ModelFormatError, path, "model.safetensors")
