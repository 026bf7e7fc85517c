//! The process heap's policy for inference.
//!
//! A forward pass allocates and frees the same buffers every step: activations, each
//! product's output, attention's scratch, a fresh KV cache per request. glibc serves a block
//! past its mmap threshold (128 KiB, raised on the fly to at most 32 MiB) with a fresh mapping
//! and unmaps it on free, and gives the top of the heap back past its trim threshold; either
//! way the next step's buffer is new memory, which the kernel faults in and zeroes page by
//! page. A 512-token Q4_K_M prompt of the bench model took ~42 000 page faults (~170 MB
//! zeroed) that way, on the thread that touched them while the other waited.
//!
//! [`reuse_freed_buffers`] fixes both thresholds (as llama.cpp keeps its compute buffers for
//! the life of a context): blocks up to 32 MiB come from the heap, and freed memory stays for
//! the next step. Peak memory is unchanged; what a step frees is not returned between steps.

/// Blocks up to this size come from the heap (glibc's largest threshold on 64-bit).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Keeps the heap's freed buffers for reuse (see the module docs). Call once at startup,
/// before the model loads. Returns whether the allocator took the policy (`false` off
/// glibc, where the allocator's own policy stays).
pub fn reuse_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; both values are in range (an int,
        // the threshold at most glibc's HEAP_MAX_SIZE / 2).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
