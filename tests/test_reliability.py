"""Bad input gets a clear exception, nothing crashes, and the engine stays usable: a CPU part (file checks
precede the GPU) and a GPU part (bad calls, Ctrl-C, threads, resources)."""

import json
import os
import random
import shutil
import signal
import struct
import threading
import time

import numpy as np
import pytest
from fixtures import FIXTURES, greedy_prompt
from safetensors_io import read_header

qwen3_rs = pytest.importorskip("qwen3_rs")
errors = qwen3_rs.errors


def copy_of(make_model, tmp_path, name="gqa4_hd128"):
    dst = tmp_path / "ckpt"
    shutil.copytree(make_model(name)[0], dst)
    return str(dst)


def test_overlapping_offsets_are_rejected(make_model, tmp_path):
    path = copy_of(make_model, tmp_path)
    f = os.path.join(path, "model.safetensors")
    header, data_start = read_header(f)
    names = [n for n in header if n != "__metadata__"]
    a, b = header[names[0]], header[names[1]]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]
    raw = open(f, "rb").read()
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    with open(f, "wb") as out:
        out.write(struct.pack("<Q", len(new)) + new + raw[data_start:])
    with pytest.raises(errors.ModelFormatError, match="model.safetensors"):
        qwen3_rs.Qwen3Engine(path)


def test_nan_scale_is_rejected(make_model, tmp_path):
    from safetensors_io import load_file, save_file

    path = copy_of(make_model, tmp_path)
    f = os.path.join(path, "model.safetensors")
    t = load_file(f)
    name = "model.layers.1.mlp.gate_proj.scales"
    t[name] = t[name].copy()
    t[name][0, 3] = np.float16("nan")
    save_file(t, f)
    with pytest.raises(errors.ModelFormatError, match=name):
        qwen3_rs.Qwen3Engine(path)


def test_fuzzed_files_raise_library_errors(make_model, tmp_path):
    """Random byte flips and truncations of the header and config: every outcome is a qwen3_rs error (or, for
    a mutation that leaves the model valid, a loaded engine / no-GPU error), never a crash or a stray
    exception type."""
    src = make_model("kv2")[0]
    rng = random.Random(1234)
    n_cases = int(os.environ.get("QWEN3_RS_FUZZ_CASES", "150"))
    for case in range(n_cases):
        path = str(tmp_path / f"c{case}")
        shutil.copytree(src, path)
        target = os.path.join(path, rng.choice(["model.safetensors", "config.json"]))
        data = bytearray(open(target, "rb").read())
        limit = min(len(data), 4096 if target.endswith("safetensors") else len(data))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(limit)] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        open(target, "wb").write(bytes(data))
        try:
            qwen3_rs.Qwen3Engine(path, max_seq_len=64)
        except errors.Qwen3RsError:
            pass
        shutil.rmtree(path)


def test_rust_panic_becomes_an_exception():
    from qwen3_rs._qwen3_rs import ops

    with pytest.raises(errors.InternalError, match="deliberate panic"):
        ops.panic_in_core()
    assert qwen3_rs.cuda_device_count() >= 0  # the interpreter and the module still work


gpu = pytest.mark.gpu


@gpu
def test_unknown_tensor_is_a_warning(make_model, tmp_path, caplog):
    from safetensors_io import load_file, save_file

    path = copy_of(make_model, tmp_path)
    f = os.path.join(path, "model.safetensors")
    t = load_file(f)
    t["model.layers.0.mlp.extra_bias"] = np.zeros(8, np.float16)
    save_file(t, f)
    with caplog.at_level("WARNING", logger="qwen3_rs"):
        engine = qwen3_rs.Qwen3Engine(path, max_seq_len=64)
    assert any("model.layers.0.mlp.extra_bias" in r.getMessage() for r in caplog.records)
    assert len(engine.generate([1, 2], max_new_tokens=4, ignore_eos=True)) == 4


@pytest.fixture(scope="module")
def engine(make_model):
    return qwen3_rs.Qwen3Engine(make_model("gqa4_hd128")[0], max_seq_len=512)


@gpu
@pytest.mark.parametrize(
    "ids,kwargs,exc,words",
    [
        ([], {}, errors.InvalidArgumentError, "empty"),
        ([1, -1], {}, errors.InvalidArgumentError, "-1"),
        ([1, 512], {}, errors.InvalidArgumentError, "512"),
        ([1, 2], {"max_new_tokens": 511}, errors.InvalidArgumentError, "max_seq_len"),
        ([1, 2], {"max_new_tokens": -1}, errors.InvalidArgumentError, "max_new_tokens"),
        ([1.5, 2.0], {}, TypeError, "integer"),
        ([[1, 2]], {}, TypeError, "1-D"),
        ("hello", {}, TypeError, "1-D"),
        ([2**70], {}, TypeError, "integer"),
    ],
)
def test_bad_calls_raise_and_engine_survives(engine, ids, kwargs, exc, words):
    good = engine.generate([1, 2, 3], max_new_tokens=8, ignore_eos=True)
    with pytest.raises(exc) as info:
        engine.generate(ids, **kwargs)
    assert words in str(info.value)
    assert engine.generate([1, 2, 3], max_new_tokens=8, ignore_eos=True) == good


@gpu
def test_bad_engine_arguments(make_model):
    path = make_model("gqa4_hd128")[0]
    with pytest.raises(errors.InvalidArgumentError, match="device 99"):
        qwen3_rs.Qwen3Engine(path, device=99)
    with pytest.raises(errors.InvalidArgumentError, match="kv_cache_dtype"):
        qwen3_rs.Qwen3Engine(path, kv_cache_dtype="fp8")
    with pytest.raises(errors.InvalidArgumentError, match="max_seq_len"):
        qwen3_rs.Qwen3Engine(path, max_seq_len=10**6)


@gpu
def test_out_of_memory_is_reported_before_allocating(make_model):
    path = make_model("gqa4_hd128")[0]
    free_before, total = qwen3_rs.cuda_memory_info()
    # The fixture's max_position_embeddings is 512; a config claiming 2**31 positions needs too much memory.
    cfg_path = os.path.join(os.path.dirname(path), "huge")
    shutil.copytree(path, cfg_path)
    cfg = json.load(open(os.path.join(cfg_path, "config.json")))
    cfg["max_position_embeddings"] = 2**31
    json.dump(cfg, open(os.path.join(cfg_path, "config.json"), "w"))
    with pytest.raises(errors.OutOfMemoryError, match="bytes are free"):
        qwen3_rs.Qwen3Engine(cfg_path)
    assert abs(qwen3_rs.cuda_memory_info()[0] - free_before) < 64 << 20


@gpu
def test_ctrl_c_stops_generation_and_engine_survives(make_model):
    engine = qwen3_rs.Qwen3Engine(make_model("gqa4_hd128")[0], max_seq_len=512, cuda_graphs=False)
    ids = greedy_prompt(FIXTURES["gqa4_hd128"])
    t = time.perf_counter()
    full = engine.generate(ids, max_new_tokens=480, ignore_eos=True)
    full_time = time.perf_counter() - t
    state = {"inside": False}

    def interrupt(*_):
        raise KeyboardInterrupt(f"inside generate: {state['inside']}")

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, min(0.005, full_time / 4))
        state["inside"] = True
        t = time.perf_counter()
        with pytest.raises(KeyboardInterrupt, match="inside generate: True"):
            engine.generate(ids, max_new_tokens=480, ignore_eos=True)
        assert time.perf_counter() - t < full_time * 0.9
    finally:
        state["inside"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert engine.generate(ids, max_new_tokens=480, ignore_eos=True) == full


@gpu
def test_threads_are_serialized(engine):
    prompts = [[1 + i, 2, 3, 4 + i] for i in range(6)]
    expected = [engine.generate(p, max_new_tokens=24, ignore_eos=True) for p in prompts]
    results = [None] * len(prompts)

    def run(i):
        results[i] = engine.generate(prompts[i], max_new_tokens=24, ignore_eos=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == expected


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@gpu
@pytest.mark.slow
def test_engines_release_gpu_memory(make_model):
    path = make_model("gqa4_hd128")[0]
    qwen3_rs.Qwen3Engine(path, max_seq_len=512).generate([1, 2], max_new_tokens=2)  # warm caches
    free0 = qwen3_rs.cuda_memory_info()[0]
    for _ in range(20):
        e = qwen3_rs.Qwen3Engine(path, max_seq_len=512)
        e.generate([1, 2, 3], max_new_tokens=4)
        del e
    free1 = qwen3_rs.cuda_memory_info()[0]
    print(f"GPU free memory before {free0 / 2**20:.1f} MiB, after 20 engines {free1 / 2**20:.1f} MiB")
    assert free0 - free1 < 8 << 20


@gpu
@pytest.mark.slow
def test_sequential_generate_calls_do_not_grow_memory(engine):
    for _ in range(50):
        engine.generate([5, 6, 7], max_new_tokens=8, ignore_eos=True)
    gpu0, rss0 = qwen3_rs.cuda_memory_info()[0], rss_bytes()
    for _ in range(1000):
        engine.generate([5, 6, 7], max_new_tokens=8, ignore_eos=True)
    gpu1, rss1 = qwen3_rs.cuda_memory_info()[0], rss_bytes()
    print(f"1000 calls: GPU free {gpu0 - gpu1:+d} B, host RSS {rss1 - rss0:+d} B")
    assert gpu0 - gpu1 < 1 << 20
    assert rss1 - rss0 < 16 << 20


@gpu
@pytest.mark.slow
def test_generation_to_full_max_seq_len(engine):
    out = engine.generate([1, 2, 3], max_new_tokens=509, ignore_eos=True)
    assert len(out) == 509 and all(0 <= t < 512 for t in out)
