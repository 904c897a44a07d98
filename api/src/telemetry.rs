//! Structured logs. Nothing that identifies a person is ever logged: no names, dates of birth
//! or identifier values, only ids and codes.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: JSON lines when `json`, else human-readable. The level comes
/// from `RUST_LOG` (default `info`). Calling it twice is harmless.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
