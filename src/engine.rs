//! The engine: validates a model directory, places it on one or more devices, and generates.

use std::path::Path;
use std::sync::Arc;

use crate::config::Qwen3Config;
use crate::cuda::executor::Executor;
use crate::cuda::kernel::{KernelType, KvDtype};
use crate::error::{ensure, Error, Result};
use crate::model::qwen3::{kernel_types, ModelOptions, PromptLogits, Qwen3Model};
use crate::placement::Placement;
use crate::sampler::{presence_bitmap, Sampler, SamplingOptions};
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

/// Default prompt positions per prefill pass: large enough to fill the GPU with GEMM tiles and
/// to take a 2048-token prompt in one pass, about 300 MB of activations for Qwen3-8B.
pub const DEFAULT_PREFILL_CHUNK: usize = 2048;

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

/// What `Engine::load_with` reports while it works.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadEvent {
    /// Kernel `done` of `total` is ready on its device: `cached` when nothing was compiled
    /// (found in memory or in the disk cache), after `seconds`.
    Kernel { done: usize, total: usize, name: String, cached: bool, seconds: f64 },
    /// `done` of `total` layers are on their devices.
    Layers { done: usize, total: usize },
}

/// How a generation runs and when it stops.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Do not stop at an eos token.
    pub ignore_eos: bool,
    /// Stop after any of these instead of generation_config's eos ids.
    pub eos_token_ids: Option<Vec<u32>>,
    pub sampling: SamplingOptions,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 20,
            ignore_eos: false,
            eos_token_ids: None,
            sampling: SamplingOptions::default(),
        }
    }
}

/// The generation in progress (see `Engine::start`).
struct Active {
    id: u64,
    remaining: usize,
    eos: Vec<u32>,
    sampler: Sampler,
    /// The first token is sampled by `start`; later ones need a decode step.
    first: bool,
    finished: bool,
}

pub struct Engine {
    model: Qwen3Model,
    /// Messages for the caller to log (e.g. unexpected extra tensors).
    pub warnings: Vec<String>,
    active: Option<Active>,
    generations: u64,
}

impl Engine {
    /// Loads a Hugging Face Qwen3 AWQ checkpoint directory. Every file is validated before a GPU
    /// is touched; the placement checks each device's share against its free memory before any
    /// weight is allocated.
    pub fn load(dir: &Path, opts: &EngineOptions) -> Result<Self> {
        Self::load_with(dir, opts, &mut |_| Ok(()))
    }

    /// `load`, reporting each kernel made ready and each layer loaded to `on_event`; an error from
    /// it ends the load with that error.
    pub fn load_with(
        dir: &Path,
        opts: &EngineOptions,
        on_event: &mut dyn FnMut(LoadEvent) -> Result<()>,
    ) -> Result<Self> {
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
        // Compile (or find in the disk cache) every kernel up front, so progress can be reported;
        // the model's launchers then find them loaded.
        let kernels: Vec<KernelType> = kernel_types(&config)
            .into_iter()
            .filter(|t| match t {
                KernelType::QkNormRope { kv, .. } | KernelType::Attention { kv, .. } => {
                    *kv == opts.kv_cache_dtype
                }
                _ => true,
            })
            .collect();
        let total = kernels.len() * executors.len();
        for (i, (ex, ty)) in executors.iter().flat_map(|ex| kernels.iter().map(move |t| (ex, t))).enumerate()
        {
            let t0 = std::time::Instant::now();
            let cached = ex.prepare(*ty)?;
            let seconds = t0.elapsed().as_secs_f64();
            on_event(LoadEvent::Kernel { done: i + 1, total, name: ty.to_string(), cached, seconds })?;
        }
        let mut progress = |done, total| on_event(LoadEvent::Layers { done, total });
        let model =
            Qwen3Model::load(&executors, devices, placement, config, &ckpt, &model_opts, &mut progress)?;
        Ok(Engine { model, warnings, active: None, generations: 0 })
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
        let opts = GenerateOptions { max_new_tokens, ignore_eos, ..Default::default() };
        self.generate_with(ids, &opts, keep_going)
    }

    /// Generation from a fresh sequence as `opts` say (sampling, eos ids). Returns the new tokens
    /// only, an eos token that ended it included. `keep_going` is called before every step; an
    /// error from it ends generation with that error.
    pub fn generate_with(
        &mut self,
        ids: &[i64],
        opts: &GenerateOptions,
        keep_going: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<u32>> {
        let id = self.start(ids, opts, keep_going)?;
        let mut out = Vec::with_capacity(opts.max_new_tokens);
        loop {
            match self.next_token(id)? {
                Some(t) => out.push(t),
                None => return Ok(out),
            }
            if self.is_finished(id) {
                return Ok(out);
            }
            if let Err(e) = keep_going() {
                self.active = None;
                return Err(e);
            }
        }
    }

    /// Starts a generation from a fresh sequence: checks the arguments, runs the prompt and samples
    /// the first token. Returns the generation's id for `next_token`. Starting another generation,
    /// or computing logits, ends this one.
    pub fn start(
        &mut self,
        ids: &[i64],
        opts: &GenerateOptions,
        keep_going: &mut dyn FnMut() -> Result<()>,
    ) -> Result<u64> {
        self.active = None;
        let ids = self.check_ids(ids)?;
        opts.sampling.validate()?;
        let vocab = self.model.config.vocab_size;
        let max_seq = self.max_seq_len();
        let max_new_tokens = opts.max_new_tokens;
        ensure(ids.len() + max_new_tokens <= max_seq, || {
            format!(
                "prompt ({} tokens) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len ({max_seq})",
                ids.len()
            )
        })?;
        let eos = match (&opts.eos_token_ids, opts.ignore_eos) {
            (_, true) => Vec::new(),
            (Some(list), false) => {
                if let Some(t) = list.iter().find(|&&t| t as usize >= vocab) {
                    return Err(Error::InvalidArgument(format!(
                        "eos_token_id {t} is outside the vocabulary [0, {vocab})"
                    )));
                }
                list.clone()
            }
            (None, false) => self.model.config.eos_token_ids.clone(),
        };
        self.generations += 1;
        let id = self.generations;
        let sampler = opts.sampling.sampler();
        let mut active = Active { id, remaining: max_new_tokens, eos, sampler, first: true, finished: true };
        if max_new_tokens > 0 {
            if sampler == Sampler::Sampling {
                let params = opts.sampling.device_params(vocab, opts.sampling.resolved_seed());
                self.model.set_sampling(&params, &presence_bitmap(vocab, &ids))?;
            }
            self.process_prompt(&ids, keep_going)?;
            self.model.sample(sampler)?;
            active.finished = false;
        }
        self.active = Some(active);
        Ok(id)
    }

    /// The next token of generation `id` (waits for the device), or None once it has ended (at an
    /// eos token, which is returned first, or after max_new_tokens).
    pub fn next_token(&mut self, id: u64) -> Result<Option<u32>> {
        let (first, sampler) = match &self.active {
            Some(a) if a.id == id && a.finished => return Ok(None),
            Some(a) if a.id == id => (a.first, a.sampler),
            _ => {
                return Err(Error::InvalidArgument(
                    "this generation has ended: the engine has started another generation or \
                     computed logits since"
                        .into(),
                ))
            }
        };
        let token =
            if first { Ok(()) } else { self.model.decode(sampler) }.and_then(|_| self.model.current_token());
        let Some(a) = self.active.as_mut() else {
            return Err(Error::Internal("the active generation vanished".into()));
        };
        a.first = false;
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                a.finished = true;
                return Err(e);
            }
        };
        a.remaining = a.remaining.saturating_sub(1);
        if a.remaining == 0 || a.eos.contains(&token) {
            a.finished = true;
        }
        Ok(Some(token))
    }

    /// Whether generation `id` has returned its last token (or is no longer the active one).
    pub fn is_finished(&self, id: u64) -> bool {
        !matches!(&self.active, Some(a) if a.id == id && !a.finished)
    }

    /// Runs the prompt through the model, leaving the last position's logits ready to sample.
    fn process_prompt(&mut self, ids: &[u32], keep_going: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        keep_going()?;
        self.model.prompt(ids, 0, PromptLogits::Last)
    }

    /// Benchmark hook: seconds per greedy decode step at `context` cached positions, measured
    /// over `steps` steps exactly as `generate` runs them (token read back every step). The cache
    /// contents are left as they are: the cost of a step does not depend on them.
    pub fn time_decode(&mut self, context: usize, steps: usize) -> Result<f64> {
        let max_seq = self.max_seq_len();
        ensure(steps > 0 && context + steps < max_seq, || {
            format!("context {context} + {steps} steps must stay below max_seq_len ({max_seq})")
        })?;
        self.active = None;
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
        self.active = None;
        let ids = self.check_ids(ids)?;
        let max_seq = self.max_seq_len();
        ensure(ids.len() <= max_seq, || format!("{} tokens exceed max_seq_len ({max_seq})", ids.len()))?;
        let mut out = Vec::with_capacity(ids.len() * self.model.config.vocab_size);
        self.model.prompt(&ids, 0, PromptLogits::All(&mut out))?;
        Ok(out)
    }
}
