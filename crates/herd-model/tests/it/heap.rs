//! The heap policy: a buffer freed and allocated again is reused memory, not a fresh mapping
//! the kernel faults in page by page.

use herd_model::heap;

/// Minor page faults this thread has taken.
fn faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given; RUSAGE_THREAD is valid on Linux.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
    usage.ru_minflt
}

/// Faults taken by allocating `bytes` and writing one byte per page, after the same size was
/// allocated, written and freed once before.
fn faults_of_a_second_buffer(bytes: usize) -> i64 {
    let fill = |bytes: usize| {
        let mut v = vec![0u8; bytes];
        for i in (0..bytes).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
    };
    fill(bytes);
    let before = faults();
    fill(bytes);
    faults() - before
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_buffer_comes_back_without_page_faults() {
    assert!(heap::reuse_freed_buffers());
    // 8 MiB is 2048 pages: a fresh mapping faults on nearly every one.
    let reused = faults_of_a_second_buffer(8 << 20);
    assert!(reused < 64, "{reused} page faults for a buffer the heap had");
    // The twin: past the threshold every block is still a fresh mapping, and the count sees
    // its faults (one per 4 KiB page unless the kernel backs anonymous memory with huge pages
    // unasked, THP `always`, where a mapping takes a fault per 2 MiB).
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[always]") {
        let mapped = faults_of_a_second_buffer(heap::MMAP_THRESHOLD + (8 << 20));
        assert!(mapped > 1000, "only {mapped} page faults for a fresh mapping");
    }
}
