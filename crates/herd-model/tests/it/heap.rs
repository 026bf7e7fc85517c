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

/// Faults taken by writing one byte per page of a fresh anonymous mapping of `bytes`: what a
/// buffer the allocator maps anew costs.
fn faults_of_a_fresh_mapping(bytes: usize) -> i64 {
    // SAFETY: an anonymous private mapping of `bytes`, checked, written only inside, unmapped
    // once.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let p = p.cast::<u8>();
        let before = faults();
        for i in (0..bytes).step_by(4096) {
            std::ptr::write_volatile(p.add(i), 1);
        }
        let taken = faults() - before;
        libc::munmap(p.cast(), bytes);
        taken
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_buffer_comes_back_without_page_faults() {
    assert!(heap::reuse_freed_buffers());
    // 8 MiB is 2048 pages: a fresh mapping faults on nearly every one. The fewest of three
    // tries: another test's thread sharing this arena may take the freed block in between.
    let reused = (0..3)
        .map(|_| faults_of_a_second_buffer(8 << 20))
        .min()
        .unwrap_or(0);
    assert!(reused < 64, "{reused} page faults for a buffer the heap had");
    // The twin: the same count sees a fresh mapping's faults (one per 4 KiB page unless the
    // kernel backs anonymous memory with huge pages unasked, THP `always`: a fault per 2 MiB).
    // A block past the threshold is no such twin: with freed memory kept, other tests' frees
    // can leave the heap room to serve it.
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[always]") {
        let fresh = faults_of_a_fresh_mapping(8 << 20);
        assert!(fresh > 1000, "only {fresh} page faults for a fresh mapping");
    }
}
