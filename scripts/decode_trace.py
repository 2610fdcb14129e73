"""Where a decode step's time goes, kernel by kernel, from an Nsight Systems trace.

    nsys profile --cuda-graph-trace=node -t cuda -o decode python -m qwen3_rs bench --contexts 4096 --steps 20
    nsys export --type sqlite -o decode.sqlite decode.nsys-rep
    python scripts/decode_trace.py decode.sqlite

For each kernel family over the last decode steps: launches per step, median duration, and the
time it adds to the step ("exposed": its end minus the previous kernel's end; kernels overlap
under programmatic dependent launch, so durations do not add up to the step, exposed times do).
"""

import sqlite3
import statistics
import sys


def decode_steps(db: sqlite3.Connection, keep: int = 12) -> list[list[tuple[int, int, str]]]:
    names = dict(db.execute("select id, value from StringIds"))
    rows = db.execute("select start, end, shortName from CUPTI_ACTIVITY_KIND_KERNEL order by start")
    steps: list[list[tuple[int, int, str]]] = []
    for start, end, name_id in rows:
        name = names.get(name_id, str(name_id))
        if name == "embedding":  # a decode step (or a prompt chunk) begins
            steps.append([])
        if steps:
            steps[-1].append((start, end, name))
    # Decode steps end in token selection and run far more kernels than a prompt chunk's tail.
    steps = [s for s in steps if len(s) > 100 and s[-1][2] in ("argmax", "sample")]
    return steps[-keep:]


def main(path: str) -> None:
    steps = decode_steps(sqlite3.connect(path))
    if not steps:
        raise SystemExit(f"{path}: no decode steps found")
    by_kernel: dict[str, tuple[list[float], list[float]]] = {}
    for step in steps:
        prev_end = step[0][0]
        for start, end, name in step:
            durations, exposed = by_kernel.setdefault(name, ([], []))
            durations.append((end - start) / 1e3)
            exposed.append((end - prev_end) / 1e3)
            prev_end = max(prev_end, end)
    step_us = statistics.median((s[-1][1] - s[0][0]) / 1e3 for s in steps)
    print(f"{len(steps)} decode steps, median {step_us:.1f} us, {len(steps[0])} kernels each")
    print(f"{'kernel':20s} {'per step':>8s} {'duration':>9s} {'exposed':>8s} {'p10':>7s} {'p90':>7s} {'us/step':>8s}")
    for name, (durations, exposed) in sorted(by_kernel.items(), key=lambda kv: -sum(kv[1][1])):
        q = statistics.quantiles(exposed, n=10) if len(exposed) > 1 else exposed * 9
        print(
            f"{name:20s} {len(durations) / len(steps):8.0f} {statistics.median(durations):9.2f} "
            f"{statistics.median(exposed):8.2f} {q[0]:7.2f} {q[-1]:7.2f} {sum(exposed) / len(steps):8.1f}"
        )
    # The second layer (the first follows the embedding): from the kernel before its q/k norm.
    step = steps[-1]
    marks = [i for i, (_, _, name) in enumerate(step) if name == "qk_norm_rope"]
    if len(marks) < 3:
        return
    first, last = marks[1] - 1, marks[2] - 1
    print("a layer's kernels (duration / exposed, us):")
    prev_end = step[first - 1][1]
    for start, end, name in step[first:last]:
        print(f"  {name:18s} {(end - start) / 1e3:6.1f} / {(end - prev_end) / 1e3:5.1f}")
        prev_end = max(prev_end, end)


if __name__ == "__main__":
    main(sys.argv[1])
