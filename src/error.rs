//! The one error type of the crate. Every fallible path returns it; the Python layer maps each
//! variant onto an exception class of `qwen3_rs.errors`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file or directory that does not exist.
    #[error("{path}: {what}")]
    NotFound { path: PathBuf, what: String },

    /// A model file that exists but is malformed or does not match the config.
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },

    /// A bad argument from the caller (token ids, lengths, devices).
    #[error("{0}")]
    InvalidArgument(String),

    /// The GPU has not enough free memory.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),

    /// No usable CUDA driver, device or NVRTC library.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),

    #[error("CUDA driver error: {0}")]
    Driver(#[from] cudarc::driver::DriverError),

    /// NVRTC rejected a kernel; carries the kernel key and the compiler log.
    #[error("NVRTC failed to compile kernel {kernel} for {arch}: {log}")]
    Compile { kernel: String, arch: String, log: String },

    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// The caller asked to stop (e.g. Ctrl-C); the engine is ready for the next call.
    #[error("interrupted")]
    Interrupted,

    /// A broken internal invariant; never expected, reported instead of panicking.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn format(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        Error::Format { path: path.into(), what: what.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Shorthand for argument checks: `ensure(cond, || format!(..))?`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::InvalidArgument(msg()))
    }
}
