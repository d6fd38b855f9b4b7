//! GDPR: the settings, kinds and schedules of data exports ([`crate::exports`],
//! [`crate::data_export`], [`crate::export_cleanup`]), notification e-mail
//! ([`crate::send_email`]) and account erasure ([`crate::users`], [`crate::hard_delete`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::config::Env;
use engine::scheduler::Schedule;
use engine::{Job, Registry};

use crate::data_export::{self, DataExport};
use crate::export_cleanup::{self, ExportCleanup};
use crate::exports::{ExportSettings, SigningKey};
use crate::hard_delete::opensearch::{SearchEraser, SearchIndices};
use crate::hard_delete::redis::RedisEraser;
use crate::hard_delete::scan::{self, HardDeleteScan};
use crate::hard_delete::{self, Erasure, ErasureSettings, HardDelete};
use crate::send_email::{self, MailContext, MailSettings, Mailer, SendEmail};
use crate::users::AccountSettings;

engine::config_var!(
    EXPORT_DIR,
    "EXPORT_DIR",
    "./exports",
    "Directory where data export ZIPs are written (as .{id}.zip.part, renamed to {id}.zip when complete): created with mode 0700 if missing, tightened to 0700 if it exists with more; each ZIP is created 0600."
);
engine::config_var!(
    EXPORT_DAILY_LIMIT,
    "EXPORT_DAILY_LIMIT",
    "3",
    "Data exports one user may request per rolling 24 hours; more are refused with a retry-after."
);
engine::config_var!(
    EXPORT_SIGNING_KEY,
    "EXPORT_SIGNING_KEY",
    "",
    "Secret (32+ characters) signing export download links (HMAC-SHA256); the same in every process. Unset: a random key, links work only in the process that made them."
);
engine::config_var!(
    EXPORT_LINK_TTL,
    "EXPORT_LINK_TTL",
    "7d",
    "How long an export's download link works after the export is ready."
);
engine::config_var!(
    EXPORT_RETENTION,
    "EXPORT_RETENTION",
    "7d",
    "How long an export's ZIP is kept after it is ready; the hourly export_cleanup job then deletes it and marks the export expired."
);
engine::config_var!(
    EXPORT_LINK_BASE_URL,
    "EXPORT_LINK_BASE_URL",
    "http://127.0.0.1:8080/v1/exports",
    "Public base URL of export downloads; e-mailed links are {base}/{id}/download?expires={ms}&token={hex}."
);
engine::config_var!(
    SMTP_URL,
    "SMTP_URL",
    "",
    "SMTP server for notification e-mail, e.g. smtps://user:pass@smtp.example.com or smtp://host:587?tls=required. Unset: e-mails are written as .eml files to MAIL_OUTBOX_DIR."
);
engine::config_var!(
    MAIL_FROM,
    "MAIL_FROM",
    "Veza <no-reply@veza.local>",
    "Sender of notification e-mail: Name <address> or address."
);
engine::config_var!(
    MAIL_OUTBOX_DIR,
    "MAIL_OUTBOX_DIR",
    "./mail-outbox",
    "Where e-mails are written as .eml files (one user-{id} directory per recipient, erased with the account) when SMTP_URL is unset."
);
engine::config_var!(
    ACCOUNT_RECOVERY_DAYS,
    "ACCOUNT_RECOVERY_DAYS",
    "30",
    "Days after a deletion request during which the account can be restored; the daily hard_delete pass erases it after."
);
engine::config_var!(
    REDIS_URL,
    "REDIS_URL",
    "",
    "Redis holding per-user keys user:{id}:*, erased by hard_delete (redis://host:6379/0). Unset: that step is skipped and the receipt says so."
);
engine::config_var!(
    OPENSEARCH_URL,
    "OPENSEARCH_URL",
    "",
    "OpenSearch node whose user, track and playlist documents hard_delete removes (http://host:9200; credentials in the URL). Unset: that step is skipped and the receipt says so."
);
engine::config_var!(
    OPENSEARCH_USERS_INDEX,
    "OPENSEARCH_USERS_INDEX",
    "users",
    "OpenSearch index of user documents (_id = user id)."
);
engine::config_var!(
    OPENSEARCH_TRACKS_INDEX,
    "OPENSEARCH_TRACKS_INDEX",
    "tracks",
    "OpenSearch index of track documents (_id = track id; fields artist_name and owner_id)."
);
engine::config_var!(
    OPENSEARCH_PLAYLISTS_INDEX,
    "OPENSEARCH_PLAYLISTS_INDEX",
    "playlists",
    "OpenSearch index of playlist documents (_id = playlist id)."
);

/// The kinds [`register`] adds.
pub const KINDS: [&str; 5] = [
    DataExport::KIND,
    ExportCleanup::KIND,
    SendEmail::KIND,
    HardDelete::KIND,
    HardDeleteScan::KIND,
];

/// Shortest accepted `EXPORT_SIGNING_KEY`, in bytes.
pub const MIN_SIGNING_KEY: usize = 32;

/// Every GDPR setting.
#[derive(Debug, Clone)]
pub struct GdprSettings {
    /// `ACCOUNT_RECOVERY_DAYS`.
    pub accounts: AccountSettings,
    /// `EXPORT_*`.
    pub exports: ExportSettings,
    /// `SMTP_URL`, `MAIL_FROM`, `MAIL_OUTBOX_DIR`.
    pub mail: MailSettings,
    /// `MEDIA_ROOT`, `EXPORT_DIR`, `MAIL_OUTBOX_DIR`, `REDIS_URL`, `OPENSEARCH_*`.
    pub erasure: ErasureSettings,
}

impl GdprSettings {
    /// Defaults for tests and tools: media under `media_root`, exports in
    /// `work_dir/exports`, the e-mail outbox in `work_dir/outbox`, no Redis, no OpenSearch,
    /// a random signing key.
    pub fn new(media_root: &Path, work_dir: &Path) -> Self {
        let export_dir = work_dir.join("exports");
        let outbox_dir = work_dir.join("outbox");
        Self {
            accounts: AccountSettings::default(),
            exports: ExportSettings::new(&export_dir),
            mail: MailSettings::new(&outbox_dir),
            erasure: ErasureSettings::new(media_root, export_dir, outbox_dir),
        }
    }

    /// Reads the GDPR variables (problems are collected in `env`).
    pub fn read(env: &mut Env, media_root: PathBuf) -> Self {
        let export_dir = PathBuf::from(env.string(&EXPORT_DIR));
        let signing_key = match env.optional(&EXPORT_SIGNING_KEY) {
            Some(key) if key.len() >= MIN_SIGNING_KEY => SigningKey::new(key.into_bytes()),
            Some(_) => {
                env.problem(
                    &EXPORT_SIGNING_KEY,
                    &format!("at least {MIN_SIGNING_KEY} characters (e.g. `openssl rand -hex 32`)"),
                );
                SigningKey::random()
            }
            None => {
                tracing::warn!(
                    "EXPORT_SIGNING_KEY is unset: export links are signed with a random key and work only in this process"
                );
                SigningKey::random()
            }
        };
        let link_base_url = env.string(&EXPORT_LINK_BASE_URL);
        if !(link_base_url.starts_with("http://") || link_base_url.starts_with("https://")) {
            env.problem(
                &EXPORT_LINK_BASE_URL,
                "an http:// or https:// URL such as https://veza.example/v1/exports",
            );
        }
        let exports = ExportSettings {
            dir: export_dir.clone(),
            daily_limit: env.positive(&EXPORT_DAILY_LIMIT),
            signing_key,
            link_ttl: env.duration(&EXPORT_LINK_TTL),
            retention: env.duration(&EXPORT_RETENTION),
            link_base_url,
            page_size: 1000,
        };
        let smtp_url = env.optional(&SMTP_URL);
        let outbox_dir = PathBuf::from(env.string(&MAIL_OUTBOX_DIR));
        let from_raw = env.string(&MAIL_FROM);
        let from = from_raw.parse().unwrap_or_else(|_| {
            env.problem(
                &MAIL_FROM,
                "a mailbox such as `Veza <no-reply@veza.example>` or `no-reply@veza.example`",
            );
            send_email::default_from()
        });
        let mail = MailSettings {
            smtp_url,
            from,
            outbox_dir: outbox_dir.clone(),
            timeout: Duration::from_secs(30),
        };
        if let Err(e) = Mailer::new(&mail) {
            env.problem(
                &SMTP_URL,
                &format!("unset, or an smtp:// or smtps:// URL ({e})"),
            );
        }
        let days: u64 = env.positive(&ACCOUNT_RECOVERY_DAYS);
        let accounts = AccountSettings {
            recovery_period: Duration::from_secs(days.saturating_mul(24 * 3600)),
        };
        let redis_url = env.optional(&REDIS_URL);
        if let Some(url) = &redis_url
            && let Err(e) = RedisEraser::check_url(url)
        {
            env.problem(
                &REDIS_URL,
                &format!("unset, or a URL such as redis://127.0.0.1:6379/0 ({e})"),
            );
        }
        let indices = SearchIndices {
            users: env.string(&OPENSEARCH_USERS_INDEX),
            tracks: env.string(&OPENSEARCH_TRACKS_INDEX),
            playlists: env.string(&OPENSEARCH_PLAYLISTS_INDEX),
        };
        let opensearch_url = env.optional(&OPENSEARCH_URL);
        if let Some(url) = &opensearch_url
            && let Err(e) = SearchEraser::new(url, indices.clone())
        {
            env.problem(
                &OPENSEARCH_URL,
                &format!("unset, or a URL such as http://127.0.0.1:9200 ({e})"),
            );
        }
        Self {
            accounts,
            exports,
            mail,
            erasure: ErasureSettings {
                media_root,
                export_dir,
                mail_outbox_dir: outbox_dir,
                redis_url,
                opensearch_url,
                indices,
                anonymous_artist: hard_delete::ANONYMOUS_ARTIST.to_owned(),
            },
        }
    }
}

/// Registers the GDPR kinds, with their clients built from `settings` (Redis connects on
/// first use; a mailer that cannot be built fails each e-mail — `data_export`'s last step,
/// a `send_email` job — with the reason).
pub fn register(registry: &mut Registry, settings: &GdprSettings) {
    let exports = Arc::new(settings.exports.clone());
    let mail = Arc::new(MailContext {
        mailer: Mailer::new(&settings.mail),
        settings: settings.mail.clone(),
        exports: settings.exports.clone(),
    });
    let (e, m) = (Arc::clone(&exports), Arc::clone(&mail));
    registry
        .register::<DataExport, _, _>(move |args, ctx| {
            let (e, m) = (Arc::clone(&e), Arc::clone(&m));
            async move { data_export::handle(args, ctx, &e, &m).await }
        })
        .on_discard(data_export::on_discard);
    let e = Arc::clone(&exports);
    registry.register::<ExportCleanup, _, _>(move |args, ctx| {
        let e = Arc::clone(&e);
        async move { export_cleanup::handle(args, ctx, &e).await }
    });
    registry.register::<SendEmail, _, _>(move |args, ctx| {
        let mail = Arc::clone(&mail);
        async move { send_email::handle(args, ctx, &mail).await }
    });
    let erasure = Erasure::new(settings.erasure.clone());
    registry.register::<HardDelete, _, _>(move |args, ctx| {
        let erasure = Arc::clone(&erasure);
        async move { hard_delete::handle(args, ctx, &erasure).await }
    });
    registry.register::<HardDeleteScan, _, _>(scan::handle);
}

/// The GDPR schedules: `export_cleanup` hourly, `hard_delete` daily at 03:00 UTC.
pub fn schedules() -> Vec<Schedule> {
    vec![export_cleanup::schedule(), scan::schedule()]
}
