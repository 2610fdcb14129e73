//! Safetensors checkpoints over a memory map: shard discovery, header parsing, and validation of every
//! tensor's name, dtype and shape against the config before anything touches the GPU.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::Qwen3Config;
use crate::error::{Error, Result};

/// One tensor of a checkpoint: where its bytes lie, and what they are.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file's mapping.
    start: usize,
    end: usize,
}

/// All shards of a checkpoint, mapped, with a name table.
pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    tensors: HashMap<String, TensorEntry>,
}

impl Checkpoint {
    /// Maps the checkpoint's safetensors files: those named by `model.safetensors.index.json`, else
    /// every `*.safetensors` file of the directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let names = shard_names(dir)?;
        let mut files = Vec::with_capacity(names.len());
        let mut tensors = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound {
                    path: path.clone(),
                    what: "shard listed in model.safetensors.index.json is missing".into(),
                },
                _ => Error::io(&path, e),
            })?;
            // SAFETY: the mapping is read-only; a file changed under us while loading can give wrong
            // weights but not memory unsafety in this process beyond what reading bytes implies.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| Error::format(&path, format!("not a valid safetensors file: {e}")))?;
            let data_start = 8 + header_len;
            for (tname, info) in meta.tensors() {
                let entry = TensorEntry {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if tensors.insert(tname.clone(), entry).is_some() {
                    return Err(Error::format(
                        &path,
                        format!("tensor {tname} appears in more than one shard"),
                    ));
                }
            }
            files.push((path, map));
        }
        Ok(Checkpoint { files, tensors })
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, entry: &TensorEntry) -> &[u8] {
        &self.files[entry.file].1[entry.start..entry.end]
    }

    pub fn path_of(&self, entry: &TensorEntry) -> &Path {
        &self.files[entry.file].0
    }

    /// Checks that every tensor the model needs is present with the right dtype and shape, and that
    /// fp16 scales are finite. Returns warnings (unexpected extra tensors) for the caller to log.
    pub fn validate(&self, config: &Qwen3Config) -> Result<Vec<String>> {
        let expected = expected_tensors(config);
        for (name, (dtype, shape)) in &expected {
            let entry = self
                .tensors
                .get(name)
                .ok_or_else(|| Error::format(self.dir(), format!("missing tensor {name}")))?;
            if entry.dtype != *dtype || entry.shape != *shape {
                return Err(Error::format(
                    self.path_of(entry),
                    format!(
                        "tensor {name} is {:?} {:?}; expected {:?} {:?} from config.json",
                        entry.dtype, entry.shape, dtype, shape
                    ),
                ));
            }
            if name.ends_with(".scales") {
                self.check_finite_f16(name, entry)?;
            }
        }
        let mut extra: Vec<&String> = self.tensors.keys().filter(|n| !expected.contains_key(*n)).collect();
        extra.sort();
        Ok(extra.into_iter().map(|n| format!("ignoring unexpected tensor {n}")).collect())
    }

    /// Rejects NaN or inf in AWQ scales: they would silently poison every output of the layer.
    fn check_finite_f16(&self, name: &str, entry: &TensorEntry) -> Result<()> {
        let bad = self
            .bytes(entry)
            .chunks_exact(2)
            .position(|b| (u16::from_le_bytes([b[0], b[1]]) & 0x7c00) == 0x7c00);
        match bad {
            None => Ok(()),
            Some(i) => Err(Error::format(
                self.path_of(entry),
                format!("tensor {name} holds a NaN or infinite scale at flat index {i}"),
            )),
        }
    }

    fn dir(&self) -> &Path {
        self.files.first().and_then(|(p, _)| p.parent()).unwrap_or(Path::new("."))
    }
}

/// The names of the shard files, in a stable order.
fn shard_names(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Err(Error::NotFound { path: dir.into(), what: "model directory not found".into() });
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "missing weight_map"))?;
        let mut names: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::format(&index, format!("weight_map entry for {tensor} is not a file name"))
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(Error::format(&index, format!("shard name {file:?} leaves the model directory")));
            }
            if !names.iter().any(|n| n == file) {
                names.push(file.to_string());
            }
        }
        names.sort();
        return Ok(names);
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::NotFound {
            path: dir.into(),
            what: "no *.safetensors file in the model directory".into(),
        });
    }
    Ok(names)
}

/// The quantized linears of a decoder layer with their (input, output) dimensions.
pub fn awq_linears(c: &Qwen3Config) -> [(&'static str, usize, usize); 7] {
    let (h, i, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
    [
        ("self_attn.q_proj", h, q),
        ("self_attn.k_proj", h, kv),
        ("self_attn.v_proj", h, kv),
        ("self_attn.o_proj", q, h),
        ("mlp.gate_proj", h, i),
        ("mlp.up_proj", h, i),
        ("mlp.down_proj", i, h),
    ]
}

/// Every tensor the model reads, with its dtype and shape, as the Hugging Face checkpoint names it.
pub fn expected_tensors(c: &Qwen3Config) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    let mut t = BTreeMap::new();
    let g = c.quantization.group_size;
    t.insert("model.embed_tokens.weight".into(), (Dtype::F16, vec![c.vocab_size, c.hidden_size]));
    t.insert("model.norm.weight".into(), (Dtype::F16, vec![c.hidden_size]));
    if !c.tie_word_embeddings {
        t.insert("lm_head.weight".into(), (Dtype::F16, vec![c.vocab_size, c.hidden_size]));
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.insert(format!("{p}.{norm}.weight"), (Dtype::F16, vec![c.hidden_size]));
        }
        for norm in ["q_norm", "k_norm"] {
            t.insert(format!("{p}.self_attn.{norm}.weight"), (Dtype::F16, vec![c.head_dim]));
        }
        for (name, k, n) in awq_linears(c) {
            t.insert(format!("{p}.{name}.qweight"), (Dtype::I32, vec![k, n / 8]));
            t.insert(format!("{p}.{name}.qzeros"), (Dtype::I32, vec![k / g, n / 8]));
            t.insert(format!("{p}.{name}.scales"), (Dtype::F16, vec![k / g, n]));
        }
    }
    t
}
