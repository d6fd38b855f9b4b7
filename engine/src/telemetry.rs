//! Logging: human-readable (coloured only on a terminal), JSON lines with `LOG_FORMAT=json`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls do nothing). Logs go to stderr.
pub fn init(format: &str, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// `level` (a `LOG_LEVEL` filter) followed by each of `defaults` (`target=level`
/// directives) whose target `level` does not name: the operator's filter wins wherever it
/// says something about that target.
pub fn with_defaults(level: &str, defaults: &[&str]) -> String {
    let named = |target: &str| {
        level
            .split(',')
            .filter_map(|d| d.trim().split('=').next())
            .any(|t| t.trim() == target || t.trim().starts_with(&format!("{target}::")))
    };
    let mut filter = level.trim().to_owned();
    for directive in defaults {
        let target = directive.split('=').next().unwrap_or(directive);
        if !named(target) {
            if !filter.is_empty() {
                filter.push(',');
            }
            filter.push_str(directive);
        }
    }
    filter
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn defaults_are_appended_unless_the_filter_names_their_target() {
        let quiet = ["noisy_sdk=off"];
        assert_eq!(with_defaults("info", &quiet), "info,noisy_sdk=off");
        assert_eq!(with_defaults("", &quiet), "noisy_sdk=off");
        assert_eq!(
            with_defaults("info,noisy_sdk=debug", &quiet),
            "info,noisy_sdk=debug"
        );
        assert_eq!(
            with_defaults("warn, noisy_sdk::webhook=trace", &quiet),
            "warn, noisy_sdk::webhook=trace"
        );
        assert_eq!(
            with_defaults("noisy_sdk_other=info", &quiet),
            "noisy_sdk_other=info,noisy_sdk=off",
            "a longer crate name is another target"
        );
    }

    /// What the directive does to a real subscriber: the crate's events (from any of its
    /// modules, at any level) are dropped, everything else passes as `level` says.
    #[test]
    fn an_off_default_silences_that_crate_only() {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(with_defaults("info", &["noisy_sdk=off"])))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "noisy_sdk::webhook", "sdk error");
            tracing::info!(target: "ours::payments", "our outcome");
            tracing::debug!(target: "ours::payments", "our detail");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("sdk error"), "{text}");
        assert!(text.contains("our outcome"), "{text}");
        assert!(!text.contains("our detail"), "{text}");
    }
}
