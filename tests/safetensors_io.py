"""A tiny, self-written safetensors reader/writer (no dependency on the `safetensors` package).

Format: 8-byte little-endian u64 header length N, then N bytes of JSON
{"name": {"dtype": "F16", "shape": [...], "data_offsets": [start, end]}, ..., "__metadata__": {str: str}},
then the raw little-endian tensor bytes; offsets are relative to the first byte after the header.
"""

import json
import os
import struct

import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAME_OF = {np.dtype(v).newbyteorder("<"): k for k, v in DTYPES.items()}


def dtype_name(a):
    return _NAME_OF[np.dtype(a.dtype).newbyteorder("<")]


def save_file(tensors, path, metadata=None):
    """Write {name: np.ndarray} to `path`. Insertion order is kept; header padded to 8 bytes with spaces."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype_name(a), "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # keeps tensor data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for raw in blobs:
            f.write(raw)
    return 8 + len(hb) + off


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def load_file(path):
    """Read back {name: np.ndarray} (the metadata is dropped)."""
    header, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (
            np.frombuffer(data[a:b], dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
            .reshape(info["shape"])
            .copy()
        )
    return out


def shard_file_name(i, n):
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def save_model(tensors, directory, shards=1, metadata=None):
    """Write a checkpoint the way Hugging Face does: `model.safetensors` when shards == 1, else
    `model-0000i-of-0000n.safetensors` files plus `model.safetensors.index.json`
    ({"metadata": {"total_size": bytes}, "weight_map": {name: file}}). Tensors are split in order into
    shards of roughly equal byte size, so one layer's tensors may straddle two files (as in real checkpoints).
    Returns the list of file names written."""
    metadata = {"format": "pt", **(metadata or {})}
    if shards == 1:
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata)
        return ["model.safetensors"]
    names = list(tensors)
    total = sum(tensors[n].nbytes for n in names)
    groups, acc = [[] for _ in range(shards)], 0
    for n in names:
        groups[min(shards - 1, acc * shards // max(total, 1))].append(n)
        acc += tensors[n].nbytes
    files, weight_map = [], {}
    for i, g in enumerate(groups):
        assert g, "more shards than tensors"
        fname = shard_file_name(i, shards)
        save_file({n: tensors[n] for n in g}, os.path.join(directory, fname), metadata)
        weight_map.update({n: fname for n in g})
        files.append(fname)
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files


def load_model(directory):
    """Read every tensor of a (possibly sharded) checkpoint directory. Returns (tensors, {name: file})."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if not os.path.exists(index):
        tensors = load_file(os.path.join(directory, "model.safetensors"))
        return tensors, {n: "model.safetensors" for n in tensors}
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for fname in sorted(set(weight_map.values())):
        tensors.update(load_file(os.path.join(directory, fname)))
    return tensors, weight_map
