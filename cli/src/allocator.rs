//! cobb's allocator: mimalloc, told to keep the memory a process frees for its next use.
//!
//! A training or evaluation step allocates the same feature maps (tens of megabytes each)
//! every step. mimalloc 3 returns freed memory to the kernel a second after it is freed
//! (`purge_delay`, 1000 ms), and its arenas use transparent huge pages, so each step after a
//! pause faulted the maps back in and the kernel zeroed them 2 MiB at a time: 13% of an
//! EfficientNet-B0 training step on the CPU (perf: `clear_page_erms` under
//! `do_huge_pmd_anonymous_page`), and 10-40% more images per second without it
//! (docs/benchmarks.md). With purging off, a process keeps its peak (measured 3-4% above
//! the resident peak it had anyway), as PyTorch's caching allocator does on a GPU. Setting
//! `MIMALLOC_PURGE_DELAY` in the environment still decides (mimalloc reads it first).

use std::ffi::{c_int, c_long};

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys 0.1.49,
/// c_src/mimalloc/v3/include/mimalloc.h); libmimalloc-sys names no constant for it.
const PURGE_DELAY: c_int = 15;
/// Its default there, which no other option shares: proof that the index still names it.
const PURGE_DELAY_DEFAULT: c_long = 1000;

#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{c_int, c_long};
    // SAFETY: both are plain functions of the mimalloc library that the `mimalloc` crate links
    // (always compiled in, whatever the crate's features); they read and write an integer in
    // mimalloc's option table and are safe to call at any time from any thread.
    unsafe extern "C" {
        pub safe fn mi_option_get(option: c_int) -> c_long;
        pub safe fn mi_option_set(option: c_int, value: c_long);
    }
}

/// Keeps freed memory in the process (no purging back to the kernel), unless the
/// environment already chose a purge delay. Call first thing in `main`.
pub fn keep_freed_memory() {
    if ffi::mi_option_get(PURGE_DELAY) == PURGE_DELAY_DEFAULT {
        ffi::mi_option_set(PURGE_DELAY, -1);
    }
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

    /// Fails when a mimalloc upgrade moves or changes the option: then find `purge_delay` in
    /// the new mimalloc.h and update PURGE_DELAY.
    #[test]
    fn the_index_names_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(super::ffi::mi_option_get(super::PURGE_DELAY), super::PURGE_DELAY_DEFAULT);
        super::keep_freed_memory();
        assert_eq!(super::ffi::mi_option_get(super::PURGE_DELAY), -1);
    }
}
