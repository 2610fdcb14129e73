//! qwen3-rs: Qwen3 inference on AWQ 4-bit checkpoints with its own CUDA kernels.
//!
//! The core is usable from Rust alone (`engine::Engine`); `python` (feature "python") is a thin
//! PyO3 skin over it.

pub mod bench;
pub mod config;
pub mod cuda;
pub mod engine;
pub mod error;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod placement;
pub mod sampler;
pub mod weights;

#[cfg(feature = "python")]
mod python;

pub use engine::{Engine, EngineOptions};
pub use error::{Error, Result};
pub use sampler::SamplingOptions;
