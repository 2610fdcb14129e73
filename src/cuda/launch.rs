//! Typed launchers: one per kernel family. Each is built for one `KernelType` (its shape), checks
//! the buffers it is handed against that shape, and only then launches; the `// SAFETY:` notes
//! state what the kernel reads and writes so the checks can be judged against them.

use std::ffi::c_void;

use cudarc::driver::sys::{self, CUfunction_attribute};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig};

use crate::cuda::executor::Executor;
use crate::cuda::kernel::{attention_slot_bytes, Epilogue, GemvGeometry, KernelType, KvDtype, GEMV_WARPS};
use crate::error::{Error, Result};
use crate::kv_cache::KvLayer;
use crate::model::awq_linear::AwqLinear;

fn check(ok: bool, kernel: &KernelType, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Internal(format!("launch of {kernel}: {}", what())))
    }
}

/// Kernel arguments by value, in the kernel's parameter order; buffers pass their device address.
struct Args(Vec<u64>);

impl Args {
    fn new() -> Self {
        Args(Vec::with_capacity(12))
    }

    fn buf<T>(mut self, s: &CudaStream, b: &CudaSlice<T>) -> Self {
        self.0.push(b.device_ptr(s).0);
        self
    }

    fn buf_mut<T>(mut self, s: &CudaStream, b: &mut CudaSlice<T>) -> Self {
        self.0.push(b.device_ptr_mut(s).0);
        self
    }

    fn int(mut self, v: i32) -> Self {
        self.0.push(v as u32 as u64);
        self
    }

    fn float(mut self, v: f32) -> Self {
        self.0.push(v.to_bits() as u64);
        self
    }

    /// Launches with `cuLaunchKernelEx`; with `pdl` the launch may begin while the previous
    /// kernel on the stream is still running (programmatic dependent launch): every kernel waits
    /// (`pdl_wait` in kernels/common.cuh) before touching what earlier kernels produce.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in order and type, and every buffer must
    /// hold what the kernel reads and writes with `c`.
    unsafe fn launch(mut self, s: &CudaStream, f: &CudaFunction, c: LaunchConfig, pdl: bool) -> Result<()> {
        s.context().bind_to_thread()?;
        // Each 8-byte slot holds one argument; 4-byte arguments sit in its low (first) bytes.
        let mut params: Vec<*mut c_void> = self.0.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: c.grid_dim.0,
            gridDimY: c.grid_dim.1,
            gridDimZ: c.grid_dim.2,
            blockDimX: c.block_dim.0,
            blockDimY: c.block_dim.1,
            blockDimZ: c.block_dim.2,
            sharedMemBytes: c.shared_mem_bytes,
            hStream: s.cu_stream(),
            attrs: if pdl { &mut attr } else { std::ptr::null_mut() },
            numAttrs: pdl as u32,
        };
        sys::cuLaunchKernelEx(&config, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut())
            .result()?;
        Ok(())
    }
}

fn cfg(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// Step state on the device: [token, position]. Kernels read it so launches never change per step.
pub const STEP_LEN: usize = 2;

pub struct Embedding {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    hidden: usize,
    vocab: usize,
}

impl Embedding {
    pub fn new(ex: &Executor, hidden: usize, vocab: usize) -> Result<Self> {
        let ty = KernelType::Embedding { hidden: hidden as u32, vocab: vocab as u32 };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "embedding")?, hidden, vocab })
    }

    /// out[r] = table[tokens[r]] for r < rows (a decode step passes its step buffer and 1 row).
    pub fn launch(
        &self,
        s: &CudaStream,
        tokens: &CudaSlice<i32>,
        rows: usize,
        table: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check(
            rows >= 1
                && tokens.len() >= rows
                && table.len() == self.vocab * self.hidden
                && out.len() >= rows * self.hidden,
            &self.ty,
            || format!("{rows} rows, tokens {}, table {}, out {}", tokens.len(), table.len(), out.len()),
        )?;
        let c = cfg((self.hidden.div_ceil(256) as u32, rows as u32), 256);
        // SAFETY: reads tokens[0..rows) and one table row each (ids are clamped to [0, VOCAB) in
        // the kernel), writes out[0..rows*HIDDEN); all lengths checked above.
        unsafe { Args::new().buf(s, tokens).buf(s, table).buf_mut(s, out).launch(s, &self.f, c, self.pdl) }
    }
}

pub struct RmsNorm {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    hidden: usize,
}

impl RmsNorm {
    pub fn new(ex: &Executor, hidden: usize) -> Result<Self> {
        let ty = KernelType::RmsNorm { hidden: hidden as u32 };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "rms_norm")?, hidden })
    }

    pub fn launch(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        weight: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
        eps: f32,
    ) -> Result<()> {
        check(
            x.len() >= self.hidden && weight.len() == self.hidden && out.len() >= self.hidden,
            &self.ty,
            || format!("x {}, weight {}, out {}", x.len(), weight.len(), out.len()),
        )?;
        let threads = (self.hidden.min(1024) as u32).div_ceil(32) * 32;
        // SAFETY: reads x[0..HIDDEN) and weight[0..HIDDEN), writes out[0..HIDDEN); checked above.
        unsafe {
            Args::new().buf(s, x).buf(s, weight).buf_mut(s, out).float(eps).launch(
                s,
                &self.f,
                cfg((1, 1), threads),
                self.pdl,
            )
        }
    }
}

/// Converts one AutoAWQ linear into 16-row tiles of an `AwqLinear` (kernels/awq_repack.cu).
pub struct AwqRepack {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    k: usize,
    n: usize,
    group: usize,
}

impl AwqRepack {
    pub fn new(ex: &Executor, k: usize, n: usize, group: usize) -> Result<Self> {
        let ty = KernelType::AwqRepack { k: k as u32, n: n as u32, group: group as u32 };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "awq_repack")?, k, n, group })
    }

    /// Local tile i (rows 16i..16i+16) lands in tile `tile_offset + i * tile_stride` of `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        s: &CudaStream,
        qweight: &CudaSlice<u32>,
        qzeros: &CudaSlice<u32>,
        scales: &CudaSlice<u16>,
        out: &mut AwqLinear,
        tile_offset: usize,
        tile_stride: usize,
    ) -> Result<()> {
        let (k, n, g) = (self.k, self.n, self.group);
        let tiles = n / 16;
        check(
            n % 16 == 0
                && qweight.len() == k * n / 8
                && qzeros.len() == k / g * n / 8
                && scales.len() == k / g * n
                && out.k == k
                && out.group == g
                && tile_stride >= 1
                && tile_offset + (tiles.max(1) - 1) * tile_stride < out.rows / 16,
            &self.ty,
            || {
                format!(
                    "qweight {}, qzeros {}, scales {}, into {}x{} at tile {tile_offset} stride {tile_stride}",
                    qweight.len(),
                    qzeros.len(),
                    scales.len(),
                    out.rows,
                    out.k
                )
            },
        )?;
        let c = cfg(((k / 16 * 32).div_ceil(256) as u32, tiles as u32), 256);
        let (offset, stride) = (tile_offset as i32, tile_stride as i32);
        // SAFETY: reads the three AWQ tensors within the lengths checked above; writes tiles
        // offset + i * stride (i < N/16) of out's buffers, all inside out.rows / 16 tiles of K/8
        // words, K/GROUP * 16 scales and K/GROUP zero words each.
        unsafe {
            Args::new()
                .buf(s, qweight)
                .buf(s, qzeros)
                .buf(s, scales)
                .buf_mut(s, &mut out.weight)
                .buf_mut(s, &mut out.scales)
                .buf_mut(s, &mut out.zeros)
                .int(offset)
                .int(stride)
                .launch(s, &self.f, c, self.pdl)
        }
    }
}

/// The tensor-core W4A16 GEMV (kernels/awq_gemv.cu), optionally fusing the input RMSNorm.
pub struct AwqGemv {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    k: usize,
    n: usize,
    group: usize,
    epilogue: Epilogue,
    norm: bool,
    geometry: GemvGeometry,
}

impl AwqGemv {
    pub fn new(
        ex: &Executor,
        k: usize,
        n: usize,
        group: usize,
        epilogue: Epilogue,
        norm: bool,
    ) -> Result<Self> {
        let ty = KernelType::AwqGemv { k: k as u32, n: n as u32, group: group as u32, epilogue, norm };
        let f = ex.function(ty, "awq_gemv")?;
        // Staged x can exceed the 48 KiB available without opting in (K = 12288 needs 48 KiB).
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            GemvGeometry::shared_bytes(k) as i32,
        )?;
        let geometry = GemvGeometry::new(k, group, epilogue);
        Ok(Self { ty, pdl: ex.pdl(), f, k, n, group, epilogue, norm, geometry })
    }

    /// y = W x, y += W x, or y = silu(W_gate x) * (W_up x), by the epilogue; with `norm`
    /// (weight, eps) x is first RMS-normalized.
    pub fn launch(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        norm: Option<(&CudaSlice<u16>, f32)>,
        w: &AwqLinear,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let rows = if self.epilogue == Epilogue::SiluMul { 2 * self.n } else { self.n };
        check(
            x.len() >= self.k
                && w.k == self.k
                && w.group == self.group
                && w.rows == rows
                && y.len() >= self.n
                && norm.is_some() == self.norm
                && norm.is_none_or(|(nw, _)| nw.len() == self.k),
            &self.ty,
            || format!("x {}, weight {}x{} group {}, y {}", x.len(), w.rows, w.k, w.group, y.len()),
        )?;
        let blocks = rows / 16 / self.geometry.tiles_per_block;
        let mut c = cfg((blocks as u32, 1), 32 * self.geometry.ksplit as u32);
        c.shared_mem_bytes = GemvGeometry::shared_bytes(self.k) as u32;
        // Without NORM the kernel never reads the norm weight; any device pointer stands in.
        let (norm_weight, eps) = match norm {
            Some((nw, eps)) => (nw, eps),
            None => (&w.scales, 0.0),
        };
        // SAFETY: reads x[0..K), norm_weight[0..K) when NORM, and all rows/16 tiles of w; writes
        // (or adds to) y[0..N); lengths checked above. x and y are distinct buffers; the dynamic
        // shared memory matches the kernel's [K/16][8] uint2 staging array.
        unsafe {
            Args::new()
                .buf(s, x)
                .buf(s, norm_weight)
                .float(eps)
                .buf(s, &w.weight)
                .buf(s, &w.scales)
                .buf(s, &w.zeros)
                .buf_mut(s, y)
                .launch(s, &self.f, c, self.pdl)
        }
    }
}

pub struct HalfGemv {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    k: usize,
    n: usize,
}

impl HalfGemv {
    pub fn new(ex: &Executor, k: usize, n: usize) -> Result<Self> {
        let ty = KernelType::HalfGemv { k: k as u32, n: n as u32 };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "half_gemv")?, k, n })
    }

    pub fn launch(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        w: &CudaSlice<u16>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check(
            self.k.is_multiple_of(8) && x.len() >= self.k && w.len() == self.n * self.k && y.len() >= self.n,
            &self.ty,
            || format!("x {}, w {}, y {}", x.len(), w.len(), y.len()),
        )?;
        let c = cfg((self.n.div_ceil(GEMV_WARPS as usize) as u32, 1), 32 * GEMV_WARPS);
        // SAFETY: reads x[0..K) and w[0..N*K) in 16-byte vectors (K % 8 == 0 keeps rows aligned),
        // writes y[0..N); checked above.
        unsafe { Args::new().buf(s, x).buf(s, w).buf_mut(s, y).launch(s, &self.f, c, self.pdl) }
    }
}

/// Attention geometry shared by the RoPE/KV-append and attention launchers.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub head_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
}

impl HeadShape {
    fn qkv_len(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    /// Elements of one layer's K (or V) cache holding `max_seq` positions.
    pub fn cache_len(&self, max_seq: usize) -> usize {
        self.n_kv_heads * max_seq * self.head_dim
    }
}

pub struct QkNormRope {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    shape: HeadShape,
    kv: KvDtype,
}

impl QkNormRope {
    pub fn kernel_type(shape: HeadShape, kv: KvDtype) -> KernelType {
        KernelType::QkNormRope {
            head_dim: shape.head_dim as u32,
            n_heads: shape.n_heads as u32,
            n_kv_heads: shape.n_kv_heads as u32,
            kv,
        }
    }

    pub fn new(ex: &Executor, shape: HeadShape, kv: KvDtype) -> Result<Self> {
        let ty = Self::kernel_type(shape, kv);
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "qk_norm_rope")?, shape, kv })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        s: &CudaStream,
        qkv: &CudaSlice<f32>,
        q_norm: &CudaSlice<u16>,
        k_norm: &CudaSlice<u16>,
        step: &CudaSlice<i32>,
        rows: usize,
        q: &mut CudaSlice<f32>,
        cache: &mut KvLayer,
        max_seq: usize,
        eps: f32,
        rope_theta: f32,
    ) -> Result<()> {
        let sh = self.shape;
        check(
            rows >= 1
                && qkv.len() >= rows * sh.qkv_len()
                && q_norm.len() == sh.head_dim
                && k_norm.len() == sh.head_dim
                && step.len() >= STEP_LEN
                && q.len() >= rows * sh.n_heads * sh.head_dim
                && cache.fits(sh, max_seq, self.kv),
            &self.ty,
            || {
                format!(
                    "qkv {}, q {}, cache of {} bytes for max_seq {max_seq}",
                    qkv.len(),
                    q.len(),
                    cache.k.len()
                )
            },
        )?;
        let c = cfg(((sh.n_heads + 2 * sh.n_kv_heads) as u32, rows as u32), sh.head_dim as u32);
        let max_seq = max_seq as i32;
        // SAFETY: reads `rows` rows of qkv, the two norm weights and step[1] (a block returns when
        // its position step[1] + row is outside [0, max_seq)); writes `rows` rows of q and those
        // positions of each cache (and its scales), whose sizes match max_seq and the dtype as
        // checked above.
        unsafe {
            Args::new()
                .buf(s, qkv)
                .buf(s, q_norm)
                .buf(s, k_norm)
                .buf(s, step)
                .buf_mut(s, q)
                .buf_mut(s, &mut cache.k)
                .buf_mut(s, &mut cache.v)
                .buf_mut(s, &mut cache.k_scale)
                .buf_mut(s, &mut cache.v_scale)
                .int(max_seq)
                .float(eps)
                .float(rope_theta)
                .launch(s, &self.f, c, self.pdl)
        }
    }
}

/// Split-sequence decode attention and its scratch buffers: the splits' partial results and, per
/// KV head and head group, the count of splits done (the last one merges them; it resets the
/// count, so the buffers serve every launch and every layer in stream order).
pub struct Attention {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    shape: HeadShape,
    kv: KvDtype,
    splits: usize,
    shared_bytes: usize,
    max_seq: usize,
    part_o: CudaSlice<f32>,
    part_ml: CudaSlice<f32>,
    done: CudaSlice<u32>,
}

impl Attention {
    /// Query heads sharing a KV head that one block serves (kernels/attention.cu: the 8 "hi" rows
    /// of its mma tiles); more share a KV head in blocks of up to 8.
    const HEADS_PER_BLOCK: usize = 8;

    fn head_groups(shape: HeadShape) -> usize {
        (shape.n_heads / shape.n_kv_heads.max(1)).div_ceil(Self::HEADS_PER_BLOCK).max(1)
    }

    /// Warps per block.
    pub const WARPS: usize = 8;

    /// Splits per KV head: 1024 warps in all (128 blocks of 8 at the Qwen3-8B shape, one per SM
    /// of an H100 or H200 as each ring takes 128-133 KiB, each split 1/16 of the sequence), so a
    /// long context streams in one wave. Short contexts use only as many splits as they have
    /// rounds of one tile per warp (128 positions with the fp16 cache, 256 with int8), and one
    /// split up to DEPTH rounds (no merge); the others exit at once.
    fn splits(shape: HeadShape) -> usize {
        (1024 / Self::WARPS / (shape.n_kv_heads.max(1) * Self::head_groups(shape))).clamp(4, 256)
    }

    /// Shared memory for the warps' tile rings: two tiles per warp at the Qwen3-8B shape (a
    /// 4096-position context is requested whole). On GPUs that give a block less (99 KiB on
    /// sm_86 / sm_89) the ring is what they allow.
    const RING_BYTES: usize = 136 << 10;

    /// Tiles in flight per warp: as many slots as `ring` bytes hold, 1 to 4.
    fn depth(shape: HeadShape, kv: KvDtype, ring: usize) -> usize {
        let slot = attention_slot_bytes(shape.head_dim as u32, kv) as usize;
        (ring / (Self::WARPS * slot)).clamp(1, 4)
    }

    /// The kernel for a GPU that gives a block at least RING_BYTES of shared memory.
    pub fn kernel_type(shape: HeadShape, kv: KvDtype) -> KernelType {
        Self::kernel_type_with(shape, kv, Self::depth(shape, kv, Self::RING_BYTES))
    }

    fn kernel_type_with(shape: HeadShape, kv: KvDtype, depth: usize) -> KernelType {
        KernelType::Attention {
            head_dim: shape.head_dim as u32,
            n_heads: shape.n_heads as u32,
            n_kv_heads: shape.n_kv_heads as u32,
            splits: Self::splits(shape) as u32,
            warps: Self::WARPS as u32,
            depth: depth as u32,
            kv,
        }
    }

    /// For caches of `max_seq` positions per KV head.
    pub fn new(ex: &Executor, shape: HeadShape, max_seq: usize, kv: KvDtype) -> Result<Self> {
        // The kernel's static shared memory (the warps' softmax states) takes under 1 KiB.
        let ring = Self::RING_BYTES.min(ex.max_shared_per_block().saturating_sub(1024));
        let depth = Self::depth(shape, kv, ring);
        let ty = Self::kernel_type_with(shape, kv, depth);
        let splits = Self::splits(shape);
        let shared_bytes = Self::WARPS * depth * attention_slot_bytes(shape.head_dim as u32, kv) as usize;
        let f = ex.function(ty, "attention")?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared_bytes as i32,
        )?;
        Ok(Self {
            ty,
            pdl: ex.pdl(),
            f,
            shape,
            kv,
            splits,
            shared_bytes,
            max_seq,
            part_o: ex.zeros(shape.n_heads * splits * shape.head_dim, "attention scratch")?,
            part_ml: ex.zeros(shape.n_heads * splits * 2, "attention scratch")?,
            done: ex.zeros(shape.n_kv_heads * Self::head_groups(shape), "attention scratch")?,
        })
    }

    pub fn launch(
        &mut self,
        s: &CudaStream,
        q: &CudaSlice<f32>,
        cache: &KvLayer,
        step: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let sh = self.shape;
        let q_len = sh.n_heads * sh.head_dim;
        check(
            q.len() >= q_len
                && cache.fits(sh, self.max_seq, self.kv)
                && step.len() >= STEP_LEN
                && out.len() >= q_len,
            &self.ty,
            || format!("q {}, cache of {} bytes, out {}", q.len(), cache.k.len(), out.len()),
        )?;
        let max_seq = self.max_seq as i32;
        let scale = (sh.head_dim as f32).powf(-0.5);
        let blocks = (sh.n_kv_heads * Self::head_groups(sh)) as u32;
        let mut c = cfg((blocks, self.splits as u32), 32 * Self::WARPS as u32);
        c.shared_mem_bytes = self.shared_bytes as u32;
        // SAFETY: reads q and cache rows [0, min(step[1]+1, max_seq)) of each KV head, and their
        // scales for int8 (the caches hold max_seq rows, checked above; HEAD_DIM % 32 == 0 keeps
        // rows 16-byte aligned for its 16-byte copies; a tile's scales are copied from the 16-byte
        // boundary at or below its first row's, inside the scale array, and only bytes of rows
        // the split covers are read); shared memory as set above; writes and reads back the
        // scratch entries of the splits holding positions (sized for N_HEADS x SPLITS) and one
        // counter per block of the grid's x dimension (`done` has that many), and writes
        // out[0..N_HEADS*HEAD_DIM).
        // Before its dependency wait it reads only step and the rows of earlier positions, which
        // no kernel of the decode step writes (qk_norm_rope, the kernel before it, writes q and the
        // current position's row).
        unsafe {
            Args::new()
                .buf(s, q)
                .buf(s, &cache.k)
                .buf(s, &cache.v)
                .buf(s, &cache.k_scale)
                .buf(s, &cache.v_scale)
                .buf(s, step)
                .buf_mut(s, &mut self.part_o)
                .buf_mut(s, &mut self.part_ml)
                .buf_mut(s, &mut self.done)
                .buf_mut(s, out)
                .int(max_seq)
                .float(scale)
                .launch(s, &self.f, c, self.pdl)
        }
    }
}

pub struct Argmax {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    n: usize,
}

impl Argmax {
    pub fn new(ex: &Executor, n: usize) -> Result<Self> {
        let ty = KernelType::Argmax { n: n as u32 };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "argmax")?, n })
    }

    /// Writes the index of the largest of x[0..n) into out[0]; with `advance`, also adds one to
    /// out[1] (the step's position).
    pub fn launch(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<i32>,
        advance: bool,
    ) -> Result<()> {
        let need = if advance { 2 } else { 1 };
        check(x.len() >= self.n && out.len() >= need, &self.ty, || {
            format!("x {}, out {}", x.len(), out.len())
        })?;
        let advance = advance as i32;
        // SAFETY: reads x[0..N) (as float4: a whole allocation is 256-byte aligned), writes out[0]
        // (and out[1] when advancing); checked above.
        unsafe {
            Args::new().buf(s, x).buf_mut(s, out).int(advance).launch(s, &self.f, cfg((1, 1), 1024), self.pdl)
        }
    }
}

/// The int8 KV cache back to fp32 (kernels/kv_dequant.cu).
pub struct KvDequant {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    head_dim: usize,
}

impl KvDequant {
    pub fn new(ex: &Executor, head_dim: usize) -> Result<Self> {
        let ty = KernelType::KvDequant { head_dim: head_dim as u32 };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "kv_dequant")?, head_dim })
    }

    /// out[r][i] = values[r][i] * scales[r][i / block] for all rows of `values`.
    pub fn launch(
        &self,
        s: &CudaStream,
        values: &CudaSlice<u8>,
        scales: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let rows = values.len() / self.head_dim;
        let per_row = self.head_dim / KvDtype::q8_block(self.head_dim);
        check(
            values.len() == rows * self.head_dim
                && scales.len() >= rows * per_row
                && out.len() >= values.len(),
            &self.ty,
            || format!("values {}, scales {}, out {}", values.len(), scales.len(), out.len()),
        )?;
        let blocks = values.len().div_ceil(256).min(65535) as u32;
        // SAFETY: reads rows * HEAD_DIM values and their scales, writes as many floats; checked above.
        unsafe {
            Args::new().buf(s, values).buf(s, scales).buf_mut(s, out).int(rows as i32).launch(
                s,
                &self.f,
                cfg((blocks, 1), 256),
                self.pdl,
            )
        }
    }
}

/// Activation rows to scaled fp16 for `AwqGemm` (kernels/rows_f16.cu), optionally RMS-normalized.
pub struct RowsF16 {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    k: usize,
    norm: bool,
}

impl RowsF16 {
    pub fn new(ex: &Executor, k: usize, norm: bool) -> Result<Self> {
        let ty = KernelType::RowsF16 { k: k as u32, norm };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "rows_f16")?, k, norm })
    }

    /// out[r] = fp16(x[r] (normalized) * 2^-e_r), row_scale[r] = 2^e_r, for r < rows.
    pub fn launch(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        norm: Option<(&CudaSlice<u16>, f32)>,
        rows: usize,
        out: &mut CudaSlice<u16>,
        row_scale: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check(
            rows >= 1
                && self.k.is_multiple_of(16)
                && x.len() >= rows * self.k
                && out.len() >= rows * self.k
                && row_scale.len() >= rows
                && norm.is_some() == self.norm
                && norm.is_none_or(|(w, _)| w.len() == self.k),
            &self.ty,
            || format!("{rows} rows, x {}, out {}, row_scale {}", x.len(), out.len(), row_scale.len()),
        )?;
        // Without NORM the kernel never reads the norm weight; any device pointer stands in.
        let (args, eps) = match norm {
            Some((w, eps)) => (Args::new().buf(s, x).buf(s, w), eps),
            None => (Args::new().buf(s, x).buf(s, x), 0.0),
        };
        // SAFETY: block r reads x[r*K..(r+1)*K) (and norm_weight[0..K) with NORM), writes the same
        // range of out and row_scale[r], r < rows; lengths checked above.
        unsafe {
            args.float(eps).buf_mut(s, out).buf_mut(s, row_scale).launch(
                s,
                &self.f,
                cfg((rows as u32, 1), 256),
                self.pdl,
            )
        }
    }
}

/// transformers' logits processors and a seeded draw (kernels/sampling.cu). Its options are in
/// device memory (`params`, written before generation) so one captured launch serves every step.
pub struct Sample {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    n: usize,
}

impl Sample {
    pub fn new(ex: &Executor, n: usize) -> Result<Self> {
        let ty = KernelType::Sample { n: n as u32 };
        Ok(Self { ty, pdl: ex.pdl(), f: ex.function(ty, "sample")?, n })
    }

    /// Picks a token from logits[0..n) by `params` (`SamplingOptions::device_params`), the
    /// repetition penalty applying to the tokens flagged in `presence`; writes it into step[0],
    /// adds one to step[1] (whose value before seeds the draw) and flags the token in `presence`.
    pub fn launch(
        &self,
        s: &CudaStream,
        logits: &CudaSlice<f32>,
        params: &CudaSlice<u32>,
        presence: &mut CudaSlice<u32>,
        step: &mut CudaSlice<i32>,
    ) -> Result<()> {
        check(
            self.n <= 1024 * 1024
                && logits.len() >= self.n
                && params.len() >= crate::sampler::PARAM_WORDS
                && presence.len() >= crate::sampler::presence_words(self.n)
                && step.len() >= STEP_LEN,
            &self.ty,
            || {
                format!(
                    "logits {}, params {}, presence {}, step {}",
                    logits.len(),
                    params.len(),
                    presence.len(),
                    step.len()
                )
            },
        )?;
        // SAFETY: one block of 1024 threads (the kernel's fixed size) reads logits[0..N), the
        // PARAM_WORDS parameter words and presence words [0, N/32), reads and writes step[0..2) and
        // one presence word of the sampled token (< N); all lengths checked above. Shared memory is
        // static (41.5 KiB). The kernel reads logits as float4: a whole allocation is 256-byte aligned.
        unsafe {
            Args::new().buf(s, logits).buf(s, params).buf_mut(s, presence).buf_mut(s, step).launch(
                s,
                &self.f,
                cfg((1, 1), 1024),
                self.pdl,
            )
        }
    }
}

/// The tensor-core W4A16 GEMM of prompt processing (kernels/awq_gemm.cu).
pub struct AwqGemm {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    reduce: CudaFunction,
    k: usize,
    n: usize,
    group: usize,
    epilogue: Epilogue,
    sm_count: usize,
    shared_bytes: u32,
}

impl AwqGemm {
    /// Shared memory: pipeline stages of 25 KiB (a 128-token x 64-input fp16 tile, 8 KiB of
    /// weight fragments, a group's scales and zero points), 6 with wgmma (`sm_90a`) and 3 without
    /// (kernels/awq_gemm.cu STAGES), plus 1 KiB to align the stages to the swizzle pattern.
    fn shared_bytes(arch: &str) -> usize {
        let stages = if arch == "sm_90a" { 6 } else { 3 };
        1024 + stages * 25 * 1024
    }
    /// Weight rows and tokens of one block.
    const BLOCK: (usize, usize) = (256, 128);

    pub fn new(ex: &Executor, k: usize, n: usize, group: usize, epilogue: Epilogue) -> Result<Self> {
        let ty = KernelType::AwqGemm { k: k as u32, n: n as u32, group: group as u32, epilogue };
        let f = ex.function(ty, "awq_gemm")?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            Self::shared_bytes(ex.arch()) as i32,
        )?;
        let reduce = ex.function(ty, "awq_gemm_reduce")?;
        let shared_bytes = Self::shared_bytes(ex.arch()) as u32;
        Ok(Self {
            ty,
            pdl: ex.pdl(),
            f,
            reduce,
            k,
            n,
            group,
            epilogue,
            sm_count: ex.sm_count(),
            shared_bytes,
        })
    }

    fn weight_rows(&self) -> usize {
        if self.epilogue == Epilogue::SiluMul {
            2 * self.n
        } else {
            self.n
        }
    }

    /// K splits for `rows` tokens: doubled while the grid has fewer than two blocks per SM (one
    /// runs on an SM at a time; a second wave covers the first one's tail), each split keeps whole
    /// groups, and the partial sums fit in `scratch` floats.
    pub fn splits(&self, rows: usize, scratch: usize) -> usize {
        let blocks = self.weight_rows().div_ceil(Self::BLOCK.0) * rows.div_ceil(Self::BLOCK.1);
        let groups = self.k / self.group;
        let mut s = 1;
        while blocks * s < 2 * self.sm_count
            && s < 8
            && groups.is_multiple_of(2 * s)
            && 2 * s * rows * self.weight_rows() <= scratch
        {
            s *= 2;
        }
        s
    }

    /// y[r] = W x[r], y[r] += W x[r], or y[r] = silu(W_gate x[r]) * (W_up x[r]) by the epilogue,
    /// for the `rows` scaled fp16 rows of `x` (from `RowsF16`). `scratch` holds split-K partial
    /// sums when few rows leave the GPU underused (any length; empty disables splitting).
    #[allow(clippy::too_many_arguments)]
    pub fn launch(
        &self,
        s: &CudaStream,
        x: &CudaSlice<u16>,
        x_scale: &CudaSlice<f32>,
        rows: usize,
        w: &AwqLinear,
        y: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let w_rows = self.weight_rows();
        check(
            rows >= 1
                && x.len() >= rows * self.k
                && x_scale.len() >= rows
                && w.k == self.k
                && w.group == self.group
                && w.rows == w_rows
                && y.len() >= rows * self.n,
            &self.ty,
            || format!("{rows} rows, x {}, weight {}x{}, y {}", x.len(), w.rows, w.k, y.len()),
        )?;
        let splits = self.splits(rows, scratch.len());
        let mut c = cfg((rows.div_ceil(Self::BLOCK.1) as u32, w_rows.div_ceil(Self::BLOCK.0) as u32), 256);
        c.grid_dim.2 = splits as u32;
        c.shared_mem_bytes = self.shared_bytes;
        let n_out = rows * self.n;
        // SAFETY: reads x[0..rows*K), x_scale[0..rows) and the tiles of w below its row count
        // (tiles past the end and rows past `rows` are zero-filled, never read); with one split it
        // writes (or adds to) y[0..rows*N), with more, scratch[0..splits*rows*ROWS) (sized by
        // `splits`), which the reduce reads to write y; lengths checked above; x, y and scratch
        // are distinct buffers. Each split covers K / GROUP / splits whole groups.
        unsafe {
            Args::new()
                .buf(s, x)
                .buf(s, x_scale)
                .buf(s, &w.weight)
                .buf(s, &w.scales)
                .buf(s, &w.zeros)
                .buf_mut(s, y)
                .buf_mut(s, scratch)
                .int(rows as i32)
                .launch(s, &self.f, c, self.pdl)?;
            if splits > 1 {
                Args::new().buf(s, scratch).buf_mut(s, y).int(rows as i32).int(splits as i32).launch(
                    s,
                    &self.reduce,
                    cfg((n_out.div_ceil(256) as u32, 1), 256),
                    self.pdl,
                )?;
            }
        }
        Ok(())
    }
}

/// Causal attention of a run of prompt positions (kernels/attention_prefill.cu).
pub struct AttentionPrefill {
    ty: KernelType,
    pdl: bool,
    f: CudaFunction,
    shape: HeadShape,
    kv: KvDtype,
    max_seq: usize,
}

impl AttentionPrefill {
    pub fn kernel_type(shape: HeadShape, kv: KvDtype) -> KernelType {
        KernelType::AttentionPrefill {
            head_dim: shape.head_dim as u32,
            n_heads: shape.n_heads as u32,
            n_kv_heads: shape.n_kv_heads as u32,
            kv,
        }
    }

    /// Whether the kernel handles `shape` (its registers hold a 16 x head_dim output tile, and a
    /// block holds a warp per query head sharing a KV head).
    pub fn supports(shape: HeadShape) -> bool {
        shape.head_dim <= 128
            && shape.n_kv_heads > 0
            && shape.n_heads.is_multiple_of(shape.n_kv_heads)
            && shape.n_heads / shape.n_kv_heads <= 32
    }

    pub fn new(ex: &Executor, shape: HeadShape, max_seq: usize, kv: KvDtype) -> Result<Self> {
        let ty = Self::kernel_type(shape, kv);
        let f = ex.function(ty, "attention_prefill")?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            Self::shared_bytes(shape) as i32,
        )?;
        Ok(Self { ty, pdl: ex.pdl(), f, shape, kv, max_seq })
    }

    /// Query positions per block (kernels/attention_prefill.cu QT) and warps per block.
    fn geometry(&self) -> (usize, usize) {
        let gqa = self.shape.n_heads / self.shape.n_kv_heads;
        let qw = if gqa >= 8 { 1 } else { 8 / gqa };
        (16 * qw, gqa * qw)
    }

    /// Two buffers of a 64-position chunk of K and V as fp16 rows padded by 8 halves.
    fn shared_bytes(shape: HeadShape) -> usize {
        2 * 2 * 64 * (shape.head_dim + 8) * 2
    }

    /// out[r] = attention of q[r] (position step[1] + r) over cache positions [0, step[1] + r].
    pub fn launch(
        &self,
        s: &CudaStream,
        q: &CudaSlice<f32>,
        cache: &KvLayer,
        step: &CudaSlice<i32>,
        rows: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let sh = self.shape;
        let q_len = rows * sh.n_heads * sh.head_dim;
        check(
            Self::supports(sh)
                && rows >= 1
                && q.len() >= q_len
                && out.len() >= q_len
                && step.len() >= STEP_LEN
                && cache.fits(sh, self.max_seq, self.kv),
            &self.ty,
            || format!("{rows} rows, q {}, out {}, cache of {} bytes", q.len(), out.len(), cache.k.len()),
        )?;
        let (qt, warps) = self.geometry();
        let mut c = cfg((rows.div_ceil(qt) as u32, sh.n_kv_heads as u32), 32 * warps as u32);
        c.shared_mem_bytes = Self::shared_bytes(sh) as u32;
        let q_scale = (sh.head_dim as f32).powf(-0.5) * std::f32::consts::LOG2_E;
        // SAFETY: reads rows of q below `rows`, step[1], and cache rows below
        // min(step[1] + rows, max_seq) (the caches hold max_seq rows, checked above); writes
        // out[0..rows*N_HEADS*HEAD_DIM).
        unsafe {
            Args::new()
                .buf(s, q)
                .buf(s, &cache.k)
                .buf(s, &cache.v)
                .buf(s, &cache.k_scale)
                .buf(s, &cache.v_scale)
                .buf(s, step)
                .buf_mut(s, out)
                .int(rows as i32)
                .int(self.max_seq as i32)
                .float(q_scale)
                .launch(s, &self.f, c, self.pdl)
        }
    }
}
