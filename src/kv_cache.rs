//! The KV cache: per layer, K and V as [n_kv_heads][max_seq][head_dim] values, fp16 or int8 with
//! fp16 scales (kernels/kv_cache.cuh), allocated once for `max_seq` positions.

use cudarc::driver::CudaSlice;

use crate::cuda::executor::Executor;
use crate::cuda::kernel::KvDtype;
use crate::cuda::launch::HeadShape;
use crate::error::Result;

/// One layer's cache. Values are raw bytes in the dtype's storage; `*_scale` are empty for fp16.
pub struct KvLayer {
    pub k: CudaSlice<u8>,
    pub v: CudaSlice<u8>,
    pub k_scale: CudaSlice<u16>,
    pub v_scale: CudaSlice<u16>,
}

impl KvLayer {
    pub fn new(ex: &Executor, shape: HeadShape, max_seq: usize, dtype: KvDtype) -> Result<Self> {
        let (values, scales) = Self::lens(shape, max_seq, dtype);
        Ok(KvLayer {
            k: ex.zeros(values, "KV cache")?,
            v: ex.zeros(values, "KV cache")?,
            k_scale: ex.zeros(scales, "KV cache scales")?,
            v_scale: ex.zeros(scales, "KV cache scales")?,
        })
    }

    /// (value bytes, scale count) of one of K or V.
    pub fn lens(shape: HeadShape, max_seq: usize, dtype: KvDtype) -> (usize, usize) {
        let values = shape.cache_len(max_seq);
        let scales = match dtype {
            KvDtype::Fp16 => 0,
            KvDtype::Q8 => values / KvDtype::q8_block(shape.head_dim),
        };
        (values * dtype.value_bytes(), scales)
    }

    /// Whether the buffers fit `shape`, `max_seq` and `dtype` (checked by every launcher).
    pub fn fits(&self, shape: HeadShape, max_seq: usize, dtype: KvDtype) -> bool {
        let (values, scales) = Self::lens(shape, max_seq, dtype);
        self.k.len() == values
            && self.v.len() == values
            && self.k_scale.len() >= scales
            && self.v_scale.len() >= scales
    }
}

pub struct KvCache {
    pub layers: Vec<KvLayer>,
    pub max_seq: usize,
    pub dtype: KvDtype,
}

impl KvCache {
    /// Bytes per cached position over all layers, scales included.
    pub fn bytes_per_token(shape: HeadShape, n_layers: usize, dtype: KvDtype) -> usize {
        let (values, scales) = KvLayer::lens(shape, 1, dtype);
        2 * n_layers * (values + 2 * scales)
    }

    pub fn new(
        ex: &Executor,
        shape: HeadShape,
        n_layers: usize,
        max_seq: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        let layers = (0..n_layers).map(|_| KvLayer::new(ex, shape, max_seq, dtype)).collect::<Result<_>>()?;
        Ok(KvCache { layers, max_seq, dtype })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_8b_bytes_per_token() {
        let shape = HeadShape { head_dim: 128, n_heads: 32, n_kv_heads: 8 };
        let fp16 = KvCache::bytes_per_token(shape, 36, KvDtype::Fp16);
        assert_eq!(fp16, 147_456);
        let q8 = KvCache::bytes_per_token(shape, 36, KvDtype::Q8);
        // 128 int8 values and 2 fp16 scales per head vector: 132 / 256 of fp16.
        assert_eq!(q8, 147_456 * 132 / 256);
        assert!((q8 as f64) <= 0.53 * fp16 as f64);
    }
}
