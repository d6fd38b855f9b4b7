//! `veza-jobs demo`: a small marketplace in an empty database, so that every example of the
//! README has something to answer (a fresh database has no users, tracks or transfers).
//!
//! It seeds, through the functions the application itself uses wherever they exist (so
//! the state machines and the audit trail see every change):
//!
//! - three users, a profile, a playlist, plays and a message (plain inserts: the web
//!   backend owns these tables and veza-jobs has no function that creates them);
//! - three tracks with real cover images under `MEDIA_ROOT/demo/` (a JPEG, a PNG and a JPEG
//!   whose upload broke off) and short silent WAV files, moved `processing → ready` by the
//!   track state machine;
//! - API keys of each scope ([`keys::create`]);
//! - two orders ([`orders::create_order`]) paid, and one partly refunded, through Stripe
//!   events given to the webhook's core ([`payments::process_event`]): their seller
//!   transfers and payout jobs;
//! - the thumbnail jobs of two covers, a data export ([`exports::request_export`]) and a
//!   deletion request ([`users::request_deletion`]).
//!
//! Then it runs the engine's workers on those jobs until they settle, as `serve` would: one
//! thumbnail succeeds; the other fails for good (its cover is a truncated JPEG); the export
//! is written and its e-mail put in the outbox; the payouts fail because the seller has no
//! Stripe connected account yet, so they are retried with backoff (a payout is registered
//! for this run even without `STRIPE_SECRET_KEY`: it fails before any call to Stripe, and
//! its client points at a closed local port). One payout job is then cancelled, which
//! gives its transfer up (`permanently_failed`, audited as `cli`, by the payout kind's
//! discard hook), for the admin retry example: reaching that through real attempts takes
//! `TRANSFER_RETRY_MAX_RETRIES` backoffs.
//!
//! It refuses a database that has users, tracks, orders or API keys already: seeding
//! next to real data would mix the two, and a second run would make a second set. Start
//! from a new database (delete `./veza-jobs.db`, or point `DATABASE_URL` elsewhere).
//! Files under `MEDIA_ROOT/demo/` are the demo's own and are rewritten.

use std::fmt::Write as _;
use std::io::Cursor;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use engine::admin::{self, JobFilter};
use engine::state_machine::Lifecycle as _;
use engine::worker::WorkerPool;
use engine::{Actor, Db, Engine, JobState, Millis, Registry};
use image::{ImageFormat, Rgb, RgbImage};
use jobs::exports::{self, ExportStatus, SigningKey};
use jobs::payments::orders::{self, NewOrderItem};
use jobs::payments::{self, EventOutcome, StripeEvent};
use jobs::thumbnail::ThumbnailArgs;
use jobs::tracks::TrackStatus;
use jobs::transfer_seller;
use jobs::transfers::state as transfer_state;
use jobs::transfers::stripe::StripeSettings;
use jobs::transfers::{self, TransferStatus};
use jobs::users;

use crate::app::App;
use crate::auth::Scope;
use crate::auth::keys;
use crate::config::Config;

/// How long the demo's jobs may take to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The cover whose thumbnails the README asks for (it has none yet).
pub const UNTHUMBED_COVER: &str = "demo/covers/low-tide.png";

/// What the demo made: the ids and keys the README's examples use.
#[derive(Debug, Clone)]
pub struct Demo {
    /// The database, redacted.
    pub database: String,
    /// `MEDIA_ROOT`.
    pub media_root: String,
    /// Ada: a buyer with a playlist, plays, a message and a ready data export.
    pub user_id: i64,
    /// Bram: sells the tracks; no Stripe connected account yet.
    pub seller_id: i64,
    /// Eve: asked for the deletion of her account.
    pub leaving_user_id: i64,
    /// "Low Tide": a cover ([`UNTHUMBED_COVER`]) without thumbnails.
    pub track_id: i64,
    /// "Night Drive": its thumbnails were made.
    pub thumbed_track_id: i64,
    /// A payout given up (`permanently_failed`).
    pub transfer_id: i64,
    /// The thumbnail job of the truncated cover: `failed`.
    pub failed_job: i64,
    /// The payout job of the seller without an account: `retrying`.
    pub retrying_job: i64,
    /// Admin key.
    pub admin_key: String,
    /// Read key.
    pub read_key: String,
    /// Write key.
    pub write_key: String,
    /// A key to revoke.
    pub leaked_key_id: i64,
    /// The download link of Ada's export, as her e-mail has it.
    pub download_url: String,
    /// The export signing key the demo made, when `EXPORT_SIGNING_KEY` is unset.
    pub signing_key: Option<String>,
}

impl Demo {
    /// What `veza-jobs demo` prints: `export` lines a shell can source, with comments.
    pub fn script(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# veza-jobs demo: a small marketplace in {} (MEDIA_ROOT {}).\n\
             # Load this into your shell (`veza-jobs demo | tee demo.env`, then `. ./demo.env`);\n\
             # the README's examples use these variables.",
            self.database, self.media_root
        );
        let id = |n: i64| n.to_string();
        let mut vars = vec![
            (
                "USER_ID",
                id(self.user_id),
                "Ada: buyer; a playlist, plays, a message, a ready data export".to_owned(),
            ),
            (
                "SELLER_ID",
                id(self.seller_id),
                "Bram: sells the tracks; no Stripe connected account yet".to_owned(),
            ),
            (
                "LEAVING_USER_ID",
                id(self.leaving_user_id),
                "Eve: asked for the deletion of her account".to_owned(),
            ),
            (
                "TRACK_ID",
                id(self.track_id),
                format!("\"Low Tide\": cover {UNTHUMBED_COVER}, no thumbnails yet"),
            ),
            (
                "THUMBED_TRACK_ID",
                id(self.thumbed_track_id),
                "\"Night Drive\": its thumbnails are made".to_owned(),
            ),
            (
                "TRANSFER_ID",
                id(self.transfer_id),
                "a payout given up (permanently_failed): an admin may retry it".to_owned(),
            ),
            (
                "FAILED_JOB",
                id(self.failed_job),
                "thumbnail of \"First Take\": its cover upload broke off (truncated JPEG)"
                    .to_owned(),
            ),
            (
                "RETRYING_JOB",
                id(self.retrying_job),
                "Bram's payout: no connected account yet, retried with backoff".to_owned(),
            ),
            (
                "KEY",
                self.admin_key.clone(),
                "API key, scope admin (demo-admin)".to_owned(),
            ),
            (
                "READ_KEY",
                self.read_key.clone(),
                "API key, scope read (demo-read)".to_owned(),
            ),
            (
                "WRITE_KEY",
                self.write_key.clone(),
                "API key, scope write (demo-write)".to_owned(),
            ),
            (
                "LEAKED_KEY_ID",
                id(self.leaked_key_id),
                "API key demo-leaked: one to revoke".to_owned(),
            ),
            (
                "DOWNLOAD_URL",
                self.download_url.clone(),
                "Ada's data export: the link her e-mail (MAIL_OUTBOX_DIR) has".to_owned(),
            ),
        ];
        if let Some(key) = &self.signing_key {
            vars.push((
                "EXPORT_SIGNING_KEY",
                key.clone(),
                "EXPORT_SIGNING_KEY was unset: the key that signed DOWNLOAD_URL, for serve"
                    .to_owned(),
            ));
        }
        for (name, value, about) in vars {
            let _ = writeln!(out, "export {name}={}  # {about}", shell_quote(&value));
        }
        out
    }
}

/// Single-quoted for a POSIX shell when it has anything but letters, digits and `_-./:`.
fn shell_quote(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:".contains(c))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Seeds the database of `config` (migrating it first) and its `MEDIA_ROOT`; see the
/// module documentation.
pub async fn seed(mut config: Config) -> anyhow::Result<Demo> {
    // Unset, the key would be random and die with this process: make one and say it.
    let signing_key = (!config.export_signing_key_set).then(|| {
        let key = hex::encode(rand::random::<[u8; 32]>());
        config.jobs.gdpr.exports.signing_key = SigningKey::new(key.clone().into_bytes());
        key
    });
    let app = App::connect(config.clone()).await?;
    let result = async {
        app.migrate().await?;
        refuse_unless_empty(app.engine.db()).await?;
        let engine = demo_engine(&app)?;
        Seeder {
            engine: &engine,
            config: &config,
            now: engine.clock().now_ms(),
        }
        .run(signing_key)
        .await
    }
    .await;
    app.close().await;
    result
}

/// The engine of the demo run: every kind `serve` registers, plus the payout worker when
/// this configuration has none (see the module documentation).
fn demo_engine(app: &App) -> anyhow::Result<Engine> {
    let config = &app.config;
    let mut jobs_config = config.jobs.clone();
    if jobs_config.payments.stripe.is_none() {
        // Payouts to sellers without a Stripe account retry; they fail before any call.
        jobs_config.payments.stripe = Some(StripeSettings {
            secret_key: "sk_test_veza_demo".to_owned(),
            api_base: "http://127.0.0.1:9/".to_owned(),
            timeout: Duration::from_secs(2),
            max_rps: NonZeroU32::MIN,
        });
    }
    let mut registry = Registry::new();
    jobs::register_all(&mut registry, &jobs_config);
    Ok(Engine::builder(
        app.engine.db().clone(),
        app.engine.backend(),
        app.engine.database_url(),
    )
    .registry(registry)
    .workers(config.engine.workers.clone())
    .build())
}

/// Fails unless the tables the demo fills are empty.
async fn refuse_unless_empty(db: &Db) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for table in ["users", "tracks", "orders", "api_keys"] {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(db)
            .await?;
        if n > 0 {
            found.push(format!("{n} {table}"));
        }
    }
    if !found.is_empty() {
        bail!(
            "the database is not empty ({}): the demo only seeds an empty database. \
             Start from a new one: delete ./veza-jobs.db, or set DATABASE_URL to another \
             (e.g. DATABASE_URL=sqlite://demo.db?mode=rwc)",
            found.join(", ")
        );
    }
    Ok(())
}

struct Seeder<'a> {
    engine: &'a Engine,
    config: &'a Config,
    now: Millis,
}

/// A track as the demo makes it.
struct TrackSeed {
    slug: &'static str,
    title: &'static str,
    public: bool,
    /// Its cover, under `MEDIA_ROOT` (`tracks.cover_path`).
    cover: &'static str,
}

impl Seeder<'_> {
    async fn run(&self, signing_key: Option<String>) -> anyhow::Result<Demo> {
        let media_root = &self.config.jobs.thumbnail.media_root;
        write_media(media_root).await?;

        let ada = self.user("ada@example.com", "ada", "Ada Lovelace").await?;
        let bram = self.user("bram@example.com", "bram", "Bram").await?;
        let eve = self.user("eve@example.com", "eve", "Eve").await?;
        let night_drive = self
            .track(
                bram,
                &TrackSeed {
                    slug: "night-drive",
                    title: "Night Drive",
                    public: true,
                    cover: "demo/covers/night-drive.jpg",
                },
            )
            .await?;
        let low_tide = self
            .track(
                bram,
                &TrackSeed {
                    slug: "low-tide",
                    title: "Low Tide",
                    public: true,
                    cover: UNTHUMBED_COVER,
                },
            )
            .await?;
        let first_take = self
            .track(
                bram,
                &TrackSeed {
                    slug: "first-take",
                    title: "First Take",
                    public: false,
                    cover: "demo/covers/first-take.jpg",
                },
            )
            .await?;
        self.personal_data(ada, bram, &[night_drive, low_tide])
            .await?;

        let admin_key = self.key("demo-admin", Scope::Admin).await?;
        let read_key = self.key("demo-read", Scope::Read).await?;
        let write_key = self.key("demo-write", Scope::Write).await?;
        let leaked = keys::create(
            self.engine.db(),
            "demo-leaked",
            Scope::Read,
            &Actor::cli(),
            self.now,
        )
        .await?;

        // Orders paid through the webhook's core: a transfer and a payout job per item.
        let (first_order, first_transfer) = self
            .paid_order(1, ada, bram, night_drive, 1999, 1599)
            .await?;
        self.partial_refund(first_order, 500).await?;
        let (_, given_up) = self.paid_order(2, ada, bram, low_tide, 1299, 999).await?;

        let thumbs = self
            .engine
            .enqueue(ThumbnailArgs {
                track_id: night_drive,
                source: "demo/covers/night-drive.jpg".to_owned(),
            })
            .await?
            .id();
        let failed_job = self
            .engine
            .enqueue(ThumbnailArgs {
                track_id: first_take,
                source: "demo/covers/first-take.jpg".to_owned(),
            })
            .await?
            .id();
        let export = exports::request_export(
            self.engine,
            &self.config.jobs.gdpr.exports,
            ada,
            &Actor::cli(),
        )
        .await
        .context("requesting Ada's data export")?;
        users::request_deletion(
            self.engine,
            &self.config.jobs.gdpr.accounts,
            eve,
            Some(false),
            &Actor::cli(),
        )
        .await
        .context("requesting Eve's deletion")?;

        settle(self.engine).await?;

        expect_state(
            self.engine,
            thumbs,
            JobState::Succeeded,
            "Night Drive's thumbnails",
        )
        .await?;
        expect_state(
            self.engine,
            failed_job,
            JobState::Failed,
            "First Take's thumbnails",
        )
        .await?;
        let retrying_job = payout_job(self.engine, first_transfer).await?;
        expect_state(
            self.engine,
            retrying_job,
            JobState::Retrying,
            "the payout of order 1",
        )
        .await?;
        self.give_up(given_up).await?;
        let download_url = self.download_url(ada, export.export_id).await?;

        Ok(Demo {
            database: engine::db::redact(self.engine.database_url()),
            media_root: media_root.display().to_string(),
            user_id: ada,
            seller_id: bram,
            leaving_user_id: eve,
            track_id: low_tide,
            thumbed_track_id: night_drive,
            transfer_id: given_up,
            failed_job,
            retrying_job,
            admin_key,
            read_key,
            write_key,
            leaked_key_id: leaked.info.id,
            download_url,
            signing_key,
        })
    }

    /// A user of the web backend (its table; veza-jobs has no function creating one).
    async fn user(&self, email: &str, username: &str, name: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO users (email, username, display_name, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) RETURNING id",
        )
        .bind(email)
        .bind(username)
        .bind(name)
        .bind(self.now)
        .fetch_one(self.engine.db())
        .await?)
    }

    /// An uploaded track (inserted `processing`, as an upload is) made playable through
    /// the track state machine.
    async fn track(&self, owner: i64, seed: &TrackSeed) -> anyhow::Result<i64> {
        let mut tx = self.engine.db().begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tracks (status, file_path, created_at, updated_at, owner_id, is_public, \
             title, artist_name, cover_path) \
             VALUES ('processing', $1, $2, $2, $3, $4, $5, 'Bram', $6) RETURNING id",
        )
        .bind(format!("demo/audio/{}.wav", seed.slug))
        .bind(self.now)
        .bind(owner)
        .bind(i32::from(seed.public))
        .bind(seed.title)
        .bind(seed.cover)
        .fetch_one(&mut *tx)
        .await?;
        jobs::tracks::state::transition(
            &mut tx,
            id,
            TrackStatus::Processing,
            TrackStatus::Ready,
            None,
            &Actor::cli(),
            self.now,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// What a data export has to show: a profile, a playlist, plays and a message.
    async fn personal_data(&self, user: i64, other: i64, tracks: &[i64]) -> anyhow::Result<()> {
        let mut tx = self.engine.db().begin().await?;
        sqlx::query(
            "INSERT INTO user_profiles (user_id, bio, location, website, links, updated_at) \
             VALUES ($1, 'Writes code, listens to synthwave.', 'London', 'https://example.com/ada', \
             '[{\"label\": \"blog\", \"url\": \"https://example.com/ada/blog\"}]', $2)",
        )
        .bind(user)
        .bind(self.now)
        .execute(&mut *tx)
        .await?;
        let playlist: i64 = sqlx::query_scalar(
            "INSERT INTO playlists (owner_id, name, description, is_public, created_at, updated_at) \
             VALUES ($1, 'Late night', 'For the drive home', 1, $2, $2) RETURNING id",
        )
        .bind(user)
        .bind(self.now)
        .fetch_one(&mut *tx)
        .await?;
        for (position, track) in (1_i64..).zip(tracks) {
            sqlx::query(
                "INSERT INTO playlist_items (playlist_id, track_id, position, added_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(playlist)
            .bind(track)
            .bind(position)
            .bind(self.now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO playback_history (user_id, track_id, played_at, duration_ms, client) \
                 VALUES ($1, $2, $3, 183000, 'web')",
            )
            .bind(user)
            .bind(track)
            .bind(self.now - 3_600_000 * position)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO messages (sender_id, recipient_id, body, created_at) \
             VALUES ($1, $2, 'Loved Night Drive. Any plans for a vinyl?', $3)",
        )
        .bind(user)
        .bind(other)
        .bind(self.now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn key(&self, name: &str, scope: Scope) -> anyhow::Result<String> {
        Ok(
            keys::create(self.engine.db(), name, scope, &Actor::cli(), self.now)
                .await?
                .key,
        )
    }

    /// Order `n`: `buyer` buys `track` from `seller` for `total` (the seller's share
    /// `share`), paid by a `payment_intent.succeeded` event. Returns the order and its
    /// transfer.
    async fn paid_order(
        &self,
        n: u32,
        buyer: i64,
        seller: i64,
        track: i64,
        total: i64,
        share: i64,
    ) -> anyhow::Result<(i64, i64)> {
        let mut conn = self.engine.db().acquire().await?;
        let (order, _) = orders::create_order(
            &mut conn,
            Some(buyer),
            "eur",
            total,
            &[NewOrderItem {
                seller_id: seller,
                amount: share,
                product_ref: Some(format!("track:{track}")),
            }],
            self.now,
        )
        .await?;
        drop(conn);
        let outcome = self
            .event(serde_json::json!({
                "id": format!("evt_demo_payment_{n}"),
                "type": "payment_intent.succeeded",
                "livemode": false,
                "data": {"object": {
                    "id": format!("pi_demo_{n}"),
                    "object": "payment_intent",
                    "amount": total,
                    "amount_received": total,
                    "currency": "eur",
                    "latest_charge": format!("ch_demo_{n}"),
                    "metadata": {"order_id": order.to_string()},
                }},
            }))
            .await?;
        match outcome {
            EventOutcome::TransfersCreated { transfer_ids, .. } if transfer_ids.len() == 1 => {
                Ok((order, transfer_ids[0]))
            }
            other => bail!("the payment of order {order} was not processed: {other:?}"),
        }
    }

    /// A partial refund of order `order` (paid as `pi_demo_1`/`ch_demo_1`), by a
    /// `charge.refunded` event: recorded for an admin, nothing reversed.
    async fn partial_refund(&self, order: i64, amount: i64) -> anyhow::Result<()> {
        let outcome = self
            .event(serde_json::json!({
                "id": "evt_demo_refund_1",
                "type": "charge.refunded",
                "livemode": false,
                "data": {"object": {
                    "id": "ch_demo_1",
                    "object": "charge",
                    "amount": 1999,
                    "amount_refunded": amount,
                    "refunded": false,
                    "currency": "eur",
                    "payment_intent": "pi_demo_1",
                    "metadata": {"order_id": order.to_string()},
                }},
            }))
            .await?;
        match outcome {
            EventOutcome::PartialRefund { .. } => Ok(()),
            other => bail!("the partial refund of order {order} was not recorded: {other:?}"),
        }
    }

    /// A Stripe event, handled as the webhook handles a verified one.
    async fn event(&self, raw: serde_json::Value) -> anyhow::Result<EventOutcome> {
        let event = StripeEvent::from_value(raw)?;
        Ok(payments::process_event(self.engine, &event, &Actor::webhook(&event.id)).await?)
    }

    /// Gives up the payout of `transfer` (`failed → permanently_failed`), as its job does
    /// after its last retry, and cancels that job.
    async fn give_up(&self, transfer: i64) -> anyhow::Result<()> {
        // Cancelling the payout job gives its transfer up, in the same transaction (the
        // payout kind's discard hook), as its last failed attempt would.
        let job = payout_job(self.engine, transfer).await?;
        self.engine.cancel(job, &Actor::cli()).await?;
        let mut conn = self.engine.db().acquire().await?;
        let row = transfer_state::load(&mut conn, transfer)
            .await?
            .with_context(|| format!("seller transfer {transfer} is missing"))?;
        if row.status() != TransferStatus::PermanentlyFailed {
            bail!(
                "seller transfer {transfer} is {} after its payout job was cancelled",
                row.status()
            );
        }
        Ok(())
    }

    /// The link of export `export_id` (ready by now), as its e-mail has it.
    async fn download_url(&self, user: i64, export_id: i64) -> anyhow::Result<String> {
        let export = exports::list_exports(self.engine.db(), user)
            .await?
            .into_iter()
            .find(|e| e.id == export_id)
            .with_context(|| format!("export {export_id} is missing"))?;
        match (export.status, export.link_expires_at) {
            (ExportStatus::Ready, Some(expires)) => Ok(exports::download_link(
                &self.config.jobs.gdpr.exports,
                export_id,
                expires,
            )),
            (status, _) => bail!(
                "Ada's data export is {}, not ready: {}",
                status.as_str(),
                export.error.unwrap_or_default()
            ),
        }
    }
}

/// Runs the workers until no job is pending or running (the retrying ones wait for their
/// backoff), then stops them.
async fn settle(engine: &Engine) -> anyhow::Result<()> {
    let pool = WorkerPool::start(engine);
    let start = tokio::time::Instant::now();
    let outcome = loop {
        let mut busy = 0;
        for status in [JobState::Pending, JobState::Running] {
            let filter = JobFilter {
                status: Some(status),
                limit: Some(1),
                ..JobFilter::default()
            };
            busy += admin::list_jobs(engine.db(), &filter).await?.jobs.len();
        }
        if busy == 0 {
            break Ok(());
        }
        if start.elapsed() > SETTLE_TIMEOUT {
            break Err(anyhow::anyhow!(
                "the demo's jobs did not settle within {SETTLE_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pool.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    outcome
}

async fn expect_state(
    engine: &Engine,
    id: i64,
    expected: JobState,
    what: &str,
) -> anyhow::Result<()> {
    let job = admin::get_job(engine.db(), id).await?.job;
    if job.status != expected {
        bail!(
            "{what} (job {id}) ended {}, expected {expected}: {}",
            job.status,
            job.last_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// The payout job of `transfer` (its first).
async fn payout_job(engine: &Engine, transfer: i64) -> anyhow::Result<i64> {
    transfers::jobs_of(engine, transfer)
        .await?
        .into_iter()
        .find(|j| j.kind == transfer_seller::KIND)
        .map(|j| j.id)
        .with_context(|| format!("seller transfer {transfer} has no payout job"))
}

/// The demo's files under `media_root/demo/`: three covers (the last one cut short, as an
/// upload that broke off) and a second of silence per track.
async fn write_media(media_root: &Path) -> anyhow::Result<()> {
    let dir = media_root.join("demo");
    let files = tokio::task::spawn_blocking(|| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let night = cover(640, [20, 24, 82], [214, 64, 128]);
        let tide = cover(480, [8, 92, 110], [226, 236, 200]);
        let take = cover(640, [60, 44, 30], [240, 190, 90]);
        let mut night_jpg = Vec::new();
        night.write_to(&mut Cursor::new(&mut night_jpg), ImageFormat::Jpeg)?;
        let mut tide_png = Vec::new();
        tide.write_to(&mut Cursor::new(&mut tide_png), ImageFormat::Png)?;
        let mut take_jpg = Vec::new();
        take.write_to(&mut Cursor::new(&mut take_jpg), ImageFormat::Jpeg)?;
        take_jpg.truncate(take_jpg.len() * 2 / 5);
        let mut files = vec![
            ("covers/night-drive.jpg".to_owned(), night_jpg),
            ("covers/low-tide.png".to_owned(), tide_png),
            ("covers/first-take.jpg".to_owned(), take_jpg),
        ];
        for slug in ["night-drive", "low-tide", "first-take"] {
            files.push((format!("audio/{slug}.wav"), silent_wav()));
        }
        Ok(files)
    })
    .await??;
    for (path, bytes) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        tokio::fs::write(&path, bytes)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A square cover: a diagonal gradient from `from` to `to` with a record in the middle.
fn cover(side: u32, from: [u8; 3], to: [u8; 3]) -> RgbImage {
    let centre = f64::from(side) / 2.0;
    RgbImage::from_fn(side, side, |x, y| {
        let t = f64::from(x + y) / f64::from(2 * side);
        let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t) as u8;
        let r = (f64::from(x) - centre).hypot(f64::from(y) - centre) / centre;
        match r {
            r if r < 0.08 => Rgb(to),
            r if r < 0.55 && ((r * 40.0) as u32).is_multiple_of(2) => Rgb([16, 16, 16]),
            r if r < 0.55 => Rgb([28, 28, 28]),
            _ => Rgb([
                mix(from[0], to[0]),
                mix(from[1], to[1]),
                mix(from[2], to[2]),
            ]),
        }
    })
}

/// One second of silence: 8 kHz, 8-bit mono PCM in a RIFF/WAVE container.
fn silent_wav() -> Vec<u8> {
    const RATE: u32 = 8000;
    let mut wav = Vec::with_capacity(44 + RATE as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + RATE).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes()); // sample rate
    wav.extend_from_slice(&RATE.to_le_bytes()); // bytes per second
    wav.extend_from_slice(&1u16.to_le_bytes()); // block align
    wav.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.resize(44 + RATE as usize, 128); // 8-bit PCM is unsigned: 128 is silence
    wav
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(shell_quote("vz_0123abc"), "vz_0123abc");
        assert_eq!(
            shell_quote("http://h:1/v1/exports/1/download?expires=2&token=ab"),
            "'http://h:1/v1/exports/1/download?expires=2&token=ab'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_covers_are_images_and_the_cut_one_is_not_whole() {
        let mut jpg = Vec::new();
        cover(64, [0, 0, 0], [255, 255, 255])
            .write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg)
            .expect("encode");
        assert!(image::load_from_memory(&jpg).is_ok());
        let wav = silent_wav();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(wav.len(), 44 + 8000);
    }
}
