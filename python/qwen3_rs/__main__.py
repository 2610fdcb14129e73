"""Command line: `python -m qwen3_rs bench ...`."""

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="qwen3-rs", description="qwen3-rs command line")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="decode tok/s against the memory-bandwidth floor")
    bench.add_argument("--model", help="model directory (default: a random Qwen3-8B-AWQ-shaped checkpoint)")
    bench.add_argument(
        "--random-model-dir", help="where to write (once) and reuse the random checkpoint instead of a temporary one"
    )
    bench.add_argument("--contexts", type=int, nargs="+", default=[128, 1024, 4096, 16384])
    bench.add_argument("--steps", type=int, default=64, help="decode steps timed per context")
    bench.add_argument("--device", type=int, default=0)
    bench.add_argument("--kv-cache-dtype", default="fp16", choices=["fp16", "q8"])
    bench.add_argument("--no-cuda-graphs", action="store_true", help="launch kernels one by one")
    bench.add_argument("--peers", action="store_true", help="also time the GEMV shapes through torch")
    bench.add_argument("--multi-gpu", action="store_true", help="compare one GPU with a split over two (context 128)")
    bench.add_argument(
        "--prefill", action="store_true", help="time to first token for 128..8192-token prompts instead of decode"
    )
    args = parser.parse_args(argv)

    from . import bench as b

    if args.peers:
        b.torch_peers(args.device)
    model = args.model
    if model is None and args.random_model_dir:
        model = args.random_model_dir
        if not os.path.exists(os.path.join(model, "config.json")):
            size = b.write_random_checkpoint(model)
            print(f"wrote a random Qwen3-8B-AWQ-shaped checkpoint to {model}: {size / 1e9:.2f} GB")
    if args.multi_gpu or args.prefill:
        if model is None:
            parser.error("--multi-gpu and --prefill need --model or --random-model-dir")
        if args.multi_gpu:
            b.multi_gpu(model)
        else:
            b.prefill(model, device=args.device, kv_cache_dtype=args.kv_cache_dtype)
        return 0
    b.run(
        model,
        args.contexts,
        args.steps,
        args.device,
        cuda_graphs=not args.no_cuda_graphs,
        kv_cache_dtype=args.kv_cache_dtype,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
