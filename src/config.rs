//! config.json, its quantization_config, and generation_config.json of a Hugging Face Qwen3 checkpoint.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The AWQ 4-bit GEMM quantization this engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqConfig {
    pub group_size: usize,
}

/// The model dimensions and constants, as named in config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub quantization: AwqConfig,
    /// Generation stops at any of these (generation_config.json, else config.json).
    pub eos_token_ids: Vec<u32>,
    /// The parsed config.json, kept for the Python `config` property.
    pub raw: Value,
}

impl Qwen3Config {
    /// Reads `config.json` and, when present, `generation_config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let raw = read_json(&path)?;
        let mut config = Self::from_json(&path, raw)?;
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen = read_json(&gen_path)?;
            if let Some(ids) = gen.get("eos_token_id") {
                config.eos_token_ids = token_ids(&gen_path, "eos_token_id", ids)?;
            }
        }
        Ok(config)
    }

    /// Parses and validates a config.json document; `path` names it in errors.
    pub fn from_json(path: &Path, raw: Value) -> Result<Self> {
        let obj = raw.as_object().ok_or_else(|| Error::format(path, "config.json is not a JSON object"))?;
        let f = Fields { path, obj };
        if let Some(mt) = obj.get("model_type").and_then(Value::as_str) {
            if mt != "qwen3" {
                return Err(Error::format(
                    path,
                    format!("model_type is {mt:?}; this engine runs \"qwen3\" models"),
                ));
            }
        }
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let head_dim = match obj.get("head_dim") {
            Some(_) => f.usize("head_dim")?,
            None => hidden_size / num_attention_heads,
        };
        let eos_token_ids = match obj.get("eos_token_id") {
            Some(v) if !v.is_null() => token_ids(path, "eos_token_id", v)?,
            _ => Vec::new(),
        };
        let config = Qwen3Config {
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: f.usize("num_key_value_heads")?,
            head_dim,
            vocab_size: f.usize("vocab_size")?,
            max_position_embeddings: f.usize("max_position_embeddings")?,
            rope_theta: f.f64_or("rope_theta", 10000.0)?,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            quantization: awq_config(path, obj.get("quantization_config"))?,
            eos_token_ids,
            raw: raw.clone(),
        };
        config.validate(path)?;
        Ok(config)
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(Error::format(path, what));
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if ![32, 64, 128, 256].contains(&self.head_dim) {
            return bad(format!("head_dim {} is not supported (32, 64, 128 or 256)", self.head_dim));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta {} must be positive", self.rope_theta));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return bad(format!("rms_norm_eps {} must be positive", self.rms_norm_eps));
        }
        if let Some(act) = self.raw.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return bad(format!("hidden_act {act:?} is not supported (silu)"));
            }
        }
        if self.raw.get("attention_bias").and_then(Value::as_bool) == Some(true) {
            return bad("attention_bias true is not supported".into());
        }
        if self.vocab_size > i32::MAX as usize {
            return bad(format!("vocab_size {} is too large", self.vocab_size));
        }
        let g = self.quantization.group_size;
        // Every quantized linear's input dimension must split into whole groups.
        for (name, k) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads * head_dim", self.q_dim()),
        ] {
            if k % g != 0 {
                return bad(format!("quantization_config.group_size {g} does not divide {name} ({k})"));
            }
        }
        // Output dimensions form 16-row tensor-core tiles (and AWQ packs 8 per int32).
        for (name, n) in [
            ("intermediate_size", self.intermediate_size),
            ("num_key_value_heads * head_dim", self.kv_dim()),
            ("hidden_size", self.hidden_size),
        ] {
            if n % 16 != 0 {
                return bad(format!("{name} ({n}) is not a multiple of 16"));
            }
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound { path: path.into(), what: "file not found".into() }
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

fn token_ids(path: &Path, field: &str, v: &Value) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .filter(|&i| i <= i32::MAX as u64)
            .map(|i| i as u32)
            .ok_or_else(|| Error::format(path, format!("{field}: {x} is not a token id")))
    };
    match v {
        Value::Array(items) => items.iter().map(one).collect(),
        x => Ok(vec![one(x)?]),
    }
}

fn awq_config(path: &Path, q: Option<&Value>) -> Result<AwqConfig> {
    let q = q.and_then(Value::as_object).ok_or_else(|| {
        Error::format(path, "quantization_config is missing: this engine runs AWQ 4-bit checkpoints")
    })?;
    let f = Fields { path, obj: q };
    let field = |name: &str| format!("quantization_config.{name}");
    let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
    if method != "awq" {
        return Err(Error::format(
            path,
            format!("{} is {method:?}; only \"awq\" is supported", field("quant_method")),
        ));
    }
    let bits = f.usize("bits").or_else(|_| f.usize("w_bit"))?;
    if bits != 4 {
        return Err(Error::format(path, format!("{} is {bits}; only 4-bit AWQ is supported", field("bits"))));
    }
    let group_size = f.usize("group_size").or_else(|_| f.usize("q_group_size"))?;
    // The GEMV's tensor-core tiles span 64 inputs, so groups are whole multiples of 64.
    if group_size == 0 || group_size % 64 != 0 {
        return Err(Error::format(
            path,
            format!("{} is {group_size}; a positive multiple of 64 is supported", field("group_size")),
        ));
    }
    if q.get("zero_point").and_then(Value::as_bool) == Some(false) {
        return Err(Error::format(
            path,
            format!("{} is false; AWQ with zero points is required", field("zero_point")),
        ));
    }
    let version = q.get("version").and_then(Value::as_str).unwrap_or("gemm");
    if !version.eq_ignore_ascii_case("gemm") {
        return Err(Error::format(
            path,
            format!("{} is {version:?}; only GEMM packing is supported", field("version")),
        ));
    }
    match q.get("modules_to_not_convert") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(v) => {
            return Err(Error::format(
                path,
                format!("{} is {v}; unquantized layers are not supported", field("modules_to_not_convert")),
            ))
        }
    }
    Ok(AwqConfig { group_size })
}

/// Typed access to the fields of a JSON object, with errors that name the field.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn usize(&self, name: &str) -> Result<usize> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Err(Error::format(self.path, format!("missing field {name}"))),
            Some(v) => {
                v.as_u64().filter(|&n| n > 0 && n <= u32::MAX as u64).map(|n| n as usize).ok_or_else(|| {
                    Error::format(self.path, format!("{name} is {v}; a positive integer is required"))
                })
            }
        }
    }

    fn f64_or(&self, name: &str, default: f64) -> Result<f64> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::format(self.path, format!("{name} is {v}; a number is required"))),
        }
    }

    fn bool_or(&self, name: &str, default: bool) -> Result<bool> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Error::format(self.path, format!("{name} is {v}; true or false is required"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn qwen3_8b() -> Value {
        json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "rope_theta": 1000000, "rms_norm_eps": 1e-6, "vocab_size": 151936,
            "max_position_embeddings": 40960, "tie_word_embeddings": false,
            "attention_bias": false, "hidden_act": "silu", "bos_token_id": 151643,
            "eos_token_id": 151645, "torch_dtype": "float16",
            "quantization_config": {"bits": 4, "group_size": 128, "zero_point": true,
                "version": "gemm", "quant_method": "awq", "modules_to_not_convert": null}
        })
    }

    fn parse(v: Value) -> Result<Qwen3Config> {
        Qwen3Config::from_json(Path::new("config.json"), v)
    }

    #[test]
    fn parses_qwen3_8b() {
        let c = parse(qwen3_8b()).unwrap();
        assert_eq!(c.hidden_size, 4096);
        assert_eq!(c.q_dim(), 4096);
        assert_eq!(c.kv_dim(), 1024);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.quantization.group_size, 128);
        assert_eq!(c.eos_token_ids, vec![151645]);
        assert!(!c.tie_word_embeddings);
    }

    fn err_of(edit: impl FnOnce(&mut Value)) -> String {
        let mut v = qwen3_8b();
        edit(&mut v);
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn missing_field_is_named() {
        let e = err_of(|v| {
            v.as_object_mut().unwrap().remove("hidden_size");
        });
        assert!(e.contains("missing field hidden_size"), "{e}");
    }

    #[test]
    fn rejects_non_awq() {
        let e = err_of(|v| v["quantization_config"]["quant_method"] = json!("gptq"));
        assert!(e.contains("quant_method") && e.contains("gptq"), "{e}");
        let e = err_of(|v| v["quantization_config"]["bits"] = json!(8));
        assert!(e.contains("bits is 8"), "{e}");
        let e = err_of(|v| v["quantization_config"]["version"] = json!("gemv"));
        assert!(e.contains("GEMM"), "{e}");
        let e = err_of(|v| v["quantization_config"]["zero_point"] = json!(false));
        assert!(e.contains("zero_point"), "{e}");
        let e = err_of(|v| {
            v.as_object_mut().unwrap().remove("quantization_config");
        });
        assert!(e.contains("quantization_config is missing"), "{e}");
    }

    #[test]
    fn group_must_divide_dimensions() {
        let e = err_of(|v| v["intermediate_size"] = json!(12288 + 64));
        assert!(e.contains("does not divide intermediate_size"), "{e}");
        let e = err_of(|v| v["quantization_config"]["group_size"] = json!(32));
        assert!(e.contains("group_size is 32"), "{e}");
    }

    #[test]
    fn rejects_bad_heads_and_values() {
        let e = err_of(|v| v["num_key_value_heads"] = json!(5));
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = err_of(|v| v["vocab_size"] = json!(-3));
        assert!(e.contains("vocab_size is -3"), "{e}");
        let e = err_of(|v| v["model_type"] = json!("llama"));
        assert!(e.contains("model_type"), "{e}");
    }

    #[test]
    fn eos_list_and_generation_config() {
        let dir = std::env::temp_dir().join(format!("qwen3rs-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), qwen3_8b().to_string()).unwrap();
        std::fs::write(
            dir.join("generation_config.json"),
            json!({"eos_token_id": [151645, 151643]}).to_string(),
        )
        .unwrap();
        let c = Qwen3Config::from_dir(&dir).unwrap();
        assert_eq!(c.eos_token_ids, vec![151645, 151643]);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Qwen3Config::from_dir(&dir).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
    }
}
