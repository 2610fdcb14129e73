//! Kernel timings at the Qwen3-8B shapes against the device's copy bandwidth, measured in the
//! same run: `cargo bench` (on a machine without a GPU it says so and exits). Each kernel is timed
//! from a CUDA graph of back-to-back launches, as the decode step runs.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qwen3_rs::bench::{attention_case, attention_prefill_case, gemm_cases, gemv_cases, sampling_cases, Case};
use qwen3_rs::cuda::executor::{device_count, Executor};
use qwen3_rs::cuda::kernel::KvDtype;

/// Launches per captured graph: timings come from CUDA graphs, as decode runs its kernels, so no
/// host launch cost separates them (the stream-launched time is printed alongside). Cases that
/// cycle through layers' buffers cover at least 64 x their bytes per replay.
const GRAPH_CALLS: usize = 64;

fn run_case(c: &mut Criterion, ex: &Executor, copy_bw: f64, mut case: Case, summary: &mut Vec<String>) {
    let mut group = c.benchmark_group("kernels");
    if case.flops == 0 {
        group.throughput(Throughput::Bytes(case.bytes as u64));
    }
    group.bench_function(case.name.clone(), |b| {
        b.iter_custom(|iters| {
            let reps = (iters as usize).div_ceil(GRAPH_CALLS);
            let secs = ex.time_graph(GRAPH_CALLS, reps, || case.launch(ex)).expect("kernel launch failed");
            Duration::from_secs_f64(secs * iters as f64)
        })
    });
    group.finish();
    let (Ok(secs), Ok(stream)) =
        (ex.time_graph(GRAPH_CALLS, 8, || case.launch(ex)), ex.time(50, || case.launch(ex)))
    else {
        return;
    };
    let rate = if case.flops > 0 {
        format!("{:>8.1} TFLOP/s", case.flops as f64 / secs / 1e12)
    } else {
        let bw = case.bytes as f64 / secs;
        format!("{:>8.0} GB/s {:>6.1}% of copy", bw / 1e9, 100.0 * bw / copy_bw)
    };
    summary.push(format!(
        "{:<34} {:>9.2} us {rate}   (stream-launched {:.2} us)",
        case.name,
        secs * 1e6,
        stream * 1e6
    ));
}

fn kernels(c: &mut Criterion) {
    if device_count() == 0 {
        eprintln!("no CUDA device visible: kernel benchmarks skipped");
        return;
    }
    let ex = match Executor::new(0) {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("CUDA unavailable ({e}): kernel benchmarks skipped");
            return;
        }
    };
    let copy_bw = ex.copy_bandwidth(1 << 30).expect("copy bandwidth");
    let mut summary =
        vec![format!("device copy bandwidth {:.0} GB/s (read + write), arch {}", copy_bw / 1e9, ex.arch())];
    for case in gemv_cases(&ex).expect("GEMV cases") {
        run_case(c, &ex, copy_bw, case, &mut summary);
    }
    for dtype in [KvDtype::Fp16, KvDtype::Q8] {
        for context in [512, 4096, 32768] {
            let case = attention_case(&ex, context, dtype).expect("attention case");
            run_case(c, &ex, copy_bw, case, &mut summary);
        }
    }
    for m in [128, 2048] {
        for case in gemm_cases(&ex, m).expect("GEMM cases") {
            run_case(c, &ex, copy_bw, case, &mut summary);
        }
    }
    for dtype in [KvDtype::Fp16, KvDtype::Q8] {
        let case = attention_prefill_case(&ex, 2048, dtype).expect("prefill attention case");
        run_case(c, &ex, copy_bw, case, &mut summary);
    }
    for case in sampling_cases(&ex).expect("sampling cases") {
        run_case(c, &ex, copy_bw, case, &mut summary);
    }
    println!("\n{}", summary.join("\n"));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = kernels
}
criterion_main!(benches);
