//! The KV cache: per layer, K and V as fp16 [n_kv_heads][max_seq][head_dim], allocated once.

use cudarc::driver::CudaSlice;

use crate::cuda::executor::Executor;
use crate::cuda::launch::HeadShape;
use crate::error::Result;

pub struct KvCache {
    pub layers: Vec<(CudaSlice<u16>, CudaSlice<u16>)>,
    pub max_seq: usize,
}

impl KvCache {
    pub fn bytes_per_token(shape: HeadShape, n_layers: usize) -> usize {
        2 * n_layers * shape.n_kv_heads * shape.head_dim * 2
    }

    pub fn new(ex: &Executor, shape: HeadShape, n_layers: usize, max_seq: usize) -> Result<Self> {
        let len = shape.cache_len(max_seq);
        let layers = (0..n_layers)
            .map(|_| Ok((ex.zeros(len, "KV cache")?, ex.zeros(len, "KV cache")?)))
            .collect::<Result<_>>()?;
        Ok(KvCache { layers, max_seq })
    }
}
