//! veza-jobs' job kinds: one module per kind (args, handler, policy, tests), and the
//! domain state machines they drive.
//!
//! | kind | module | triggered by |
//! |---|---|---|
//! | `orphan_sweep` | [`orphan_sweep`] | schedule: at boot and hourly |
//! | `thumbnail` | [`thumbnail`] | web backend, after a cover image upload (one per track) |
//! | `thumbnail_size` | [`thumbnail`] | `thumbnail`, one child per size (fan-out) |
//! | `prune_jobs` | `engine::retention` | schedule: hourly |
//! | `transfer_seller` | [`transfer_seller`] | `payment_intent.succeeded` webhook ([`payments`]), one per order item |
//! | `reverse_transfer` | [`reverse_transfer`] | full-refund webhook ([`payments`]), one per paid-out item |
//! | `transfer_seller_check`, `reverse_transfer_check` | safety nets in those modules | schedule: every minute |
//! | `reconcile_transfers` | [`reconcile_transfers`] | schedule: daily |
//! | `prune_webhook_events` | [`payments::retention`] | schedule: hourly |
//! | `data_export` | [`data_export`] | [`exports::request_export`] (GDPR export request), one per export |
//! | `send_email` | [`send_email`] | nothing since `data_export` sends its e-mail itself (same code); kept for jobs queued before |
//! | `export_cleanup` | [`export_cleanup`] | schedule: hourly |
//! | `hard_delete_scan` | [`hard_delete::scan`] | schedule `hard_delete`: daily at 03:00 UTC |
//! | `hard_delete` | [`hard_delete`] | `hard_delete_scan`, one per account past its recovery deadline |

use std::path::PathBuf;
use std::sync::Arc;

use engine::config::{Env, VarSpec};
use engine::scheduler::Schedule;
use engine::{Job, Registry};

pub mod data_export;
pub mod export_cleanup;
pub mod exports;
pub mod gdpr;
pub mod hard_delete;
pub mod media_path;
pub mod orphan_sweep;
pub mod payments;
pub mod reconcile_transfers;
pub mod reverse_transfer;
pub mod schema;
pub mod send_email;
pub mod thumbnail;
pub mod tracks;
pub mod transfer_seller;
pub mod transfers;
pub mod users;

engine::config_var!(
    MEDIA_ROOT,
    "MEDIA_ROOT",
    "./media",
    "Directory holding uploaded media; tracks' file_path is relative to it."
);
engine::config_var!(
    ORPHAN_TRACK_AGE,
    "ORPHAN_TRACK_AGE",
    "1h",
    "A track still processing after this long with no file on disk is failed by orphan_sweep."
);

engine::config_var!(
    THUMBNAIL_SIZES,
    "THUMBNAIL_SIZES",
    "64,256,512",
    "Square thumbnail sizes in pixels the thumbnail job makes of a cover image, comma-separated (1 to 4096 each)."
);
engine::config_var!(
    THUMBNAIL_QUALITY,
    "THUMBNAIL_QUALITY",
    "85",
    "Quality of thumbnails, JPEG and (lossy) WebP, 1 to 100."
);
engine::config_var!(
    THUMBNAIL_MAX_DIMENSION,
    "THUMBNAIL_MAX_DIMENSION",
    "16384",
    "Widest or tallest source image accepted, in pixels; larger ones fail from their header, before decoding."
);
engine::config_var!(
    THUMBNAIL_MAX_PIXELS,
    "THUMBNAIL_MAX_PIXELS",
    "50000000",
    "Most pixels a source image may have (width x height); decoding memory is capped at 8 bytes per such pixel."
);
engine::config_var!(
    THUMBNAIL_MAX_SOURCE_BYTES,
    "THUMBNAIL_MAX_SOURCE_BYTES",
    "52428800",
    "Largest source image file the thumbnail job reads, in bytes (default 50 MiB); a bigger file fails its job for good, from its size, without being read."
);
engine::config_var!(
    THUMBNAIL_CONCURRENCY,
    "THUMBNAIL_CONCURRENCY",
    "",
    "Thumbnail jobs one process runs at once, each on a blocking-pool thread; default: the number of CPU cores."
);

/// The job kinds' variables, in `.env.template` order.
pub const VARS: &[VarSpec] = &[
    MEDIA_ROOT,
    ORPHAN_TRACK_AGE,
    THUMBNAIL_SIZES,
    THUMBNAIL_QUALITY,
    THUMBNAIL_MAX_DIMENSION,
    THUMBNAIL_MAX_PIXELS,
    THUMBNAIL_MAX_SOURCE_BYTES,
    THUMBNAIL_CONCURRENCY,
    payments::config::STRIPE_SECRET_KEY,
    payments::config::STRIPE_WEBHOOK_SECRET,
    payments::config::STRIPE_API_BASE,
    payments::config::STRIPE_TIMEOUT,
    payments::config::STRIPE_MAX_RPS,
    payments::config::TRANSFER_RETRY_ENABLED,
    payments::config::TRANSFER_RETRY_MAX_RETRIES,
    payments::config::TRANSFER_RETRY_BACKOFF_BASE,
    payments::config::TRANSFER_RETRY_BACKOFF_MAX,
    payments::config::TRANSFER_CHECK_INTERVAL,
    payments::config::REVERSAL_WORKER_ENABLED,
    payments::config::REVERSAL_MAX_RETRIES,
    payments::config::REVERSAL_BACKOFF_BASE,
    payments::config::REVERSAL_BACKOFF_MAX,
    payments::config::REVERSAL_CHECK_INTERVAL,
    payments::config::RECONCILE_TRANSFERS_SCHEDULE,
    payments::config::RECONCILE_TRANSFERS_LOOKBACK,
    payments::config::WEBHOOK_EVENT_RETENTION,
    gdpr::EXPORT_DIR,
    gdpr::EXPORT_DAILY_LIMIT,
    gdpr::EXPORT_SIGNING_KEY,
    gdpr::EXPORT_LINK_TTL,
    gdpr::EXPORT_RETENTION,
    gdpr::EXPORT_LINK_BASE_URL,
    gdpr::SMTP_URL,
    gdpr::MAIL_FROM,
    gdpr::MAIL_OUTBOX_DIR,
    gdpr::ACCOUNT_RECOVERY_DAYS,
    gdpr::REDIS_URL,
    gdpr::OPENSEARCH_URL,
    gdpr::OPENSEARCH_USERS_INDEX,
    gdpr::OPENSEARCH_TRACKS_INDEX,
    gdpr::OPENSEARCH_PLAYLISTS_INDEX,
];

/// Settings of every job kind.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Orphan sweep settings.
    pub sweep: orphan_sweep::SweepSettings,
    /// Thumbnail settings.
    pub thumbnail: thumbnail::ThumbnailSettings,
    /// Stripe and the payments jobs.
    pub payments: payments::PaymentsConfig,
    /// Data exports, e-mail, account erasure.
    pub gdpr: gdpr::GdprSettings,
}

impl JobsConfig {
    /// Reads the job kinds' variables.
    pub fn read(env: &mut Env) -> Self {
        let media_root = PathBuf::from(env.string(&MEDIA_ROOT));
        Self {
            sweep: orphan_sweep::SweepSettings {
                media_root: media_root.clone(),
                min_age: env.duration(&ORPHAN_TRACK_AGE),
            },
            thumbnail: thumbnail::ThumbnailSettings::read(env, media_root.clone()),
            payments: payments::PaymentsConfig::read(env),
            gdpr: gdpr::GdprSettings::read(env, media_root),
        }
    }
}

/// Registers every job kind (the engine's built-in `prune_jobs` included).
pub fn register_all(registry: &mut Registry, config: &JobsConfig) {
    engine::retention::register(registry);
    let sweep = Arc::new(config.sweep.clone());
    registry.register::<orphan_sweep::OrphanSweep, _, _>(move |args, ctx| {
        let sweep = Arc::clone(&sweep);
        async move { orphan_sweep::handle(args, ctx, &sweep).await }
    });
    let thumbs = Arc::new(config.thumbnail.clone());
    registry.register::<thumbnail::ThumbnailArgs, _, _>(move |args, ctx| {
        let thumbs = Arc::clone(&thumbs);
        async move { thumbnail::handle(args, ctx, &thumbs).await }
    });
    registry.set_concurrency(thumbnail::ThumbnailArgs::KIND, config.thumbnail.concurrency);
    let thumbs = Arc::new(config.thumbnail.clone());
    registry.register::<thumbnail::ThumbnailSizeArgs, _, _>(move |args, ctx| {
        let thumbs = Arc::clone(&thumbs);
        async move { thumbnail::handle_size(args, ctx, &thumbs).await }
    });
    registry.set_concurrency(
        thumbnail::ThumbnailSizeArgs::KIND,
        config.thumbnail.concurrency,
    );
    payments::register(registry, &config.payments);
    gdpr::register(registry, &config.gdpr);
}

/// Every schedule that needs no configuration.
pub fn schedules() -> Vec<Schedule> {
    let mut all = vec![orphan_sweep::schedule(), engine::retention::schedule()];
    all.extend(gdpr::schedules());
    all
}

/// Every schedule of `config`: [`schedules`] plus the payments ones (only for the kinds
/// [`register_all`] registers with this configuration).
pub fn schedules_for(config: &JobsConfig) -> Vec<Schedule> {
    let mut all = schedules();
    all.extend(payments::schedules(&config.payments));
    all
}

/// Every kind's name, as registered by [`register_all`].
pub const KINDS: &[&str] = &[
    orphan_sweep::OrphanSweep::KIND,
    thumbnail::ThumbnailArgs::KIND,
    thumbnail::ThumbnailSizeArgs::KIND,
    engine::retention::PruneJobs::KIND,
    transfer_seller::KIND,
    transfer_seller::check::KIND,
    reverse_transfer::KIND,
    reverse_transfer::check::KIND,
    reconcile_transfers::KIND,
    payments::retention::KIND,
    data_export::DataExport::KIND,
    export_cleanup::ExportCleanup::KIND,
    send_email::SendEmail::KIND,
    hard_delete::HardDelete::KIND,
    hard_delete::scan::HardDeleteScan::KIND,
];

/// Chooses ring as the process's TLS crypto provider. The workspace compiles rustls with
/// both ring and aws-lc-rs (opensearch and lettre pull one each), and rustls then refuses
/// to choose by itself: every TLS client (Stripe, OpenSearch, SMTP) would panic. Call once
/// at start; later calls do nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
