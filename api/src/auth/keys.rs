//! API keys: `vz_` followed by 32 random bytes in hex. Only the SHA-256 of a key is stored
//! (a fast hash is right for 256 random bits: there is nothing to brute-force), with its
//! name, scope, a display prefix, creation, last use (updated at most once a minute) and
//! revocation times. Creating and revoking a key writes an audit row (entity `api_key`,
//! `none → active`, `active → revoked`) with who did it, in the same transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::state_machine::{CREATED, record};
use engine::{Actor, Db, Millis};
use poem_openapi::{Enum, Object};
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

/// Every key starts with this, so that a leaked key is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "vz_";
/// Characters of a key kept for display (`vz_` and 8 hex digits).
const DISPLAY_PREFIX_LEN: usize = 11;
/// `last_used_at` is written at most this often per key.
pub const LAST_USED_GRANULARITY_MS: Millis = 60_000;

/// What a key may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Enum,
    serde::Serialize,
    clap::ValueEnum,
)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// GET routes.
    Read,
    /// GET, and POST/PUT/DELETE on non-admin routes.
    Write,
    /// Everything, admin routes included.
    Admin,
}

impl Scope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    /// The scope of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Object, serde::Serialize)]
pub struct ApiKeyInfo {
    /// Id (the audit trail's actor is `api_key:{id}`).
    pub id: i64,
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    /// Created at (ms since the epoch).
    pub created_at: Millis,
    /// Last authenticated request (ms since the epoch, to the minute).
    #[oai(nullable)]
    pub last_used_at: Option<Millis>,
    /// Revoked at (ms since the epoch); a revoked key is refused.
    #[oai(nullable)]
    pub revoked_at: Option<Millis>,
}

/// A key just created: the only time its plaintext exists outside the caller.
#[derive(Debug, Clone, Object, serde::Serialize)]
pub struct CreatedKey {
    /// The stored record.
    #[oai(flatten)]
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The key, shown once: store it now.
    pub key: String,
}

/// An authenticated caller: the key's id and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Key id.
    pub key_id: i64,
    /// Key scope.
    pub scope: Scope,
}

/// SHA-256 of a key, hex.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn generate() -> String {
    format!("{KEY_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()))
}

const INFO_COLUMNS: &str = "id, name, scope, prefix, created_at, last_used_at, revoked_at";

fn info(row: &sqlx::any::AnyRow) -> Result<ApiKeyInfo, sqlx::Error> {
    let scope: String = row.try_get(2)?;
    Ok(ApiKeyInfo {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| sqlx::Error::Protocol(format!("unknown scope {scope:?}")))?,
        prefix: row.try_get(3)?,
        created_at: row.try_get(4)?,
        last_used_at: row.try_get(5)?,
        revoked_at: row.try_get(6)?,
    })
}

/// The audit trail's entity name of API keys.
pub const ENTITY: &str = "api_key";

/// Creates a key for `actor`; the result holds its plaintext, which is not stored.
pub async fn create(
    db: &Db,
    name: &str,
    scope: Scope,
    actor: &Actor,
    now: Millis,
) -> Result<CreatedKey, sqlx::Error> {
    let key = generate();
    let mut tx = db.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (name, scope, prefix, key_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {INFO_COLUMNS}"
    )))
    .bind(name)
    .bind(scope.as_str())
    .bind(&key[..DISPLAY_PREFIX_LEN])
    .bind(hash(&key))
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let info = info(&row)?;
    let note = format!("scope {}", scope.as_str());
    let id = info.id.to_string();
    record(
        &mut tx,
        ENTITY,
        &id,
        CREATED,
        "active",
        actor,
        Some(&note),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedKey { info, key })
}

/// Every key, oldest first.
pub async fn list(db: &Db) -> Result<Vec<ApiKeyInfo>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INFO_COLUMNS} FROM api_keys ORDER BY id"
    )))
    .fetch_all(db)
    .await?
    .iter()
    .map(info)
    .collect()
}

/// Revokes key `id` for `actor` (a second revoke keeps the first time and writes no audit
/// row); `None` when no key has this id.
pub async fn revoke(
    db: &Db,
    id: i64,
    actor: &Actor,
    now: Millis,
) -> Result<Option<ApiKeyInfo>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let revoked = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
         RETURNING {INFO_COLUMNS}"
    )))
    .bind(id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let row = match revoked {
        Some(row) => {
            record(
                &mut tx,
                ENTITY,
                &id.to_string(),
                "active",
                "revoked",
                actor,
                None,
                now,
            )
            .await?;
            Some(row)
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {INFO_COLUMNS} FROM api_keys WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    row.as_ref().map(info).transpose()
}

/// The caller presenting `key`, or `None` for an unknown or revoked key, always read from
/// the database (the dashboard's sign-in); `/v1` asks its [`KeyCache`].
pub async fn authenticate(db: &Db, key: &str, now: Millis) -> Result<Option<Caller>, sqlx::Error> {
    if !well_formed(key) {
        return Ok(None);
    }
    let Some(found) = verify(db, &hash(key)).await? else {
        return Ok(None);
    };
    record_use(db, &found, now).await?;
    Ok(Some(found.caller))
}

fn well_formed(key: &str) -> bool {
    key.starts_with(KEY_PREFIX) && key.len() <= 128
}

/// A key the database vouched for: who it is, and when its use was last recorded.
#[derive(Debug, Clone, Copy)]
struct Verified {
    caller: Caller,
    last_used_at: Option<Millis>,
}

/// Looks the key up by its hash and compares the hashes in constant time; `None` for an
/// unknown or revoked key.
async fn verify(db: &Db, presented: &str) -> Result<Option<Verified>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT id, scope, key_hash, last_used_at, revoked_at FROM api_keys WHERE key_hash = $1",
    )
    .bind(presented)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    let stored: String = row.try_get(2)?;
    if !bool::from(stored.as_bytes().ct_eq(presented.as_bytes())) {
        return Ok(None);
    }
    let revoked_at: Option<Millis> = row.try_get(4)?;
    if revoked_at.is_some() {
        return Ok(None);
    }
    let scope: String = row.try_get(1)?;
    let Some(scope) = Scope::parse(&scope) else {
        return Ok(None);
    };
    Ok(Some(Verified {
        caller: Caller {
            key_id: row.try_get(0)?,
            scope,
        },
        last_used_at: row.try_get(3)?,
    }))
}

/// Records the use of a key, at most once a minute: `true` when this call wrote it.
async fn record_use(db: &Db, key: &Verified, now: Millis) -> Result<bool, sqlx::Error> {
    if key
        .last_used_at
        .is_some_and(|t| now - t < LAST_USED_GRANULARITY_MS)
    {
        return Ok(false);
    }
    // Guarded so that concurrent requests write it once.
    sqlx::query(
        "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 \
         AND (last_used_at IS NULL OR last_used_at <= $3)",
    )
    .bind(key.caller.key_id)
    .bind(now)
    .bind(now - LAST_USED_GRANULARITY_MS)
    .execute(db)
    .await?;
    Ok(true)
}

/// The keys this process verified in the last `API_KEY_CACHE_TTL`, by hash, so that a
/// request costs no key lookup. Only valid keys are kept (unknown ones are never cached, so
/// random keys cannot grow it). The trade-off is revocation: a key revoked through this
/// process's API is forgotten at once ([`KeyCache::forget`]); revoked anywhere else (the
/// CLI, another API process) it keeps working here for up to the TTL. Uses are still
/// recorded once a minute.
#[derive(Debug, Clone)]
pub struct KeyCache {
    ttl: Millis,
    held: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    /// Key hash → the key and when the database vouched for it.
    keys: HashMap<String, (Verified, Millis)>,
    /// Bumped by every [`KeyCache::forget`]: a check that read the database before a
    /// revocation is not cached after it.
    forgets: u64,
}

/// Entries beyond which expired ones are dropped on insert.
const KEY_CACHE_SWEEP_AT: usize = 1024;

impl KeyCache {
    /// A cache trusting a verified key for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: Millis::try_from(ttl.as_millis()).unwrap_or(Millis::MAX),
            held: Arc::default(),
        }
    }

    /// [`authenticate`], answered from the cache while the key's check is younger than the
    /// TTL.
    pub async fn authenticate(
        &self,
        db: &Db,
        key: &str,
        now: Millis,
    ) -> Result<Option<Caller>, sqlx::Error> {
        if !well_formed(key) {
            return Ok(None);
        }
        let presented = hash(key);
        let (cached, forgets) = {
            let held = self.lock();
            (held.keys.get(&presented).copied(), held.forgets)
        };
        let fresh = cached.filter(|(_, checked_at)| (0..self.ttl).contains(&(now - checked_at)));
        if let Some((found, _)) = fresh {
            if record_use(db, &found, now).await?
                && let Some((held, _)) = self.lock().keys.get_mut(&presented)
            {
                held.last_used_at = Some(now);
            }
            return Ok(Some(found.caller));
        }
        let Some(mut found) = verify(db, &presented).await? else {
            self.lock().keys.remove(&presented);
            return Ok(None);
        };
        if record_use(db, &found, now).await? {
            found.last_used_at = Some(now);
        }
        let mut held = self.lock();
        if held.forgets == forgets {
            if held.keys.len() >= KEY_CACHE_SWEEP_AT {
                held.keys.retain(|_, (_, at)| now - *at < self.ttl);
            }
            held.keys.insert(presented, (found, now));
        }
        Ok(Some(found.caller))
    }

    /// Forgets key `id` (just revoked), so that this process refuses it from now on.
    pub fn forget(&self, id: i64) {
        let mut held = self.lock();
        held.forgets += 1;
        held.keys.retain(|_, (v, _)| v.caller.key_id != id);
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}
