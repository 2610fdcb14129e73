//! NVRTC: finding the library, compiling a kernel specialization to CUBIN for one architecture,
//! and the on-disk module cache (keyed by kernel key, arch, NVRTC version and source hash) that
//! lets a second process compile nothing.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cudarc::nvrtc::sys;
use sha2::{Digest, Sha256};

use crate::cuda::kernel::KernelType;
use crate::error::{Error, Result};

/// Environment variable naming an NVRTC library file to use before any other.
pub const NVRTC_ENV: &str = "QWEN3_RS_NVRTC";
/// Last-resort NVRTC library file (the Python package points it at the nvidia-cuda-nvrtc wheel).
pub const NVRTC_FALLBACK_ENV: &str = "QWEN3_RS_NVRTC_FALLBACK";
/// Directory of the compiled-kernel cache.
pub const CACHE_ENV: &str = "QWEN3_RS_CACHE_DIR";

/// Makes NVRTC loadable by its soname, preferring in order: $QWEN3_RS_NVRTC, whatever the dynamic
/// loader already finds, a CUDA toolkit ($CUDA_HOME, $CUDA_PATH, /usr/local/cuda), and
/// $QWEN3_RS_NVRTC_FALLBACK. Loading a file by absolute path with RTLD_GLOBAL makes cudarc's
/// later dlopen by soname resolve to it. Returns the NVRTC version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    static FOUND: OnceLock<std::result::Result<(i32, i32), String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            locate_nvrtc()?;
            let (mut major, mut minor) = (0 as c_int, 0 as c_int);
            // SAFETY: the library is loaded (checked above); both pointers are valid for writes.
            let rc = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
            if rc != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(format!("nvrtcVersion failed: {rc:?}"));
            }
            Ok((major, minor))
        })
        .clone()
        .map_err(Error::CudaUnavailable)
}

fn locate_nvrtc() -> std::result::Result<(), String> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(NVRTC_ENV) {
        return preload(Path::new(&p)).map_err(|e| format!("{NVRTC_ENV}={}: {e}", p.to_string_lossy()));
    }
    // SAFETY: only probes dlopen with cudarc's candidate names.
    if unsafe { sys::is_culib_present() } {
        return Ok(());
    }
    tried.push("libnvrtc.so* on the loader path".to_string());
    let mut dirs: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|d| PathBuf::from(d).join("lib64"))
        .collect();
    dirs.push("/usr/local/cuda/lib64".into());
    for dir in dirs {
        for name in ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"] {
            let path = dir.join(name);
            if path.is_file() && preload(&path).is_ok() {
                return Ok(());
            }
            tried.push(path.display().to_string());
        }
    }
    if let Some(p) = std::env::var_os(NVRTC_FALLBACK_ENV) {
        let path = PathBuf::from(p);
        if preload(&path).is_ok() {
            return Ok(());
        }
        tried.push(path.display().to_string());
    }
    Err(format!(
        "NVRTC (libnvrtc) was not found; install a CUDA toolkit or `pip install nvidia-cuda-nvrtc`, \
         or set {NVRTC_ENV} to the library file. Tried: {}",
        tried.join(", ")
    ))
}

fn preload(path: &Path) -> std::result::Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading NVRTC runs only its own initializers.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| e.to_string())?;
    std::mem::forget(lib); // stays loaded for the life of the process
                           // SAFETY: as above; this confirms cudarc's soname lookup now resolves.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err("loaded, but not found again by soname".into())
    }
}

/// A compiled module image and whether it came from the disk cache.
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub from_disk_cache: bool,
}

/// The kernel cache directory: $QWEN3_RS_CACHE_DIR, else $XDG_CACHE_HOME/qwen3_rs/kernels, else
/// ~/.cache/qwen3_rs/kernels.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(CACHE_ENV) {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("qwen3_rs").join("kernels"))
}

/// Compiles `kernel` to CUBIN for `arch` (e.g. "sm_90"), or reads it from `cache_dir` when a
/// module with the same key, arch, NVRTC version and source hash is there. A cache that cannot be
/// written is not an error: the kernel is simply compiled again next time.
pub fn compile(kernel: &KernelType, arch: &str, cache_dir: Option<&Path>) -> Result<Compiled> {
    let (major, minor) = nvrtc_version()?;
    let source = kernel.source();
    let options = compile_options(arch);
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update(options.join(" ").as_bytes());
    let hash: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let file = cache_dir.map(|d| d.join(format!("{kernel}-{arch}-nvrtc{major}.{minor}-{hash}.cubin")));
    if let Some(cubin) = file.as_ref().and_then(|f| std::fs::read(f).ok()) {
        if !cubin.is_empty() {
            return Ok(Compiled { cubin, from_disk_cache: true });
        }
    }
    let cubin = nvrtc_compile(kernel, arch, &source, &options)?;
    if let Some(file) = file {
        // Write to a temporary name and rename, so a concurrent reader never sees half a file.
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, &cubin))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(Compiled { cubin, from_disk_cache: false })
}

fn compile_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--device-as-default-execution-space".into(),
    ]
}

fn nvrtc_compile(kernel: &KernelType, arch: &str, source: &str, options: &[String]) -> Result<Vec<u8>> {
    let fail = |log: String| Error::Compile { kernel: kernel.to_string(), arch: arch.to_string(), log };
    let src = CString::new(source).map_err(|_| fail("source holds a NUL byte".into()))?;
    let name = CString::new(format!("{kernel}.cu")).map_err(|_| fail("bad name".into()))?;
    let opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|_| fail("bad option".into())))
        .collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let check = |rc: sys::nvrtcResult, what: &str| {
        if rc == sys::nvrtcResult::NVRTC_SUCCESS {
            Ok(())
        } else {
            Err(fail(format!("{what}: {rc:?}")))
        }
    };
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded (nvrtc_version succeeded); all strings are NUL-terminated and outlive
    // the program, which is destroyed on every path below.
    unsafe {
        check(
            sys::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
            "nvrtcCreateProgram",
        )?;
        let result = (|| {
            let rc = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            if rc != sys::nvrtcResult::NVRTC_SUCCESS {
                let mut size = 0usize;
                let mut log = String::new();
                if sys::nvrtcGetProgramLogSize(prog, &mut size) == sys::nvrtcResult::NVRTC_SUCCESS && size > 0
                {
                    let mut buf = vec![0 as c_char; size];
                    if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr()) == sys::nvrtcResult::NVRTC_SUCCESS {
                        log = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
                    }
                }
                return Err(fail(format!("{rc:?}\n{log}")));
            }
            let mut size = 0usize;
            check(sys::nvrtcGetCUBINSize(prog, &mut size), "nvrtcGetCUBINSize")?;
            let mut cubin = vec![0u8; size];
            check(sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char), "nvrtcGetCUBIN")?;
            Ok(cubin)
        })();
        sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}
