//! Ctrl-C (SIGINT), SIGTERM and SIGHUP during `keel bench`: the first one asks the drivers to
//! stop issuing ops; they drain what is in flight, persist the commit watermark, close, recover
//! and report, a temporary directory is removed, and the process exits 130. A second one kills
//! the process at once — which is also safe, the directory is a write-ahead log and recovers like
//! after `kill -9` (a temporary directory is then left behind).
//!
//! The handler only stores to an atomic and restores the default disposition: both are
//! async-signal-safe.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: `signal(2)` is async-signal-safe; restoring the default makes a second signal fatal.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

/// True once a stop was requested.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The signals that ask for a clean stop.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler is async-signal-safe (an atomic store and `signal`).
    unsafe {
        for signal in SIGNALS {
            libc::signal(signal, handler);
        }
    }
}

/// Runs `f` with the stop signals blocked on this thread, so threads it spawns inherit the mask
/// and the signals are delivered to the calling (main) thread, never inside a shard's io_uring
/// wait.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data initialized by sigemptyset; pthread_sigmask only changes this
    // thread's mask and is restored below.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}
