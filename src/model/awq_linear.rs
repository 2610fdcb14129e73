//! AWQ 4-bit linears on the GPU, in the GEMV layout of kernels/awq_repack.cu. Several checkpoint
//! linears sharing an input (q|k|v, gate|up) are stacked as row ranges of one `AwqLinear` so a
//! single GEMV launch computes them all.

use cudarc::driver::CudaSlice;

use crate::cuda::executor::Executor;
use crate::cuda::launch::AwqRepack;
use crate::error::{Error, Result};
use crate::weights::Checkpoint;

/// AutoAWQ GEMM packing: output column 8c+j of a packed int32 sits in nibble AWQ_NIBBLE[j].
/// (Inverse of the pack order [0, 2, 4, 6, 1, 3, 5, 7]; mirrored in kernels/awq_repack.cu.)
pub const AWQ_NIBBLE: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The 4-bit value of output column `8c + j` in the packed word for columns 8c..8c+7.
pub fn awq_nibble(word: u32, j: usize) -> u32 {
    (word >> (4 * AWQ_NIBBLE[j])) & 15
}

/// One or more stacked AWQ linears in the tensor-core GEMV layout (kernels/awq_repack.cu): tiles
/// of 16 output rows, each holding its int4 weights as mma fragments, fp16 scales and 4-bit zero
/// points per group.
pub struct AwqLinear {
    pub weight: CudaSlice<u32>,
    pub scales: CudaSlice<u16>,
    pub zeros: CudaSlice<u64>,
    pub k: usize,
    pub rows: usize,
    pub group: usize,
}

/// One AutoAWQ linear as stored in a checkpoint: qweight [k][n/8], qzeros [k/g][n/8], scales [k/g][n].
pub struct AwqHost<'a> {
    pub qweight: &'a [u32],
    pub qzeros: &'a [u32],
    pub scales: &'a [u16],
    pub n: usize,
}

/// How the parts of a stacked linear are arranged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stacking {
    /// One after another (q | k | v).
    Concat,
    /// Tiles alternating between the parts (gate, up, gate, up, ...), as the SwiGLU epilogue reads them.
    Interleave,
}

impl AwqLinear {
    /// Device bytes of a stack of linears with `rows` outputs over `k` inputs: int4 weights, fp16
    /// scales and 4-bit zeros, nothing more.
    pub fn device_bytes(k: usize, rows: usize, group: usize) -> usize {
        rows * k / 2 + rows * (k / group) * 2 + rows / 16 * (k / group) * 8
    }

    /// An empty stack of `rows` outputs over `k` inputs; `what` names it in allocation errors.
    pub fn alloc(ex: &Executor, k: usize, rows: usize, group: usize, what: &str) -> Result<Self> {
        Ok(AwqLinear {
            weight: ex.zeros(rows * k / 8, what)?,
            scales: ex.zeros(rows * k / group, what)?,
            zeros: ex.zeros(rows / 16 * (k / group), what)?,
            k,
            rows,
            group,
        })
    }

    /// Uploads one AutoAWQ linear with `n` outputs and repacks it into tiles
    /// `tile_offset + i * tile_stride`. The uploaded copy is freed (stream-ordered) on return.
    #[allow(clippy::too_many_arguments)]
    pub fn repack(
        &mut self,
        ex: &Executor,
        qweight: &[u32],
        qzeros: &[u32],
        scales: &[u16],
        n: usize,
        tile_offset: usize,
        tile_stride: usize,
    ) -> Result<()> {
        let qweight = ex.upload(qweight, "AWQ qweight")?;
        let qzeros = ex.upload(qzeros, "AWQ qzeros")?;
        let scales = ex.upload(scales, "AWQ scales")?;
        AwqRepack::new(ex, self.k, n, self.group)?.launch(
            ex.stream(),
            &qweight,
            &qzeros,
            &scales,
            self,
            tile_offset,
            tile_stride,
        )
    }

    /// Stacks host AWQ linears, all over `k` inputs.
    pub fn from_parts(
        ex: &Executor,
        parts: &[AwqHost],
        k: usize,
        group: usize,
        stacking: Stacking,
        what: &str,
    ) -> Result<Self> {
        let rows = parts.iter().map(|p| p.n).sum();
        let mut out = Self::alloc(ex, k, rows, group, what)?;
        let mut tile = 0;
        for (i, p) in parts.iter().enumerate() {
            let (offset, stride) = match stacking {
                Stacking::Concat => (tile, 1),
                Stacking::Interleave => (i, parts.len()),
            };
            out.repack(ex, p.qweight, p.qzeros, p.scales, p.n, offset, stride)?;
            tile += p.n / 16;
        }
        Ok(out)
    }

    /// Loads the checkpoint linears `prefixes` (each `<prefix>.qweight` etc. with that many
    /// outputs), all over `k` inputs.
    pub fn load(
        ex: &Executor,
        ckpt: &Checkpoint,
        prefixes: &[(&str, usize)],
        k: usize,
        group: usize,
        stacking: Stacking,
    ) -> Result<Self> {
        let host = prefixes
            .iter()
            .map(|&(p, n)| {
                let t = |suffix: &str| format!("{p}.{suffix}");
                Ok((words(ckpt, &t("qweight"))?, words(ckpt, &t("qzeros"))?, halves(ckpt, &t("scales"))?, n))
            })
            .collect::<Result<Vec<_>>>()?;
        let parts: Vec<_> =
            host.iter().map(|(w, z, s, n)| AwqHost { qweight: w, qzeros: z, scales: s, n: *n }).collect();
        Self::from_parts(ex, &parts, k, group, stacking, prefixes.first().map_or("", |p| p.0))
    }
}

fn tensor_bytes<'a>(ckpt: &'a Checkpoint, name: &str) -> Result<&'a [u8]> {
    let entry =
        ckpt.get(name).ok_or_else(|| Error::Internal(format!("tensor {name} vanished after validation")))?;
    Ok(ckpt.bytes(entry))
}

/// A checkpoint tensor's little-endian 32-bit words (validated as I32 beforehand).
pub fn words(ckpt: &Checkpoint, name: &str) -> Result<Vec<u32>> {
    Ok(tensor_bytes(ckpt, name)?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A checkpoint tensor's raw fp16 values (validated as F16 beforehand).
pub fn halves(ckpt: &Checkpoint, name: &str) -> Result<Vec<u16>> {
    Ok(tensor_bytes(ckpt, name)?.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: columns 0..7 holding the values 0..7 pack (order [0,2,4,6,1,3,5,7]) as
    /// nibbles 0..7 = [0, 2, 4, 6, 1, 3, 5, 7], i.e. the word 0x75316420.
    #[test]
    fn nibble_order_matches_hand_computed_word() {
        let word = 0x7531_6420u32;
        let cols: Vec<u32> = (0..8).map(|j| awq_nibble(word, j)).collect();
        assert_eq!(cols, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        // Column 1 alone set to 15: pack order puts column 1 in nibble 4.
        assert_eq!(awq_nibble(0x000F_0000, 1), 15);
        assert_eq!((0..8).filter(|&j| awq_nibble(0x000F_0000, j) != 0).count(), 1);
        // Column 7 lives in the top nibble.
        assert_eq!(awq_nibble(0xA000_0000, 7), 10);
    }

    #[test]
    fn device_bytes_of_qwen3_8b_linears() {
        // q_proj: 4096 x 4096 int4 = 8 MiB of weights, then per row 32 fp16 scales and 32 4-bit zeros.
        assert_eq!(AwqLinear::device_bytes(4096, 4096, 128), 4096 * (2048 + 64 + 16));
    }
}
