//! The binary's configuration: the engine's variables, the job kinds' variables and the
//! api's own, read through one [`Env`] so that every problem is reported at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use engine::config::{ConfigError, EngineConfig, Env, VarSpec};
use jobs::JobsConfig;

use crate::auth::ClientIp;
use crate::auth::rate_limit::Limits;

engine::config_var!(
    HTTP_ADDR,
    "HTTP_ADDR",
    "127.0.0.1:8080",
    "Address the HTTP server of `veza-jobs serve` listens on, as IP:PORT (0.0.0.0:8080 for every interface)."
);

engine::config_var!(
    RATE_LIMIT_READS_PER_HOUR,
    "RATE_LIMIT_READS_PER_HOUR",
    "1000",
    "GET requests each API key may make per hour (a burst of this many, refilled evenly over the hour). Shared by every API process when REDIS_URL is set, else per process."
);
engine::config_var!(
    RATE_LIMIT_WRITES_PER_HOUR,
    "RATE_LIMIT_WRITES_PER_HOUR",
    "200",
    "POST/PUT/DELETE requests each API key may make per hour, counted apart from reads. Shared through REDIS_URL like the read budget."
);

engine::config_var!(
    RATE_LIMIT_ANONYMOUS_PER_HOUR,
    "RATE_LIMIT_ANONYMOUS_PER_HOUR",
    "600",
    "Requests without a valid API key each client address may make per hour: /v1 calls with no or an unknown key, export download links, dashboard sign-ins and Stripe webhooks whose signature fails (Stripe's own deliveries never count). An IPv6 client is counted by its /64. Over it: 429 with Retry-After. Shared through REDIS_URL like the key budgets."
);
engine::config_var!(
    CLIENT_IP_HEADER,
    "CLIENT_IP_HEADER",
    "",
    "Header holding the client's address, set by the reverse proxy in front (X-Real-IP, or X-Forwarded-For, whose last address is taken). Empty: the TCP peer's address. Set it only behind a proxy that overwrites the header, or clients choose their own address."
);
engine::config_var!(
    API_KEY_CACHE_TTL,
    "API_KEY_CACHE_TTL",
    "1s",
    "How long an API key, once checked against the database, is trusted without reading it again (only valid keys are kept). A key revoked through this process's API is refused at once; revoked by the CLI or another API process, it keeps working here for up to this long."
);
engine::config_var!(
    METRICS_TOKEN,
    "METRICS_TOKEN",
    "",
    "Bearer token /metrics asks for (Authorization: Bearer <token>); empty: /metrics is open to anyone who reaches the port."
);

engine::config_var!(
    ADMIN_SESSION_TTL,
    "ADMIN_SESSION_TTL",
    "8h",
    "How long a session of the admin dashboard (/admin, signed in with an admin API key) lasts; then the admin signs in again. Revoking the key ends its sessions at once."
);
engine::config_var!(
    ADMIN_COOKIE_SECURE,
    "ADMIN_COOKIE_SECURE",
    "always",
    "When the admin dashboard's session cookie is Secure (and then named with the __Host- prefix): always (browsers keep Secure cookies of http://localhost too), auto (when the request came over TLS, as the proxy in front says with X-Forwarded-Proto: https or Forwarded: proto=https), or never (plain HTTP on a trusted network; the cookie loses the prefix)."
);

/// The api's variables, in `.env.template` order. (`REDIS_URL`, declared by `jobs`, also
/// holds the rate-limit counters when set.)
pub const VARS: &[VarSpec] = &[
    HTTP_ADDR,
    RATE_LIMIT_READS_PER_HOUR,
    RATE_LIMIT_WRITES_PER_HOUR,
    RATE_LIMIT_ANONYMOUS_PER_HOUR,
    CLIENT_IP_HEADER,
    API_KEY_CACHE_TTL,
    METRICS_TOKEN,
    ADMIN_SESSION_TTL,
    ADMIN_COOKIE_SECURE,
];

/// Everything the binary is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database, workers, retention, shutdown, logging.
    pub engine: EngineConfig,
    /// The job kinds' settings.
    pub jobs: JobsConfig,
    /// Where `serve` listens.
    pub http_addr: SocketAddr,
    /// Requests per hour per API key, and per client address without one.
    pub rate_limits: Limits,
    /// Client addresses and the metrics token.
    pub http: crate::state::HttpSettings,
    /// The admin dashboard's sessions.
    pub admin: crate::admin::Settings,
    /// Whether `EXPORT_SIGNING_KEY` is set. Unset, export links are signed with a key of
    /// this process only; `veza-jobs demo` then signs with a key of its own and prints it,
    /// for the `serve` that answers its download link.
    pub export_signing_key_set: bool,
}

impl Config {
    /// Reads every variable from `env`; problems are collected in `env`.
    pub fn read(env: &mut Env) -> Self {
        let engine = EngineConfig::read(env);
        let jobs = JobsConfig::read(env);
        let raw = env.string(&HTTP_ADDR);
        let http_addr = raw.trim().parse().unwrap_or_else(|_| {
            env.problem(&HTTP_ADDR, "an address IP:PORT such as 127.0.0.1:8080");
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let mut per_hour =
            |var: &VarSpec| NonZeroU32::new(env.positive::<u32>(var)).unwrap_or(NonZeroU32::MIN);
        let rate_limits = Limits {
            reads_per_hour: per_hour(&RATE_LIMIT_READS_PER_HOUR),
            writes_per_hour: per_hour(&RATE_LIMIT_WRITES_PER_HOUR),
            anonymous_per_hour: per_hour(&RATE_LIMIT_ANONYMOUS_PER_HOUR),
        };
        let raw = env.string(&CLIENT_IP_HEADER);
        let client_ip = match raw.trim() {
            "" => ClientIp::Peer,
            name => match poem::http::HeaderName::try_from(name) {
                Ok(name) => ClientIp::Header(name),
                Err(_) => {
                    env.problem(&CLIENT_IP_HEADER, "a header name such as X-Real-IP");
                    ClientIp::Peer
                }
            },
        };
        let metrics_token =
            Some(env.string(&METRICS_TOKEN).trim().to_owned()).filter(|t| !t.is_empty());
        let http = crate::state::HttpSettings {
            client_ip,
            metrics_token,
            api_key_cache_ttl: env.duration(&API_KEY_CACHE_TTL),
        };
        let admin = crate::admin::Settings::read(env);
        let export_signing_key_set = env.raw(&jobs::gdpr::EXPORT_SIGNING_KEY).is_some();
        Self {
            engine,
            jobs,
            http_addr,
            rate_limits,
            http,
            admin,
            export_signing_key_set,
        }
    }

    /// The configuration in `env`, or every problem with it.
    pub fn from_env(mut env: Env) -> Result<Self, ConfigError> {
        let config = Self::read(&mut env);
        env.finish()?;
        Ok(config)
    }

    /// A configuration from the given variables (tests).
    pub fn from_map(values: HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_env(Env::from_map(values))
    }

    /// The process's configuration: an optional `.env` (in the working directory or one of
    /// its parents; variables already set win) is loaded first, then the environment is read.
    pub fn load() -> Result<Self, ConfigError> {
        if let Err(e) = dotenvy::dotenv()
            && !e.not_found()
        {
            return Err(ConfigError(vec![format!(".env could not be loaded: {e}")]));
        }
        Self::from_env(Env::from_process())
    }
}

/// Every variable the binary reads, grouped by the crate that declares it, in
/// `config/.env.template` order.
pub fn all_vars() -> [(&'static str, &'static [VarSpec]); 3] {
    [
        ("engine", engine::config::VARS),
        ("jobs", jobs::VARS),
        ("api", VARS),
    ]
}

/// What each crate's variables are about, for the template's headers.
const GROUPS: [(&str, &str); 3] = [
    (
        "engine",
        "database, workers, retention, shutdown, logging (engine/src/config.rs)",
    ),
    ("jobs", "the job kinds' settings (jobs/src/lib.rs)"),
    (
        "api",
        "the HTTP server of `veza-jobs serve`, its rate limits and the admin dashboard (api/src/config.rs)",
    ),
];

/// `config/.env.template` as the code declares it: every variable under its crate's
/// header, its help as a comment line, then `NAME=default`.
pub fn env_template() -> String {
    let mut out = String::from(
        "# veza-jobs configuration: every variable it reads, with its default and meaning.\n\
         # Copy to .env (loaded at start from the working directory or a parent; variables\n\
         # already set in the environment win) and change what you need. An empty value means\n\
         # unset. A bad value stops the process (exit code 2) with a message naming it.\n\
         # A test (api/tests/env_template.rs) keeps this file in step with the code.\n",
    );
    for (group, vars) in all_vars() {
        let about = GROUPS
            .iter()
            .find(|(g, _)| *g == group)
            .map_or("", |(_, about)| about);
        out.push_str(&format!("\n# ===== {group}: {about} =====\n"));
        for var in vars {
            out.push_str(&format!("\n# {}\n{}={}\n", var.help, var.name, var.default));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_map(map(&[])).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.rate_limits.reads_per_hour.get(), 1000);
        assert_eq!(c.rate_limits.writes_per_hour.get(), 200);
        assert_eq!(c.rate_limits.anonymous_per_hour.get(), 600);
        assert_eq!(c.http, crate::state::HttpSettings::default());
    }

    #[test]
    fn the_client_address_header_and_the_metrics_token_are_read() {
        let c = Config::from_map(map(&[
            ("CLIENT_IP_HEADER", "X-Real-IP"),
            ("METRICS_TOKEN", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(
            c.http.client_ip,
            ClientIp::Header(poem::http::HeaderName::from_static("x-real-ip"))
        );
        assert_eq!(c.http.metrics_token.as_deref(), Some("s3cret"));
        let err = Config::from_map(map(&[("CLIENT_IP_HEADER", "not a header")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLIENT_IP_HEADER must be"), "{err}");
    }

    #[test]
    fn problems_of_every_crate_are_reported_together() {
        let err = Config::from_map(map(&[
            ("JOB_LEASE_TTL", "soon"),
            ("ORPHAN_TRACK_AGE", "never"),
            ("HTTP_ADDR", "localhost"),
            ("RATE_LIMIT_WRITES_PER_HOUR", "0"),
        ]))
        .unwrap_err()
        .to_string();
        for var in [
            "JOB_LEASE_TTL",
            "ORPHAN_TRACK_AGE",
            "HTTP_ADDR",
            "RATE_LIMIT_WRITES_PER_HOUR",
        ] {
            assert!(err.contains(&format!("{var} must be")), "{var}: {err}");
        }
    }
}
