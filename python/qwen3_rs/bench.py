"""End-to-end decode benchmark on a random-weight checkpoint of the exact Qwen3-8B-AWQ shapes.

No download: the checkpoint is written locally in the real AutoAWQ format, loaded like any model,
and timed at several contexts against the floor set by the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import time

import numpy as np

QWEN3_8B_AWQ = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-6,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "hidden_act": "silu",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "float16",
    "quantization_config": {
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
        "version": "gemm",
        "quant_method": "awq",
        "modules_to_not_convert": None,
    },
}


def _write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    dtypes = {np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def write_random_checkpoint(path: str, config: dict = QWEN3_8B_AWQ, seed: int = 0) -> int:
    """Writes a random AWQ checkpoint (one shard per layer) and returns the bytes written.
    Scales keep activations O(1) so the forward stays finite through every layer."""
    rng = np.random.default_rng(seed)
    h, inter, g = config["hidden_size"], config["intermediate_size"], config["quantization_config"]["group_size"]
    q_dim = config["num_attention_heads"] * config["head_dim"]
    kv_dim = config["num_key_value_heads"] * config["head_dim"]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)

    def f16(shape, std):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)

    def words(*shape):
        return rng.integers(0, 2**32, size=shape, dtype=np.uint32).view(np.int32)

    def awq(k, n):
        scales = (rng.random((k // g, n), dtype=np.float32) * 0.5 + 0.75) / (6.0 * np.sqrt(k))
        return {"qweight": words(k, n // 8), "qzeros": words(k // g, n // 8), "scales": scales.astype(np.float16)}

    weight_map, total = {}, 0

    def shard(name: str, tensors: dict[str, np.ndarray]):
        nonlocal total
        _write_safetensors(os.path.join(path, name), tensors)
        weight_map.update({t: name for t in tensors})
        total += sum(a.nbytes for a in tensors.values())

    shard(
        "embed.safetensors",
        {
            "model.embed_tokens.weight": f16((config["vocab_size"], h), 1.0),
            "lm_head.weight": f16((config["vocab_size"], h), 1.0 / np.sqrt(h)),
            "model.norm.weight": np.ones(h, np.float16),
        },
    )
    linears = [
        ("self_attn.q_proj", h, q_dim),
        ("self_attn.k_proj", h, kv_dim),
        ("self_attn.v_proj", h, kv_dim),
        ("self_attn.o_proj", q_dim, h),
        ("mlp.gate_proj", h, inter),
        ("mlp.up_proj", h, inter),
        ("mlp.down_proj", inter, h),
    ]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        tensors = {f"{p}.{n}.weight": np.ones(h, np.float16) for n in ("input_layernorm", "post_attention_layernorm")}
        tensors.update(
            {f"{p}.self_attn.{n}.weight": np.ones(config["head_dim"], np.float16) for n in ("q_norm", "k_norm")}
        )
        for name, k, n in linears:
            tensors.update({f"{p}.{name}.{t}": a for t, a in awq(k, n).items()})
        shard(f"layer{layer:03d}.safetensors", tensors)
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return total


def decode_bytes_per_token(config: dict, context: int, kv_bytes_per_position: int | None = None) -> int:
    """Bytes one decode step must read: every weight once (AWQ int4 + fp16 scales + 4-bit zeros,
    the fp16 lm_head and norms) plus the KV cache of `context` positions (fp16 unless
    `kv_bytes_per_position`, over all layers, is given)."""
    h, inter, g = config["hidden_size"], config["intermediate_size"], config["quantization_config"]["group_size"]
    q_dim = config["num_attention_heads"] * config["head_dim"]
    kv_dim = config["num_key_value_heads"] * config["head_dim"]
    per_layer_elems = h * (q_dim + 2 * kv_dim) + q_dim * h + 2 * h * inter + inter * h
    awq = per_layer_elems // 2 + (per_layer_elems // g) * 2 + (per_layer_elems // g) // 2
    layers = config["num_hidden_layers"]
    kv = context * (kv_bytes_per_position if kv_bytes_per_position is not None else layers * 2 * kv_dim * 2)
    return layers * (awq + 4 * h + 4 * config["head_dim"]) + kv + config["vocab_size"] * h * 2 + 2 * h


def run(
    model: str | None = None,
    contexts=(128, 1024, 4096, 16384),
    steps: int = 64,
    device: int = 0,
    cuda_graphs: bool = True,
    kv_cache_dtype: str = "fp16",
    log=print,
) -> dict:
    """Decode tok/s at each context, the bandwidth floor from the copy bandwidth measured in the
    same run, and their ratio. Writes a random Qwen3-8B-shaped checkpoint when `model` is None."""
    from . import Qwen3Engine, copy_bandwidth

    tmp = None
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="qwen3_rs_bench_")
        model = tmp.name
        t = time.time()
        size = write_random_checkpoint(model)
        log(f"wrote a random Qwen3-8B-AWQ-shaped checkpoint: {size / 1e9:.2f} GB in {time.time() - t:.1f} s")
    try:
        bw = copy_bandwidth(device)
        log(f"device {device}: copy bandwidth {bw / 1e12:.3f} TB/s (read + write)")
        t = time.time()
        engine = Qwen3Engine(
            model,
            device=device,
            max_seq_len=max(contexts) + steps + 2,
            cuda_graphs=cuda_graphs,
            kv_cache_dtype=kv_cache_dtype,
        )
        log(f"loaded in {time.time() - t:.1f} s; {kv_cache_dtype} KV cache, {engine.kv_bytes_per_token} B/position")
        config = engine.config
        rows = []
        log(f"{'context':>8} {'ms/token':>9} {'tok/s':>8} {'floor ms':>9} {'floor tok/s':>11} {'% of floor':>10}")
        for ctx in contexts:
            secs = engine.time_decode(ctx, steps)
            floor = decode_bytes_per_token(config, ctx, engine.kv_bytes_per_token) / bw
            rows.append(
                {
                    "context": ctx,
                    "ms_per_token": secs * 1e3,
                    "tok_per_s": 1 / secs,
                    "floor_ms": floor * 1e3,
                    "ratio": floor / secs,
                }
            )
            log(
                f"{ctx:>8} {secs * 1e3:>9.3f} {1 / secs:>8.1f} {floor * 1e3:>9.3f} {1 / floor:>11.1f} "
                f"{100 * floor / secs:>9.1f}%"
            )
        return {"copy_bandwidth": bw, "rows": rows}
    finally:
        if tmp is not None:
            tmp.cleanup()


def torch_bf16_peak(device: int = 0, n: int = 8192) -> float | None:
    """bf16 tensor-core throughput (FLOP/s) of a cuBLAS n x n x n GEMM through torch, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda", device)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (start.elapsed_time(end) / 1e3)


def prefill(
    model: str,
    lengths=(128, 512, 2048, 8192),
    device: int = 0,
    kv_cache_dtype: str = "fp16",
    prefill_chunk: int = 2048,
    log=print,
) -> dict:
    """Time to first token and prompt tokens/s for prompts of `lengths` (generate with one new
    token), and the prompt kernels' TFLOP/s at 2048 tokens against a cuBLAS bf16 GEMM measured in
    the same run."""
    from . import Qwen3Engine
    from ._qwen3_rs import time_prompt_kernels

    peak = torch_bf16_peak(device)
    if peak:
        log(f"cuBLAS bf16 GEMM (torch, 8192^3): {peak / 1e12:.0f} TFLOP/s")
    kernels = []
    for name, secs, flops in time_prompt_kernels(device, 2048):
        row = {"kernel": name, "us": secs * 1e6}
        msg = f"{name:<34} {secs * 1e6:9.1f} us"
        if flops:
            row["tflops"] = flops / secs / 1e12
            msg += f" {row['tflops']:7.1f} TFLOP/s"
            if peak:
                msg += f" ({100 * flops / secs / peak:5.1f}% of cuBLAS bf16)"
        kernels.append(row)
        log(msg)
    engine = Qwen3Engine(
        model,
        device=device,
        max_seq_len=max(lengths) + 2,
        kv_cache_dtype=kv_cache_dtype,
        prefill_chunk=prefill_chunk,
    )
    log(f"prefill_chunk {prefill_chunk}")
    vocab = engine.config["vocab_size"]
    rows = []
    log(f"{'prompt':>8} {'TTFT ms':>9} {'prompt tok/s':>13}")
    for n in lengths:
        ids = [int(i) for i in np.random.default_rng(n).integers(0, vocab, n)]
        engine.generate(ids, max_new_tokens=1)  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            engine.generate(ids, max_new_tokens=1)
            times.append(time.perf_counter() - t)
        secs = sorted(times)[1]
        rows.append({"prompt": n, "ttft_ms": secs * 1e3, "tok_per_s": n / secs})
        log(f"{n:>8} {secs * 1e3:>9.1f} {n / secs:>13.0f}")
    return {"bf16_peak": peak, "kernels": kernels, "rows": rows}


def multi_gpu(model: str, devices=(0, 1), context: int = 128, steps: int = 64, log=print) -> dict:
    """Decode tok/s of one model on one GPU, split over `devices` in contiguous ranges, and with
    layers alternating between the first two devices (a boundary after every layer), which gives
    the cost of one crossing."""
    import gc

    from . import Qwen3Engine

    out = {}
    n_layers = None
    for name, kwargs in (
        ("1 GPU", {"devices": [devices[0]]}),
        (f"{len(devices)} GPUs, contiguous", {"devices": list(devices)}),
        ("2 GPUs, alternating every layer", {"layer_devices": "alternate"}),
    ):
        if kwargs.get("layer_devices") == "alternate":
            kwargs = {"layer_devices": [devices[i % 2] for i in range(n_layers)]}
        engine = Qwen3Engine(model, max_seq_len=context + steps + 2, **kwargs)
        n_layers = engine.config["num_hidden_layers"]
        layers = engine.placement["layers"]
        crossings = sum(a != b for a, b in zip(layers, layers[1:]))
        secs = engine.time_decode(context, steps)
        out[name] = {"ms_per_token": secs * 1e3, "crossings": crossings}
        log(f"{name:<34} {secs * 1e3:7.3f} ms/token {1 / secs:7.1f} tok/s  ({crossings} device crossings per token)")
        del engine
        gc.collect()
    split, alt = out[f"{len(devices)} GPUs, contiguous"], out["2 GPUs, alternating every layer"]
    per_crossing = (alt["ms_per_token"] - split["ms_per_token"]) / max(1, alt["crossings"] - split["crossings"])
    log(
        f"one device crossing: {per_crossing * 1e3:.1f} us; contiguous split vs 1 GPU: "
        f"{100 * (split['ms_per_token'] / out['1 GPU']['ms_per_token'] - 1):+.1f}% time per token"
    )
    out["crossing_us"] = per_crossing * 1e3
    return out


def torch_peers(device: int = 0, log=print) -> list[dict]:
    """Times the Qwen3-8B GEMV shapes through torch's int4 kernel (torch._weight_int4pack_mm,
    group 128, as gpt-fast and torchao use) and fp16 F.linear, when torch with CUDA is installed."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        log("torch not installed: peer GEMV timings skipped")
        return []
    if not torch.cuda.is_available():
        log("torch sees no CUDA device: peer GEMV timings skipped")
        return []
    dev = torch.device("cuda", device)
    shapes = [
        ("qkv 4096->6144", 4096, 6144),
        ("o 4096->4096", 4096, 4096),
        ("gate_up 4096->24576", 4096, 24576),
        ("down 12288->4096", 12288, 4096),
        ("lm_head 4096->151936", 4096, 151936),
    ]

    def timed(fn, iters=200):
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters

    out = []
    for name, k, n in shapes:
        w = torch.randn(n, k, device=dev, dtype=torch.float16)
        x16 = torch.randn(1, k, device=dev, dtype=torch.float16)
        row = {"shape": name, "fp16_linear_us": timed(lambda: F.linear(x16, w)) * 1e6, "fp16_bytes": n * k * 2}
        try:
            wq = torch.randint(0, 16, (n, k), device=dev, dtype=torch.int32)
            packed = torch._convert_weight_to_int4pack((wq[:, ::2] << 4 | wq[:, 1::2]).to(torch.uint8), 8)
            sz = torch.rand(k // 128, n, 2, device=dev, dtype=torch.bfloat16)
            xb = x16.to(torch.bfloat16)
            row["int4pack_us"] = timed(lambda: torch._weight_int4pack_mm(xb, packed, 128, sz)) * 1e6
            row["int4_bytes"] = n * k // 2 + (k // 128) * n * 4
        except Exception as e:  # the private op's signature moves between torch versions
            row["int4pack_error"] = f"{type(e).__name__}: {e}"
        out.append(row)
    for r in out:
        msg = (
            f"torch {r['shape']:<22} fp16 F.linear {r['fp16_linear_us']:8.1f} us "
            f"({r['fp16_bytes'] / r['fp16_linear_us'] / 1e3:6.0f} GB/s)"
        )
        if "int4pack_us" in r:
            msg += f"   int4pack_mm {r['int4pack_us']:8.1f} us ({r['int4_bytes'] / r['int4pack_us'] / 1e3:6.0f} GB/s)"
        else:
            msg += f"   int4pack_mm unavailable ({r.get('int4pack_error')})"
        log(msg)
    return out
