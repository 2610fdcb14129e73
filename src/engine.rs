//! The engine: validates a model directory, places it on one or more devices, and generates.

use std::path::Path;
use std::sync::Arc;

use crate::config::Qwen3Config;
use crate::cuda::executor::Executor;
use crate::cuda::kernel::KvDtype;
use crate::error::{ensure, Error, Result};
use crate::model::qwen3::{ModelOptions, PromptLogits, Qwen3Model};
use crate::placement::Placement;
use crate::weights::Checkpoint;

pub struct EngineOptions {
    /// The devices to use; layers are split over them in contiguous ranges balanced by free memory.
    pub devices: Vec<usize>,
    /// Explicit placement, one device (of `devices`) per layer.
    pub layer_devices: Option<Vec<usize>>,
    /// Positions the KV cache holds; defaults to the config's max_position_embeddings.
    pub max_seq_len: Option<usize>,
    /// Replay each decode step from a CUDA graph (one launch instead of hundreds).
    pub cuda_graphs: bool,
    pub kv_cache_dtype: KvDtype,
    /// Prompt positions per batched prefill pass (bounds its activation memory); 0 processes
    /// prompts token by token.
    pub prefill_chunk: usize,
}

/// Default prompt positions per prefill pass: large enough to fill the GPU with GEMM tiles,
/// about 150 MB of activations for Qwen3-8B.
pub const DEFAULT_PREFILL_CHUNK: usize = 1024;

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            devices: vec![0],
            layer_devices: None,
            max_seq_len: None,
            cuda_graphs: true,
            kv_cache_dtype: KvDtype::Fp16,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

pub struct Engine {
    model: Qwen3Model,
    /// Messages for the caller to log (e.g. unexpected extra tensors).
    pub warnings: Vec<String>,
}

impl Engine {
    /// Loads a Hugging Face Qwen3 AWQ checkpoint directory. Every file is validated before a GPU
    /// is touched; the placement checks each device's share against its free memory before any
    /// weight is allocated.
    pub fn load(dir: &Path, opts: &EngineOptions) -> Result<Self> {
        let config = Qwen3Config::from_dir(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let warnings = ckpt.validate(&config)?;
        let max_seq = match opts.max_seq_len {
            None => config.max_position_embeddings,
            Some(n) => {
                ensure(n >= 1 && n <= config.max_position_embeddings, || {
                    format!(
                        "max_seq_len {n} must be between 1 and max_position_embeddings ({})",
                        config.max_position_embeddings
                    )
                })?;
                n
            }
        };
        let devices = &opts.devices;
        ensure(!devices.is_empty(), || "devices must list at least one device".into())?;
        if let Some(d) = devices.iter().enumerate().find(|(i, d)| devices[..*i].contains(d)) {
            return Err(Error::InvalidArgument(format!("device {} is listed twice in devices", d.1)));
        }
        let executors =
            devices.iter().map(|&d| Executor::new(d).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        for a in &executors {
            for b in &executors {
                if a.ordinal() != b.ordinal() {
                    a.enable_peer_access(b)?;
                }
            }
        }
        let model_opts = ModelOptions {
            max_seq,
            cuda_graphs: opts.cuda_graphs,
            kv_dtype: opts.kv_cache_dtype,
            prefill_chunk: opts.prefill_chunk.min(max_seq),
        };
        let bytes = Qwen3Model::bytes(&config, &model_opts, devices.len() > 1);
        let free = executors.iter().map(|ex| Ok(ex.memory_info()?.0)).collect::<Result<Vec<_>>>()?;
        let placement = match &opts.layer_devices {
            Some(layers) => Placement::explicit(layers.clone(), devices, &free, &bytes)?,
            None => Placement::balanced(devices, &free, &bytes)?,
        };
        let model = Qwen3Model::load(&executors, devices, placement, config, &ckpt, &model_opts)?;
        Ok(Engine { model, warnings })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.model.config
    }

    pub fn max_seq_len(&self) -> usize {
        self.model.max_seq()
    }

    /// Which device holds which layer (the embedding with layer 0, the head with the last).
    pub fn placement(&self) -> &Placement {
        self.model.placement()
    }

    /// (device, bytes of weights and KV cache placed on it), for each device in use.
    pub fn placement_bytes(&self) -> Vec<(usize, usize)> {
        self.model.placement_bytes()
    }

    pub fn kv_cache_dtype(&self) -> KvDtype {
        self.model.kv_dtype()
    }

    /// KV-cache bytes per position (all layers, scales included) and allocated in all.
    pub fn kv_cache_bytes(&self) -> (usize, usize) {
        self.model.kv_bytes()
    }

    /// One layer's cached K and V for the first `len` positions of the last sequence, as fp32
    /// [n_kv_heads][len][head_dim] (for inspection and tests).
    pub fn kv_cache(&self, layer: usize, len: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.model.kv_cache(layer, len)
    }

    fn check_ids(&self, ids: &[i64]) -> Result<Vec<u32>> {
        ensure(!ids.is_empty(), || "the prompt is empty: give at least one token id".into())?;
        let vocab = self.model.config.vocab_size;
        ids.iter()
            .enumerate()
            .map(|(i, &t)| {
                ensure(t >= 0 && (t as u64) < vocab as u64, || {
                    format!("token id {t} at index {i} is outside the vocabulary [0, {vocab})")
                })?;
                Ok(t as u32)
            })
            .collect()
    }

    /// Greedy generation from a fresh sequence. Returns the new tokens only; stops after an eos
    /// token (which is included) unless `ignore_eos`.
    pub fn generate(&mut self, ids: &[i64], max_new_tokens: usize, ignore_eos: bool) -> Result<Vec<u32>> {
        self.generate_until(ids, max_new_tokens, ignore_eos, &mut || Ok(()))
    }

    /// `generate`, calling `keep_going` before every step: an error from it (e.g. a Ctrl-C seen by
    /// the caller) ends generation with that error, leaving the engine ready for the next call.
    pub fn generate_until(
        &mut self,
        ids: &[i64],
        max_new_tokens: usize,
        ignore_eos: bool,
        keep_going: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<u32>> {
        let ids = self.check_ids(ids)?;
        let max_seq = self.max_seq_len();
        ensure(ids.len() + max_new_tokens <= max_seq, || {
            format!(
                "prompt ({} tokens) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len ({max_seq})",
                ids.len()
            )
        })?;
        if max_new_tokens == 0 {
            return Ok(Vec::new());
        }
        keep_going()?;
        self.model.prompt(&ids, 0, PromptLogits::Last)?;
        self.model.sample_greedy()?;
        let mut out = Vec::with_capacity(max_new_tokens);
        loop {
            let next = self.model.current_token()?;
            out.push(next);
            let stop = !ignore_eos && self.model.config.eos_token_ids.contains(&next);
            if stop || out.len() == max_new_tokens {
                return Ok(out);
            }
            keep_going()?;
            self.model.decode_greedy()?;
        }
    }

    /// Benchmark hook: seconds per greedy decode step at `context` cached positions, measured
    /// over `steps` steps exactly as `generate` runs them (token read back every step). The cache
    /// contents are left as they are: the cost of a step does not depend on them.
    pub fn time_decode(&mut self, context: usize, steps: usize) -> Result<f64> {
        let max_seq = self.max_seq_len();
        ensure(steps > 0 && context + steps < max_seq, || {
            format!("context {context} + {steps} steps must stay below max_seq_len ({max_seq})")
        })?;
        self.model.step(0, context, true)?;
        self.model.sample_greedy()?;
        self.model.current_token()?;
        let start = std::time::Instant::now();
        for _ in 0..steps {
            self.model.decode_greedy()?;
            self.model.current_token()?;
        }
        Ok(start.elapsed().as_secs_f64() / steps as f64)
    }

    /// Logits at every position of `ids` (row-major [len, vocab]), from a fresh sequence.
    pub fn logits(&mut self, ids: &[i64]) -> Result<Vec<f32>> {
        let ids = self.check_ids(ids)?;
        let max_seq = self.max_seq_len();
        ensure(ids.len() <= max_seq, || format!("{} tokens exceed max_seq_len ({max_seq})", ids.len()))?;
        let mut out = Vec::with_capacity(ids.len() * self.model.config.vocab_size);
        self.model.prompt(&ids, 0, PromptLogits::All(&mut out))?;
        Ok(out)
    }
}
