//! A local fake of the parts of Stripe the payments jobs use, speaking Stripe's JSON and
//! error shapes: transfers (create, retrieve, list by transfer_group), reversals (create,
//! list), idempotency keys (a replayed key gets the stored answer back; the same key with
//! other parameters is an `idempotency_error`), and injected faults.
//!
//! Faults model where a request dies:
//! - `Unavailable` (503) and `Timeout` never reach the API: nothing is executed or stored;
//! - `LostResponse`: the API executes and stores the result, but the answer arrives after
//!   the client's timeout — a worker that dies between Stripe's success and its commit.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/transfers`.
    CreateTransfer,
    /// `POST /v1/transfers/{id}/reversals`.
    CreateReversal,
    /// `GET /v1/transfers/{id}`.
    RetrieveTransfer,
    /// Any request.
    Any,
}

/// An injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 503 `api_error`, before execution.
    Unavailable,
    /// 429 `rate_limit`, before execution.
    RateLimited,
    /// No answer within the client's timeout, before execution.
    Timeout,
    /// Executed and stored, but the answer comes after the client's timeout.
    LostResponse,
    /// Executed normally, answered after this delay.
    Delay(Duration),
    /// An error answer, as Stripe would give it (stored under the idempotency key).
    Error {
        /// HTTP status.
        status: u16,
        /// Stripe's code.
        code: Option<&'static str>,
        /// Stripe's message.
        message: &'static str,
    },
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `GET` or `POST`.
    pub method: String,
    /// `/v1/…`.
    pub path: String,
    /// Its `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Form fields (POST) or query (GET).
    pub params: Vec<(String, String)>,
    /// What the fake did: `ok`, `replay`, `503`, `timeout`, `lost`, an error status…
    pub result: String,
}

/// A transfer as the fake keeps it.
#[derive(Debug, Clone)]
pub struct FakeTransfer {
    /// `tr_…`.
    pub id: String,
    /// Amount.
    pub amount: i64,
    /// Reversed so far.
    pub amount_reversed: i64,
    /// Currency.
    pub currency: String,
    /// Destination account.
    pub destination: String,
    /// Group.
    pub transfer_group: Option<String>,
    /// Metadata.
    pub metadata: HashMap<String, String>,
    /// Its reversals' ids, oldest first.
    pub reversals: Vec<String>,
    /// Created, seconds.
    pub created: i64,
}

/// A reversal as the fake keeps it.
#[derive(Debug, Clone)]
pub struct FakeReversal {
    /// `trr_…`.
    pub id: String,
    /// The transfer.
    pub transfer: String,
    /// Amount.
    pub amount: i64,
    /// Metadata.
    pub metadata: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    transfers: Vec<FakeTransfer>,
    reversals: Vec<FakeReversal>,
    /// key → (fingerprint, status, body)
    idempotency: HashMap<String, (String, u16, Value)>,
    faults: VecDeque<(Route, Fault)>,
    chaos: Option<(f64, u64)>,
    insufficient_balance: Vec<String>,
    log: Vec<Logged>,
    timeout: Duration,
}

/// The fake, running on a local port.
#[derive(Clone)]
pub struct FakeStripe {
    server: Arc<MockServer>,
    state: Arc<Mutex<State>>,
}

impl FakeStripe {
    /// Starts a fake. `client_timeout` is the `STRIPE_TIMEOUT` the tests give the client:
    /// timeouts are answers delayed well past it.
    pub async fn start(client_timeout: Duration) -> Self {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State {
            timeout: client_timeout,
            ..State::default()
        }));
        let responder_state = Arc::clone(&state);
        Mock::given(any())
            .respond_with(move |req: &Request| respond(&responder_state, req))
            .mount(&server)
            .await;
        Self {
            server: Arc::new(server),
            state,
        }
    }

    /// The base URL (without the trailing `/`: the client adds it).
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Queues a fault for the next matching request.
    pub fn fault(&self, route: Route, fault: Fault) {
        self.state().faults.push_back((route, fault));
    }

    /// From now on, each POST fails with probability `p` (503, timeout or lost response, in
    /// equal parts), drawn from a generator seeded with `seed`.
    pub fn chaos(&self, p: f64, seed: u64) {
        self.state().chaos = Some((p, seed.max(1)));
    }

    /// No more random faults.
    pub fn calm(&self) {
        self.state().chaos = None;
    }

    /// Reversals of `transfer` fail with `balance_insufficient`.
    pub fn insufficient_balance(&self, transfer: &str) {
        self.state().insufficient_balance.push(transfer.to_owned());
    }

    /// Reversals of `transfer` succeed again.
    pub fn sufficient_balance(&self, transfer: &str) {
        self.state().insufficient_balance.retain(|t| t != transfer);
    }

    /// Overwrites how much of a transfer Stripe shows reversed (drift, for the detector).
    pub fn set_amount_reversed(&self, transfer: &str, amount: i64) {
        let mut s = self.state();
        let t = s.transfers.iter_mut().find(|t| t.id == transfer).unwrap();
        t.amount_reversed = amount;
    }

    /// Every transfer, oldest first.
    pub fn transfers(&self) -> Vec<FakeTransfer> {
        self.state().transfers.clone()
    }

    /// Every reversal, oldest first.
    pub fn reversals(&self) -> Vec<FakeReversal> {
        self.state().reversals.clone()
    }

    /// One transfer.
    pub fn transfer(&self, id: &str) -> Option<FakeTransfer> {
        self.state().transfers.iter().find(|t| t.id == id).cloned()
    }

    /// Every request received.
    pub fn log(&self) -> Vec<Logged> {
        self.state().log.clone()
    }

    /// The requests to `method` on paths starting with `path`.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.method == method && l.path.starts_with(path))
            .collect()
    }

    /// Creates a transfer behind our back (the dashboard, another system).
    pub fn create_transfer(&self, amount: i64, metadata: &[(&str, &str)]) -> String {
        let mut s = self.state();
        let id = s.new_id("tr");
        s.transfers.push(FakeTransfer {
            id: id.clone(),
            amount,
            amount_reversed: 0,
            currency: "eur".into(),
            destination: "acct_other".into(),
            transfer_group: None,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reversals: Vec::new(),
            created: 1_780_000_000,
        });
        id
    }

    /// Reverses a transfer fully behind our back; returns the reversal id.
    pub fn reverse_out_of_band(&self, transfer: &str) -> String {
        let mut s = self.state();
        s.reverse(transfer, None, HashMap::new())
            .expect("transfer exists and is not reversed")
    }

    /// Forgets a transfer, as if it never existed (404 from now on).
    pub fn forget_transfer(&self, transfer: &str) {
        self.state().transfers.retain(|t| t.id != transfer);
    }
}

impl State {
    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_fake{:04}", self.next_id)
    }

    fn roll(&mut self) -> Option<Fault> {
        let (p, seed) = self.chaos?;
        // xorshift64*
        let mut x = seed;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.chaos = Some((p, x));
        let r = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        if r >= p {
            return None;
        }
        Some(match ((r / p) * 3.0) as u32 {
            0 => Fault::Unavailable,
            1 => Fault::Timeout,
            _ => Fault::LostResponse,
        })
    }

    fn reverse(
        &mut self,
        transfer: &str,
        amount: Option<i64>,
        metadata: HashMap<String, String>,
    ) -> Result<String, (u16, Value)> {
        let id = self.new_id("trr");
        let t = self
            .transfers
            .iter_mut()
            .find(|t| t.id == transfer)
            .ok_or_else(|| missing(transfer))?;
        let left = t.amount - t.amount_reversed;
        if left <= 0 {
            return Err(error(
                400,
                "invalid_request_error",
                None,
                &format!("The transfer {transfer} is already fully reversed."),
            ));
        }
        let amount = amount.unwrap_or(left).min(left);
        t.amount_reversed += amount;
        t.reversals.push(id.clone());
        self.reversals.push(FakeReversal {
            id: id.clone(),
            transfer: transfer.to_owned(),
            amount,
            metadata,
        });
        Ok(id)
    }

    fn transfer_json(&self, t: &FakeTransfer) -> Value {
        let reversals: Vec<Value> = t
            .reversals
            .iter()
            .rev()
            .filter_map(|r| self.reversals.iter().find(|x| x.id == *r))
            .map(reversal_json)
            .collect();
        json!({
            "id": t.id,
            "object": "transfer",
            "amount": t.amount,
            "amount_reversed": t.amount_reversed,
            "balance_transaction": format!("txn_{}", t.id),
            "created": t.created,
            "currency": t.currency,
            "description": null,
            "destination": t.destination,
            "destination_payment": format!("py_{}", t.id),
            "livemode": false,
            "metadata": t.metadata,
            "reversals": {
                "object": "list",
                "data": reversals,
                "has_more": false,
                "total_count": t.reversals.len(),
                "url": format!("/v1/transfers/{}/reversals", t.id),
            },
            "reversed": t.amount_reversed >= t.amount,
            "source_transaction": null,
            "source_type": "card",
            "transfer_group": t.transfer_group,
        })
    }
}

fn reversal_json(r: &FakeReversal) -> Value {
    json!({
        "id": r.id,
        "object": "transfer_reversal",
        "amount": r.amount,
        "balance_transaction": format!("txn_{}", r.id),
        "created": 1_780_000_100,
        "currency": "eur",
        "destination_payment_refund": null,
        "metadata": r.metadata,
        "source_refund": null,
        "transfer": r.transfer,
    })
}

fn error(status: u16, kind: &str, code: Option<&str>, message: &str) -> (u16, Value) {
    let mut e = json!({
        "type": kind,
        "message": message,
        "request_log_url": "https://dashboard.stripe.com/test/logs/req_fake",
    });
    if let Some(code) = code {
        e["code"] = json!(code);
        e["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            code.replace('_', "-")
        ));
    }
    (status, json!({ "error": e }))
}

fn missing(transfer: &str) -> (u16, Value) {
    let mut e = error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such transfer: '{transfer}'"),
    );
    e.1["error"]["param"] = json!("id");
    e
}

fn list(url: &str, data: Vec<Value>, has_more: bool) -> Value {
    json!({ "object": "list", "data": data, "has_more": has_more, "url": url })
}

fn params(req: &Request) -> Vec<(String, String)> {
    let mut url = req.url.clone();
    if req.method.as_str() == "POST" {
        url.set_query(Some(std::str::from_utf8(&req.body).unwrap_or("")));
    }
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn metadata_of(params: &[(String, String)]) -> HashMap<String, String> {
    params
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
                .map(|k| (k.to_owned(), v.clone()))
        })
        .collect()
}

fn route_of(method: &str, path: &str) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["v1", "transfers"]) => Route::CreateTransfer,
        ("POST", ["v1", "transfers", _, "reversals"]) => Route::CreateReversal,
        ("GET", ["v1", "transfers", _]) => Route::RetrieveTransfer,
        _ => Route::Any,
    }
}

fn respond(state: &Mutex<State>, req: &Request) -> ResponseTemplate {
    let mut s = state.lock().unwrap();
    let method = req.method.as_str().to_owned();
    let path = req.url.path().to_owned();
    let params = params(req);
    let key = req
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let route = route_of(&method, &path);
    let late = s.timeout * 3 + Duration::from_millis(200);

    let queued = s
        .faults
        .iter()
        .position(|(r, _)| *r == route || *r == Route::Any)
        .and_then(|i| s.faults.remove(i))
        .map(|(_, f)| f);
    let fault = queued.or_else(|| if method == "POST" { s.roll() } else { None });
    let log = |s: &mut State, result: &str| {
        s.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            idempotency_key: key.clone(),
            params: params.clone(),
            result: result.to_owned(),
        });
    };
    let mut delay = None;
    match &fault {
        Some(Fault::Unavailable) => {
            log(&mut s, "503");
            let (status, body) =
                error(503, "api_error", None, "Stripe is temporarily unavailable.");
            return ResponseTemplate::new(status).set_body_json(body);
        }
        Some(Fault::RateLimited) => {
            log(&mut s, "429");
            let (status, body) = error(
                429,
                "invalid_request_error",
                Some("rate_limit"),
                "Too many requests hit the API too quickly.",
            );
            return ResponseTemplate::new(status).set_body_json(body);
        }
        Some(Fault::Timeout) => {
            log(&mut s, "timeout");
            let (status, body) = error(503, "api_error", None, "too late");
            return ResponseTemplate::new(status)
                .set_body_json(body)
                .set_delay(late);
        }
        Some(Fault::LostResponse) => delay = Some(late),
        Some(Fault::Delay(d)) => delay = Some(*d),
        Some(Fault::Error { .. }) | None => {}
    }

    // Idempotency: the same key with the same request gets the stored answer back.
    let fingerprint = {
        let mut p = params.clone();
        p.sort();
        format!("{method} {path} {p:?}")
    };
    if method == "POST"
        && let Some(k) = &key
        && let Some((seen, status, body)) = s.idempotency.get(k).cloned()
    {
        let (status, body) = if seen == fingerprint {
            log(&mut s, "replay");
            (status, body)
        } else {
            log(&mut s, "idempotency_error");
            error(
                400,
                "idempotency_error",
                None,
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            )
        };
        let mut r = ResponseTemplate::new(status)
            .set_body_json(body)
            .insert_header("idempotent-replayed", "true");
        if let Some(d) = delay {
            r = r.set_delay(d);
        }
        return r;
    }

    let (status, body) = match (&fault, route) {
        (
            Some(Fault::Error {
                status,
                code,
                message,
            }),
            _,
        ) => error(*status, "invalid_request_error", *code, message),
        (_, Route::CreateTransfer) => {
            let t = FakeTransfer {
                id: s.new_id("tr"),
                amount: param(&params, "amount")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                amount_reversed: 0,
                currency: param(&params, "currency").unwrap_or("eur").to_owned(),
                destination: param(&params, "destination").unwrap_or_default().to_owned(),
                transfer_group: param(&params, "transfer_group").map(str::to_owned),
                metadata: metadata_of(&params),
                reversals: Vec::new(),
                created: 1_780_000_000 + s.next_id as i64,
            };
            s.transfers.push(t.clone());
            (200, s.transfer_json(&t))
        }
        (_, Route::CreateReversal) => {
            let transfer = path
                .trim_matches('/')
                .split('/')
                .nth(2)
                .unwrap_or("")
                .to_owned();
            if s.insufficient_balance.contains(&transfer) {
                error(
                    400,
                    "invalid_request_error",
                    Some("balance_insufficient"),
                    "The connected account has insufficient funds to cover this reversal.",
                )
            } else {
                let amount = param(&params, "amount").and_then(|a| a.parse().ok());
                match s.reverse(&transfer, amount, metadata_of(&params)) {
                    Ok(id) => {
                        let r = s.reversals.iter().find(|r| r.id == id).unwrap();
                        (200, reversal_json(r))
                    }
                    Err(e) => e,
                }
            }
        }
        (_, Route::RetrieveTransfer) => {
            let id = path.trim_matches('/').split('/').nth(2).unwrap_or("");
            match s.transfers.iter().find(|t| t.id == id) {
                Some(t) => (200, s.transfer_json(t)),
                None => missing(id),
            }
        }
        (_, Route::Any) => {
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            match (method.as_str(), parts.as_slice()) {
                ("GET", ["v1", "transfers"]) => {
                    let group = param(&params, "transfer_group");
                    let after = param(&params, "starting_after");
                    let limit: usize = param(&params, "limit")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(10);
                    let mut all: Vec<&FakeTransfer> = s
                        .transfers
                        .iter()
                        .rev()
                        .filter(|t| group.is_none() || t.transfer_group.as_deref() == group)
                        .collect();
                    if let Some(a) = after {
                        let i = all.iter().position(|t| t.id == a).map_or(0, |i| i + 1);
                        all = all.split_off(i.min(all.len()));
                    }
                    let more = all.len() > limit;
                    let data = all
                        .into_iter()
                        .take(limit)
                        .map(|t| s.transfer_json(t))
                        .collect();
                    (200, list("/v1/transfers", data, more))
                }
                ("GET", ["v1", "transfers", id, "reversals"]) => {
                    match s.transfers.iter().find(|t| t.id == *id) {
                        Some(t) => {
                            let data = t
                                .reversals
                                .iter()
                                .rev()
                                .filter_map(|r| s.reversals.iter().find(|x| x.id == *r))
                                .map(reversal_json)
                                .collect();
                            (
                                200,
                                list(&format!("/v1/transfers/{id}/reversals"), data, false),
                            )
                        }
                        None => missing(id),
                    }
                }
                _ => error(
                    404,
                    "invalid_request_error",
                    None,
                    &format!("Unrecognized request URL ({method}: {path})"),
                ),
            }
        }
    };
    if method == "POST"
        && let Some(k) = &key
        && status < 500
    {
        s.idempotency
            .insert(k.clone(), (fingerprint, status, body.clone()));
    }
    let result = match (&fault, status) {
        (Some(Fault::LostResponse), _) => "lost".to_owned(),
        (_, 200) => "ok".to_owned(),
        (_, st) => st.to_string(),
    };
    log(&mut s, &result);
    let mut r = ResponseTemplate::new(status).set_body_json(body);
    if let Some(d) = delay {
        r = r.set_delay(d);
    }
    r
}
