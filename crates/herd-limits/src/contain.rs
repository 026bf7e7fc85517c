//! Containing a dependency's panic: some libraries panic on input they cannot handle (a
//! regex engine past its backtracking limit, a deserializer's `expect`). herd turns that into
//! an error, and keeps the default panic report off stderr while it does, since the error
//! says it better.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Contained sections running now, on any thread. The report is suppressed process-wide
/// while one runs, because the guarded code may panic on worker threads it spawned (the
/// `tokenizers` crate encodes on rayon's pool); the panic itself still propagates.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Runs `f`; a panic inside (or in threads it joins) becomes `Err(message)`.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ACTIVE.load(Ordering::SeqCst) == 0 {
                previous(info);
            }
        }));
    });
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    let result = catch_unwind(AssertUnwindSafe(f));
    ACTIVE.fetch_sub(1, Ordering::SeqCst);
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string())
    })
}
