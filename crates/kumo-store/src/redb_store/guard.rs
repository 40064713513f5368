//! redb meets some damage to its file with a panic (an `unreachable!` on a page it cannot make sense of).
//! Store operations run under [`guarded`], which turns such a panic into an error naming the damage, so the
//! server reports it (or refuses to start, saying how to restore) instead of crashing, and without the panic
//! message on stderr.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs a guarded operation: its panics are expected and reported as errors.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic inside it becomes `Err` with the panic's message.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        format!("the store file is damaged (reading it failed: {what})")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_an_error_and_others_still_panic() {
        assert_eq!(super::guarded(|| 7), Ok(7));
        let e = super::guarded(|| -> u8 { panic!("bad page") }).unwrap_err();
        assert!(e.contains("bad page"), "{e}");
        assert!(std::panic::catch_unwind(|| panic!("unguarded")).is_err());
    }
}
