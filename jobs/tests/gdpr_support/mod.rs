//! Shared by the GDPR tests: an engine with the GDPR kinds on a manual clock, users with
//! personal data everywhere (rows and files), a scanner that looks for a string in every
//! column of every table, Redis helpers, a fake OpenSearch and a real SMTP server on
//! loopback (`smtp_sink`).
#![allow(dead_code)]

pub(crate) mod fake_opensearch;
pub(crate) mod smtp_sink;

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use engine::testing::TestDb;
use engine::{Backend, Clock, Db, Engine, Millis, Registry};
use fred::prelude::*;
use jobs::exports::SigningKey;
use jobs::gdpr::{self, GdprSettings};

/// The start of every test's manual clock: 2026-05-01 12:00 UTC.
pub(crate) fn start_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()
}

pub(crate) struct World {
    pub(crate) engine: Engine,
    pub(crate) clock: Clock,
    pub(crate) settings: GdprSettings,
    pub(crate) backend: Backend,
    pub(crate) dir: tempfile::TempDir,
}

impl World {
    pub(crate) fn db(&self) -> &Db {
        self.engine.db()
    }
    pub(crate) fn media(&self) -> &Path {
        &self.settings.erasure.media_root
    }
    pub(crate) fn now(&self) -> Millis {
        self.clock.now_ms()
    }
}

/// An engine with the GDPR kinds, media and work directories in a temporary directory, a
/// fixed signing key, and `configure` applied to the settings.
pub(crate) fn world(t: &TestDb, configure: impl FnOnce(&mut GdprSettings)) -> World {
    world_with(t, configure, |registry, settings| {
        gdpr::register(registry, settings)
    })
}

/// A world whose kinds `register` adds, on settings made as [`world`] makes them.
fn world_with(
    t: &TestDb,
    configure: impl FnOnce(&mut GdprSettings),
    register: impl FnOnce(&mut Registry, &GdprSettings),
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let mut settings = GdprSettings::new(&media, dir.path());
    settings.exports.signing_key = SigningKey::new(b"test-signing-key-of-32-bytes-xx!".to_vec());
    configure(&mut settings);
    let mut registry = Registry::new();
    register(&mut registry, &settings);
    let clock = Clock::manual(start_time());
    World {
        engine: t.engine(registry, clock.clone()),
        clock,
        settings,
        backend: t.backend,
        dir,
    }
}

/// A world with only the `data_export` kind, its timeout cut to `timeout` (the attempt's
/// handler is dropped then, as when its process dies: whatever it was doing stops there),
/// and `configure` applied to the settings.
pub(crate) fn export_world_with_timeout(
    t: &TestDb,
    timeout: std::time::Duration,
    configure: impl FnOnce(&mut GdprSettings),
) -> World {
    use engine::{Job, JobPolicy};
    use jobs::data_export::{self, DataExport};
    use jobs::send_email::{MailContext, Mailer};
    use std::sync::Arc;

    world_with(t, configure, |registry, settings| {
        let exports = Arc::new(settings.exports.clone());
        let mail = Arc::new(MailContext {
            mailer: Mailer::new(&settings.mail),
            settings: settings.mail.clone(),
            exports: settings.exports.clone(),
        });
        registry
            .register::<DataExport, _, _>(move |args, ctx| {
                let (e, m) = (Arc::clone(&exports), Arc::clone(&mail));
                async move { data_export::handle(args, ctx, &e, &m).await }
            })
            .policy(JobPolicy {
                timeout,
                ..DataExport::POLICY
            })
            .on_discard(data_export::on_discard);
    })
}

pub(crate) fn random_id() -> i64 {
    rand::random_range(1_000_000_000..100_000_000_000)
}

/// A user's identity: strings unique to this test, so a scanner can look for them.
#[derive(Debug, Clone)]
pub(crate) struct Person {
    pub(crate) id: i64,
    pub(crate) email: String,
    pub(crate) username: String,
    pub(crate) display_name: String,
}

impl Person {
    pub(crate) fn new(tag: &str) -> Self {
        let id = random_id();
        Self {
            id,
            email: format!("{tag}.{id}@mail.example"),
            username: format!("{tag}_{id}"),
            display_name: format!("{tag} Displayname{id}"),
        }
    }

    /// The strings that must not survive an erasure.
    pub(crate) fn identity(&self) -> [&str; 3] {
        [&self.email, &self.username, &self.display_name]
    }
}

pub(crate) async fn insert_user(w: &World, p: &Person) {
    sqlx::query(
        "INSERT INTO users (id, email, username, display_name, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'active', $5, $5)",
    )
    .bind(p.id)
    .bind(&p.email)
    .bind(&p.username)
    .bind(&p.display_name)
    .bind(w.now() - 86_400_000)
    .execute(w.db())
    .await
    .unwrap();
}

pub(crate) async fn set_keep_public_tracks(w: &World, user_id: i64, keep: bool) {
    sqlx::query("UPDATE users SET keep_public_tracks = $1 WHERE id = $2")
        .bind(i64::from(keep))
        .bind(user_id)
        .execute(w.db())
        .await
        .unwrap();
}

fn write_file(root: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// What [`seed`] created for the user.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seeded {
    pub(crate) private_tracks: Vec<i64>,
    pub(crate) public_tracks: Vec<i64>,
    pub(crate) other_track: i64,
    pub(crate) playlists: Vec<i64>,
    pub(crate) playlist_items: i64,
    pub(crate) other_playlist: i64,
    pub(crate) messages_sent: i64,
    pub(crate) messages_received: i64,
    pub(crate) plays: i64,
    pub(crate) other_plays_of_user_tracks: i64,
    /// Files of the user's private tracks, covers, thumbnails and avatar.
    pub(crate) private_files: Vec<PathBuf>,
    /// Files of the user's public tracks.
    pub(crate) public_files: Vec<PathBuf>,
    /// Files of the other user.
    pub(crate) other_files: Vec<PathBuf>,
}

async fn insert_track(
    w: &World,
    owner: i64,
    public: bool,
    title: &str,
    artist: &str,
    file: &str,
) -> i64 {
    let now = w.now();
    sqlx::query_scalar(
        "INSERT INTO tracks (status, file_path, created_at, updated_at, owner_id, is_public, title, artist_name) \
         VALUES ('ready', $1, $2, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(file)
    .bind(now)
    .bind(owner)
    .bind(i64::from(public))
    .bind(title)
    .bind(artist)
    .fetch_one(w.db())
    .await
    .unwrap()
}

/// Personal data of `user` in every table and under MEDIA_ROOT: a profile naming them, two
/// private and two public tracks (audio; the private ones with a cover and thumbnails),
/// two playlists named after them with items, messages both ways with `other`, plays; and
/// `other`'s own track, playlist (holding one of the user's public tracks) and plays of it.
pub(crate) async fn seed(w: &World, user: &Person, other: &Person) -> Seeded {
    let media = w.media().to_owned();
    let now = w.now();
    let mut s = Seeded::default();
    let u = user.id;
    let avatar = format!("avatars/{u}.png");
    s.private_files.push(write_file(&media, &avatar, b"PNG"));
    let links = format!(
        r#"[{{"label":"site","url":"https://{}.example"}}]"#,
        user.username
    );
    sqlx::query(
        "INSERT INTO user_profiles (user_id, bio, avatar_path, location, website, links, updated_at) \
         VALUES ($1, $2, $3, 'Lyon', $4, $5, $6)",
    )
    .bind(u)
    .bind(format!("I am {}, producer.", user.display_name))
    .bind(&avatar)
    .bind(format!("https://{}.example", user.username))
    .bind(links)
    .bind(now)
    .execute(w.db())
    .await
    .unwrap();

    for n in 0..2 {
        let file = format!("uploads/{u}/private-{n}.mp3");
        s.private_files.push(write_file(&media, &file, b"ID3"));
        let id = insert_track(w, u, false, &format!("Demo {n}"), &user.display_name, &file).await;
        let cover = format!("covers/{u}-{n}.png");
        s.private_files.push(write_file(&media, &cover, b"PNG"));
        let thumbs = format!(
            r#"[{{"size":64,"jpg":"thumbnails/{id}/64.jpg","webp":"thumbnails/{id}/64.webp"}}]"#
        );
        s.private_files.push(write_file(
            &media,
            &format!("thumbnails/{id}/64.jpg"),
            b"JPG",
        ));
        s.private_files.push(write_file(
            &media,
            &format!("thumbnails/{id}/64.webp"),
            b"WEBP",
        ));
        sqlx::query(
            "UPDATE tracks SET thumbnails = $1, thumbnail_source = $2, cover_path = $2 WHERE id = $3",
        )
            .bind(thumbs)
            .bind(&cover)
            .bind(id)
            .execute(w.db())
            .await
            .unwrap();
        s.private_tracks.push(id);
    }
    for n in 0..2 {
        let file = format!("uploads/{u}/public-{n}.mp3");
        s.public_files.push(write_file(&media, &file, b"ID3"));
        s.public_tracks.push(
            insert_track(
                w,
                u,
                true,
                &format!("Single {n}"),
                &user.display_name,
                &file,
            )
            .await,
        );
    }
    let other_file = format!("uploads/{}/song.mp3", other.id);
    s.other_files.push(write_file(&media, &other_file, b"ID3"));
    s.other_track = insert_track(
        w,
        other.id,
        true,
        "Other song",
        &other.display_name,
        &other_file,
    )
    .await;

    for n in 0..2 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO playlists (owner_id, name, description, is_public, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
        )
        .bind(u)
        .bind(format!("Mix {n} of {}", user.username))
        .bind(format!("made by {}", user.display_name))
        .bind(i64::from(n == 0))
        .bind(now)
        .fetch_one(w.db())
        .await
        .unwrap();
        for (pos, track) in [s.private_tracks[0], s.public_tracks[0], s.other_track]
            .into_iter()
            .enumerate()
        {
            insert_item(w, id, track, pos as i64).await;
            s.playlist_items += 1;
        }
        s.playlists.push(id);
    }
    s.other_playlist = sqlx::query_scalar(
        "INSERT INTO playlists (owner_id, name, is_public, created_at, updated_at) \
         VALUES ($1, 'Other favourites', 1, $2, $2) RETURNING id",
    )
    .bind(other.id)
    .bind(now)
    .fetch_one(w.db())
    .await
    .unwrap();
    insert_item(w, s.other_playlist, s.public_tracks[1], 0).await;
    insert_item(w, s.other_playlist, s.other_track, 1).await;

    for n in 0..3 {
        insert_message(
            w,
            u,
            other.id,
            &format!("hi {n} from {}", user.display_name),
        )
        .await;
        s.messages_sent += 1;
    }
    for n in 0..2 {
        insert_message(w, other.id, u, &format!("hey {} ({n})", user.username)).await;
        s.messages_received += 1;
    }
    for n in 0..4 {
        insert_play(w, u, Some(s.public_tracks[0]), n).await;
        s.plays += 1;
    }
    insert_play(w, other.id, Some(s.public_tracks[1]), 0).await;
    insert_play(w, other.id, Some(s.private_tracks[1]), 1).await;
    insert_play(w, other.id, Some(s.other_track), 2).await;
    s.other_plays_of_user_tracks = 2;
    s
}

pub(crate) async fn insert_item(w: &World, playlist: i64, track: i64, position: i64) {
    sqlx::query(
        "INSERT INTO playlist_items (playlist_id, track_id, position, added_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(playlist)
    .bind(track)
    .bind(position)
    .bind(w.now())
    .execute(w.db())
    .await
    .unwrap();
}

pub(crate) async fn insert_message(w: &World, from: i64, to: i64, body: &str) {
    sqlx::query(
        "INSERT INTO messages (sender_id, recipient_id, body, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(from)
    .bind(to)
    .bind(body)
    .bind(w.now())
    .execute(w.db())
    .await
    .unwrap();
}

pub(crate) async fn insert_play(w: &World, user: i64, track: Option<i64>, n: i64) {
    sqlx::query(
        "INSERT INTO playback_history (user_id, track_id, played_at, duration_ms, client) \
         VALUES ($1, $2, $3, 180000, 'web')",
    )
    .bind(user)
    .bind(track)
    .bind(w.now() - n * 1000)
    .execute(w.db())
    .await
    .unwrap();
}

pub(crate) async fn count(w: &World, sql: &str, id: i64) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(w.db())
        .await
        .unwrap()
}

/// Every `table.column` where a value contains one of `needles` (case-insensitive), over
/// every table of the database.
pub(crate) async fn find_everywhere(w: &World, needles: &[&str]) -> Vec<String> {
    let tables: Vec<String> = match w.backend {
        Backend::Postgres => sqlx::query_scalar(
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
        ),
        Backend::Sqlite => sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
        ),
    }
    .fetch_all(w.db())
    .await
    .unwrap();
    assert!(
        tables.len() >= 10,
        "the scanner must see the schema: {tables:?}"
    );
    let mut hits = Vec::new();
    for table in &tables {
        let columns: Vec<String> = match w.backend {
            Backend::Postgres => sqlx::query_scalar(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1",
            ),
            Backend::Sqlite => sqlx::query_scalar("SELECT name FROM pragma_table_info($1)"),
        }
        .bind(table)
        .fetch_all(w.db())
        .await
        .unwrap();
        for column in &columns {
            for needle in needles {
                let sql = format!(
                    "SELECT COUNT(*) FROM \"{table}\" WHERE LOWER(CAST(\"{column}\" AS TEXT)) LIKE $1"
                );
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(format!("%{}%", needle.to_lowercase()))
                    .fetch_one(w.db())
                    .await
                    .unwrap();
                if n > 0 {
                    hits.push(format!("{table}.{column} ({n} × {needle:?})"));
                }
            }
        }
    }
    hits
}

/// `TEST_REDIS_URL`, or `None` (with a message) to skip the Redis part; under `CI` a
/// missing Redis fails the test.
pub(crate) fn redis_url() -> Option<String> {
    match std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => Some(url),
        None if std::env::var_os("CI").is_some() => {
            panic!("TEST_REDIS_URL is unset but CI is set: Redis tests must run in CI")
        }
        None => {
            eprintln!("skipped: TEST_REDIS_URL unset, Redis part not run");
            None
        }
    }
}

pub(crate) async fn redis_client(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// Sets every key of `keys`.
pub(crate) async fn redis_set(client: &Client, keys: &[String]) {
    for chunk in keys.chunks(50) {
        let pairs: Vec<(String, String)> = chunk.iter().map(|k| (k.clone(), "v".into())).collect();
        let _: () = client.mset(pairs).await.unwrap();
    }
}

/// How many of `keys` exist.
pub(crate) async fn redis_exists(client: &Client, keys: &[String]) -> u64 {
    let mut n = 0;
    for chunk in keys.chunks(50) {
        let found: u64 = client.exists(chunk.to_vec()).await.unwrap();
        n += found;
    }
    n
}

/// Deletes `keys` (test clean-up).
pub(crate) async fn redis_del(client: &Client, keys: &[String]) {
    let _: u64 = client.del(keys.to_vec()).await.unwrap();
}

/// Decodes a quoted-printable body (RFC 2045 §6.7), as a mail client would.
pub(crate) fn decode_quoted_printable(body: &str) -> String {
    let bytes = quoted_printable::decode(body, quoted_printable::ParseMode::Strict)
        .expect("a valid quoted-printable body");
    String::from_utf8(bytes).expect("a UTF-8 body")
}
