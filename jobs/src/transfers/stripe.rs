//! A thin Stripe client for seller transfers: create a transfer, find or fetch one, reverse
//! one, list its reversals. Every call waits for the process-wide rate limiter
//! (`STRIPE_MAX_RPS`), is bounded by `STRIPE_TIMEOUT`, and is made once: retries are the
//! job engine's, with the same `Idempotency-Key` on every attempt of one operation.
//!
//! Errors are classified by HTTP status and Stripe error code, never by message text
//! ([`StripeCallError::is_transient`]).

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_connect::transfer::{CreateTransfer, ListTransfer, RetrieveTransfer};
use stripe_connect::transfer_reversal::{CreateIdTransferReversal, ListIdTransferReversal};

/// Where and how to reach Stripe.
#[derive(Clone)]
pub struct StripeSettings {
    /// `STRIPE_SECRET_KEY` (`sk_…` or a restricted `rk_…`).
    pub secret_key: String,
    /// `STRIPE_API_BASE`: `https://api.stripe.com/`, or a local fake in tests. A missing
    /// trailing `/` is added (the client builds `{base}v1/…`).
    pub api_base: String,
    /// `STRIPE_TIMEOUT`: the longest one request may take.
    pub timeout: Duration,
    /// `STRIPE_MAX_RPS`: requests per second this process sends at most, all jobs together.
    pub max_rps: NonZeroU32,
}

impl fmt::Debug for StripeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeSettings")
            .field("secret_key", &"***")
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .field("max_rps", &self.max_rps)
            .finish()
    }
}

/// Why a Stripe call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeCallError {
    /// Stripe answered with an error object.
    #[error("stripe {status} {}: {message}", .code.as_deref().unwrap_or(.error_type.as_str()))]
    Api {
        /// HTTP status.
        status: u16,
        /// Stripe's error code (`resource_missing`, `balance_insufficient`, …), if any.
        code: Option<String>,
        /// Stripe's error type (`invalid_request_error`, `api_error`, …).
        error_type: String,
        /// Stripe's message, for people only.
        message: String,
    },
    /// No complete answer within `STRIPE_TIMEOUT`.
    #[error("stripe did not answer within the timeout")]
    Timeout,
    /// Stripe could not be reached (connection refused or reset, DNS, TLS).
    #[error("stripe could not be reached: {0}")]
    Connection(String),
    /// An answer that is not Stripe's JSON (say, a proxy's HTML 502): its status is lost.
    #[error("stripe's answer could not be read: {0}")]
    Unreadable(String),
    /// The client is misconfigured (bad key or URL, bad idempotency key).
    #[error("stripe client misconfigured: {0}")]
    Config(String),
}

/// Stripe error codes that mean "try again later" whatever the status.
const TRANSIENT_CODES: &[&str] = &["lock_timeout", "rate_limit", "idempotency_key_in_use"];

impl StripeCallError {
    /// Worth retrying with the same idempotency key: 429, 424 and 5xx answers, the codes
    /// `lock_timeout`, `rate_limit`, `idempotency_key_in_use`, timeouts, connection errors,
    /// and unreadable answers (the outcome is unknown; the key makes a retry safe).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, code, .. } => {
                *status == 429
                    || *status == 424
                    || *status >= 500
                    || code
                        .as_deref()
                        .is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            Self::Timeout | Self::Connection(_) | Self::Unreadable(_) => true,
            Self::Config(_) => false,
        }
    }

    /// Stripe has no such object: a 404, or the code `resource_missing`.
    pub fn is_resource_missing(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
            || matches!(self, Self::Api { code: Some(c), .. } if c == "resource_missing")
    }

    /// The HTTP status, when Stripe answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Stripe's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

impl From<StripeError> for StripeCallError {
    fn from(e: StripeError) -> Self {
        match e {
            StripeError::Stripe(api, status) => Self::Api {
                status,
                code: api.code.as_ref().map(|c| c.as_str().to_owned()),
                error_type: api.type_.as_str().to_owned(),
                message: api.message.clone().unwrap_or_default(),
            },
            StripeError::Timeout => Self::Timeout,
            StripeError::ClientError(m) => Self::Connection(m),
            StripeError::JSONDeserialize(m) => Self::Unreadable(m),
            StripeError::ConfigError(m) => Self::Config(m),
        }
    }
}

/// A transfer as Stripe sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeTransfer {
    /// `tr_…`.
    pub id: String,
    /// Amount, minor units.
    pub amount: i64,
    /// How much of it has been reversed.
    pub amount_reversed: i64,
    /// True once fully reversed.
    pub reversed: bool,
    /// Currency.
    pub currency: String,
    /// The connected account paid.
    pub destination: Option<String>,
    /// Its transfer group.
    pub transfer_group: Option<String>,
    /// Its metadata.
    pub metadata: HashMap<String, String>,
}

impl From<stripe_connect::Transfer> for StripeTransfer {
    fn from(t: stripe_connect::Transfer) -> Self {
        Self {
            id: t.id.as_str().to_owned(),
            amount: t.amount,
            amount_reversed: t.amount_reversed,
            reversed: t.reversed,
            currency: t.currency.to_string(),
            destination: t.destination.as_ref().map(|d| d.id().as_str().to_owned()),
            transfer_group: t.transfer_group,
            metadata: t.metadata,
        }
    }
}

/// A reversal as Stripe sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeReversal {
    /// `trr_…`.
    pub id: String,
    /// Amount reversed.
    pub amount: i64,
    /// The reversed transfer.
    pub transfer_id: String,
    /// Its metadata.
    pub metadata: HashMap<String, String>,
}

impl From<stripe_connect::TransferReversal> for StripeReversal {
    fn from(r: stripe_connect::TransferReversal) -> Self {
        Self {
            id: r.id.as_str().to_owned(),
            amount: r.amount,
            transfer_id: r.transfer.id().as_str().to_owned(),
            metadata: r.metadata.unwrap_or_default(),
        }
    }
}

/// A payout to make.
#[derive(Debug, Clone)]
pub struct PayoutRequest {
    /// Amount, minor units.
    pub amount: i64,
    /// Currency, lower-case ISO code.
    pub currency: String,
    /// The seller's connected account (`acct_…`).
    pub destination: String,
    /// The transfer group (`order:{id}`): how a payout is found again without creating one.
    pub transfer_group: String,
    /// The charge the funds come from, when known (`source_transaction`).
    pub source_transaction: Option<String>,
    /// Metadata; `seller_transfer_id` identifies our row.
    pub metadata: HashMap<String, String>,
}

/// The metadata key naming our `seller_transfers` row on Stripe's objects.
pub const METADATA_TRANSFER_ID: &str = "seller_transfer_id";

/// The Stripe client shared by every payments job of a process (cheap to clone; the rate
/// limiter is shared by the clones).
#[derive(Clone)]
pub struct StripeClient {
    client: stripe::Client,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeClient").finish_non_exhaustive()
    }
}

/// Largest page Stripe lists.
const PAGE: i64 = 100;

impl StripeClient {
    /// A client for `settings`.
    ///
    /// The first client of a process also installs rustls' `ring` crypto provider as the
    /// process default unless one is installed already: the workspace compiles rustls with
    /// both `ring` and `aws-lc-rs`, and then rustls cannot pick one by itself.
    pub fn new(settings: &StripeSettings) -> Result<Self, StripeCallError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut base = settings.api_base.trim().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = stripe::ClientBuilder::new(settings.secret_key.clone())
            .url(base)
            .timeout(settings.timeout)
            .app_info(
                "veza-jobs",
                Some(env!("CARGO_PKG_VERSION").to_owned()),
                None,
            )
            .build()?;
        let limiter = Arc::new(RateLimiter::direct(Quota::per_second(settings.max_rps)));
        Ok(Self { client, limiter })
    }

    async fn ready(&self) {
        self.limiter.until_ready().await;
    }

    fn idempotent(key: &str) -> Result<RequestStrategy, StripeCallError> {
        let key = IdempotencyKey::new(key).map_err(|e| StripeCallError::Config(e.to_string()))?;
        Ok(RequestStrategy::Idempotent(key))
    }

    /// Creates a transfer (`POST /v1/transfers`) with `Idempotency-Key: key`.
    pub async fn create_transfer(
        &self,
        payout: &PayoutRequest,
        key: &str,
    ) -> Result<StripeTransfer, StripeCallError> {
        let currency: stripe_types::Currency =
            payout.currency.parse().unwrap_or_else(|e| match e {});
        let mut request = CreateTransfer::new(currency, payout.destination.clone())
            .amount(payout.amount)
            .transfer_group(payout.transfer_group.clone())
            .metadata(payout.metadata.clone());
        if let Some(charge) = &payout.source_transaction {
            request = request.source_transaction(charge.clone());
        }
        let strategy = Self::idempotent(key)?;
        self.ready().await;
        let transfer = request
            .customize()
            .request_strategy(strategy)
            .send(&self.client)
            .await?;
        Ok(transfer.into())
    }

    /// The transfer of `transfer_group` whose metadata names row `seller_transfer_id`, if
    /// Stripe has one (`GET /v1/transfers?transfer_group=…`, every page). Finds a payout
    /// without creating one, whatever became of its idempotency key.
    pub async fn find_transfer(
        &self,
        transfer_group: &str,
        seller_transfer_id: i64,
    ) -> Result<Option<StripeTransfer>, StripeCallError> {
        let wanted = seller_transfer_id.to_string();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListTransfer::new()
                .transfer_group(transfer_group.to_owned())
                .limit(PAGE);
            if let Some(a) = &after {
                request = request.starting_after(a.clone());
            }
            self.ready().await;
            let page = request.send(&self.client).await?;
            let found = page.data.iter().find(|t| {
                t.metadata
                    .get(METADATA_TRANSFER_ID)
                    .is_some_and(|v| *v == wanted)
            });
            if let Some(t) = found {
                return Ok(Some(t.clone().into()));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => after = Some(last.id.as_str().to_owned()),
                _ => return Ok(None),
            }
        }
    }

    /// Fetches a transfer (`GET /v1/transfers/{id}`).
    pub async fn retrieve_transfer(&self, id: &str) -> Result<StripeTransfer, StripeCallError> {
        self.ready().await;
        let t = RetrieveTransfer::new(id).send(&self.client).await?;
        Ok(t.into())
    }

    /// Reverses a transfer (`POST /v1/transfers/{id}/reversals`) with
    /// `Idempotency-Key: key`: fully when `amount` is `None`, else that much.
    pub async fn reverse_transfer(
        &self,
        transfer_id: &str,
        amount: Option<i64>,
        key: &str,
        metadata: HashMap<String, String>,
    ) -> Result<StripeReversal, StripeCallError> {
        let mut request = CreateIdTransferReversal::new(transfer_id).metadata(metadata);
        if let Some(amount) = amount {
            request = request.amount(amount);
        }
        let strategy = Self::idempotent(key)?;
        self.ready().await;
        let reversal = request
            .customize()
            .request_strategy(strategy)
            .send(&self.client)
            .await?;
        Ok(reversal.into())
    }

    /// Every reversal of a transfer, newest first (`GET /v1/transfers/{id}/reversals`).
    pub async fn list_reversals(
        &self,
        transfer_id: &str,
    ) -> Result<Vec<StripeReversal>, StripeCallError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListIdTransferReversal::new(transfer_id).limit(PAGE);
            if let Some(a) = &after {
                request = request.starting_after(a.clone());
            }
            self.ready().await;
            let page = request.send(&self.client).await?;
            let more = page.has_more;
            after = page.data.last().map(|r| r.id.as_str().to_owned());
            out.extend(page.data.into_iter().map(StripeReversal::from));
            if !more || after.is_none() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>, message: &str) -> StripeCallError {
        StripeCallError::Api {
            status,
            code: code.map(str::to_owned),
            error_type: "invalid_request_error".into(),
            message: message.into(),
        }
    }

    #[test]
    fn transient_is_decided_by_status_and_code() {
        for status in [429, 500, 502, 503, 504, 424] {
            assert!(api(status, None, "").is_transient(), "{status}");
        }
        for code in ["lock_timeout", "rate_limit", "idempotency_key_in_use"] {
            assert!(api(400, Some(code), "").is_transient(), "{code}");
            assert!(api(409, Some(code), "").is_transient(), "{code}");
        }
        for e in [
            StripeCallError::Timeout,
            StripeCallError::Connection("reset".into()),
            StripeCallError::Unreadable("<html>".into()),
        ] {
            assert!(e.is_transient(), "{e}");
        }
        assert!(!api(400, Some("balance_insufficient"), "").is_transient());
        assert!(!api(404, Some("resource_missing"), "").is_transient());
        assert!(
            !api(409, None, "").is_transient(),
            "idempotency_error: a bug"
        );
        assert!(!StripeCallError::Config("bad key".into()).is_transient());
    }

    #[test]
    fn message_text_never_changes_the_classification() {
        let permanent = api(
            400,
            Some("balance_insufficient"),
            "please retry later, timeout",
        );
        assert!(!permanent.is_transient());
        let transient = api(503, None, "permanent failure: resource missing");
        assert!(transient.is_transient());
        assert!(!transient.is_resource_missing());
    }

    #[test]
    fn resource_missing_is_a_404_or_its_code() {
        assert!(api(404, Some("resource_missing"), "").is_resource_missing());
        assert!(api(404, None, "").is_resource_missing());
        assert!(api(400, Some("resource_missing"), "").is_resource_missing());
        assert!(!api(400, Some("balance_insufficient"), "").is_resource_missing());
    }

    #[test]
    fn display_names_status_and_code_not_the_secret() {
        let e = api(400, Some("balance_insufficient"), "Insufficient funds");
        assert_eq!(
            e.to_string(),
            "stripe 400 balance_insufficient: Insufficient funds"
        );
        let s = StripeSettings {
            secret_key: "sk_live_secret".into(),
            api_base: "https://api.stripe.com/".into(),
            timeout: Duration::from_secs(20),
            max_rps: NonZeroU32::new(25).unwrap(),
        };
        assert!(!format!("{s:?}").contains("sk_live_secret"));
    }
}
