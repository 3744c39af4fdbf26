//! Choosing where to train: `cpu` (Burn's flex backend) or `cuda:N` (the `cuda` feature),
//! probing for the NVIDIA driver first so a missing libcuda is an error, not a panic.

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("device `{other}` must be cpu or cuda:N")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("this cobb was built without CUDA support; rebuild with `cargo build --release --features cuda`")]
    NotBuilt,
    #[error("no NVIDIA driver found ({0}); install the driver or train with --device cpu")]
    NoDriver(String),
}

/// Checks that `choice` can be used before any tensor is made.
pub fn probe(choice: DeviceChoice) -> Result<(), DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok(()),
        DeviceChoice::Cuda(_) => probe_cuda(),
    }
}

/// Burn's device for `choice` (without autodiff), after [`probe`].
pub fn burn_device(choice: DeviceChoice) -> Result<burn::prelude::Device, DeviceError> {
    probe(choice)?;
    match choice {
        DeviceChoice::Cpu => Ok(burn::prelude::Device::flex()),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(index) => Ok(burn::prelude::Device::cuda(index)),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(DeviceError::NotBuilt),
    }
}

#[cfg(feature = "cuda")]
fn probe_cuda() -> Result<(), DeviceError> {
    // The CUDA backend loads libcuda with dlopen at the first tensor and panics when it is
    // missing; look for the library the same way first.
    let found = ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        let c = std::ffi::CString::new(*name).unwrap_or_default();
        dlopen_ok(&c)
    });
    if found { Ok(()) } else { Err(DeviceError::NoDriver("libcuda.so.1 cannot be loaded".to_owned())) }
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
fn dlopen_ok(name: &std::ffi::CStr) -> bool {
    unsafe extern "C" {
        fn dlopen(filename: *const std::ffi::c_char, flag: i32) -> *mut std::ffi::c_void;
    }
    const RTLD_LAZY: i32 = 1;
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is only tested for NULL
    // and intentionally kept open (the backend opens the same library).
    !unsafe { dlopen(name.as_ptr(), RTLD_LAZY) }.is_null()
}

#[cfg(not(feature = "cuda"))]
fn probe_cuda() -> Result<(), DeviceError> {
    Err(DeviceError::NotBuilt)
}

/// Runs `f` (a training run, an evaluation, a classification, a benchmark) on a rayon pool
/// of its own, as many threads as rayon's global pool, with `f` itself on one of them, and
/// returns its result. Every parallel loop inside (cobb's kernels, Burn's flex, gemm) then
/// shares those threads with the serial work between the loops; run from a Tokio blocking
/// thread or `main`, that serial work was one more busy thread than the machine had cores
/// (`top -H`: the caller at a full core while both rayon workers were at 80% on a 2-core
/// VM), and the pool's loops waited for whichever thread the kernel had descheduled.
/// Measured alternated on that VM: resnet18 training +10-12%, efficientnet_b0 +17-18%
/// (docs/benchmarks.md). Concurrent runs in one process (`cobb up --workers N`) each get their
/// own pool, as they each had a blocking thread before. Falls back to the calling thread if
/// the pool cannot be built.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    match rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("cobb-compute-{i}")).build() {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!("no compute thread pool ({e}); computing on the calling thread");
            f()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!(probe(DeviceChoice::Cpu).is_ok());
    }
}
