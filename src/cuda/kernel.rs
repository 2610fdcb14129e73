//! `KernelType`: every kernel, named with its shape parameters. A value generates its CUDA source
//! specialization (shape constants become #defines ahead of kernels/common.cuh and the family's
//! .cu file) and the key under which its compiled module is cached.

use std::fmt;

const COMMON: &str = include_str!("../../kernels/common.cuh");
const KV_CACHE: &str = include_str!("../../kernels/kv_cache.cuh");

/// How the KV cache stores its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvDtype {
    Fp16,
    /// int8 with one fp16 scale (absmax / 127) per `q8_block` values of a head vector.
    Q8,
}

impl KvDtype {
    /// Values sharing one scale in the int8 cache: 64 (two scale bytes per 64 value bytes keeps
    /// the cache at 51.6% of fp16), or the whole head vector when it is shorter.
    pub fn q8_block(head_dim: usize) -> usize {
        head_dim.min(64)
    }

    /// Bytes per value.
    pub fn value_bytes(self) -> usize {
        match self {
            KvDtype::Fp16 => 2,
            KvDtype::Q8 => 1,
        }
    }
}

/// Threads per block of the warp-per-row fp16 GEMV.
pub const GEMV_WARPS: u32 = 8;

/// How the tensor-core AWQ GEMV splits its work (kernels/awq_gemv.cu): each block owns
/// `tiles_per_block` 16-row tiles, its `ksplit` warps split K into group-aligned slices, and
/// weights stream in chunks of `chunk` 64-input blocks per tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvGeometry {
    pub ksplit: usize,
    pub tiles_per_block: usize,
    pub chunk: usize,
}

impl GemvGeometry {
    pub fn new(k: usize, group: usize, epilogue: Epilogue) -> Self {
        let tiles_per_block = if epilogue == Epilogue::SiluMul { 2 } else { 1 };
        // Up to 8 warps, each on a whole number of groups.
        let ksplit = [8, 4, 2, 1].into_iter().find(|s| k.is_multiple_of(s * group)).unwrap_or(1);
        let blocks64 = k / ksplit / 64;
        // About 8 x 16-byte loads in flight per lane (double-buffered), fewer when a slice spans
        // many groups so the per-group registers still fit two blocks per SM.
        let budget = (if k / ksplit / group > 4 { 4 } else { 8 }) / tiles_per_block;
        let chunk = (1..=budget.max(1)).rev().find(|c| blocks64.is_multiple_of(*c)).unwrap_or(1);
        GemvGeometry { ksplit, tiles_per_block, chunk }
    }

    /// Dynamic shared memory: x staged as bf16 hi/lo B fragments, 4 bytes per input.
    pub fn shared_bytes(k: usize) -> usize {
        4 * k
    }
}

/// What the AWQ GEMV does with its dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// y = W x
    Store,
    /// y += W x (residual add)
    AddTo,
    /// y = silu(W_gate x) * (W_up x), the weight's 16-row tiles alternating gate, up
    SiluMul,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelType {
    Embedding {
        hidden: u32,
        vocab: u32,
    },
    RmsNorm {
        hidden: u32,
    },
    AwqRepack {
        k: u32,
        n: u32,
        group: u32,
    },
    /// `n` is the number of outputs (for SiluMul the weight has 2n rows).
    AwqGemv {
        k: u32,
        n: u32,
        group: u32,
        epilogue: Epilogue,
        /// Fuse the preceding RMSNorm: normalize x (times a norm weight) while staging it.
        norm: bool,
    },
    HalfGemv {
        k: u32,
        n: u32,
    },
    QkNormRope {
        head_dim: u32,
        n_heads: u32,
        n_kv_heads: u32,
        kv: KvDtype,
    },
    Attention {
        head_dim: u32,
        n_heads: u32,
        n_kv_heads: u32,
        /// Blocks per KV head (and group of up to 8 query heads) along the sequence.
        splits: u32,
        /// Warps per block.
        warps: u32,
        /// Tiles each warp keeps in flight (its ring of shared-memory slots).
        depth: u32,
        kv: KvDtype,
    },
    /// The int8 KV cache back to fp32.
    KvDequant {
        head_dim: u32,
    },
    Argmax {
        n: u32,
    },
    /// Activation rows to power-of-two-scaled fp16 for `AwqGemm`, optionally RMS-normalized.
    RowsF16 {
        k: u32,
        norm: bool,
    },
    /// The W4A16 GEMM of prompt processing (many tokens at once) over the `AwqGemv` weight layout.
    AwqGemm {
        k: u32,
        n: u32,
        group: u32,
        epilogue: Epilogue,
    },
    /// Causal attention of a run of prompt positions over the KV cache.
    AttentionPrefill {
        head_dim: u32,
        n_heads: u32,
        n_kv_heads: u32,
        kv: KvDtype,
    },
    /// transformers' logits processors and a seeded draw over `n` logits (kernels/sampling.cu).
    Sample {
        n: u32,
    },
}

impl KernelType {
    /// The family's source file.
    fn body(&self) -> &'static str {
        match self {
            KernelType::Embedding { .. } => include_str!("../../kernels/embedding.cu"),
            KernelType::RmsNorm { .. } => include_str!("../../kernels/rms_norm.cu"),
            KernelType::AwqRepack { .. } => include_str!("../../kernels/awq_repack.cu"),
            KernelType::AwqGemv { .. } => include_str!("../../kernels/awq_gemv.cu"),
            KernelType::HalfGemv { .. } => include_str!("../../kernels/half_gemv.cu"),
            KernelType::QkNormRope { .. } => include_str!("../../kernels/qk_norm_rope.cu"),
            KernelType::Attention { .. } => include_str!("../../kernels/attention.cu"),
            KernelType::Argmax { .. } => include_str!("../../kernels/argmax.cu"),
            KernelType::KvDequant { .. } => include_str!("../../kernels/kv_dequant.cu"),
            KernelType::RowsF16 { .. } => include_str!("../../kernels/rows_f16.cu"),
            KernelType::AwqGemm { .. } => include_str!("../../kernels/awq_gemm.cu"),
            KernelType::AttentionPrefill { .. } => include_str!("../../kernels/attention_prefill.cu"),
            KernelType::Sample { .. } => include_str!("../../kernels/sampling.cu"),
        }
    }

    /// The `extern "C"` functions the module exports.
    pub fn entry_points(&self) -> &'static [&'static str] {
        match self {
            KernelType::Embedding { .. } => &["embedding"],
            KernelType::RmsNorm { .. } => &["rms_norm"],
            KernelType::AwqRepack { .. } => &["awq_repack"],
            KernelType::AwqGemv { .. } => &["awq_gemv"],
            KernelType::HalfGemv { .. } => &["half_gemv"],
            KernelType::QkNormRope { .. } => &["qk_norm_rope"],
            KernelType::Attention { .. } => &["attention"],
            KernelType::Argmax { .. } => &["argmax"],
            KernelType::KvDequant { .. } => &["kv_dequant"],
            KernelType::RowsF16 { .. } => &["rows_f16"],
            KernelType::AwqGemm { .. } => &["awq_gemm", "awq_gemm_reduce"],
            KernelType::AttentionPrefill { .. } => &["attention_prefill"],
            KernelType::Sample { .. } => &["sample"],
        }
    }

    fn defines(&self) -> Vec<(&'static str, u32)> {
        match *self {
            KernelType::Embedding { hidden, vocab } => vec![("HIDDEN", hidden), ("VOCAB", vocab)],
            KernelType::RmsNorm { hidden } => vec![("HIDDEN", hidden)],
            KernelType::AwqRepack { k, n, group } => vec![("K", k), ("N", n), ("GROUP", group)],
            KernelType::AwqGemv { k, n, group, epilogue, norm } => {
                let g = GemvGeometry::new(k as usize, group as usize, epilogue);
                vec![
                    ("K", k),
                    ("N", n),
                    ("GROUP", group),
                    ("MODE", epilogue as u32),
                    ("NORM", norm as u32),
                    ("KSPLIT", g.ksplit as u32),
                    ("TPB", g.tiles_per_block as u32),
                    ("CH", g.chunk as u32),
                ]
            }
            KernelType::HalfGemv { k, n } => vec![("K", k), ("N", n), ("WARPS", GEMV_WARPS)],
            KernelType::QkNormRope { head_dim, n_heads, n_kv_heads, kv } => {
                let mut d = vec![("HEAD_DIM", head_dim), ("N_HEADS", n_heads), ("N_KV_HEADS", n_kv_heads)];
                d.extend(kv_defines(kv, head_dim));
                d
            }
            KernelType::Attention { head_dim, n_heads, n_kv_heads, splits, warps, depth, kv } => {
                let mut d = vec![
                    ("HEAD_DIM", head_dim),
                    ("N_HEADS", n_heads),
                    ("N_KV_HEADS", n_kv_heads),
                    ("SPLITS", splits),
                    ("N_WARPS", warps),
                    ("DEPTH", depth),
                    ("SLOT_BYTES", attention_slot_bytes(head_dim, kv)),
                ];
                d.extend(kv_defines(kv, head_dim));
                d
            }
            KernelType::KvDequant { head_dim } => {
                let mut d = vec![("HEAD_DIM", head_dim)];
                d.extend(kv_defines(KvDtype::Q8, head_dim));
                d
            }
            KernelType::Argmax { n } => vec![("N", n)],
            KernelType::RowsF16 { k, norm } => vec![("K", k), ("NORM", norm as u32)],
            KernelType::AwqGemm { k, n, group, epilogue } => {
                vec![("K", k), ("N", n), ("GROUP", group), ("MODE", epilogue as u32)]
            }
            KernelType::AttentionPrefill { head_dim, n_heads, n_kv_heads, kv } => {
                let mut d = vec![("HEAD_DIM", head_dim), ("N_HEADS", n_heads), ("N_KV_HEADS", n_kv_heads)];
                d.extend(kv_defines(kv, head_dim));
                d
            }
            KernelType::Sample { n } => vec![("N", n)],
        }
    }

    /// The full CUDA source of this specialization.
    pub fn source(&self) -> String {
        let mut src = format!("// qwen3-rs kernel {self}\n");
        for (name, value) in self.defines() {
            src.push_str(&format!("#define {name} {value}\n"));
        }
        src.push_str(COMMON);
        src.push('\n');
        if matches!(
            self,
            KernelType::QkNormRope { .. }
                | KernelType::Attention { .. }
                | KernelType::KvDequant { .. }
                | KernelType::AttentionPrefill { .. }
        ) {
            src.push_str(KV_CACHE);
            src.push('\n');
        }
        src.push_str(self.body());
        src
    }
}

/// Shared-memory bytes of one tile slot of decode attention (kernels/attention.cu checks its own
/// layout against this): the K and V rows of a warp's tile (16 positions, 32 with int8) and, int8,
/// the 16-byte chunks covering their scales however the tile is aligned.
pub fn attention_slot_bytes(head_dim: u32, kv: KvDtype) -> u32 {
    let positions = if kv == KvDtype::Q8 { 32 } else { 16 };
    let rows = 2 * positions * head_dim * kv.value_bytes() as u32;
    match kv {
        KvDtype::Fp16 => rows,
        KvDtype::Q8 => {
            let scale_bytes = 2 * head_dim / KvDtype::q8_block(head_dim as usize) as u32;
            rows + 2 * 16 * (positions * scale_bytes / 16 + 1)
        }
    }
}

fn kv_defines(kv: KvDtype, head_dim: u32) -> [(&'static str, u32); 2] {
    [("KV_Q8", (kv == KvDtype::Q8) as u32), ("Q8_BLOCK", KvDtype::q8_block(head_dim as usize) as u32)]
}

/// The cache key: family and parameters, e.g. `awq_gemv-k4096-n6144-group128-store`.
impl fmt::Display for KernelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = self.entry_points()[0];
        write!(f, "{family}")?;
        for (name, value) in self.defines() {
            match name {
                "WARPS" | "THREADS" | "MODE" | "NORM" | "KSPLIT" | "TPB" | "CH" | "Q8_BLOCK"
                | "SLOT_BYTES" => {}
                "KV_Q8" => write!(f, "-{}", if value == 1 { "q8" } else { "fp16" })?,
                _ => write!(f, "-{}{value}", name.to_lowercase())?,
            }
        }
        let (epilogue, norm) = match *self {
            KernelType::AwqGemv { epilogue, norm, .. } => (Some(epilogue), norm),
            KernelType::AwqGemm { epilogue, .. } => (Some(epilogue), false),
            KernelType::RowsF16 { norm, .. } => (None, norm),
            _ => (None, false),
        };
        if let Some(epilogue) = epilogue {
            write!(f, "-{}", format!("{epilogue:?}").to_lowercase())?;
        }
        if norm {
            write!(f, "-norm")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_carries_shape_defines_and_key() {
        let k = KernelType::AwqGemv { k: 4096, n: 6144, group: 128, epilogue: Epilogue::AddTo, norm: false };
        let src = k.source();
        assert!(src.contains("#define K 4096\n#define N 6144\n#define GROUP 128\n"));
        assert!(
            src.contains("#define MODE 1\n#define NORM 0\n#define KSPLIT 8\n#define TPB 1\n#define CH 8\n")
        );
        assert!(src.contains("__global__ void __launch_bounds__(KSPLIT * 32) awq_gemv("));
        assert_eq!(k.to_string(), "awq_gemv-k4096-n6144-group128-addto");
        let a = KernelType::Attention {
            head_dim: 128,
            n_heads: 32,
            n_kv_heads: 8,
            splits: 32,
            warps: 4,
            depth: 3,
            kv: KvDtype::Q8,
        };
        assert_eq!(a.to_string(), "attention-head_dim128-n_heads32-n_kv_heads8-splits32-n_warps4-depth3-q8");
        assert!(a.source().contains("#define KV_Q8 1\n#define Q8_BLOCK 64\n"));
    }

    #[test]
    fn gemv_geometry_fits_shapes() {
        let g = GemvGeometry::new(4096, 128, Epilogue::SiluMul);
        assert_eq!((g.ksplit, g.tiles_per_block, g.chunk), (8, 2, 4));
        // 12288 / 8 = 1536 inputs per warp = 12 groups: smaller chunks.
        let g = GemvGeometry::new(12288, 128, Epilogue::AddTo);
        assert_eq!((g.ksplit, g.chunk), (8, 4));
        // A tiny layer: 256 inputs in groups of 128 give 2 warps of one 64-block pair each.
        let g = GemvGeometry::new(256, 128, Epilogue::Store);
        assert_eq!((g.ksplit, g.chunk), (2, 2));
    }
}
