"""Command line: ``qwen3-rs generate|chat|bench`` (also ``python -m qwen3_rs``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

__all__ = ["main"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or Hugging Face repo id (e.g. Qwen/Qwen3-8B-AWQ)")
    p.add_argument("--revision", help="Hub branch, tag or commit (repo ids only)")
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--devices", type=int, nargs="+", help="split the layers over these GPUs")
    p.add_argument("--max-seq-len", type=int, help="KV-cache positions (default: the model's maximum)")
    p.add_argument("--kv-cache-dtype", default="fp16", choices=["fp16", "q8"])
    p.add_argument("--no-cuda-graphs", action="store_true", help="launch kernels one by one")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="prompt positions per batched pass (0: one by one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while loading")
    p.add_argument("-v", "--verbose", action="store_true", help="log load and compile events")


def _add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at an eos token")
    p.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50, help="0 turns it off (default 50, as in transformers)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="random seed (reproducible sampling)")
    p.add_argument("--eos-token-id", type=int, nargs="+", help="stop at these ids instead of the model's")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--no-thinking", action="store_true", help="turn Qwen3's thinking off (chat template)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen3-rs", description="qwen3-rs command line")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text from a prompt, streamed to stdout")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True, help="the prompt text")
    gen.add_argument("--chat-template", action="store_true", help="send the prompt as a user message of a chat")
    _add_generation_args(gen, 256)

    chat = sub.add_parser("chat", help="interactive chat, replies streamed (/reset clears, /exit or EOF quits)")
    _add_model_args(chat)
    chat.add_argument("--system", help="system message")
    _add_generation_args(chat, 2048)

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
    bench.add_argument("--prefill-chunk", type=int, default=2048, help="prompt positions per batched pass (--prefill)")
    return parser


def _sampling(args) -> dict:
    return dict(
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        eos_token_id=args.eos_token_id,
    )


def _load(args):
    from .engine import Qwen3Engine

    return Qwen3Engine(
        args.model,
        device=args.device,
        devices=args.devices,
        max_seq_len=args.max_seq_len,
        kv_cache_dtype=args.kv_cache_dtype,
        cuda_graphs=not args.no_cuda_graphs,
        prefill_chunk=args.prefill_chunk,
        revision=args.revision,
        progress=False if args.no_progress else None,
    )


def _stream_reply(engine, prompt: str, args, out) -> tuple[str, int, float, float]:
    """Streams the reply to `out`; returns (text, new tokens, seconds to the first token, seconds after)."""
    start = time.perf_counter()
    chunks = engine.stream(prompt, args.max_new_tokens, args.ignore_eos, stop_strings=args.stop, **_sampling(args))
    first = time.perf_counter()
    pieces, n = [], 0
    for c in chunks:
        if n == 0:
            first = time.perf_counter()
        n += 1
        if c.text:
            out.write(c.text)
            out.flush()
            pieces.append(c.text)
    end = time.perf_counter()
    return "".join(pieces), n, first - start, end - first


def _report(n: int, prompt_tokens: int, to_first: float, rest: float) -> None:
    rate = (n - 1) / rest if n > 1 and rest > 0 else float("nan")
    print(
        f"[{prompt_tokens} prompt tokens, first token after {to_first * 1e3:.0f} ms; {n} new tokens, {rate:.1f} tok/s]",
        file=sys.stderr,
    )


def _generate(args) -> int:
    from .text import apply_chat_template

    engine = _load(args)
    prompt = args.prompt
    if args.chat_template:
        prompt = apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, enable_thinking=not args.no_thinking
        )
    prompt_tokens = len(engine.encode(prompt))
    _, n, to_first, rest = _stream_reply(engine, prompt, args, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    _report(n, prompt_tokens, to_first, rest)
    return 0


def _chat(args) -> int:
    from .text import apply_chat_template

    engine = _load(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list = []
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        prompt = apply_chat_template(system + history, add_generation_prompt=True, enable_thinking=not args.no_thinking)
        prompt_tokens = len(engine.encode(prompt))
        try:
            reply, n, to_first, rest = _stream_reply(engine, prompt, args, sys.stdout)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            print("[interrupted]", file=sys.stderr)
            history.pop()
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        _report(n, prompt_tokens, to_first, rest)
        history.append({"role": "assistant", "content": reply})
    return 0


def _bench(args, parser) -> int:
    from . import bench as b

    if args.peers:
        b.torch_peers(args.device)
    model = args.model
    if model is None and args.random_model_dir:
        model = args.random_model_dir
        if not os.path.exists(os.path.join(model, "config.json")):
            size = b.write_random_checkpoint(model)
            print(f"wrote a random Qwen3-8B-AWQ-shaped checkpoint to {model}: {size / 1e9:.2f} GB")
    if (args.multi_gpu or args.prefill) and model is None:
        parser.error("--multi-gpu and --prefill need --model or --random-model-dir")
    if args.prefill:
        b.prefill(model, device=args.device, kv_cache_dtype=args.kv_cache_dtype, prefill_chunk=args.prefill_chunk)
        return 0
    if args.multi_gpu:
        b.multi_gpu(model)
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


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args, parser)
    from . import check_sampling, errors

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        check_sampling(**_sampling(args))  # before a long load
        if args.stop is not None and not all(args.stop):
            raise errors.InvalidArgumentError("--stop needs a non-empty string")
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    try:
        return _generate(args) if args.command == "generate" else _chat(args)
    except errors.Qwen3RsError as e:
        print(f"qwen3-rs: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
