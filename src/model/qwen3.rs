//! The Qwen3 decoder, placed on one or more devices. Each `Segment` is a run of consecutive layers
//! on one device with its own KV cache, activation buffers and kernels (compiled for that device);
//! the first segment also embeds the token, the last also computes the logits and samples. The
//! hidden state crosses a device boundary by a peer copy ordered after the sending segment's work
//! (an event wait, never a device-wide synchronize). A step reads its token and position from
//! device memory (`step`), so each segment's launch sequence is identical every step and replays
//! from a CUDA graph.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaGraph, CudaSlice};

use crate::config::Qwen3Config;
use crate::cuda::executor::Executor;
use crate::cuda::kernel::{Epilogue, KernelType, KvDtype};
use crate::cuda::launch::{
    Argmax, Attention, AttentionPrefill, AwqGemm, AwqGemv, Embedding, HalfGemv, HeadShape, KvDequant,
    QkNormRope, RmsNorm, RowsF16, Sample, STEP_LEN,
};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::awq_linear::{halves, AwqLinear, Stacking};
use crate::placement::{ModelBytes, Placement};
use crate::sampler::{presence_words, Sampler, PARAM_WORDS};
use crate::weights::{awq_linears, Checkpoint};

struct Layer {
    input_layernorm: CudaSlice<u16>,
    post_attention_layernorm: CudaSlice<u16>,
    q_norm: CudaSlice<u16>,
    k_norm: CudaSlice<u16>,
    /// q_proj | k_proj | v_proj stacked.
    qkv_proj: AwqLinear,
    o_proj: AwqLinear,
    /// gate_proj | up_proj stacked.
    gate_up_proj: AwqLinear,
    down_proj: AwqLinear,
}

/// The kernels of a step, specialized for this model's shapes and the segment's device.
struct Kernels {
    embedding: Embedding,
    rms_norm: RmsNorm,
    qkv_proj: AwqGemv,
    qk_norm_rope: QkNormRope,
    attention: Attention,
    o_proj: AwqGemv,
    gate_up_proj: AwqGemv,
    down_proj: AwqGemv,
    lm_head: HalfGemv,
    argmax: Argmax,
    sample: Sample,
}

/// Activations, all fp32 so values beyond the fp16 range survive.
struct Buffers {
    /// [token, position]
    step: CudaSlice<i32>,
    /// The residual stream.
    hidden: CudaSlice<f32>,
    normed: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    q: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    mlp_act: CudaSlice<f32>,
    logits: CudaSlice<f32>,
}

/// The kernels of prompt processing: many positions per launch.
struct PrefillKernels {
    input_rows: RowsF16,
    attn_rows: RowsF16,
    mlp_rows: RowsF16,
    qkv_proj: AwqGemm,
    attention: AttentionPrefill,
    o_proj: AwqGemm,
    gate_up_proj: AwqGemm,
    down_proj: AwqGemm,
}

/// Activations of one prompt chunk (`chunk` rows each), fp32 but for the GEMMs' fp16 inputs.
struct PrefillBuffers {
    tokens: CudaSlice<i32>,
    hidden: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    q: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    mlp_act: CudaSlice<f32>,
    /// A GEMM's input rows as scaled fp16, and each row's scale.
    x16: CudaSlice<u16>,
    x_scale: CudaSlice<f32>,
    /// Partial sums of GEMMs split along K (short chunks).
    split_k: CudaSlice<f32>,
}

struct Prefill {
    k: PrefillKernels,
    b: PrefillBuffers,
}

/// Which logits a prompt pass computes.
pub enum PromptLogits<'a> {
    /// Those of the last position, left on the device for sampling.
    Last,
    /// Every position's, appended to the vector (row-major [positions][vocab]).
    All(&'a mut Vec<f32>),
}

/// The final norm and the lm_head (None when tied to embeddings on the same device), and the
/// sampler's state: its parameters and the presence flags of the repetition penalty.
struct Head {
    norm: CudaSlice<u16>,
    lm_head: Option<CudaSlice<u16>>,
    sample_params: CudaSlice<u32>,
    presence: CudaSlice<u32>,
}

/// How a model is set up.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Positions the KV cache holds.
    pub max_seq: usize,
    /// Replay each decode step from CUDA graphs.
    pub cuda_graphs: bool,
    pub kv_dtype: KvDtype,
    /// Prompt positions per batched pass (bounds the prefill activations); 0 processes prompts
    /// token by token.
    pub prefill_chunk: usize,
}

/// A captured launch sequence.
struct Graph(CudaGraph);

// SAFETY: CUDA graphs may be used from any thread as long as calls on one graph are serialized;
// a graph is only touched through `&mut Qwen3Model`, which guarantees that.
unsafe impl Send for Graph {}

struct Segment {
    ex: Arc<Executor>,
    first_layer: usize,
    layers: Vec<Layer>,
    kv: KvCache,
    k: Kernels,
    b: Buffers,
    /// On the first segment.
    embed_tokens: Option<CudaSlice<u16>>,
    /// On the last segment.
    head: Option<Head>,
    /// Batched prompt processing; None where the shapes need the token-by-token path.
    prefill: Option<Prefill>,
    /// The decode step of this segment, captured on first use; on the last segment one per
    /// `Sampler` (indexed by it).
    graphs: [Option<Graph>; 2],
    /// Recorded after this segment's work when another device reads its output.
    ready: CudaEvent,
}

pub struct Qwen3Model {
    pub config: Qwen3Config,
    segments: Vec<Segment>,
    placement: Placement,
    max_seq: usize,
    kv_dtype: KvDtype,
    use_graph: bool,
    prefill_chunk: usize,
}

impl Qwen3Model {
    /// Device bytes by part (weights, KV cache, activations), for placement and the up-front check
    /// against free memory.
    pub fn bytes(c: &Qwen3Config, opts: &ModelOptions, multi_device: bool) -> ModelBytes {
        let (h, g) = (c.hidden_size, c.quantization.group_size);
        let table = c.vocab_size * h * 2;
        let weights = AwqLinear::device_bytes(h, c.q_dim() + 2 * c.kv_dim(), g)
            + AwqLinear::device_bytes(c.q_dim(), h, g)
            + AwqLinear::device_bytes(h, 2 * c.intermediate_size, g)
            + AwqLinear::device_bytes(c.intermediate_size, h, g);
        let kv = KvCache::bytes_per_token(head_shape(c), 1, opts.kv_dtype) * opts.max_seq;
        // A tied lm_head shares the embeddings only when both sit on one device.
        let head = if c.tie_word_embeddings && !multi_device { 0 } else { table };
        // Activations, logits and attention scratch: generously, per device.
        let scratch = c.vocab_size * 4 + (64 << 20) + Self::prefill_bytes(c, opts.prefill_chunk);
        ModelBytes {
            layer: weights + kv,
            n_layers: c.num_hidden_layers,
            embed: table + scratch,
            head: head + scratch,
        }
    }

    /// Device bytes of one segment's prompt-chunk activations.
    fn prefill_bytes(c: &Qwen3Config, chunk: usize) -> usize {
        let (h, i, q) = (c.hidden_size, c.intermediate_size, c.q_dim());
        let widest = h.max(i).max(q);
        chunk * (4 + 4 * (h + q + 2 * c.kv_dim() + 2 * q + i) + 2 * widest + 4) + 4 * split_k_len(c, chunk)
    }

    /// Uploads a validated checkpoint onto the devices of `placement` (`executors[i]` runs device
    /// `devices[i]`). `progress(layers loaded, layers)` is called after each layer; an error from it
    /// ends the load.
    pub fn load(
        executors: &[Arc<Executor>],
        devices: &[usize],
        placement: Placement,
        config: Qwen3Config,
        ckpt: &Checkpoint,
        opts: &ModelOptions,
        progress: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Self> {
        let c = &config;
        let plan = placement.segments();
        let mut segments = Vec::with_capacity(plan.len());
        for (i, &(device, first_layer, count)) in plan.iter().enumerate() {
            let ex = devices
                .iter()
                .position(|&d| d == device)
                .map(|j| executors[j].clone())
                .ok_or_else(|| Error::Internal(format!("no executor for device {device}")))?;
            let f16 = |name: &str| -> Result<CudaSlice<u16>> { ex.upload(&halves(ckpt, name)?, name) };
            let mut layers = Vec::with_capacity(count);
            for l in first_layer..first_layer + count {
                layers.push(load_layer(&ex, c, ckpt, l)?);
                progress(l + 1, c.num_hidden_layers)?;
            }
            let embed_tokens = if i == 0 { Some(f16("model.embed_tokens.weight")?) } else { None };
            let head = if i + 1 == plan.len() {
                let lm_head = match (c.tie_word_embeddings, i) {
                    (true, 0) => None, // shares this segment's embeddings
                    (true, _) => Some(f16("model.embed_tokens.weight")?),
                    (false, _) => Some(f16("lm_head.weight")?),
                };
                Some(Head {
                    norm: f16("model.norm.weight")?,
                    lm_head,
                    sample_params: ex.zeros(PARAM_WORDS, "sampling parameters")?,
                    presence: ex.zeros(presence_words(c.vocab_size), "sampling presence flags")?,
                })
            } else {
                None
            };
            let ready = ex.event()?;
            let prefill = if opts.prefill_chunk > 0 && AttentionPrefill::supports(head_shape(c)) {
                Some(Prefill { k: PrefillKernels::new(&ex, c, opts)?, b: PrefillBuffers::new(&ex, c, opts)? })
            } else {
                None
            };
            segments.push(Segment {
                k: Kernels::new(&ex, c, opts)?,
                b: Buffers::new(&ex, c)?,
                prefill,
                kv: KvCache::new(&ex, head_shape(c), count, opts.max_seq, opts.kv_dtype)?,
                ex,
                first_layer,
                layers,
                embed_tokens,
                head,
                graphs: [None, None],
                ready,
            });
        }
        for ex in executors {
            ex.synchronize()?;
        }
        Ok(Qwen3Model {
            config,
            segments,
            placement,
            max_seq: opts.max_seq,
            kv_dtype: opts.kv_dtype,
            use_graph: opts.cuda_graphs,
            prefill_chunk: opts.prefill_chunk,
        })
    }

    pub fn max_seq(&self) -> usize {
        self.max_seq
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// (device, bytes) for each device in use, from the same counts the placement used.
    pub fn placement_bytes(&self) -> Vec<(usize, usize)> {
        let mut devices: Vec<usize> = self.placement.layer_devices.clone();
        devices.dedup();
        devices.sort_unstable();
        devices.dedup();
        let opts = ModelOptions {
            max_seq: self.max_seq,
            cuda_graphs: self.use_graph,
            kv_dtype: self.kv_dtype,
            prefill_chunk: self.prefill_chunk,
        };
        let bytes = Self::bytes(&self.config, &opts, devices.len() > 1);
        devices.iter().copied().zip(self.placement.bytes(&devices, &bytes)).collect()
    }

    /// KV-cache bytes per position (all layers, scales included) and allocated in all.
    pub fn kv_bytes(&self) -> (usize, usize) {
        let per_token =
            KvCache::bytes_per_token(head_shape(&self.config), self.config.num_hidden_layers, self.kv_dtype);
        (per_token, per_token * self.max_seq)
    }

    /// One layer's cached K and V for positions [0, len), dequantized to fp32, each
    /// [n_kv_heads][len][head_dim] (int8 caches go through the kv_dequant kernel).
    pub fn kv_cache(&self, layer: usize, len: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = &self.config;
        let seg = self
            .segments
            .iter()
            .find(|s| (s.first_layer..s.first_layer + s.layers.len()).contains(&layer))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "layer {layer} does not exist ({} layers)",
                    c.num_hidden_layers
                ))
            })?;
        if len > self.max_seq {
            return Err(Error::InvalidArgument(format!(
                "{len} positions exceed max_seq_len ({})",
                self.max_seq
            )));
        }
        let cache = &seg.kv.layers[layer - seg.first_layer];
        let (ex, hd) = (&seg.ex, c.head_dim);
        let full = |values: &CudaSlice<u8>, scales: &CudaSlice<u16>| -> Result<Vec<f32>> {
            match self.kv_dtype {
                KvDtype::Fp16 => Ok(ex
                    .download(values)?
                    .chunks_exact(2)
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                    .collect()),
                KvDtype::Q8 => {
                    let mut out = ex.zeros::<f32>(values.len(), "dequantized KV cache")?;
                    KvDequant::new(ex, hd)?.launch(ex.stream(), values, scales, &mut out)?;
                    ex.download(&out)
                }
            }
        };
        let rows = |all: Vec<f32>| -> Vec<f32> {
            (0..c.num_key_value_heads)
                .flat_map(|h| all[h * self.max_seq * hd..(h * self.max_seq + len) * hd].to_vec())
                .collect()
        };
        Ok((rows(full(&cache.k, &cache.k_scale)?), rows(full(&cache.v, &cache.v_scale)?)))
    }

    /// Runs one position: embeds `token`, appends its K/V at `pos`, and (when `want_logits`)
    /// computes the logits. Asynchronous: nothing is read back.
    pub fn step(&mut self, token: u32, pos: usize, want_logits: bool) -> Result<()> {
        if token as usize >= self.config.vocab_size || pos >= self.max_seq {
            return Err(Error::Internal(format!("step({token}, {pos}) escaped validation")));
        }
        for seg in &mut self.segments {
            seg.ex.stream().memcpy_htod(&[token as i32, pos as i32], &mut seg.b.step)?;
        }
        for i in 0..self.segments.len() {
            pass_hidden(&mut self.segments, i)?;
            self.segments[i].forward(&self.config, want_logits, None)?;
        }
        Ok(())
    }

    /// Runs the prompt `ids` at positions `pos0..`, appending their K/V, in batched chunks (or token
    /// by token where the model has no batched path), and computes the logits `which` asks for.
    /// Afterwards the step holds the last token and position, as after `step`, ready for sampling.
    pub fn prompt(&mut self, ids: &[u32], pos0: usize, which: PromptLogits) -> Result<()> {
        let (vocab, h) = (self.config.vocab_size, self.config.hidden_size);
        if ids.is_empty() || pos0 + ids.len() > self.max_seq || ids.iter().any(|&t| t as usize >= vocab) {
            return Err(Error::Internal(format!("prompt of {} at {pos0} escaped validation", ids.len())));
        }
        let last = self.last();
        let mut all = match which {
            PromptLogits::All(v) => Some(v),
            PromptLogits::Last => None,
        };
        if self.segments.iter().any(|s| s.prefill.is_none()) {
            for (i, &t) in ids.iter().enumerate() {
                self.step(t, pos0 + i, all.is_some() || i + 1 == ids.len())?;
                if let Some(v) = all.as_deref_mut() {
                    v.extend(self.logits()?);
                }
            }
            return Ok(());
        }
        for (c, chunk) in ids.chunks(self.prefill_chunk).enumerate() {
            let start = pos0 + c * self.prefill_chunk;
            let tokens: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
            for (i, seg) in self.segments.iter_mut().enumerate() {
                seg.ex.stream().memcpy_htod(&[0, start as i32], &mut seg.b.step)?;
                if i == 0 {
                    if let Some(p) = seg.prefill.as_mut() {
                        seg.ex.stream().memcpy_htod(&tokens, &mut p.b.tokens)?;
                    }
                }
            }
            for i in 0..self.segments.len() {
                pass_prompt_hidden(&mut self.segments, i)?;
                self.segments[i].prefill_chunk(&self.config, chunk.len())?;
            }
            // The head runs one row at a time through the decode buffers.
            let n = chunk.len();
            let rows = match (&all, start + n == pos0 + ids.len()) {
                (Some(_), _) => 0..n,
                (None, true) => n - 1..n,
                (None, false) => 0..0,
            };
            for r in rows {
                let seg = &mut self.segments[last];
                if let Some(p) = seg.prefill.as_ref() {
                    let row = p.b.hidden.slice(r * h..(r + 1) * h);
                    seg.ex.stream().memcpy_dtod(&row, &mut seg.b.hidden)?;
                }
                seg.head(&self.config, None)?;
                if let Some(v) = all.as_deref_mut() {
                    v.extend(self.logits()?);
                }
            }
        }
        let (t, p) = (ids[ids.len() - 1] as i32, (pos0 + ids.len() - 1) as i32);
        for seg in &mut self.segments {
            seg.ex.stream().memcpy_htod(&[t, p], &mut seg.b.step)?;
        }
        Ok(())
    }

    /// Greedy sampling on the device: the step's token becomes the argmax of the last logits and
    /// its position advances by one, ready for `decode_greedy`.
    pub fn sample_greedy(&mut self) -> Result<()> {
        self.sample(Sampler::Greedy)
    }

    /// Sampling on the device from the last logits: the step's token becomes the chosen one and
    /// its position advances by one, ready for `decode`. `Sampler::Sampling` follows the
    /// parameters of `set_sampling`.
    pub fn sample(&mut self, sampler: Sampler) -> Result<()> {
        let last = self.last();
        let seg = &mut self.segments[last];
        let (Some(head), k, b) = (&mut seg.head, &seg.k, &mut seg.b) else {
            return Err(Error::Internal("the last segment has no head".into()));
        };
        let s = seg.ex.stream();
        match sampler {
            Sampler::Greedy => k.argmax.launch(s, &b.logits, &mut b.step, true)?,
            Sampler::Sampling => {
                k.sample.launch(s, &b.logits, &head.sample_params, &mut head.presence, &mut b.step)?
            }
        }
        self.share_step()
    }

    /// Sets what `Sampler::Sampling` does: the parameter block (`SamplingOptions::device_params`)
    /// and the presence flags of the repetition penalty (`sampler::presence_bitmap`).
    pub fn set_sampling(&mut self, params: &[u32; PARAM_WORDS], presence: &[u32]) -> Result<()> {
        let last = self.last();
        let seg = &mut self.segments[last];
        let Some(head) = &mut seg.head else {
            return Err(Error::Internal("the last segment has no head".into()));
        };
        if presence.len() != head.presence.len() {
            return Err(Error::Internal(format!(
                "presence flags of {} words for a buffer of {}",
                presence.len(),
                head.presence.len()
            )));
        }
        let s = seg.ex.stream();
        s.memcpy_htod(&params[..], &mut head.sample_params)?;
        s.memcpy_htod(presence, &mut head.presence)?;
        Ok(())
    }

    /// One greedy decode step entirely on the devices (forward of the step's token, argmax,
    /// position advance), each segment replayed from its CUDA graph.
    pub fn decode_greedy(&mut self) -> Result<()> {
        self.decode(Sampler::Greedy)
    }

    /// One decode step entirely on the devices (forward of the step's token, `sampler`, position
    /// advance), each segment replayed from its CUDA graph.
    pub fn decode(&mut self, sampler: Sampler) -> Result<()> {
        for i in 0..self.segments.len() {
            pass_hidden(&mut self.segments, i)?;
            let seg = &mut self.segments[i];
            if self.use_graph {
                seg.replay(&self.config, sampler)?;
            } else {
                seg.forward(&self.config, true, Some(sampler))?;
            }
        }
        self.share_step()
    }

    /// The step's current token (waits for the device; a 4-byte read).
    pub fn current_token(&self) -> Result<u32> {
        let seg = &self.segments[self.last()];
        Ok(seg.ex.download(&seg.b.step)?[0].max(0) as u32)
    }

    /// The last step's logits, copied to the host.
    pub fn logits(&self) -> Result<Vec<f32>> {
        let seg = &self.segments[self.last()];
        seg.ex.download(&seg.b.logits)
    }

    fn last(&self) -> usize {
        self.segments.len() - 1
    }

    /// Copies the last segment's step (sampled token, advanced position) to the others.
    fn share_step(&mut self) -> Result<()> {
        let last = self.last();
        let (others, tail) = self.segments.split_at_mut(last);
        let src = &tail[0];
        for seg in others {
            seg.ex.copy_from(&mut seg.b.step, &src.ex, &src.b.step, &src.ready)?;
        }
        Ok(())
    }
}

/// Copies segment i-1's prompt-chunk hidden states into segment i, like `pass_hidden`.
fn pass_prompt_hidden(segments: &mut [Segment], i: usize) -> Result<()> {
    if i == 0 {
        return Ok(());
    }
    let (before, after) = segments.split_at_mut(i);
    let (src, dst) = (&before[i - 1], &mut after[0]);
    match (&src.prefill, &mut dst.prefill) {
        (Some(s), Some(d)) => dst.ex.copy_from(&mut d.b.hidden, &src.ex, &s.b.hidden, &src.ready),
        _ => Err(Error::Internal("a segment without batched prefill".into())),
    }
}

/// Copies segment i-1's hidden state into segment i, on i's stream after i-1's work (a peer copy
/// across devices, ordered by an event).
fn pass_hidden(segments: &mut [Segment], i: usize) -> Result<()> {
    if i == 0 {
        return Ok(());
    }
    let (before, after) = segments.split_at_mut(i);
    let (src, dst) = (&before[i - 1], &mut after[0]);
    dst.ex.copy_from(&mut dst.b.hidden, &src.ex, &src.b.hidden, &src.ready)
}

impl Segment {
    /// This segment's launches: embedding on the first, its layers, then on the last the final
    /// norm and lm_head (`want_logits`) and the sampler (`sample`).
    fn forward(&mut self, c: &Qwen3Config, want_logits: bool, sample: Option<Sampler>) -> Result<()> {
        let s = self.ex.stream().clone();
        let (eps, theta) = (c.rms_norm_eps as f32, c.rope_theta as f32);
        let (k, b) = (&mut self.k, &mut self.b);
        if let Some(table) = &self.embed_tokens {
            k.embedding.launch(&s, &b.step, 1, table, &mut b.hidden)?;
        }
        for (layer, cache) in self.layers.iter().zip(self.kv.layers.iter_mut()) {
            k.qkv_proj.launch(
                &s,
                &b.hidden,
                Some((&layer.input_layernorm, eps)),
                &layer.qkv_proj,
                &mut b.qkv,
            )?;
            k.qk_norm_rope.launch(
                &s,
                &b.qkv,
                &layer.q_norm,
                &layer.k_norm,
                &b.step,
                1,
                &mut b.q,
                cache,
                self.kv.max_seq,
                eps,
                theta,
            )?;
            k.attention.launch(&s, &b.q, cache, &b.step, &mut b.attn)?;
            k.o_proj.launch(&s, &b.attn, None, &layer.o_proj, &mut b.hidden)?;
            let post_norm = Some((&layer.post_attention_layernorm, eps));
            k.gate_up_proj.launch(&s, &b.hidden, post_norm, &layer.gate_up_proj, &mut b.mlp_act)?;
            k.down_proj.launch(&s, &b.mlp_act, None, &layer.down_proj, &mut b.hidden)?;
        }
        if want_logits {
            self.head(c, sample)?;
        }
        Ok(())
    }

    /// On the last segment: final norm and lm_head of `hidden` into `logits`, then the sampler
    /// (`sample`); nothing on other segments.
    fn head(&mut self, c: &Qwen3Config, sample: Option<Sampler>) -> Result<()> {
        let Some(head) = &mut self.head else {
            return Ok(());
        };
        let s = self.ex.stream().clone();
        let (k, b) = (&self.k, &mut self.b);
        let lm_head = head
            .lm_head
            .as_ref()
            .or(self.embed_tokens.as_ref())
            .ok_or_else(|| Error::Internal("no lm_head on the last segment".into()))?;
        k.rms_norm.launch(&s, &b.hidden, &head.norm, &mut b.normed, c.rms_norm_eps as f32)?;
        k.lm_head.launch(&s, &b.normed, lm_head, &mut b.logits)?;
        match sample {
            None => {}
            Some(Sampler::Greedy) => k.argmax.launch(&s, &b.logits, &mut b.step, true)?,
            Some(Sampler::Sampling) => {
                k.sample.launch(&s, &b.logits, &head.sample_params, &mut head.presence, &mut b.step)?
            }
        }
        Ok(())
    }

    /// One prompt chunk of `rows` positions through this segment (batched kernels): embedding on
    /// the first segment, then its layers; the positions start at the step's.
    fn prefill_chunk(&mut self, c: &Qwen3Config, rows: usize) -> Result<()> {
        let s = self.ex.stream().clone();
        let (eps, theta) = (c.rms_norm_eps as f32, c.rope_theta as f32);
        let Some(Prefill { k: pk, b: pb }) = self.prefill.as_mut() else {
            return Err(Error::Internal("no batched prefill on this segment".into()));
        };
        let (k, step) = (&self.k, &self.b.step);
        if let Some(table) = &self.embed_tokens {
            k.embedding.launch(&s, &pb.tokens, rows, table, &mut pb.hidden)?;
        }
        for (layer, cache) in self.layers.iter().zip(self.kv.layers.iter_mut()) {
            let input_norm = Some((&layer.input_layernorm, eps));
            pk.input_rows.launch(&s, &pb.hidden, input_norm, rows, &mut pb.x16, &mut pb.x_scale)?;
            pk.qkv_proj.launch(
                &s,
                &pb.x16,
                &pb.x_scale,
                rows,
                &layer.qkv_proj,
                &mut pb.qkv,
                &mut pb.split_k,
            )?;
            k.qk_norm_rope.launch(
                &s,
                &pb.qkv,
                &layer.q_norm,
                &layer.k_norm,
                step,
                rows,
                &mut pb.q,
                cache,
                self.kv.max_seq,
                eps,
                theta,
            )?;
            pk.attention.launch(&s, &pb.q, cache, step, rows, &mut pb.attn)?;
            pk.attn_rows.launch(&s, &pb.attn, None, rows, &mut pb.x16, &mut pb.x_scale)?;
            pk.o_proj.launch(
                &s,
                &pb.x16,
                &pb.x_scale,
                rows,
                &layer.o_proj,
                &mut pb.hidden,
                &mut pb.split_k,
            )?;
            let post_norm = Some((&layer.post_attention_layernorm, eps));
            pk.input_rows.launch(&s, &pb.hidden, post_norm, rows, &mut pb.x16, &mut pb.x_scale)?;
            pk.gate_up_proj.launch(
                &s,
                &pb.x16,
                &pb.x_scale,
                rows,
                &layer.gate_up_proj,
                &mut pb.mlp_act,
                &mut pb.split_k,
            )?;
            pk.mlp_rows.launch(&s, &pb.mlp_act, None, rows, &mut pb.x16, &mut pb.x_scale)?;
            pk.down_proj.launch(
                &s,
                &pb.x16,
                &pb.x_scale,
                rows,
                &layer.down_proj,
                &mut pb.hidden,
                &mut pb.split_k,
            )?;
        }
        Ok(())
    }

    /// The decode launches from a CUDA graph, captured on first use (per sampler on the last
    /// segment, the only one that samples).
    fn replay(&mut self, c: &Qwen3Config, sampler: Sampler) -> Result<()> {
        let slot = if self.head.is_some() { sampler as usize } else { 0 };
        if self.graphs[slot].is_none() {
            let ex = self.ex.clone();
            self.graphs[slot] = Some(Graph(ex.capture(|| self.forward(c, true, Some(sampler)))?));
        }
        match &self.graphs[slot] {
            Some(g) => Ok(g.0.launch()?),
            None => Err(Error::Internal("no decode graph".into())),
        }
    }
}

impl Kernels {
    fn new(ex: &Executor, c: &Qwen3Config, opts: &ModelOptions) -> Result<Self> {
        let (h, g, shape) = (c.hidden_size, c.quantization.group_size, head_shape(c));
        Ok(Kernels {
            embedding: Embedding::new(ex, h, c.vocab_size)?,
            rms_norm: RmsNorm::new(ex, h)?,
            qkv_proj: AwqGemv::new(ex, h, c.q_dim() + 2 * c.kv_dim(), g, Epilogue::Store, true)?,
            qk_norm_rope: QkNormRope::new(ex, shape, opts.kv_dtype)?,
            attention: Attention::new(ex, shape, opts.max_seq, opts.kv_dtype)?,
            o_proj: AwqGemv::new(ex, c.q_dim(), h, g, Epilogue::AddTo, false)?,
            gate_up_proj: AwqGemv::new(ex, h, c.intermediate_size, g, Epilogue::SiluMul, true)?,
            down_proj: AwqGemv::new(ex, c.intermediate_size, h, g, Epilogue::AddTo, false)?,
            lm_head: HalfGemv::new(ex, h, c.vocab_size)?,
            argmax: Argmax::new(ex, c.vocab_size)?,
            sample: Sample::new(ex, c.vocab_size)?,
        })
    }
}

/// Floats of split-K scratch: up to 8 splits of a chunk's widest GEMM output, at most 32 MB (short
/// chunks are the ones that split).
fn split_k_len(c: &Qwen3Config, chunk: usize) -> usize {
    let widest = (c.q_dim() + 2 * c.kv_dim()).max(2 * c.intermediate_size).max(c.hidden_size);
    (8 * chunk * widest).min(8 << 20)
}

impl PrefillKernels {
    fn new(ex: &Executor, c: &Qwen3Config, opts: &ModelOptions) -> Result<Self> {
        let (h, g, i, q) = (c.hidden_size, c.quantization.group_size, c.intermediate_size, c.q_dim());
        Ok(PrefillKernels {
            input_rows: RowsF16::new(ex, h, true)?,
            attn_rows: RowsF16::new(ex, q, false)?,
            mlp_rows: RowsF16::new(ex, i, false)?,
            qkv_proj: AwqGemm::new(ex, h, q + 2 * c.kv_dim(), g, Epilogue::Store)?,
            attention: AttentionPrefill::new(ex, head_shape(c), opts.max_seq, opts.kv_dtype)?,
            o_proj: AwqGemm::new(ex, q, h, g, Epilogue::AddTo)?,
            gate_up_proj: AwqGemm::new(ex, h, i, g, Epilogue::SiluMul)?,
            down_proj: AwqGemm::new(ex, i, h, g, Epilogue::AddTo)?,
        })
    }
}

impl PrefillBuffers {
    fn new(ex: &Executor, c: &Qwen3Config, opts: &ModelOptions) -> Result<Self> {
        let (n, h, i, q) = (opts.prefill_chunk, c.hidden_size, c.intermediate_size, c.q_dim());
        let what = "prompt activations";
        Ok(PrefillBuffers {
            tokens: ex.zeros(n, what)?,
            hidden: ex.zeros(n * h, what)?,
            qkv: ex.zeros(n * (q + 2 * c.kv_dim()), what)?,
            q: ex.zeros(n * q, what)?,
            attn: ex.zeros(n * q, what)?,
            mlp_act: ex.zeros(n * i, what)?,
            x16: ex.zeros(n * h.max(i).max(q), what)?,
            x_scale: ex.zeros(n, what)?,
            split_k: ex.zeros(split_k_len(c, n), what)?,
        })
    }
}

impl Buffers {
    fn new(ex: &Executor, c: &Qwen3Config) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Buffers {
            step: ex.zeros(STEP_LEN, "step")?,
            hidden: ex.zeros(h, "activations")?,
            normed: ex.zeros(h, "activations")?,
            qkv: ex.zeros(c.q_dim() + 2 * c.kv_dim(), "activations")?,
            q: ex.zeros(c.q_dim(), "activations")?,
            attn: ex.zeros(c.q_dim(), "activations")?,
            mlp_act: ex.zeros(c.intermediate_size, "activations")?,
            logits: ex.zeros(c.vocab_size, "logits")?,
        })
    }
}

fn load_layer(ex: &Executor, c: &Qwen3Config, ckpt: &Checkpoint, l: usize) -> Result<Layer> {
    let (h, g) = (c.hidden_size, c.quantization.group_size);
    let p = format!("model.layers.{l}");
    let f16 = |name: &str| -> Result<CudaSlice<u16>> { ex.upload(&halves(ckpt, name)?, name) };
    let attn = |name: &str| format!("{p}.self_attn.{name}");
    let mlp = |name: &str| format!("{p}.mlp.{name}");
    let qkv = [
        (&attn("q_proj")[..], c.q_dim()),
        (&attn("k_proj")[..], c.kv_dim()),
        (&attn("v_proj")[..], c.kv_dim()),
    ];
    let gate_up = [(&mlp("gate_proj")[..], c.intermediate_size), (&mlp("up_proj")[..], c.intermediate_size)];
    Ok(Layer {
        input_layernorm: f16(&format!("{p}.input_layernorm.weight"))?,
        post_attention_layernorm: f16(&format!("{p}.post_attention_layernorm.weight"))?,
        q_norm: f16(&attn("q_norm.weight"))?,
        k_norm: f16(&attn("k_norm.weight"))?,
        qkv_proj: AwqLinear::load(ex, ckpt, &qkv, h, g, Stacking::Concat)?,
        o_proj: AwqLinear::load(ex, ckpt, &[(&attn("o_proj"), h)], c.q_dim(), g, Stacking::Concat)?,
        gate_up_proj: AwqLinear::load(ex, ckpt, &gate_up, h, g, Stacking::Interleave)?,
        down_proj: AwqLinear::load(
            ex,
            ckpt,
            &[(&mlp("down_proj"), h)],
            c.intermediate_size,
            g,
            Stacking::Concat,
        )?,
    })
}

/// Every kernel specialization the model uses (for ahead-of-time compilation and its tests).
pub fn kernel_types(c: &Qwen3Config) -> Vec<KernelType> {
    let (h, g, i) = (c.hidden_size as u32, c.quantization.group_size as u32, c.intermediate_size as u32);
    let (q, kv, v) = (c.q_dim() as u32, c.kv_dim() as u32, c.vocab_size as u32);
    let gemv = |k, n, epilogue, norm| KernelType::AwqGemv { k, n, group: g, epilogue, norm };
    let mut types = vec![
        KernelType::Embedding { hidden: h, vocab: v },
        KernelType::RmsNorm { hidden: h },
        gemv(h, q + 2 * kv, Epilogue::Store, true),
        gemv(q, h, Epilogue::AddTo, false),
        gemv(h, i, Epilogue::SiluMul, true),
        gemv(i, h, Epilogue::AddTo, false),
        QkNormRope::kernel_type(head_shape(c), KvDtype::Fp16),
        QkNormRope::kernel_type(head_shape(c), KvDtype::Q8),
        Attention::kernel_type(head_shape(c), KvDtype::Fp16),
        Attention::kernel_type(head_shape(c), KvDtype::Q8),
        KernelType::KvDequant { head_dim: c.head_dim as u32 },
        KernelType::HalfGemv { k: h, n: v },
        KernelType::Argmax { n: v },
        KernelType::RowsF16 { k: h, norm: true },
        KernelType::RowsF16 { k: q, norm: false },
        KernelType::RowsF16 { k: i, norm: false },
        KernelType::AwqGemm { k: h, n: q + 2 * kv, group: g, epilogue: Epilogue::Store },
        KernelType::AwqGemm { k: q, n: h, group: g, epilogue: Epilogue::AddTo },
        KernelType::AwqGemm { k: h, n: i, group: g, epilogue: Epilogue::SiluMul },
        KernelType::AwqGemm { k: i, n: h, group: g, epilogue: Epilogue::AddTo },
        KernelType::Sample { n: v },
    ];
    if AttentionPrefill::supports(head_shape(c)) {
        types.push(AttentionPrefill::kernel_type(head_shape(c), KvDtype::Fp16));
        types.push(AttentionPrefill::kernel_type(head_shape(c), KvDtype::Q8));
    }
    types.extend(awq_linears(c).map(|(_, k, n)| KernelType::AwqRepack {
        k: k as u32,
        n: n as u32,
        group: g,
    }));
    // Layers of equal shape share a kernel (o_proj and down_proj can coincide).
    let mut unique = Vec::with_capacity(types.len());
    for t in types {
        if !unique.contains(&t) {
            unique.push(t);
        }
    }
    unique
}

pub fn head_shape(c: &Qwen3Config) -> HeadShape {
    HeadShape { head_dim: c.head_dim, n_heads: c.num_attention_heads, n_kv_heads: c.num_key_value_heads }
}
