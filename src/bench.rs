//! Kernel benchmark cases at the Qwen3-8B shapes, on random device data. Shared by the criterion
//! benches (`cargo bench`) and the Python end-to-end benchmark, so both time the same launches.

use cudarc::driver::CudaSlice;

use crate::cuda::executor::Executor;
use crate::cuda::kernel::{Epilogue, KvDtype};
use crate::cuda::launch::{
    Attention, AttentionPrefill, AwqGemm, AwqGemv, HalfGemv, HeadShape, RowsF16, STEP_LEN,
};
use crate::error::Result;
use crate::kv_cache::KvLayer;
use crate::model::awq_linear::AwqLinear;

/// A deterministic pseudo-random fill (xorshift), so no RNG crate is needed.
fn random_words(n: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u32
        })
        .collect()
}

/// Random fp16 values in about [-0.5, 0.5): the sign, a small exponent, random mantissa.
fn random_halves(n: usize, seed: u64) -> Vec<u16> {
    random_words(n, seed).into_iter().map(|w| (w as u16 & 0x83ff) | 0x3400).collect()
}

fn random_floats(n: usize, seed: u64) -> Vec<f32> {
    random_halves(n, seed).into_iter().map(|h| half::f16::from_bits(h).to_f32()).collect()
}

type Launch = Box<dyn FnMut(&Executor) -> Result<()>>;

/// One launch to time, with the bytes it must move (memory-bound kernels) or the floating-point
/// operations it performs (compute-bound ones; 0 otherwise).
pub struct Case {
    pub name: String,
    pub bytes: usize,
    pub flops: usize,
    run: Launch,
}

impl Case {
    pub fn launch(&mut self, ex: &Executor) -> Result<()> {
        (self.run)(ex)
    }
}

const GROUP: usize = 128;

/// The quantized projections of a Qwen3-8B layer as the engine runs them (q|k|v and gate|up
/// fused): name, inputs, outputs, epilogue, fused input norm.
const LAYER_LINEARS: [(&str, usize, usize, Epilogue, bool); 4] = [
    ("qkv_proj 4096->6144 +norm", 4096, 6144, Epilogue::Store, true),
    ("o_proj 4096->4096 +residual", 4096, 4096, Epilogue::AddTo, false),
    ("gate_up_proj 4096->2x12288 +norm", 4096, 12288, Epilogue::SiluMul, true),
    ("down_proj 12288->4096 +residual", 12288, 4096, Epilogue::AddTo, false),
];

/// A random stacked AWQ linear on the device in the engine's layout.
fn random_linear(
    ex: &Executor,
    k: usize,
    n: usize,
    epilogue: Epilogue,
    seed: u64,
    name: &str,
) -> Result<AwqLinear> {
    let rows = if epilogue == Epilogue::SiluMul { 2 * n } else { n };
    let mut w = AwqLinear::alloc(ex, k, rows, GROUP, name)?;
    w.weight = ex.upload(&random_words(rows * k / 8, seed), name)?;
    w.scales = ex.upload(&random_halves(rows * k / GROUP, seed + 1), name)?;
    let zeros: Vec<u64> = random_words(rows / 16 * (k / GROUP) * 2, seed + 2)
        .chunks_exact(2)
        .map(|p| p[0] as u64 | (p[1] as u64) << 32)
        .collect();
    w.zeros = ex.upload(&zeros, name)?;
    Ok(w)
}

/// Bytes of weights or KV caches a decode case cycles through: several times the largest L2 of
/// current GPUs (50 MB on an H100), so, as in decode, where every other layer's weights and cache
/// pass through L2 between two reads of a layer's, every launch reads its data from DRAM.
const DECODE_ROTATION_BYTES: usize = 256 << 20;

/// The layer's projections and the fp16 lm_head as decode runs them (one token). Successive
/// launches of a projection go to successive layers' weights (at least DECODE_ROTATION_BYTES in
/// all), so each reads its weights from DRAM as in decode, not from L2.
pub fn gemv_cases(ex: &Executor) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (i, (name, k, n, epilogue, norm)) in LAYER_LINEARS.into_iter().enumerate() {
        let rows = if epilogue == Epilogue::SiluMul { 2 * n } else { n };
        let bytes = AwqLinear::device_bytes(k, rows, GROUP);
        let layers = DECODE_ROTATION_BYTES.div_ceil(bytes).max(2);
        let weights = (0..layers)
            .map(|_| random_linear(ex, k, n, epilogue, 1000 + i as u64, name))
            .collect::<Result<Vec<_>>>()?;
        let norm_weight = ex.upload(&random_halves(k, 1004 + i as u64), "norm")?;
        let x = ex.upload(&random_floats(k, 1003 + i as u64), "x")?;
        let mut y: CudaSlice<f32> = ex.zeros(n, "y")?;
        let gemv = AwqGemv::new(ex, k, n, GROUP, epilogue, norm)?;
        let mut layer = 0;
        cases.push(Case {
            name: name.into(),
            bytes,
            flops: 0,
            run: Box::new(move |ex| {
                layer = (layer + 1) % layers;
                gemv.launch(ex.stream(), &x, norm.then_some((&norm_weight, 1e-6)), &weights[layer], &mut y)
            }),
        });
    }
    let (k, n) = (4096, 151936);
    let w = ex.upload(&random_halves(n * k, 7), "lm_head")?;
    let x = ex.upload(&random_floats(k, 8), "x")?;
    let mut y: CudaSlice<f32> = ex.zeros(n, "logits")?;
    let lm_head = HalfGemv::new(ex, k, n)?;
    ex.synchronize()?; // weights in place before any GEMV prologue reads them
    cases.push(Case {
        name: "lm_head 4096->151936 fp16".into(),
        bytes: n * k * 2,
        flops: 0,
        run: Box::new(move |ex| lm_head.launch(ex.stream(), &x, &w, &mut y)),
    });
    Ok(cases)
}

/// `count` KV caches of `len` random positions in `dtype` (the same random contents in each).
fn random_caches(
    ex: &Executor,
    shape: HeadShape,
    len: usize,
    dtype: KvDtype,
    count: usize,
) -> Result<Vec<KvLayer>> {
    let (values, scales) = KvLayer::lens(shape, len, dtype);
    let bytes_of = |seed| -> Vec<u8> {
        match dtype {
            KvDtype::Fp16 => {
                random_halves(values / 2, seed).into_iter().flat_map(|h| h.to_le_bytes()).collect()
            }
            KvDtype::Q8 => random_words(values, seed).into_iter().map(|w| w as u8).collect(),
        }
    };
    let (k, v) = (bytes_of(11), bytes_of(12));
    let (k_scale, v_scale) = (random_halves(scales, 13), random_halves(scales, 14));
    (0..count)
        .map(|_| {
            let mut cache = KvLayer::new(ex, shape, len, dtype)?;
            cache.k = ex.upload(&k, "k cache")?;
            cache.v = ex.upload(&v, "v cache")?;
            if scales > 0 {
                cache.k_scale = ex.upload(&k_scale, "k scales")?;
                cache.v_scale = ex.upload(&v_scale, "v scales")?;
            }
            Ok(cache)
        })
        .collect()
}

/// Decode attention of a Qwen3-8B layer (32 query heads, 8 KV heads, head_dim 128) over a cache
/// of `context` positions in `dtype`. Successive launches go to successive layers' caches (at
/// least two, at least DECODE_ROTATION_BYTES in all), as in a decode step, so the time per launch
/// is the time per layer: each reads its cache from DRAM, and its launch overlaps the previous
/// kernel's tail as it does in the decode graph.
pub fn attention_case(ex: &Executor, context: usize, dtype: KvDtype) -> Result<Case> {
    let shape = HeadShape { head_dim: 128, n_heads: 32, n_kv_heads: 8 };
    let (values, scales) = KvLayer::lens(shape, context, dtype);
    let bytes = 2 * (values + 2 * scales);
    let layers = DECODE_ROTATION_BYTES.div_ceil(bytes).max(2);
    let caches = random_caches(ex, shape, context, dtype, layers)?;
    let q = ex.upload(&random_floats(shape.n_heads * shape.head_dim, 15), "q")?;
    let step = ex.upload(&[0i32, context as i32 - 1][..STEP_LEN], "step")?;
    let mut out: CudaSlice<f32> = ex.zeros(shape.n_heads * shape.head_dim, "out")?;
    let mut attention = Attention::new(ex, shape, context, dtype)?;
    ex.synchronize()?;
    let mut layer = 0;
    Ok(Case {
        name: format!("attention {dtype:?} KV, context {context}"),
        bytes,
        flops: 0,
        run: Box::new(move |ex| {
            layer = (layer + 1) % layers;
            attention.launch(ex.stream(), &q, &caches[layer], &step, &mut out)
        }),
    })
}

/// The layer's projections as prompt processing runs them: `m` tokens through the tensor-core
/// GEMM, split along K as the engine would with 32 MB of scratch (the fp16 conversion of the
/// input rows, `RowsF16`, is a separate case).
pub fn gemm_cases(ex: &Executor, m: usize) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (i, (name, k, n, epilogue, _)) in LAYER_LINEARS.into_iter().enumerate() {
        let w = random_linear(ex, k, n, epilogue, 2000 + i as u64, name)?;
        let x = ex.upload(&random_halves(m * k, 2003 + i as u64), "x")?;
        let x_scale = ex.upload(&vec![1.0f32; m], "x scale")?;
        let mut y: CudaSlice<f32> = ex.zeros(m * n, "y")?;
        let gemm = AwqGemm::new(ex, k, n, GROUP, epilogue)?;
        let mut split_k: CudaSlice<f32> = ex.zeros(8 << 20, "split-K scratch")?;
        let splits = gemm.splits(m, split_k.len());
        cases.push(Case {
            name: format!("{} x{m} ({splits} split)", name.split(' ').next().unwrap_or(name)),
            bytes: AwqLinear::device_bytes(k, w.rows, GROUP) + m * k * 2 + m * n * 4,
            flops: 2 * m * k * w.rows,
            run: Box::new(move |ex| gemm.launch(ex.stream(), &x, &x_scale, m, &w, &mut y, &mut split_k)),
        });
    }
    let k = 12288;
    let x = ex.upload(&random_floats(m * k, 2010), "x")?;
    let (mut x16, mut x_scale): (CudaSlice<u16>, CudaSlice<f32>) =
        (ex.zeros(m * k, "x16")?, ex.zeros(m, "scale")?);
    let rows = RowsF16::new(ex, k, false)?;
    cases.push(Case {
        name: format!("rows_f16 12288 x{m}"),
        bytes: m * k * 6,
        flops: 0,
        run: Box::new(move |ex| rows.launch(ex.stream(), &x, None, m, &mut x16, &mut x_scale)),
    });
    ex.synchronize()?;
    Ok(cases)
}

/// Causal attention of a Qwen3-8B layer over an `m`-token prompt (fp16 cache): 4 m^2 h d / 2
/// useful flops (q.k and p.v over the causal half).
pub fn attention_prefill_case(ex: &Executor, m: usize, dtype: KvDtype) -> Result<Case> {
    let shape = HeadShape { head_dim: 128, n_heads: 32, n_kv_heads: 8 };
    let cache = random_caches(ex, shape, m, dtype, 1)?.remove(0);
    let q = ex.upload(&random_floats(m * shape.n_heads * shape.head_dim, 27), "q")?;
    let step = ex.upload(&[0i32, 0][..STEP_LEN], "step")?;
    let mut out: CudaSlice<f32> = ex.zeros(m * shape.n_heads * shape.head_dim, "out")?;
    let attention = AttentionPrefill::new(ex, shape, m, dtype)?;
    ex.synchronize()?;
    Ok(Case {
        name: format!("attention_prefill {dtype:?} x{m}"),
        bytes: 0,
        flops: 2 * m * m * shape.n_heads * shape.head_dim,
        run: Box::new(move |ex| attention.launch(ex.stream(), &q, &cache, &step, m, &mut out)),
    })
}

/// The sampler over Qwen3-8B's 151,936 logits: the argmax kernel, and the sampling kernel with
/// temperature alone, with top_p alone, with Qwen3's recommended settings (temperature 0.6, top_k
/// 20, top_p 0.95) and with every processor on.
pub fn sampling_cases(ex: &Executor) -> Result<Vec<Case>> {
    use crate::cuda::launch::{Argmax, Sample};
    use crate::sampler::{presence_bitmap, SamplingOptions};

    let n = 151936;
    // Logits spread like a model's (about +-4), a few far above the rest.
    let mut logits = random_floats(n, 21);
    for (i, x) in logits.iter_mut().enumerate() {
        *x *= 8.0;
        if i % 9973 == 0 {
            *x += 12.0;
        }
    }
    let x = ex.upload(&logits, "logits")?;
    let sampling = |temperature, top_k, top_p, min_p, repetition_penalty| SamplingOptions {
        do_sample: true,
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        seed: Some(1),
    };
    let settings = [
        ("sample temperature 0.8", sampling(0.8, 0, 1.0, 0.0, 1.0)),
        ("sample top_p 0.9", sampling(1.0, 0, 0.9, 0.0, 1.0)),
        ("sample top_p 0.95", sampling(1.0, 0, 0.95, 0.0, 1.0)),
        ("sample t0.6 top_k 20 top_p 0.95", sampling(0.6, 20, 0.95, 0.0, 1.0)),
        ("sample all processors", sampling(0.7, 50, 0.9, 0.05, 1.1)),
    ];
    let mut cases = Vec::new();
    let argmax = Argmax::new(ex, n)?;
    let (x1, mut step) = (x.clone(), ex.zeros::<i32>(STEP_LEN, "step")?);
    cases.push(Case {
        name: "argmax 151936".into(),
        bytes: n * 4,
        flops: 0,
        run: Box::new(move |ex| argmax.launch(ex.stream(), &x1, &mut step, true)),
    });
    let present: Vec<u32> = (0..2000).map(|i| i * 71 % n as u32).collect();
    for (name, opts) in settings {
        let kernel = Sample::new(ex, n)?;
        let params = ex.upload(&opts.device_params(n, 1), "sampling parameters")?;
        let mut presence = ex.upload(&presence_bitmap(n, &present), "presence flags")?;
        let mut step = ex.zeros::<i32>(STEP_LEN, "step")?;
        let x = x.clone();
        cases.push(Case {
            name: name.into(),
            bytes: n * 4,
            flops: 0,
            run: Box::new(move |ex| kernel.launch(ex.stream(), &x, &params, &mut presence, &mut step)),
        });
    }
    ex.synchronize()?;
    Ok(cases)
}
