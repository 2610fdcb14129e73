//! The PyO3 skin: argument conversion, GIL release around GPU work, and errors mapped onto the
//! exception classes of `qwen3_rs.errors`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::prelude::*;
use numpy::{Element, PyArray1, PyArray2, PyArray3, PyReadonlyArray1};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::config::Qwen3Config;
use crate::cuda::executor::{self, Executor};
use crate::cuda::kernel::{Epilogue, KvDtype};
use crate::cuda::launch::HeadShape;
use crate::engine::{Engine, EngineOptions, GenerateOptions, LoadEvent, DEFAULT_PREFILL_CHUNK};
use crate::error::Error;
use crate::ops;
use crate::sampler::SamplingOptions;

fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let class = match &e {
        Error::NotFound { .. } => "ModelNotFoundError",
        Error::Format { .. } => "ModelFormatError",
        Error::Io { .. } => "ModelIOError",
        Error::InvalidArgument(_) => "InvalidArgumentError",
        Error::OutOfMemory(_) => "OutOfMemoryError",
        Error::CudaUnavailable(_) => "CudaUnavailableError",
        Error::Driver(_) => "CudaError",
        Error::Compile { .. } => "KernelCompileError",
        Error::Internal(_) => "InternalError",
        Error::Interrupted => {
            return pyo3::exceptions::PyKeyboardInterrupt::new_err("generation interrupted")
        }
    };
    let msg = e.to_string();
    match py.import("qwen3_rs.errors").and_then(|m| m.getattr(class)) {
        Ok(cls) => match cls.call1((msg.clone(),)) {
            Ok(obj) => PyErr::from_value(obj),
            Err(_) => PyRuntimeError::new_err(msg),
        },
        Err(_) => PyRuntimeError::new_err(msg),
    }
}

/// Runs `f` without the GIL; a Rust panic becomes an `InternalError` instead of aborting.
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    let r = py.detach(|| {
        std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(what))
        })
    });
    r.map_err(|e| to_py(py, e))
}

/// A 1-D array of token ids from a list of ints or a numpy integer array.
fn token_ids(ids: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
    let np = ids.py().import("numpy")?;
    let arr = np.call_method1("asarray", (ids,))?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    let size: usize = arr.getattr("size")?.extract()?;
    if ndim != 1 || !(kind == "i" || kind == "u" || size == 0) {
        return Err(PyTypeError::new_err(format!(
            "ids must be a list of ints or a 1-D integer array, got a {ndim}-D array of dtype kind {kind:?}"
        )));
    }
    let arr = arr.call_method1("astype", ("int64",))?;
    let arr: PyReadonlyArray1<i64> = arr.extract()?;
    Ok(arr.as_slice()?.to_vec())
}

fn non_negative(name: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| {
        Python::attach(|py| to_py(py, Error::InvalidArgument(format!("{name} must be >= 0, got {v}"))))
    })
}

fn invalid(py: Python<'_>, msg: String) -> PyErr {
    to_py(py, Error::InvalidArgument(msg))
}

/// Sampling options from keyword arguments with transformers' names (None: the option is off,
/// or its default for temperature and do_sample), and the eos override.
fn sampling_kwargs(
    py: Python<'_>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<(SamplingOptions, Option<Vec<u32>>)> {
    let mut o = SamplingOptions::default();
    let mut eos = None;
    let Some(kwargs) = kwargs else { return Ok((o, eos)) };
    for (k, v) in kwargs.iter() {
        let key: String = k.extract()?;
        let type_name = || v.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        let number = |name: &str| -> PyResult<f32> {
            if v.is_instance_of::<pyo3::types::PyBool>() {
                return Err(PyTypeError::new_err(format!("{name} must be a number, got a bool")));
            }
            v.extract::<f64>()
                .map(|x| x as f32)
                .map_err(|_| PyTypeError::new_err(format!("{name} must be a number, got {}", type_name())))
        };
        let repr = || v.repr().map(|r| r.to_string()).unwrap_or_default();
        let int = |name: &str| -> PyResult<i64> {
            if v.is_instance_of::<pyo3::types::PyBool>() || !v.hasattr("__index__")? {
                return Err(PyTypeError::new_err(format!("{name} must be an int, got {}", type_name())));
            }
            v.extract::<i64>().map_err(|_| invalid(py, format!("{name} {} is out of range", repr())))
        };
        let none = v.is_none();
        match key.as_str() {
            "do_sample" => {
                o.do_sample = !none
                    && v.extract::<bool>().map_err(|_| {
                        PyTypeError::new_err(format!("do_sample must be a bool, got {}", type_name()))
                    })?
            }
            "temperature" => o.temperature = if none { 1.0 } else { number("temperature")? },
            "top_p" => o.top_p = if none { 1.0 } else { number("top_p")? },
            "min_p" => o.min_p = if none { 0.0 } else { number("min_p")? },
            "repetition_penalty" => {
                o.repetition_penalty = if none { 1.0 } else { number("repetition_penalty")? }
            }
            "top_k" => {
                let k = if none { 0 } else { int("top_k")? };
                o.top_k = usize::try_from(k)
                    .map_err(|_| invalid(py, format!("top_k must be >= 0 (0 turns it off), got {k}")))?;
            }
            "seed" => {
                o.seed = if none {
                    None
                } else {
                    let bad = || invalid(py, format!("seed must be an int in [0, 2**64), got {}", repr()));
                    if v.is_instance_of::<pyo3::types::PyBool>() || !v.hasattr("__index__")? {
                        return Err(bad());
                    }
                    Some(v.extract::<u64>().map_err(|_| bad())?)
                }
            }
            "eos_token_id" => {
                eos = if none {
                    None
                } else {
                    let ids: Vec<i64> = match v.extract::<i64>() {
                        Ok(one) => vec![one],
                        Err(_) => v.extract().map_err(|_| {
                            PyTypeError::new_err(format!(
                                "eos_token_id must be an int or a list of ints, got {}",
                                type_name()
                            ))
                        })?,
                    };
                    let ids = ids
                        .into_iter()
                        .map(|t| {
                            u32::try_from(t)
                                .map_err(|_| invalid(py, format!("eos_token_id {t} is not a token id")))
                        })
                        .collect::<PyResult<Vec<u32>>>()?;
                    Some(ids)
                }
            }
            _ => {
                return Err(PyTypeError::new_err(format!("unexpected keyword argument {key:?}")));
            }
        }
    }
    o.validate().map_err(|e| to_py(py, e))?;
    Ok((o, eos))
}

fn generate_options(
    py: Python<'_>,
    max_new_tokens: i64,
    ignore_eos: bool,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<GenerateOptions> {
    let max_new_tokens = non_negative("max_new_tokens", max_new_tokens)?;
    let (sampling, eos_token_ids) = sampling_kwargs(py, kwargs)?;
    Ok(GenerateOptions { max_new_tokens, ignore_eos, eos_token_ids, sampling })
}

/// Runs `f` without the GIL, giving it a check that raises pending Python signals (Ctrl-C) as
/// `Error::Interrupted`; the Python exception itself is what the caller gets.
fn interruptible<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut dyn FnMut() -> crate::Result<()>) -> crate::Result<T> + Send,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let out = detached(py, || {
        let mut check = || {
            Python::attach(|py| py.check_signals()).map_err(|e| {
                raised = Some(e);
                Error::Interrupted
            })
        };
        f(&mut check)
    });
    match raised {
        Some(e) => Err(e),
        None => out,
    }
}

/// A Qwen3 AWQ model loaded on a GPU.
#[pyclass(name = "Qwen3Engine", module = "qwen3_rs", subclass)]
struct PyEngine {
    inner: Arc<Mutex<Engine>>,
    config: Py<PyAny>,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (
        model_path, device = 0, max_seq_len = None, kv_cache_dtype = "fp16", cuda_graphs = true,
        devices = None, layer_devices = None, prefill_chunk = DEFAULT_PREFILL_CHUNK as i64, on_event = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_path: PathBuf,
        device: i64,
        max_seq_len: Option<i64>,
        kv_cache_dtype: &str,
        cuda_graphs: bool,
        devices: Option<Vec<i64>>,
        layer_devices: Option<Vec<i64>>,
        prefill_chunk: i64,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let list = |name: &str, v: Vec<i64>| {
            v.into_iter().map(|d| non_negative(name, d)).collect::<PyResult<Vec<_>>>()
        };
        let layer_devices = layer_devices.map(|v| list("layer_devices", v)).transpose()?;
        let devices = match (devices, &layer_devices) {
            (Some(v), _) => list("devices", v)?,
            // Explicit layers without a device list: the devices they name, in first-use order.
            (None, Some(layers)) => layers.iter().fold(Vec::new(), |mut acc, &d| {
                if !acc.contains(&d) {
                    acc.push(d);
                }
                acc
            }),
            (None, None) => vec![non_negative("device", device)?],
        };
        let opts = EngineOptions {
            devices,
            layer_devices,
            max_seq_len: max_seq_len.map(|n| non_negative("max_seq_len", n)).transpose()?,
            cuda_graphs,
            kv_cache_dtype: kv_dtype(py, kv_cache_dtype)?,
            prefill_chunk: non_negative("prefill_chunk", prefill_chunk)?,
        };
        // on_event(kind, done, total, name, cached, seconds): kind "kernel" (name, cached, seconds
        // set) or "layers". An exception from it ends the load and is raised here.
        let mut raised: Option<PyErr> = None;
        let loaded = detached(py, || {
            let mut report = |e: LoadEvent| -> crate::Result<()> {
                let Some(f) = &on_event else { return Ok(()) };
                let args = match e {
                    LoadEvent::Kernel { done, total, name, cached, seconds } => {
                        ("kernel", done, total, name, cached, seconds)
                    }
                    LoadEvent::Layers { done, total } => ("layers", done, total, String::new(), false, 0.0),
                };
                Python::attach(|py| f.call1(py, args).map(|_| ())).map_err(|err| {
                    raised = Some(err);
                    Error::Interrupted
                })
            };
            Engine::load_with(&model_path, &opts, &mut report)
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let engine = loaded?;
        let logger = py.import("logging")?.call_method1("getLogger", ("qwen3_rs",))?;
        for w in &engine.warnings {
            logger.call_method1("warning", (format!("{}: {w}", model_path.display()),))?;
        }
        let config = json_to_py(py, &engine.config().raw)?;
        Ok(PyEngine { inner: Arc::new(Mutex::new(engine)), config })
    }

    /// Continuation of `ids` (greedy unless `do_sample=True`); returns the new token ids only, as a
    /// list or, with `return_numpy`, an int64 array. Sampling keywords: transformers' names.
    #[pyo3(signature = (ids, max_new_tokens = 20, ignore_eos = false, return_numpy = false, **sampling))]
    fn generate(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        max_new_tokens: i64,
        ignore_eos: bool,
        return_numpy: bool,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let ids = token_ids(ids)?;
        let opts = generate_options(py, max_new_tokens, ignore_eos, sampling)?;
        let inner = self.inner.clone();
        // Ctrl-C: Python's signal handlers run between tokens; their exception ends generation.
        let out = interruptible(py, |check| lock(&inner)?.generate_with(&ids, &opts, check))?;
        if return_numpy {
            let wide: Vec<i64> = out.into_iter().map(i64::from).collect();
            Ok(PyArray1::from_vec(py, wide).into_any().unbind())
        } else {
            Ok(out.into_pyobject(py)?.into_any().unbind())
        }
    }

    /// Starts a generation and returns an iterator over its new token ids, one decode step per
    /// item (the GIL released during each). Same arguments as `generate`.
    #[pyo3(signature = (ids, max_new_tokens = 20, ignore_eos = false, **sampling))]
    fn stream_ids(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        max_new_tokens: i64,
        ignore_eos: bool,
        sampling: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TokenStream> {
        let ids = token_ids(ids)?;
        let opts = generate_options(py, max_new_tokens, ignore_eos, sampling)?;
        let inner = self.inner.clone();
        let id = interruptible(py, |check| lock(&inner)?.start(&ids, &opts, check))?;
        Ok(TokenStream { inner: self.inner.clone(), id })
    }

    /// Logits at every position of `ids`: float32 array [len(ids), vocab_size].
    fn logits<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids = token_ids(ids)?;
        let inner = self.inner.clone();
        let rows = ids.len();
        let flat = detached(py, move || lock(&inner)?.logits(&ids))?;
        let cols = flat.len() / rows.max(1);
        PyArray1::from_vec(py, flat).reshape([rows, cols])
    }

    /// Seconds per greedy decode step with `context` positions cached, averaged over `steps`
    /// (benchmarking; the cache contents are not meaningful afterwards).
    #[pyo3(signature = (context, steps = 64))]
    fn time_decode(&self, py: Python<'_>, context: usize, steps: usize) -> PyResult<f64> {
        let inner = self.inner.clone();
        detached(py, move || lock(&inner)?.time_decode(context, steps))
    }

    /// Where the model lives: {"layers": [device of each layer], "embed_tokens": device,
    /// "norm": device, "lm_head": device, "bytes": {device: bytes of weights and KV cache}}.
    #[getter]
    fn placement<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        let (layers, bytes) = detached(py, move || {
            let engine = lock(&inner)?;
            Ok((engine.placement().layer_devices.clone(), engine.placement_bytes()))
        })?;
        let d = pyo3::types::PyDict::new(py);
        let head = *layers.last().unwrap_or(&0);
        d.set_item("embed_tokens", layers.first().copied().unwrap_or(0))?;
        d.set_item("norm", head)?;
        d.set_item("lm_head", head)?;
        d.set_item("layers", layers)?;
        d.set_item("bytes", bytes.into_iter().collect::<HashMap<_, _>>())?;
        Ok(d.into_any())
    }

    /// The model's config.json as a dict.
    #[getter]
    fn config(&self, py: Python<'_>) -> Py<PyAny> {
        self.config.clone_ref(py)
    }

    /// Positions the KV cache holds.
    #[getter]
    fn max_seq_len(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = self.inner.clone();
        detached(py, move || Ok(lock(&inner)?.max_seq_len()))
    }

    /// "fp16" or "q8".
    #[getter]
    fn kv_cache_dtype(&self, py: Python<'_>) -> PyResult<&'static str> {
        let inner = self.inner.clone();
        let dtype = detached(py, move || Ok(lock(&inner)?.kv_cache_dtype()))?;
        Ok(match dtype {
            KvDtype::Fp16 => "fp16",
            KvDtype::Q8 => "q8",
        })
    }

    /// KV-cache bytes per position over all layers, scales included.
    #[getter]
    fn kv_bytes_per_token(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = self.inner.clone();
        detached(py, move || Ok(lock(&inner)?.kv_cache_bytes().0))
    }

    /// KV-cache bytes allocated on the device (for max_seq_len positions).
    #[getter]
    fn kv_cache_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = self.inner.clone();
        detached(py, move || Ok(lock(&inner)?.kv_cache_bytes().1))
    }

    /// One layer's cached (K, V) for the first `length` positions of the last sequence, fp32
    /// arrays [num_key_value_heads, length, head_dim] (int8 caches dequantized on the GPU).
    fn kv_cache<'py>(
        &self,
        py: Python<'py>,
        layer: usize,
        length: usize,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let inner = self.inner.clone();
        let (k, v, n_kv, hd) = detached(py, move || {
            let engine = lock(&inner)?;
            let (k, v) = engine.kv_cache(layer, length)?;
            Ok((k, v, engine.config().num_key_value_heads, engine.config().head_dim))
        })?;
        let dims = |a: Vec<f32>| -> PyResult<Bound<'py, PyAny>> {
            Ok(PyArray1::from_vec(py, a).reshape([n_kv, length, hd])?.into_any())
        };
        Ok((dims(k)?, dims(v)?))
    }
}

/// The new token ids of one generation, produced as they are read (`Qwen3Engine.stream_ids`).
/// Starting another generation on the engine, or computing logits, ends it.
#[pyclass(module = "qwen3_rs")]
struct TokenStream {
    inner: Arc<Mutex<Engine>>,
    id: u64,
}

#[pymethods]
impl TokenStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        let (inner, id) = (self.inner.clone(), self.id);
        detached(py, move || lock(&inner)?.next_token(id))
    }

    /// True once the last token has been returned (eos or max_new_tokens reached).
    #[getter]
    fn finished(&self, py: Python<'_>) -> PyResult<bool> {
        let (inner, id) = (self.inner.clone(), self.id);
        detached(py, move || Ok(lock(&inner)?.is_finished(id)))
    }
}

/// Checks sampling keyword arguments as `generate` does, without an engine; raises
/// `InvalidArgumentError` (a ValueError) naming the argument, or TypeError.
#[pyfunction]
#[pyo3(signature = (**sampling))]
fn check_sampling(py: Python<'_>, sampling: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
    sampling_kwargs(py, sampling).map(|_| ())
}

fn lock(m: &Mutex<Engine>) -> crate::Result<std::sync::MutexGuard<'_, Engine>> {
    m.lock().map_err(|_| Error::Internal("a previous call panicked while holding the engine".into()))
}

fn json_to_py(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(py.import("json")?.call_method1("loads", (v.to_string(),))?.unbind())
}

/// Number of visible CUDA devices (0 without a driver or GPU).
#[pyfunction]
fn cuda_device_count() -> usize {
    executor::device_count()
}

/// Compiles every kernel the model in `model_dir` uses for `arch` (e.g. "sm_90") without a GPU.
/// Returns (kernel key, served from the disk cache) pairs.
#[pyfunction]
#[pyo3(signature = (model_dir, arch, cache_dir = None))]
fn compile_kernels(
    py: Python<'_>,
    model_dir: PathBuf,
    arch: String,
    cache_dir: Option<PathBuf>,
) -> PyResult<Vec<(String, bool)>> {
    detached(py, move || {
        let config = Qwen3Config::from_dir(&model_dir)?;
        let cache = cache_dir.or_else(crate::cuda::compile::default_cache_dir);
        crate::model::qwen3::kernel_types(&config)
            .into_iter()
            .map(|k| {
                let c = crate::cuda::compile::compile(&k, &arch, cache.as_deref())?;
                Ok((k.to_string(), c.from_disk_cache))
            })
            .collect()
    })
}

/// Device-to-device copy bandwidth of `device` in bytes/s (bytes read plus bytes written).
/// Seconds per launch of the prompt-processing kernels at the Qwen3-8B shapes for `rows` tokens
/// (random data): a list of (name, seconds, flops).
#[pyfunction]
#[pyo3(signature = (device = 0, rows = 2048))]
fn time_prompt_kernels(py: Python<'_>, device: usize, rows: usize) -> PyResult<Vec<(String, f64, usize)>> {
    detached(py, move || {
        let ex = executor_for(device)?;
        let mut cases = crate::bench::gemm_cases(&ex, rows)?;
        for dtype in [KvDtype::Fp16, KvDtype::Q8] {
            cases.push(crate::bench::attention_prefill_case(&ex, rows, dtype)?);
        }
        cases.into_iter().map(|mut c| Ok((c.name.clone(), ex.time(20, || c.launch(&ex))?, c.flops))).collect()
    })
}

#[pyfunction]
#[pyo3(signature = (device = 0, bytes = 1 << 30))]
fn copy_bandwidth(py: Python<'_>, device: usize, bytes: usize) -> PyResult<f64> {
    detached(py, move || executor_for(device)?.copy_bandwidth(bytes))
}

/// (free, total) memory of `device` in bytes.
#[pyfunction]
#[pyo3(signature = (device = 0))]
fn cuda_memory_info(py: Python<'_>, device: usize) -> PyResult<(usize, usize)> {
    detached(py, move || executor_for(device)?.memory_info())
}

/// The NVRTC version in use, as (major, minor).
#[pyfunction]
fn nvrtc_version(py: Python<'_>) -> PyResult<(i32, i32)> {
    detached(py, crate::cuda::compile::nvrtc_version)
}

// ---- single-kernel runs for tests (module `qwen3_rs._qwen3_rs.ops`) ----

fn executor_for(device: usize) -> crate::Result<Arc<Executor>> {
    static EXECUTORS: Mutex<Option<HashMap<usize, Arc<Executor>>>> = Mutex::new(None);
    let mut map = EXECUTORS.lock().map_err(|_| Error::Internal("executor cache poisoned".into()))?;
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(ex) = map.get(&device) {
        return Ok(ex.clone());
    }
    let ex = Arc::new(Executor::new(device)?);
    map.insert(device, ex.clone());
    Ok(ex)
}

/// A flat copy of a numpy array cast to `dtype`, optionally reinterpreted as `view`.
fn flat<T: Element + Copy>(obj: &Bound<'_, PyAny>, dtype: &str, view: Option<&str>) -> PyResult<Vec<T>> {
    let np = obj.py().import("numpy")?;
    let mut a = np.call_method1("ascontiguousarray", (obj, dtype))?;
    if let Some(v) = view {
        a = a.call_method1("view", (v,))?;
    }
    let a: PyReadonlyArray1<T> = a.call_method0("ravel")?.extract()?;
    Ok(a.as_slice()?.to_vec())
}

fn f32s(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    flat(obj, "float32", None)
}

fn f16s(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u16>> {
    flat(obj, "float16", Some("uint16"))
}

fn i8s(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    flat(obj, "int8", Some("uint8"))
}

fn i32s(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    flat(obj, "int32", Some("uint32"))
}

fn shape(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    obj.getattr("shape")?.extract()
}

type F32Array<'py> = Bound<'py, PyArray1<f32>>;

fn out<'py>(py: Python<'py>, v: Vec<f32>) -> F32Array<'py> {
    PyArray1::from_vec(py, v)
}

#[pyfunction]
#[pyo3(signature = (table, token, device = 0))]
fn embedding<'py>(
    py: Python<'py>,
    table: &Bound<'py, PyAny>,
    token: i32,
    device: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let s = shape(table)?;
    let (v, h, t) = (s[0], s.get(1).copied().unwrap_or(0), f16s(table)?);
    Ok(out(py, detached(py, move || ops::embedding(&*executor_for(device)?, &t, v, h, token))?))
}

#[pyfunction]
#[pyo3(signature = (x, weight, eps, device = 0))]
fn rms_norm<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    eps: f32,
    device: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (x, w) = (f32s(x)?, f16s(weight)?);
    Ok(out(py, detached(py, move || ops::rms_norm(&*executor_for(device)?, &x, &w, eps))?))
}

/// The optional fused RMSNorm of the GEMV test entry points.
fn norm(weight: &Option<Vec<u16>>, eps: f32) -> Option<(&[u16], f32)> {
    weight.as_deref().map(|w| (w, eps))
}

struct AwqArrays {
    qweight: Vec<u32>,
    qzeros: Vec<u32>,
    scales: Vec<u16>,
    n: usize,
}

impl AwqArrays {
    fn new(
        qweight: &Bound<'_, PyAny>,
        qzeros: &Bound<'_, PyAny>,
        scales: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let n = shape(scales)?.get(1).copied().unwrap_or(0);
        Ok(AwqArrays { qweight: i32s(qweight)?, qzeros: i32s(qzeros)?, scales: f16s(scales)?, n })
    }

    fn from_tuple(t: &Bound<'_, PyTuple>) -> PyResult<Self> {
        Self::new(&t.get_item(0)?, &t.get_item(1)?, &t.get_item(2)?)
    }

    fn host(&self) -> ops::AwqHost<'_> {
        ops::AwqHost { qweight: &self.qweight, qzeros: &self.qzeros, scales: &self.scales, n: self.n }
    }
}

#[pyfunction]
#[pyo3(signature = (x, qweight, qzeros, scales, group_size, device = 0, norm_weight = None, eps = 1e-6))]
#[allow(clippy::too_many_arguments)]
fn awq_gemv<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    qweight: &Bound<'py, PyAny>,
    qzeros: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    group_size: usize,
    device: usize,
    norm_weight: Option<&Bound<'py, PyAny>>,
    eps: f32,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (x, w) = (f32s(x)?, AwqArrays::new(qweight, qzeros, scales)?);
    let nw = norm_weight.map(f16s).transpose()?;
    let y = detached(py, move || {
        ops::awq_gemv(
            &*executor_for(device)?,
            &x,
            &[w.host()],
            w.n,
            group_size,
            Epilogue::Store,
            None,
            norm(&nw, eps),
        )
    })?;
    Ok(out(py, y))
}

#[pyfunction]
#[pyo3(signature = (x, qweight, qzeros, scales, group_size, residual, device = 0))]
#[allow(clippy::too_many_arguments)]
fn awq_gemv_residual<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    qweight: &Bound<'py, PyAny>,
    qzeros: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    group_size: usize,
    residual: &Bound<'py, PyAny>,
    device: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (x, w, r) = (f32s(x)?, AwqArrays::new(qweight, qzeros, scales)?, f32s(residual)?);
    let y = detached(py, move || {
        ops::awq_gemv(
            &*executor_for(device)?,
            &x,
            &[w.host()],
            w.n,
            group_size,
            Epilogue::AddTo,
            Some(&r),
            None,
        )
    })?;
    Ok(out(py, y))
}

#[pyfunction]
#[pyo3(signature = (x, gate, up, group_size, device = 0, norm_weight = None, eps = 1e-6))]
#[allow(clippy::too_many_arguments)]
fn awq_gate_up<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gate: &Bound<'py, PyTuple>,
    up: &Bound<'py, PyTuple>,
    group_size: usize,
    device: usize,
    norm_weight: Option<&Bound<'py, PyAny>>,
    eps: f32,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (x, g, u) = (f32s(x)?, AwqArrays::from_tuple(gate)?, AwqArrays::from_tuple(up)?);
    let nw = norm_weight.map(f16s).transpose()?;
    let y = detached(py, move || {
        ops::awq_gemv(
            &*executor_for(device)?,
            &x,
            &[g.host(), u.host()],
            g.n,
            group_size,
            Epilogue::SiluMul,
            None,
            norm(&nw, eps),
        )
    })?;
    Ok(out(py, y))
}

/// The prompt path's GEMM on rows x [rows, k]: `linears` is one (qweight, qzeros, scales) tuple,
/// or two (gate, up) for epilogue "silu_mul"; epilogue "add" adds to `residual` [rows, n].
#[pyfunction]
#[pyo3(signature = (x, linears, group_size, epilogue = "store", residual = None, device = 0, norm_weight = None, eps = 1e-6))]
#[allow(clippy::too_many_arguments)]
fn awq_gemm<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    linears: Vec<Bound<'py, PyTuple>>,
    group_size: usize,
    epilogue: &str,
    residual: Option<&Bound<'py, PyAny>>,
    device: usize,
    norm_weight: Option<&Bound<'py, PyAny>>,
    eps: f32,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let rows = shape(x)?.first().copied().unwrap_or(0);
    let epilogue = match epilogue {
        "store" => Epilogue::Store,
        "add" => Epilogue::AddTo,
        "silu_mul" => Epilogue::SiluMul,
        other => return Err(PyValueError::new_err(format!("unknown epilogue {other:?}"))),
    };
    let x = f32s(x)?;
    let ws = linears.iter().map(AwqArrays::from_tuple).collect::<PyResult<Vec<_>>>()?;
    let r = residual.map(f32s).transpose()?;
    let nw = norm_weight.map(f16s).transpose()?;
    let n = ws.first().map_or(0, |w| w.n);
    let y = detached(py, move || {
        let hosts: Vec<_> = ws.iter().map(AwqArrays::host).collect();
        let ex = executor_for(device)?;
        ops::awq_gemm(&ex, &x, rows, &hosts, n, group_size, epilogue, r.as_deref(), norm(&nw, eps))
    })?;
    PyArray1::from_vec(py, y).reshape([rows, n])
}

#[pyfunction]
#[pyo3(signature = (x, weight, device = 0))]
fn half_gemv<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    device: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (x, w) = (f32s(x)?, f16s(weight)?);
    Ok(out(py, detached(py, move || ops::half_gemv(&*executor_for(device)?, &x, &w))?))
}

#[pyfunction]
#[pyo3(signature = (qkv, q_norm, k_norm, n_heads, n_kv_heads, head_dim, pos, rope_theta, eps, device = 0, kv_cache_dtype = "fp16"))]
#[allow(clippy::too_many_arguments)]
fn qk_norm_rope<'py>(
    py: Python<'py>,
    qkv: &Bound<'py, PyAny>,
    q_norm: &Bound<'py, PyAny>,
    k_norm: &Bound<'py, PyAny>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    pos: usize,
    rope_theta: f32,
    eps: f32,
    device: usize,
    kv_cache_dtype: &str,
) -> PyResult<(F32Array<'py>, F32Array<'py>, F32Array<'py>)> {
    let dtype = kv_dtype(py, kv_cache_dtype)?;
    let (qkv, qn, kn) = (f32s(qkv)?, f16s(q_norm)?, f16s(k_norm)?);
    let sh = HeadShape { head_dim, n_heads, n_kv_heads };
    let (q, k, v) = detached(py, move || {
        ops::qk_norm_rope(&*executor_for(device)?, &qkv, &qn, &kn, sh, pos, rope_theta, eps, dtype)
    })?;
    Ok((out(py, q), out(py, k), out(py, v)))
}

#[pyfunction]
/// Caches are fp16, or int8 with `k_scale` / `v_scale` (fp16, [n_kv_heads, seq, head_dim / block]).
#[pyo3(signature = (q, k_cache, v_cache, n_heads, device = 0, k_scale = None, v_scale = None))]
#[allow(clippy::too_many_arguments)]
fn attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k_cache: &Bound<'py, PyAny>,
    v_cache: &Bound<'py, PyAny>,
    n_heads: usize,
    device: usize,
    k_scale: Option<&Bound<'py, PyAny>>,
    v_scale: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let s = shape(k_cache)?;
    if s.len() != 3 {
        return Err(PyTypeError::new_err("k_cache must be [n_kv_heads, seq, head_dim]"));
    }
    let sh = HeadShape { head_dim: s[2], n_heads, n_kv_heads: s[0] };
    let (q, cache) = (f32s(q)?, HostCache::new(k_cache, v_cache, k_scale, v_scale)?);
    let y = detached(py, move || ops::attention(&*executor_for(device)?, &q, &cache.host(), sh))?;
    Ok(out(py, y))
}

/// A KV cache from Python arrays: fp16, or int8 with scales.
struct HostCache {
    dtype: KvDtype,
    k: Vec<u8>,
    v: Vec<u8>,
    k_scale: Vec<u16>,
    v_scale: Vec<u16>,
}

impl HostCache {
    fn new(
        k_cache: &Bound<'_, PyAny>,
        v_cache: &Bound<'_, PyAny>,
        k_scale: Option<&Bound<'_, PyAny>>,
        v_scale: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let (dtype, k, v, k_scale, v_scale) = match (k_scale, v_scale) {
            (Some(ks), Some(vs)) => (KvDtype::Q8, i8s(k_cache)?, i8s(v_cache)?, f16s(ks)?, f16s(vs)?),
            (None, None) => {
                let bytes = |a: Vec<u16>| a.into_iter().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
                (KvDtype::Fp16, bytes(f16s(k_cache)?), bytes(f16s(v_cache)?), Vec::new(), Vec::new())
            }
            _ => return Err(PyTypeError::new_err("give both k_scale and v_scale (int8 caches) or neither")),
        };
        Ok(HostCache { dtype, k, v, k_scale, v_scale })
    }

    fn host(&self) -> ops::KvHost<'_> {
        ops::KvHost {
            dtype: self.dtype,
            k: &self.k,
            v: &self.v,
            k_scale: &self.k_scale,
            v_scale: &self.v_scale,
        }
    }
}

/// Causal attention of queries q [rows, n_heads, head_dim] at the last `rows` positions of the
/// caches (fp16, or int8 with `k_scale` / `v_scale`), through the prompt path.
#[pyfunction]
#[pyo3(signature = (q, k_cache, v_cache, device = 0, k_scale = None, v_scale = None))]
fn attention_prefill<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k_cache: &Bound<'py, PyAny>,
    v_cache: &Bound<'py, PyAny>,
    device: usize,
    k_scale: Option<&Bound<'py, PyAny>>,
    v_scale: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray3<f32>>> {
    let (qs, s) = (shape(q)?, shape(k_cache)?);
    if qs.len() != 3 || s.len() != 3 {
        return Err(PyTypeError::new_err(
            "q must be [rows, n_heads, head_dim], caches [n_kv_heads, seq, head_dim]",
        ));
    }
    let sh = HeadShape { head_dim: s[2], n_heads: qs[1], n_kv_heads: s[0] };
    let (q, cache) = (f32s(q)?, HostCache::new(k_cache, v_cache, k_scale, v_scale)?);
    let y = detached(py, move || ops::attention_prefill(&*executor_for(device)?, &q, &cache.host(), sh))?;
    PyArray1::from_vec(py, y).reshape([qs[0], qs[1], qs[2]])
}

/// int8 cache rows [rows, head_dim] with fp16 scales [rows, head_dim / block] back to fp32.
#[pyfunction]
#[pyo3(signature = (values, scales, device = 0))]
fn kv_dequant<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    scales: &Bound<'py, PyAny>,
    device: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let head_dim = shape(values)?.last().copied().unwrap_or(0);
    let (v, s) = (i8s(values)?, f16s(scales)?);
    Ok(out(py, detached(py, move || ops::kv_dequant(&*executor_for(device)?, &v, &s, head_dim))?))
}

/// Panics inside the core, for the test that a Rust panic surfaces as `InternalError`.
#[pyfunction]
fn panic_in_core(py: Python<'_>) -> PyResult<()> {
    detached(py, || -> crate::Result<()> { panic!("deliberate panic from panic_in_core") })
}

fn kv_dtype(py: Python<'_>, name: &str) -> PyResult<KvDtype> {
    match name {
        "fp16" | "float16" => Ok(KvDtype::Fp16),
        "q8" | "int8" => Ok(KvDtype::Q8),
        _ => Err(to_py(
            py,
            Error::InvalidArgument(format!(
                "kv_cache_dtype {name:?} is not supported: use \"fp16\" or \"q8\""
            )),
        )),
    }
}

#[pyfunction]
#[pyo3(signature = (x, device = 0))]
fn argmax(py: Python<'_>, x: &Bound<'_, PyAny>, device: usize) -> PyResult<u32> {
    let x = f32s(x)?;
    detached(py, move || ops::argmax(&*executor_for(device)?, &x))
}

/// The sampling kernel: one draw per position of `positions` from `logits`, each with the
/// repetition penalty applying to the tokens in `present`. Sampling keywords as `generate`.
#[pyfunction]
#[pyo3(signature = (logits, positions, seed = 0, present = None, device = 0, **sampling))]
fn sample(
    py: Python<'_>,
    logits: &Bound<'_, PyAny>,
    positions: Vec<i32>,
    seed: u64,
    present: Option<Vec<u32>>,
    device: usize,
    sampling: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<u32>> {
    let x = f32s(logits)?;
    let (opts, _) = sampling_kwargs(py, sampling)?;
    let present = present.unwrap_or_default();
    detached(py, move || ops::sample(&*executor_for(device)?, &x, &opts, seed, &present, &positions))
}

#[pymodule]
fn _qwen3_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<TokenStream>()?;
    m.add_function(wrap_pyfunction!(check_sampling, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(compile_kernels, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_version, m)?)?;
    m.add_function(wrap_pyfunction!(copy_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_memory_info, m)?)?;
    m.add_function(wrap_pyfunction!(time_prompt_kernels, m)?)?;
    let o = PyModule::new(m.py(), "ops")?;
    o.add_function(wrap_pyfunction!(embedding, &o)?)?;
    o.add_function(wrap_pyfunction!(rms_norm, &o)?)?;
    o.add_function(wrap_pyfunction!(awq_gemv, &o)?)?;
    o.add_function(wrap_pyfunction!(awq_gemv_residual, &o)?)?;
    o.add_function(wrap_pyfunction!(awq_gate_up, &o)?)?;
    o.add_function(wrap_pyfunction!(half_gemv, &o)?)?;
    o.add_function(wrap_pyfunction!(qk_norm_rope, &o)?)?;
    o.add_function(wrap_pyfunction!(attention, &o)?)?;
    o.add_function(wrap_pyfunction!(awq_gemm, &o)?)?;
    o.add_function(wrap_pyfunction!(attention_prefill, &o)?)?;
    o.add_function(wrap_pyfunction!(argmax, &o)?)?;
    o.add_function(wrap_pyfunction!(sample, &o)?)?;
    o.add_function(wrap_pyfunction!(kv_dequant, &o)?)?;
    o.add_function(wrap_pyfunction!(panic_in_core, &o)?)?;
    m.add_submodule(&o)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
