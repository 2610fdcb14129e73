//! `KernelType`: every kernel, named with its shape parameters. A value generates its CUDA source
//! specialization (shape constants become #defines ahead of kernels/common.cuh and the family's
//! .cu file) and the key under which its compiled module is cached.

use std::fmt;

const COMMON: &str = include_str!("../../kernels/common.cuh");

/// Threads per block of the warp-per-row GEMVs.
pub const GEMV_WARPS: u32 = 8;
/// Threads per block of attention_partial.
pub const ATTENTION_THREADS: u32 = 128;

/// What the AWQ GEMV does with its dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// y = W x
    Store,
    /// y += W x (residual add)
    AddTo,
    /// y = silu(W_gate x) * (W_up x), the weight holding gate rows then up rows
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
    },
    HalfGemv {
        k: u32,
        n: u32,
    },
    QkNormRope {
        head_dim: u32,
        n_heads: u32,
        n_kv_heads: u32,
    },
    Attention {
        head_dim: u32,
        n_heads: u32,
        n_kv_heads: u32,
        chunk: u32,
    },
    Argmax {
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
            KernelType::Attention { .. } => &["attention_partial", "attention_combine"],
            KernelType::Argmax { .. } => &["argmax"],
        }
    }

    fn defines(&self) -> Vec<(&'static str, u32)> {
        match *self {
            KernelType::Embedding { hidden, vocab } => vec![("HIDDEN", hidden), ("VOCAB", vocab)],
            KernelType::RmsNorm { hidden } => vec![("HIDDEN", hidden)],
            KernelType::AwqRepack { k, n, group } => vec![("K", k), ("N", n), ("GROUP", group)],
            KernelType::AwqGemv { k, n, group, epilogue } => {
                vec![("K", k), ("N", n), ("GROUP", group), ("WARPS", GEMV_WARPS), ("MODE", epilogue as u32)]
            }
            KernelType::HalfGemv { k, n } => vec![("K", k), ("N", n), ("WARPS", GEMV_WARPS)],
            KernelType::QkNormRope { head_dim, n_heads, n_kv_heads } => {
                vec![("HEAD_DIM", head_dim), ("N_HEADS", n_heads), ("N_KV_HEADS", n_kv_heads)]
            }
            KernelType::Attention { head_dim, n_heads, n_kv_heads, chunk } => vec![
                ("HEAD_DIM", head_dim),
                ("N_HEADS", n_heads),
                ("N_KV_HEADS", n_kv_heads),
                ("CHUNK", chunk),
                ("THREADS", ATTENTION_THREADS),
            ],
            KernelType::Argmax { n } => vec![("N", n)],
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
        src.push_str(self.body());
        src
    }
}

/// The cache key: family and parameters, e.g. `awq_gemv-k4096-n6144-group128-store`.
impl fmt::Display for KernelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = self.entry_points()[0].trim_end_matches("_partial");
        write!(f, "{family}")?;
        for (name, value) in self.defines() {
            match name {
                "WARPS" | "THREADS" | "MODE" => {}
                _ => write!(f, "-{}{value}", name.to_lowercase())?,
            }
        }
        if let KernelType::AwqGemv { epilogue, .. } = self {
            write!(f, "-{}", format!("{epilogue:?}").to_lowercase())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_carries_shape_defines_and_key() {
        let k = KernelType::AwqGemv { k: 4096, n: 6144, group: 128, epilogue: Epilogue::AddTo };
        let src = k.source();
        assert!(src.contains("#define K 4096\n#define N 6144\n#define GROUP 128\n"));
        assert!(src.contains("#define MODE 1\n"));
        assert!(src.contains("extern \"C\" __global__ void awq_gemv"));
        assert_eq!(k.to_string(), "awq_gemv-k4096-n6144-group128-addto");
        let a = KernelType::Attention { head_dim: 128, n_heads: 32, n_kv_heads: 8, chunk: 256 };
        assert_eq!(a.to_string(), "attention-head_dim128-n_heads32-n_kv_heads8-chunk256");
    }
}
