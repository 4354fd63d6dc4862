//! What the examples share: their log set-up.

/// Logs warnings to stderr (`RUST_LOG` overrides). openraft is silenced by default: it logs
/// every failed heartbeat as nodes stop one by one at the end of a run.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off")),
        )
        .try_init();
}
