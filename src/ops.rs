//! Single-kernel runs on host arrays: upload, launch one typed launcher, download. Tests compare
//! each kernel against an independent reference through these; the engine does not use them.

use crate::cuda::executor::Executor;
use crate::cuda::kernel::Epilogue;
use crate::cuda::launch::{self, HeadShape, STEP_LEN};
use crate::error::{ensure, Result};
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
    launch::Embedding::new(ex, hidden, vocab)?.launch(ex.stream(), &step, &table, &mut out)?;
    ex.download(&out)
}

pub fn rms_norm(ex: &Executor, x: &[f32], weight: &[u16], eps: f32) -> Result<Vec<f32>> {
    ensure(x.len() == weight.len(), || format!("x has {} values, weight {}", x.len(), weight.len()))?;
    let (xd, wd) = (ex.upload(x, "x")?, ex.upload(weight, "weight")?);
    let mut out = ex.zeros(x.len(), "out")?;
    launch::RmsNorm::new(ex, x.len())?.launch(ex.stream(), &xd, &wd, &mut out, eps)?;
    ex.download(&out)
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
    // The GEMV reads its weights before waiting on the previous kernel (PDL): finish the repack.
    ex.synchronize()?;
    let xd = ex.upload(x, "x")?;
    let mut y = match residual {
        Some(r) => {
            ensure(r.len() == n, || format!("residual has {} values, not {n}", r.len()))?;
            ex.upload(r, "residual")?
        }
        None => ex.zeros(n, "y")?,
    };
    let norm_dev = match norm {
        Some((wn, eps)) => {
            ensure(wn.len() == k, || format!("norm weight has {} values, not {k}", wn.len()))?;
            Some((ex.upload(wn, "norm weight")?, eps))
        }
        None => None,
    };
    let gemv = launch::AwqGemv::new(ex, k, n, group, epilogue, norm.is_some())?;
    gemv.launch(ex.stream(), &xd, norm_dev.as_ref().map(|(w, e)| (w, *e)), &w, &mut y)?;
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

/// Returns (q, k, v) with k and v read back from the fp16 cache row at `pos`.
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
    let mut kc = ex.zeros(shape.cache_len(max_seq), "k cache")?;
    let mut vc = ex.zeros(shape.cache_len(max_seq), "v cache")?;
    launch::QkNormRope::new(ex, shape)?.launch(
        ex.stream(),
        &qkv_d,
        &qn,
        &kn,
        &step,
        &mut q,
        &mut kc,
        &mut vc,
        max_seq,
        eps,
        rope_theta,
    )?;
    let row = |cache: Vec<u16>| -> Vec<f32> {
        (0..nkv)
            .flat_map(|h| cache[(h * max_seq + pos) * hd..(h * max_seq + pos + 1) * hd].to_vec())
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    };
    Ok((ex.download(&q)?, row(ex.download(&kc)?), row(ex.download(&vc)?)))
}

/// One query (the last position) over caches [n_kv_heads][seq][head_dim] fp16.
pub fn attention(
    ex: &Executor,
    q: &[f32],
    k_cache: &[u16],
    v_cache: &[u16],
    shape: HeadShape,
) -> Result<Vec<f32>> {
    check_heads(shape)?;
    let per_pos = shape.n_kv_heads * shape.head_dim;
    ensure(q.len() == shape.n_heads * shape.head_dim, || "q does not match the head shape".into())?;
    ensure(
        !k_cache.is_empty() && k_cache.len().is_multiple_of(per_pos) && v_cache.len() == k_cache.len(),
        || "caches do not match the head shape".into(),
    )?;
    let seq = k_cache.len() / per_pos;
    let (qd, kd, vd) = (ex.upload(q, "q")?, ex.upload(k_cache, "k cache")?, ex.upload(v_cache, "v cache")?);
    let step = step(ex, 0, seq as i32 - 1)?;
    let mut out = ex.zeros(q.len(), "out")?;
    launch::Attention::new(ex, shape, seq)?.launch(ex.stream(), &qd, &kd, &vd, &step, &mut out)?;
    ex.download(&out)
}

pub fn argmax(ex: &Executor, x: &[f32]) -> Result<u32> {
    ensure(!x.is_empty(), || "argmax of an empty array".into())?;
    let xd = ex.upload(x, "x")?;
    let mut out = ex.zeros(1, "out")?;
    launch::Argmax::new(ex, x.len())?.launch(ex.stream(), &xd, &mut out, false)?;
    Ok(ex.download(&out)?[0] as u32)
}
