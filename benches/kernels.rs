//! Kernel timings at the Qwen3-8B shapes against the device's copy bandwidth, measured in the
//! same run: `cargo bench` (on a machine without a GPU it says so and exits).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qwen3_rs::bench::{attention_case, attention_prefill_case, gemm_cases, gemv_cases, sampling_cases, Case};
use qwen3_rs::cuda::executor::{device_count, Executor};
use qwen3_rs::cuda::kernel::KvDtype;

fn run_case(c: &mut Criterion, ex: &Executor, copy_bw: f64, mut case: Case, summary: &mut Vec<String>) {
    let mut group = c.benchmark_group("kernels");
    if case.flops == 0 {
        group.throughput(Throughput::Bytes(case.bytes as u64));
    }
    group.bench_function(case.name.clone(), |b| {
        b.iter_custom(|iters| {
            let secs = ex.time(iters as usize, || case.launch(ex)).expect("kernel launch failed");
            Duration::from_secs_f64(secs * iters as f64)
        })
    });
    group.finish();
    if let Ok(secs) = ex.time(50, || case.launch(ex)) {
        let bw = case.bytes as f64 / secs;
        summary.push(if case.flops > 0 {
            format!(
                "{:<34} {:>9.2} us {:>8.1} TFLOP/s",
                case.name,
                secs * 1e6,
                case.flops as f64 / secs / 1e12
            )
        } else {
            format!(
                "{:<34} {:>9.2} us {:>8.0} GB/s {:>6.1}% of copy",
                case.name,
                secs * 1e6,
                bw / 1e9,
                100.0 * bw / copy_bw
            )
        });
    }
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
