//! One `Executor` per device: its context, its stream, its kernel modules (compiled for the
//! device's own architecture, cached in memory here and on disk by `compile`), and checked
//! allocation and copy helpers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream,
    DevicePtr, DevicePtrMut, DeviceRepr, DriverError, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::cuda::compile;
use crate::cuda::kernel::KernelType;
use crate::error::{Error, Result};

/// Whether the CUDA driver library can be loaded at all (no panic when it cannot).
fn driver_present() -> bool {
    // SAFETY: only probes dlopen with cudarc's candidate names.
    unsafe { sys::is_culib_present() }
}

/// Number of visible CUDA devices; 0 when there is no driver or no device.
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)
}

/// Environment variable overriding the NVRTC target (e.g. `sm_90` on an H100 runs the portable
/// mma.sync paths instead of the wgmma ones, which tests use to check them).
pub const ARCH_ENV: &str = "QWEN3_RS_ARCH";

/// The NVRTC target of a device: its own architecture, with Hopper's arch-specific features
/// (`sm_90a`: wgmma, used by the prompt GEMM); such a module loads only on that architecture,
/// which is the device it is compiled for.
pub fn arch_name(major: i32, minor: i32) -> String {
    let suffix = if (major, minor) == (9, 0) { "a" } else { "" };
    format!("sm_{major}{minor}{suffix}")
}

pub struct Executor {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    arch: String,
    pdl: bool,
    sm_count: usize,
    max_shared_per_block: usize,
    cache_dir: Option<PathBuf>,
    modules: RwLock<HashMap<KernelType, Arc<CudaModule>>>,
}

impl Executor {
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::CudaUnavailable(
                "the NVIDIA driver library (libcuda.so) was not found".into(),
            ));
        }
        let count = device_count();
        if ordinal >= count {
            return Err(Error::InvalidArgument(format!(
                "device {ordinal} does not exist: {count} CUDA device(s) visible"
            )));
        }
        compile::nvrtc_version()?;
        let ctx = CudaContext::new(ordinal)?;
        // One stream per device orders all work, so cudarc's per-buffer event tracking (meant for
        // buffers shared across streams) only adds overhead to every launch.
        // SAFETY: no buffer of this context is used on another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let (major, minor) = ctx.compute_capability()?;
        let sm_count = ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_shared =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        Ok(Executor {
            ctx,
            stream,
            ordinal,
            arch: std::env::var(ARCH_ENV)
                .ok()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| arch_name(major, minor)),
            pdl: major >= 9 && std::env::var_os("QWEN3_RS_NO_PDL").is_none(),
            sm_count: sm_count.max(1) as usize,
            max_shared_per_block: max_shared.max(0) as usize,
            cache_dir: compile::default_cache_dir(),
            modules: RwLock::new(HashMap::new()),
        })
    }

    /// Bytes of shared memory a block may use on this device (opting in past the 48 KiB default).
    pub fn max_shared_per_block(&self) -> usize {
        self.max_shared_per_block
    }

    /// Streaming multiprocessors on the device (for sizing grids).
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Whether launches use programmatic dependent launch (Hopper and newer), letting each
    /// kernel's prologue overlap the previous kernel's tail.
    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// Lets this device read and write `other`'s memory directly (NVLink / PCIe peer to peer)
    /// where the hardware allows; copies between devices work either way (the driver stages them).
    pub fn enable_peer_access(&self, other: &Executor) -> Result<()> {
        let mut can = 0;
        // SAFETY: plain driver queries and a context-local setting on live contexts.
        unsafe {
            sys::cuDeviceCanAccessPeer(&mut can, self.ctx.cu_device(), other.ctx.cu_device()).result()?;
            if can == 0 {
                return Ok(());
            }
            self.ctx.bind_to_thread()?;
            match sys::cuCtxEnablePeerAccess(other.ctx.cu_ctx(), 0) {
                sys::cudaError_enum::CUDA_SUCCESS
                | sys::cudaError_enum::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => Ok(()),
                e => Err(Error::Driver(DriverError(e))),
            }
        }
    }

    /// An event of this device's context, for ordering work across streams and devices.
    pub fn event(&self) -> Result<CudaEvent> {
        Ok(self.ctx.new_event(None)?)
    }

    /// Copies `src`, a buffer of `from`'s device, into `dst` on this executor's stream, after all
    /// work `from` has queued so far: `ready` (an event of `from`) is recorded on `from`'s stream
    /// and waited on here. No device-wide synchronization and nothing allocated, so it can sit in
    /// the decode loop; across devices it is a peer copy (direct where peer access is enabled).
    pub fn copy_from<T: DeviceRepr>(
        &self,
        dst: &mut CudaSlice<T>,
        from: &Executor,
        src: &CudaSlice<T>,
        ready: &CudaEvent,
    ) -> Result<()> {
        if dst.len() < src.len() {
            return Err(Error::Internal(format!("copy of {} values into {}", src.len(), dst.len())));
        }
        ready.record(&from.stream)?;
        self.stream.wait(ready)?;
        if Arc::ptr_eq(&self.ctx, &from.ctx) {
            return Ok(self.stream.memcpy_dtod(src, dst)?);
        }
        let bytes = src.len() * std::mem::size_of::<T>();
        let (src_ptr, _) = src.device_ptr(&from.stream);
        let (dst_ptr, _) = dst.device_ptr_mut(&self.stream);
        // SAFETY: both pointers are live allocations of at least `bytes` (checked above) on their
        // contexts; the stream order (the wait above, then later work on this stream) keeps them
        // from being written while the copy runs.
        unsafe {
            result::memcpy_peer_async(
                self.ctx.cu_ctx(),
                dst_ptr,
                from.ctx.cu_ctx(),
                src_ptr,
                bytes,
                self.stream.cu_stream(),
            )?;
        }
        Ok(())
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Loads an entry point of a kernel, compiling the module on first use.
    pub fn function(&self, kernel: KernelType, entry: &str) -> Result<CudaFunction> {
        Ok(self.module(kernel)?.0.load_function(entry)?)
    }

    /// Compiles (or reads from the disk cache) and loads `kernel`'s module ahead of its first use.
    /// Returns whether no compilation was needed (already loaded, or found in the disk cache).
    pub fn prepare(&self, kernel: KernelType) -> Result<bool> {
        Ok(self.module(kernel)?.1)
    }

    fn module(&self, kernel: KernelType) -> Result<(Arc<CudaModule>, bool)> {
        let cached = self
            .modules
            .read()
            .map_err(|_| Error::Internal("kernel cache lock poisoned".into()))?
            .get(&kernel)
            .cloned();
        if let Some(m) = cached {
            return Ok((m, true));
        }
        let compiled = compile::compile(&kernel, &self.arch, self.cache_dir.as_deref())?;
        let module = self.ctx.load_module(Ptx::from_binary(compiled.cubin))?;
        let module = self
            .modules
            .write()
            .map_err(|_| Error::Internal("kernel cache lock poisoned".into()))?
            .entry(kernel)
            .or_insert(module)
            .clone();
        Ok((module, compiled.from_disk_cache))
    }

    /// A zeroed device buffer; `what` names it in an out-of-memory error.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        let r = self.stream.alloc_zeros::<T>(len.max(1));
        self.check_alloc(r, len * std::mem::size_of::<T>(), what)
    }

    /// Copies host data into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>> {
        let r = self.stream.clone_htod(data);
        self.check_alloc(r, std::mem::size_of_val(data), what)
    }

    /// Copies a device buffer to the host (synchronizes the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        let mut out = vec![T::default(); buf.len()];
        self.stream.memcpy_dtoh(buf, &mut out)?;
        self.stream.synchronize()?;
        Ok(out)
    }

    /// Seconds per call of `f` (which enqueues work on this executor's stream), timed with events
    /// over `iters` calls after one warm-up call.
    pub fn time<F: FnMut() -> Result<()>>(&self, iters: usize, mut f: F) -> Result<f64> {
        f()?;
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(timing)?;
        for _ in 0..iters {
            f()?;
        }
        let end = self.stream.record_event(timing)?;
        Ok(start.elapsed_ms(&end)? as f64 / 1e3 / iters.max(1) as f64)
    }

    /// The work `f` enqueues on this executor's stream, captured as a CUDA graph instead of run.
    pub fn capture<F: FnOnce() -> Result<()>>(&self, f: F) -> Result<CudaGraph> {
        self.stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let captured = f();
        // End the capture on every path so the stream is usable again.
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        captured?;
        graph?.ok_or_else(|| Error::Internal("stream capture produced no graph".into()))
    }

    /// Seconds per call of `f` as a decode step runs its kernels: `calls` calls captured into one
    /// CUDA graph (no host launch cost between them), replayed `reps` times after one warm-up.
    pub fn time_graph<F: FnMut() -> Result<()>>(&self, calls: usize, reps: usize, mut f: F) -> Result<f64> {
        let graph = self.capture(|| (0..calls).try_for_each(|_| f()))?;
        let secs = self.time(reps, || Ok(graph.launch()?))?;
        Ok(secs / calls.max(1) as f64)
    }

    /// Device-to-device copy bandwidth in bytes/s, counting the bytes read and written.
    pub fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let src = self.zeros::<u8>(bytes, "bandwidth probe")?;
        let mut dst = self.zeros::<u8>(bytes, "bandwidth probe")?;
        let secs = self.time(20, || Ok(self.stream.memcpy_dtod(&src, &mut dst)?))?;
        Ok(2.0 * bytes as f64 / secs)
    }

    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    fn check_alloc<T>(&self, r: std::result::Result<T, DriverError>, bytes: usize, what: &str) -> Result<T> {
        r.map_err(|e| {
            if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                let free = self.ctx.mem_get_info().map(|m| m.0).unwrap_or(0);
                Error::OutOfMemory(format!(
                    "allocating {what} ({bytes} bytes) on device {}: {free} bytes free",
                    self.ordinal
                ))
            } else {
                Error::Driver(e)
            }
        })
    }
}
