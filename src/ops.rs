//! Single-kernel runs on host arrays: upload, launch one typed launcher, download. Tests compare
//! each kernel against an independent reference through these; the engine does not use them.

use crate::cuda::executor::Executor;
use cudarc::driver::CudaSlice;

use crate::cuda::kernel::{Epilogue, KvDtype};
use crate::cuda::launch::{self, HeadShape, STEP_LEN};
use crate::error::{ensure, Result};
use crate::kv_cache::KvLayer;
pub use crate::model::awq_linear::AwqHost;
use crate::model::awq_linear::{AwqLinear, Stacking};

fn step(ex: &Executor, token: i32, pos: i32) -> Result<cudarc::driver::CudaSlice<i32>> {
    ex.upload(&[token, pos][..STEP_LEN], "step")
}

pub fn embedding(ex: &Executor, table: &[u16], vocab: usize, hidden: usize, token: i32) -> Result<Vec<f32>> {
    ensure(table.len() == vocab * hidden, || {
        format!("table has {} values, not {vocab} x {hidden}", table.len())
    })?;
    let (table, step) = (ex.upload(table, "table")?, step(ex, token, 0)?);
    let mut out = ex.zeros(hidden, "out")?;
    launch::Embedding::new(ex, hidden, vocab)?.launch(ex.stream(), &step, 1, &table, &mut out)?;
    ex.download(&out)
}

pub fn rms_norm(ex: &Executor, x: &[f32], weight: &[u16], eps: f32) -> Result<Vec<f32>> {
    ensure(x.len() == weight.len(), || format!("x has {} values, weight {}", x.len(), weight.len()))?;
    let (xd, wd) = (ex.upload(x, "x")?, ex.upload(weight, "weight")?);
    let mut out = ex.zeros(x.len(), "out")?;
    launch::RmsNorm::new(ex, x.len())?.launch(ex.stream(), &xd, &wd, &mut out, eps)?;
    ex.download(&out)
}

/// The linears of an epilogue (two for `SiluMul`) stacked on the device as the engine stacks them.
fn stacked(
    ex: &Executor,
    linears: &[AwqHost],
    k: usize,
    n: usize,
    group: usize,
    epilogue: Epilogue,
) -> Result<AwqLinear> {
    let parts = if epilogue == Epilogue::SiluMul { 2 } else { 1 };
    ensure(linears.len() == parts, || {
        format!("{epilogue:?} takes {parts} linear(s), got {}", linears.len())
    })?;
    ensure(
        group >= 64 && group.is_multiple_of(64) && k.is_multiple_of(group) && n.is_multiple_of(16),
        || {
            format!(
            "unsupported shape k {k}, n {n}, group {group} (group a multiple of 64 dividing k, n % 16 == 0)"
        )
        },
    )?;
    for l in linears {
        ensure(l.n == n, || format!("linears of {} and {n} outputs cannot be fused", l.n))?;
        ensure(
            l.qweight.len() == k * n / 8
                && l.qzeros.len() == k / group * n / 8
                && l.scales.len() == k / group * n,
            || format!("AWQ tensors do not match k {k}, n {n}, group {group}"),
        )?;
    }
    let stacking = if epilogue == Epilogue::SiluMul { Stacking::Interleave } else { Stacking::Concat };
    let w = AwqLinear::from_parts(ex, linears, k, group, stacking, "weight")?;
    // The kernels read weights before waiting on the previous kernel (PDL): finish the repack.
    ex.synchronize()?;
    Ok(w)
}

/// The output buffer of `rows` x `n`: the residual for `AddTo`, zeros otherwise.
fn output(ex: &Executor, rows: usize, n: usize, residual: Option<&[f32]>) -> Result<CudaSlice<f32>> {
    match residual {
        Some(r) => {
            ensure(r.len() == rows * n, || format!("residual has {} values, not {rows} x {n}", r.len()))?;
            ex.upload(r, "residual")
        }
        None => ex.zeros(rows * n, "y"),
    }
}

fn norm_weight(
    ex: &Executor,
    norm: Option<(&[u16], f32)>,
    k: usize,
) -> Result<Option<(CudaSlice<u16>, f32)>> {
    norm.map(|(w, eps)| {
        ensure(w.len() == k, || format!("norm weight has {} values, not {k}", w.len()))?;
        Ok((ex.upload(w, "norm weight")?, eps))
    })
    .transpose()
}

/// y = x W (`Store`), residual + x W (`AddTo`), or silu(x W_0) * (x W_1) (`SiluMul`, two
/// linears); with `norm` (weight, eps), x is RMS-normalized first.
#[allow(clippy::too_many_arguments)]
pub fn awq_gemv(
    ex: &Executor,
    x: &[f32],
    linears: &[AwqHost],
    n: usize,
    group: usize,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    norm: Option<(&[u16], f32)>,
) -> Result<Vec<f32>> {
    let k = x.len();
    let w = stacked(ex, linears, k, n, group, epilogue)?;
    let xd = ex.upload(x, "x")?;
    let mut y = output(ex, 1, n, residual)?;
    let norm_dev = norm_weight(ex, norm, k)?;
    let gemv = launch::AwqGemv::new(ex, k, n, group, epilogue, norm.is_some())?;
    gemv.launch(ex.stream(), &xd, norm_dev.as_ref().map(|(w, e)| (w, *e)), &w, &mut y)?;
    ex.download(&y)
}

/// `awq_gemv` for `rows` rows of x ([rows][k]) at once, through the prompt path: rows to scaled
/// fp16 (normalized with `norm`), then the tensor-core GEMM.
#[allow(clippy::too_many_arguments)]
pub fn awq_gemm(
    ex: &Executor,
    x: &[f32],
    rows: usize,
    linears: &[AwqHost],
    n: usize,
    group: usize,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    norm: Option<(&[u16], f32)>,
) -> Result<Vec<f32>> {
    ensure(rows > 0 && x.len().is_multiple_of(rows), || format!("{} values are not {rows} rows", x.len()))?;
    let k = x.len() / rows;
    let w = stacked(ex, linears, k, n, group, epilogue)?;
    let xd = ex.upload(x, "x")?;
    let mut y = output(ex, rows, n, residual)?;
    let norm_dev = norm_weight(ex, norm, k)?;
    let mut x16 = ex.zeros(rows * k, "x16")?;
    let mut x_scale = ex.zeros(rows, "x_scale")?;
    launch::RowsF16::new(ex, k, norm.is_some())?.launch(
        ex.stream(),
        &xd,
        norm_dev.as_ref().map(|(w, e)| (w, *e)),
        rows,
        &mut x16,
        &mut x_scale,
    )?;
    let mut split_k = ex.zeros(8 * rows * w.rows, "split-K partial sums")?;
    launch::AwqGemm::new(ex, k, n, group, epilogue)?.launch(
        ex.stream(),
        &x16,
        &x_scale,
        rows,
        &w,
        &mut y,
        &mut split_k,
    )?;
    ex.download(&y)
}

/// y = W x with W [n][k] fp16.
pub fn half_gemv(ex: &Executor, x: &[f32], w: &[u16]) -> Result<Vec<f32>> {
    let k = x.len();
    ensure(k > 0 && k.is_multiple_of(8) && w.len().is_multiple_of(k), || {
        format!("weight of {} values does not fit k {k} (k % 8 == 0)", w.len())
    })?;
    let n = w.len() / k;
    let (xd, wd) = (ex.upload(x, "x")?, ex.upload(w, "weight")?);
    let mut y = ex.zeros(n, "y")?;
    launch::HalfGemv::new(ex, k, n)?.launch(ex.stream(), &xd, &wd, &mut y)?;
    ex.download(&y)
}

fn check_heads(shape: HeadShape) -> Result<()> {
    ensure(
        [32, 64, 128, 256].contains(&shape.head_dim)
            && shape.n_kv_heads > 0
            && shape.n_heads.is_multiple_of(shape.n_kv_heads),
        || format!("unsupported head shape {shape:?}"),
    )
}

/// A KV cache on the host: values as raw bytes of `dtype` ([n_kv_heads][seq][head_dim]) and, for
/// int8, one fp16 scale per `KvDtype::q8_block` values.
pub struct KvHost<'a> {
    pub dtype: KvDtype,
    pub k: &'a [u8],
    pub v: &'a [u8],
    pub k_scale: &'a [u16],
    pub v_scale: &'a [u16],
}

/// Returns (q, k, v); k and v are read back from the cache row at `pos` (dequantized for int8).
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    ex: &Executor,
    qkv: &[f32],
    q_norm: &[u16],
    k_norm: &[u16],
    shape: HeadShape,
    pos: usize,
    rope_theta: f32,
    eps: f32,
    dtype: KvDtype,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    check_heads(shape)?;
    let (hd, nh, nkv) = (shape.head_dim, shape.n_heads, shape.n_kv_heads);
    ensure(qkv.len() == (nh + 2 * nkv) * hd && q_norm.len() == hd && k_norm.len() == hd, || {
        "qkv or norm weights do not match the head shape".into()
    })?;
    let max_seq = pos + 1;
    let (qkv_d, qn, kn) =
        (ex.upload(qkv, "qkv")?, ex.upload(q_norm, "q_norm")?, ex.upload(k_norm, "k_norm")?);
    let step = step(ex, 0, pos as i32)?;
    let mut q = ex.zeros(nh * hd, "q")?;
    let mut cache = KvLayer::new(ex, shape, max_seq, dtype)?;
    launch::QkNormRope::new(ex, shape, dtype)?.launch(
        ex.stream(),
        &qkv_d,
        &qn,
        &kn,
        &step,
        1,
        &mut q,
        &mut cache,
        max_seq,
        eps,
        rope_theta,
    )?;
    let values = |bytes: &CudaSlice<u8>, scales: &CudaSlice<u16>| -> Result<Vec<f32>> {
        let all = match dtype {
            KvDtype::Fp16 => ex
                .download(bytes)?
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
            KvDtype::Q8 => {
                let mut out = ex.zeros(bytes.len(), "dequantized")?;
                launch::KvDequant::new(ex, hd)?.launch(ex.stream(), bytes, scales, &mut out)?;
                ex.download(&out)?
            }
        };
        Ok((0..nkv)
            .flat_map(|h| all[(h * max_seq + pos) * hd..(h * max_seq + pos + 1) * hd].to_vec())
            .collect())
    };
    Ok((ex.download(&q)?, values(&cache.k, &cache.k_scale)?, values(&cache.v, &cache.v_scale)?))
}

/// A host cache on the device, and the positions it holds.
fn device_cache(ex: &Executor, kv: &KvHost, shape: HeadShape) -> Result<(KvLayer, usize)> {
    let row_bytes = shape.n_kv_heads * shape.head_dim * kv.dtype.value_bytes();
    ensure(!kv.k.is_empty() && kv.k.len().is_multiple_of(row_bytes) && kv.v.len() == kv.k.len(), || {
        "caches do not match the head shape".into()
    })?;
    let seq = kv.k.len() / row_bytes;
    let (_, scales) = KvLayer::lens(shape, seq, kv.dtype);
    ensure(kv.k_scale.len() == scales && kv.v_scale.len() == scales, || {
        format!("{} scales per cache expected, got {} and {}", scales, kv.k_scale.len(), kv.v_scale.len())
    })?;
    let mut cache = KvLayer::new(ex, shape, seq, kv.dtype)?;
    cache.k = ex.upload(kv.k, "k cache")?;
    cache.v = ex.upload(kv.v, "v cache")?;
    if scales > 0 {
        cache.k_scale = ex.upload(kv.k_scale, "k scales")?;
        cache.v_scale = ex.upload(kv.v_scale, "v scales")?;
    }
    Ok((cache, seq))
}

/// One query (the last position) over a cache of `seq` positions.
pub fn attention(ex: &Executor, q: &[f32], kv: &KvHost, shape: HeadShape) -> Result<Vec<f32>> {
    check_heads(shape)?;
    ensure(q.len() == shape.n_heads * shape.head_dim, || "q does not match the head shape".into())?;
    let (cache, seq) = device_cache(ex, kv, shape)?;
    let qd = ex.upload(q, "q")?;
    let step = step(ex, 0, seq as i32 - 1)?;
    let mut out = ex.zeros(q.len(), "out")?;
    launch::Attention::new(ex, shape, seq, kv.dtype)?.launch(ex.stream(), &qd, &cache, &step, &mut out)?;
    ex.download(&out)
}

/// Causal attention of the last `rows` positions (queries q [rows][n_heads][head_dim]) over a cache
/// holding all `seq` positions.
pub fn attention_prefill(ex: &Executor, q: &[f32], kv: &KvHost, shape: HeadShape) -> Result<Vec<f32>> {
    check_heads(shape)?;
    ensure(launch::AttentionPrefill::supports(shape), || format!("no batched attention for {shape:?}"))?;
    let row = shape.n_heads * shape.head_dim;
    ensure(!q.is_empty() && q.len().is_multiple_of(row), || "q does not match the head shape".into())?;
    let rows = q.len() / row;
    let cache = device_cache(ex, kv, shape)?;
    let seq = cache.1;
    ensure(rows <= seq, || format!("{rows} queries but {seq} cached positions"))?;
    let qd = ex.upload(q, "q")?;
    let step = step(ex, 0, (seq - rows) as i32)?;
    let mut out = ex.zeros(q.len(), "out")?;
    launch::AttentionPrefill::new(ex, shape, seq, kv.dtype)?.launch(
        ex.stream(),
        &qd,
        &cache.0,
        &step,
        rows,
        &mut out,
    )?;
    ex.download(&out)
}

/// int8 values [rows][head_dim] with fp16 scales [rows][head_dim / q8_block] back to fp32.
pub fn kv_dequant(ex: &Executor, values: &[u8], scales: &[u16], head_dim: usize) -> Result<Vec<f32>> {
    let block = KvDtype::q8_block(head_dim);
    ensure([32, 64, 128, 256].contains(&head_dim), || format!("unsupported head_dim {head_dim}"))?;
    ensure(values.len().is_multiple_of(head_dim) && scales.len() == values.len() / block, || {
        format!("{} values and {} scales do not fit head_dim {head_dim}", values.len(), scales.len())
    })?;
    let (vd, sd) = (ex.upload(values, "values")?, ex.upload(scales, "scales")?);
    let mut out = ex.zeros(values.len(), "out")?;
    launch::KvDequant::new(ex, head_dim)?.launch(ex.stream(), &vd, &sd, &mut out)?;
    ex.download(&out)
}

pub fn argmax(ex: &Executor, x: &[f32]) -> Result<u32> {
    ensure(!x.is_empty(), || "argmax of an empty array".into())?;
    let xd = ex.upload(x, "x")?;
    let mut out = ex.zeros(1, "out")?;
    launch::Argmax::new(ex, x.len())?.launch(ex.stream(), &xd, &mut out, false)?;
    Ok(ex.download(&out)?[0] as u32)
}

/// The sampling kernel on host logits: one draw per entry of `positions` (the draw's counter, as
/// a decode step's position), each starting from the presence flags of `present` (the tokens the
/// repetition penalty applies to). Returns the sampled tokens.
pub fn sample(
    ex: &Executor,
    logits: &[f32],
    opts: &crate::sampler::SamplingOptions,
    seed: u64,
    present: &[u32],
    positions: &[i32],
) -> Result<Vec<u32>> {
    let n = logits.len();
    ensure(n > 0, || "sampling from an empty array".into())?;
    opts.validate()?;
    if let Some(t) = present.iter().find(|&&t| t as usize >= n) {
        return Err(crate::Error::InvalidArgument(format!("present token {t} is outside [0, {n})")));
    }
    let bits = crate::sampler::presence_bitmap(n, present);
    let x = ex.upload(logits, "logits")?;
    let params = ex.upload(&opts.device_params(n, seed), "sampling parameters")?;
    let mut presence = ex.upload(&bits, "presence flags")?;
    let mut step = ex.zeros::<i32>(STEP_LEN, "step")?;
    let kernel = launch::Sample::new(ex, n)?;
    let mut out = Vec::with_capacity(positions.len());
    for &pos in positions {
        ex.stream().memcpy_htod(&bits, &mut presence)?;
        ex.stream().memcpy_htod(&[0, pos], &mut step)?;
        kernel.launch(ex.stream(), &x, &params, &mut presence, &mut step)?;
        let s = ex.download(&step)?;
        if s[1] != pos.wrapping_add(1) {
            return Err(crate::Error::Internal(format!("the sampler left position {} after {pos}", s[1])));
        }
        out.push(s[0] as u32);
    }
    Ok(out)
}
