//! The Qwen3 decoder on one device: weights, KV cache, activation buffers and the kernels of
//! one decode step. A step reads token and position from device memory (`step`), so the launch
//! sequence is identical every step.

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};

use crate::config::Qwen3Config;
use crate::cuda::executor::Executor;
use crate::cuda::kernel::{Epilogue, KernelType, KvDtype};
use crate::cuda::launch::{
    Argmax, Attention, AwqGemv, Embedding, HalfGemv, HeadShape, KvDequant, QkNormRope, RmsNorm, STEP_LEN,
};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::awq_linear::{halves, AwqLinear, Stacking};
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

/// The kernels of a step, specialized for this model's shapes.
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

/// How a model is set up on its device.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Positions the KV cache holds.
    pub max_seq: usize,
    /// Replay each decode step from a CUDA graph.
    pub cuda_graphs: bool,
    pub kv_dtype: KvDtype,
}

pub struct Qwen3Model {
    pub config: Qwen3Config,
    ex: Executor,
    embed_tokens: CudaSlice<u16>,
    /// None when tied to embed_tokens.
    lm_head: Option<CudaSlice<u16>>,
    norm: CudaSlice<u16>,
    layers: Vec<Layer>,
    kv: KvCache,
    k: Kernels,
    b: Buffers,
    use_graph: bool,
    graph: Option<DecodeGraph>,
}

/// The captured decode step.
struct DecodeGraph(CudaGraph);

// SAFETY: CUDA graphs may be used from any thread as long as calls on one graph are serialized;
// the graph is only touched through `&mut Qwen3Model`, which guarantees that.
unsafe impl Send for DecodeGraph {}

impl Qwen3Model {
    /// Device bytes the model will allocate (weights, KV cache, activations), for an up-front
    /// check against free memory.
    pub fn device_bytes(c: &Qwen3Config, opts: &ModelOptions) -> usize {
        let (h, g) = (c.hidden_size, c.quantization.group_size);
        let embed = c.vocab_size * h * 2 * if c.tie_word_embeddings { 1 } else { 2 };
        let layer = AwqLinear::device_bytes(h, c.q_dim() + 2 * c.kv_dim(), g)
            + AwqLinear::device_bytes(c.q_dim(), h, g)
            + AwqLinear::device_bytes(h, 2 * c.intermediate_size, g)
            + AwqLinear::device_bytes(c.intermediate_size, h, g);
        let kv = KvCache::bytes_per_token(head_shape(c), c.num_hidden_layers, opts.kv_dtype) * opts.max_seq;
        embed + layer * c.num_hidden_layers + kv + c.vocab_size * 4 + (64 << 20)
    }

    /// Uploads a validated checkpoint onto `ex`'s device.
    pub fn load(ex: Executor, config: Qwen3Config, ckpt: &Checkpoint, opts: &ModelOptions) -> Result<Self> {
        let c = &config;
        let (h, g) = (c.hidden_size, c.quantization.group_size);
        let f16 = |name: &str| -> Result<CudaSlice<u16>> { ex.upload(&halves(ckpt, name)?, name) };

        let embed_tokens = f16("model.embed_tokens.weight")?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(f16("lm_head.weight")?) };
        let norm = f16("model.norm.weight")?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let attn = |name: &str| format!("{p}.self_attn.{name}");
            let mlp = |name: &str| format!("{p}.mlp.{name}");
            layers.push(Layer {
                input_layernorm: f16(&format!("{p}.input_layernorm.weight"))?,
                post_attention_layernorm: f16(&format!("{p}.post_attention_layernorm.weight"))?,
                q_norm: f16(&attn("q_norm.weight"))?,
                k_norm: f16(&attn("k_norm.weight"))?,
                qkv_proj: AwqLinear::load(
                    &ex,
                    ckpt,
                    &[
                        (&attn("q_proj"), c.q_dim()),
                        (&attn("k_proj"), c.kv_dim()),
                        (&attn("v_proj"), c.kv_dim()),
                    ],
                    h,
                    g,
                    Stacking::Concat,
                )?,
                o_proj: AwqLinear::load(&ex, ckpt, &[(&attn("o_proj"), h)], c.q_dim(), g, Stacking::Concat)?,
                gate_up_proj: AwqLinear::load(
                    &ex,
                    ckpt,
                    &[(&mlp("gate_proj"), c.intermediate_size), (&mlp("up_proj"), c.intermediate_size)],
                    h,
                    g,
                    Stacking::Interleave,
                )?,
                down_proj: AwqLinear::load(
                    &ex,
                    ckpt,
                    &[(&mlp("down_proj"), h)],
                    c.intermediate_size,
                    g,
                    Stacking::Concat,
                )?,
            });
        }

        let shape = head_shape(c);
        let k = Kernels {
            embedding: Embedding::new(&ex, h, c.vocab_size)?,
            rms_norm: RmsNorm::new(&ex, h)?,
            qkv_proj: AwqGemv::new(&ex, h, c.q_dim() + 2 * c.kv_dim(), g, Epilogue::Store, true)?,
            qk_norm_rope: QkNormRope::new(&ex, shape, opts.kv_dtype)?,
            attention: Attention::new(&ex, shape, opts.max_seq, opts.kv_dtype)?,
            o_proj: AwqGemv::new(&ex, c.q_dim(), h, g, Epilogue::AddTo, false)?,
            gate_up_proj: AwqGemv::new(&ex, h, c.intermediate_size, g, Epilogue::SiluMul, true)?,
            down_proj: AwqGemv::new(&ex, c.intermediate_size, h, g, Epilogue::AddTo, false)?,
            lm_head: HalfGemv::new(&ex, h, c.vocab_size)?,
            argmax: Argmax::new(&ex, c.vocab_size)?,
        };
        let b = Buffers {
            step: ex.zeros(STEP_LEN, "step")?,
            hidden: ex.zeros(h, "activations")?,
            normed: ex.zeros(h, "activations")?,
            qkv: ex.zeros(c.q_dim() + 2 * c.kv_dim(), "activations")?,
            q: ex.zeros(c.q_dim(), "activations")?,
            attn: ex.zeros(c.q_dim(), "activations")?,
            mlp_act: ex.zeros(c.intermediate_size, "activations")?,
            logits: ex.zeros(c.vocab_size, "logits")?,
        };
        let kv = KvCache::new(&ex, shape, c.num_hidden_layers, opts.max_seq, opts.kv_dtype)?;
        ex.synchronize()?;
        let use_graph = opts.cuda_graphs;
        Ok(Qwen3Model { config, ex, embed_tokens, lm_head, norm, layers, kv, k, b, use_graph, graph: None })
    }

    pub fn max_seq(&self) -> usize {
        self.kv.max_seq
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv.dtype
    }

    /// KV-cache bytes per position (all layers, scales included) and allocated in all.
    pub fn kv_bytes(&self) -> (usize, usize) {
        let per_token =
            KvCache::bytes_per_token(head_shape(&self.config), self.config.num_hidden_layers, self.kv.dtype);
        (per_token, per_token * self.kv.max_seq)
    }

    /// One layer's cached K and V for positions [0, len), dequantized to fp32, each
    /// [n_kv_heads][len][head_dim] (int8 caches go through the kv_dequant kernel).
    pub fn kv_cache(&self, layer: usize, len: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = &self.config;
        let cache = self.kv.layers.get(layer).ok_or_else(|| {
            Error::InvalidArgument(format!("layer {layer} does not exist ({} layers)", c.num_hidden_layers))
        })?;
        if len > self.kv.max_seq {
            return Err(Error::InvalidArgument(format!(
                "{len} positions exceed max_seq_len ({})",
                self.kv.max_seq
            )));
        }
        let hd = c.head_dim;
        let full = |values: &CudaSlice<u8>, scales: &CudaSlice<u16>| -> Result<Vec<f32>> {
            match self.kv.dtype {
                KvDtype::Fp16 => Ok(self
                    .ex
                    .download(values)?
                    .chunks_exact(2)
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                    .collect()),
                KvDtype::Q8 => {
                    let mut out = self.ex.zeros::<f32>(values.len(), "dequantized KV cache")?;
                    KvDequant::new(&self.ex, hd)?.launch(self.ex.stream(), values, scales, &mut out)?;
                    self.ex.download(&out)
                }
            }
        };
        let rows = |all: Vec<f32>| -> Vec<f32> {
            (0..c.num_key_value_heads)
                .flat_map(|h| all[h * self.kv.max_seq * hd..(h * self.kv.max_seq + len) * hd].to_vec())
                .collect()
        };
        Ok((rows(full(&cache.k, &cache.k_scale)?), rows(full(&cache.v, &cache.v_scale)?)))
    }

    /// Runs one position: embeds `token`, appends its K/V at `pos`, and (when `want_logits`)
    /// computes the logits. Asynchronous: nothing is read back.
    pub fn step(&mut self, token: u32, pos: usize, want_logits: bool) -> Result<()> {
        if token as usize >= self.config.vocab_size || pos >= self.kv.max_seq {
            return Err(Error::Internal(format!("step({token}, {pos}) escaped validation")));
        }
        self.ex.stream().memcpy_htod(&[token as i32, pos as i32], &mut self.b.step)?;
        self.forward(want_logits)
    }

    /// Greedy sampling on the device: the step's token becomes the argmax of the last logits and
    /// its position advances by one, ready for `decode_greedy`.
    pub fn sample_greedy(&mut self) -> Result<()> {
        self.k.argmax.launch(self.ex.stream(), &self.b.logits, &mut self.b.step, true)
    }

    /// One greedy decode step entirely on the device (forward of the step's token, then
    /// `sample_greedy`), replayed from a CUDA graph captured on first use.
    pub fn decode_greedy(&mut self) -> Result<()> {
        if !self.use_graph {
            self.forward(true)?;
            return self.sample_greedy();
        }
        if self.graph.is_none() {
            let s = self.ex.stream().clone();
            s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
            let captured = self.forward(true).and_then(|_| self.sample_greedy());
            // End the capture on every path so the stream is usable again.
            let graph = s.end_capture(CUgraphInstantiate_flags(0));
            captured?;
            self.graph = graph?.map(DecodeGraph);
            if self.graph.is_none() {
                return Err(Error::Internal("stream capture produced no graph".into()));
            }
        }
        match &self.graph {
            Some(g) => Ok(g.0.launch()?),
            None => Err(Error::Internal("no decode graph".into())),
        }
    }

    /// The step's current token (waits for the device; a 4-byte read).
    pub fn current_token(&self) -> Result<u32> {
        Ok(self.ex.download(&self.b.step)?[0].max(0) as u32)
    }

    /// The last step's logits, copied to the host.
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.ex.download(&self.b.logits)
    }

    fn forward(&mut self, want_logits: bool) -> Result<()> {
        let s = self.ex.stream().clone();
        let c = &self.config;
        let (eps, theta) = (c.rms_norm_eps as f32, c.rope_theta as f32);
        let (k, b) = (&mut self.k, &mut self.b);

        k.embedding.launch(&s, &b.step, &self.embed_tokens, &mut b.hidden)?;
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
            k.rms_norm.launch(&s, &b.hidden, &self.norm, &mut b.normed, eps)?;
            let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
            k.lm_head.launch(&s, &b.normed, lm_head, &mut b.logits)?;
        }
        Ok(())
    }

    pub fn executor(&self) -> &Executor {
        &self.ex
    }
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
    ];
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
