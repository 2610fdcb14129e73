"""AutoAWQ GEMM packing checked against numbers worked out by hand from the rule
"nibble i (bits 4i..4i+3) of packed[k, c] holds column 8c + [0,2,4,6,1,3,5,7][i]".
A writer and a reader sharing a wrong order would round-trip perfectly, so the literals below are the real
test."""

import json
import os

import numpy as np
import pytest
from fixtures import FIXTURES, awq_pack, rtn_quantize, write_checkpoint
from reference import awq_unpack, unpack_nibbles
from safetensors_io import load_file, load_model, read_header, save_file

# Columns 0..7 holding 0..7: nibbles 0..7 hold columns 0,2,4,6,1,3,5,7 = values 0,2,4,6,1,3,5,7;
# written most significant nibble first: 7 5 3 1 6 4 2 0.
ROW_0_TO_7 = 0x75316420
# Columns holding 8..15: nibbles hold 8,A,C,E,9,B,D,F -> 0xFDB9ECA8, negative as int32: 0xFDB9ECA8 - 2**32.
ROW_8_TO_15 = -38146904
# Column j alone holding 15: column 0 -> nibble 0, 1 -> 4, 2 -> 1, 3 -> 5, 4 -> 2, 5 -> 6, 6 -> 3, 7 -> 7.
ONE_HOT_15 = [0x0000000F, 0x000F0000, 0x000000F0, 0x00F00000, 0x00000F00, 0x0F000000, 0x0000F000, 0xF0000000 - 2**32]


def test_pack_literals():
    assert ROW_8_TO_15 == 0xFDB9ECA8 - 2**32
    q = np.array([list(range(8)) + list(range(8, 16)), list(range(8, 16)) + list(range(8))])
    packed = awq_pack(q)
    assert packed.dtype == np.int32 and packed.shape == (2, 2)
    assert packed.tolist() == [[ROW_0_TO_7, ROW_8_TO_15], [ROW_8_TO_15, ROW_0_TO_7]]
    assert awq_pack(15 * np.eye(8, dtype=np.int64))[:, 0].tolist() == ONE_HOT_15


def test_unpack_literals():
    assert unpack_nibbles(np.array([[ROW_0_TO_7, ROW_8_TO_15]], np.int32)).tolist() == [list(range(16))]
    assert unpack_nibbles(np.array([ONE_HOT_15], np.int32).T).tolist() == (15 * np.eye(8, dtype=int)).tolist()


def test_qzeros_and_dequant_literals():
    # z = 1..8 for columns 0..7: nibbles hold columns 0,2,4,6,1,3,5,7 = 1,3,5,7,2,4,6,8 -> 0x86427531.
    assert awq_pack(np.arange(1, 9)[None, :]).tolist() == [[0x86427531 - 2**32]]
    # z = 8..1: nibbles hold 8,6,4,2,7,5,3,1 -> 0x13572468.
    assert awq_pack(np.arange(8, 0, -1)[None, :]).tolist() == [[0x13572468]]
    # One group of 2 rows, z = 8..1: row 0 has q = 0..7 so q - z = -8,-6,..,6; row 1 has q = 8..15 so q - z =
    # 0,2,..,14.
    qweight = np.array([[ROW_0_TO_7], [ROW_8_TO_15]], np.int32)
    qzeros = np.array([[0x13572468]], np.int32)
    scales = np.array([[0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]], np.float16)
    w = awq_unpack(qweight, qzeros, scales, group=2)
    assert w.tolist() == [[-4, -6, -6, -4, 0, 6, 14, 24], [0, 2, 6, 12, 20, 30, 42, 56]]


def test_group_indexing():
    # K=4, group 2: rows 0,1 use zero/scale row 0; rows 2,3 use row 1.
    q = np.full((4, 8), 5)
    z = np.array([[1] * 8, [3] * 8])
    s = np.array([[1.0] * 8, [0.25] * 8], np.float16)
    w = awq_unpack(awq_pack(q), awq_pack(z), s, group=2)
    assert w[:, 0].tolist() == [4.0, 4.0, 0.5, 0.5]


@pytest.mark.parametrize("K,N,G", [(128, 64, 32), (256, 96, 128), (512, 32, 64)])
def test_rtn_roundtrip(K, N, G):
    rng = np.random.default_rng(K + N + G)
    w = rng.standard_normal((K, N)) * rng.uniform(0.01, 3.0, size=N)
    q, z, s, deq = rtn_quantize(w, G)
    assert q.shape == (K, N) and z.shape == (K // G, N) and s.shape == (K // G, N) and s.dtype == np.float16
    assert q.max() <= 15 and z.max() <= 15
    # RTN error is at most half a quantization step (scale rounded up to fp16 and range holding 0: no
    # clipping).
    step = np.repeat(s.astype(np.float64), G, axis=0)
    assert np.all(np.abs(w - deq) <= step / 2 * (1 + 1e-12))
    # Packed tensors decode (with the independent reader) to exactly the dequantized weights.
    assert np.array_equal(awq_unpack(awq_pack(q), awq_pack(z), s, G), deq)


def test_checkpoint_layout(tmp_path):
    spec = FIXTURES["gqa4_hd128"]
    ck = write_checkpoint(str(tmp_path), spec)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    H, I, G = spec.hidden, spec.intermediate, spec.group
    qo, kvo = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    shapes = {
        "self_attn.q_proj": (H, qo),
        "self_attn.k_proj": (H, kvo),
        "self_attn.v_proj": (H, kvo),
        "self_attn.o_proj": (qo, H),
        "mlp.gate_proj": (H, I),
        "mlp.up_proj": (H, I),
        "mlp.down_proj": (I, H),
    }
    for i in range(spec.layers):
        for mod, (k, n) in shapes.items():
            p = f"model.layers.{i}.{mod}"
            qw, qz, sc = (tensors[p + s] for s in (".qweight", ".qzeros", ".scales"))
            assert qw.dtype == np.int32 and qw.shape == (k, n // 8)
            assert qz.dtype == np.int32 and qz.shape == (k // G, n // 8)
            assert sc.dtype == np.float16 and sc.shape == (k // G, n)
            assert p + ".bias" not in tensors
            assert np.array_equal(awq_unpack(qw, qz, sc, G), ck["weights"][p + ".weight"])
        for norm, n in [
            ("input_layernorm", H),
            ("post_attention_layernorm", H),
            ("self_attn.q_norm", spec.head_dim),
            ("self_attn.k_norm", spec.head_dim),
        ]:
            t = tensors[f"model.layers.{i}.{norm}.weight"]
            assert t.dtype == np.float16 and t.shape == (n,)
    assert tensors["model.embed_tokens.weight"].shape == (spec.vocab, H)
    assert tensors["lm_head.weight"].shape == (spec.vocab, H)
    # 7 quantized linears x 3 tensors + 4 norms per layer; embed, lm_head, final norm.
    assert len(tensors) == spec.layers * (7 * 3 + 4) + 3
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"] == {
        "bits": 4,
        "group_size": G,
        "zero_point": True,
        "version": "gemm",
        "quant_method": "awq",
        "modules_to_not_convert": None,
    }
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["model_type"] == "qwen3"
    assert cfg["head_dim"] == 128 and cfg["rope_theta"] == 1e6 and cfg["rms_norm_eps"] == 1e-6
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [spec.vocab - 1, spec.vocab - 2] and cfg["eos_token_id"] == spec.vocab - 1


def test_tied_has_no_lm_head(tmp_path):
    write_checkpoint(str(tmp_path), "tied")
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is True


def test_sharded_index(tmp_path):
    ck = write_checkpoint(str(tmp_path), "sharded")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] == ck["files"]
    assert not (tmp_path / "model.safetensors").exists()
    per_file = {f: set(load_file(str(tmp_path / f))) for f in files}
    assert all(name in per_file[f] for name, f in index["weight_map"].items())
    assert sum(len(v) for v in per_file.values()) == len(index["weight_map"])
    tensors, _ = load_model(str(tmp_path))
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())


def test_safetensors_bytes(tmp_path):
    # Header layout by hand: u64 little-endian length, JSON, 8-byte aligned data; values little-endian.
    path = str(tmp_path / "t.safetensors")
    save_file({"a": np.array([1, -2], np.int32), "b": np.array([[1.5]], np.float16)}, path, {"k": "v"})
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and len(raw) == 8 + n + 8 + 2
    header, start = read_header(path)
    assert header["a"] == {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "F16", "shape": [1, 1], "data_offsets": [8, 10]}
    assert header["__metadata__"] == {"k": "v"}
    assert raw[start:] == b"\x01\x00\x00\x00\xfe\xff\xff\xff\x00\x3e"  # 1, -2, fp16 1.5 = 0x3E00


def test_readable_by_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    write_checkpoint(str(tmp_path), "kv2")
    ours = load_file(str(tmp_path / "model.safetensors"))
    theirs = st.load_file(os.path.join(str(tmp_path), "model.safetensors"))
    assert set(ours) == set(theirs)
    for k in ours:
        assert theirs[k].dtype == ours[k].dtype and np.array_equal(theirs[k], ours[k])
