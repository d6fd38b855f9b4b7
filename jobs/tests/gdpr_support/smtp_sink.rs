//! A real SMTP server on loopback for the e-mail tests: `mailin-embedded` (an embeddable
//! SMTP server crate: its own RFC 5321 state machine, EHLO/HELO, MAIL, RCPT, DATA with
//! dot-unstuffing, RSET, NOOP, QUIT), with a handler that keeps every accepted message,
//! can answer the end of DATA with scripted replies (451, 554, …) to test how the sender
//! reacts, and can hold a session at one point ([`Stall`]) until the test lets it go, so
//! that the sender's attempt can be cut off there.
//!
//! mailin-embedded serves on blocking threads and has no shutdown: each sink's listener
//! (and its small pool of session threads) lives until the test process exits. Sessions
//! end when the client hangs up, so only the idle listener stays behind.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use mailin_embedded::{Handler, Response, Server, SslConfig, response};

/// A message the server accepted.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The envelope sender (`MAIL FROM`), without angle brackets.
    pub(crate) mail_from: String,
    /// The envelope recipients (`RCPT TO`), without angle brackets.
    pub(crate) rcpt_to: Vec<String>,
    /// The message as sent (headers and body), CRLF line ends, dots unstuffed.
    pub(crate) data: String,
}

/// Where a session can be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stall {
    /// At `MAIL FROM`, before any of the message is sent: nothing is received.
    Mail,
    /// At the end of DATA, after the message is kept (it counts as received) and before
    /// the reply: the server has the message, the sender does not know it.
    DataEnd,
}

/// How long a held session waits for [`SmtpSink::release`] at most.
const HOLD_AT_MOST: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Shared {
    /// Hold the next session that reaches this point.
    stall: Option<Stall>,
    /// Sessions held so far (each released or still waiting).
    held: usize,
    /// Set by [`SmtpSink::release`]: held sessions go on.
    released: bool,
    received: Vec<Received>,
    /// Replies to give at the end of DATA, in order; empty: 250.
    data_replies: VecDeque<(u16, String)>,
    /// Every DATA end reply given, in order (`"250 OK"`, `"451 …"`).
    replies_given: Vec<String>,
}

/// The shared state and the condition held sessions wait on.
type SharedState = Arc<(Mutex<Shared>, Condvar)>;

/// One SMTP session's transaction; cloned per connection by the server.
#[derive(Clone)]
struct Sink {
    shared: SharedState,
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
}

impl Sink {
    /// Holds this session if the test asked for a stall at `here` (once), until released.
    fn hold_if(&self, here: Stall) {
        let (lock, released) = &*self.shared;
        let mut s = lock.lock().unwrap();
        if s.stall != Some(here) {
            return;
        }
        s.stall = None;
        s.held += 1;
        let _ = released.wait_timeout_while(s, HOLD_AT_MOST, |s| !s.released);
    }
}

impl Handler for Sink {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        self.hold_if(Stall::Mail);
        self.mail_from = from.to_owned();
        self.rcpt_to.clear();
        response::OK
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.mail_from = from.to_owned();
        self.rcpt_to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mut s = self.shared.0.lock().unwrap();
        let (code, text) = s
            .data_replies
            .pop_front()
            .unwrap_or_else(|| (250, "2.0.0 OK queued".to_owned()));
        s.replies_given.push(format!("{code} {text}"));
        if (200..300).contains(&code) {
            s.received.push(Received {
                mail_from: self.mail_from.clone(),
                rcpt_to: self.rcpt_to.clone(),
                data: String::from_utf8_lossy(&self.data).into_owned(),
            });
        }
        self.data.clear();
        drop(s);
        self.hold_if(Stall::DataEnd);
        let mut reply = Response::custom(code, text);
        // The reply to the end of DATA ends the mail transaction whatever its code (RFC 5321
        // §4.1.1.4). mailin keeps a session whose DATA was refused in its DATA state (it
        // treats every error reply as "stay where you are"), and would then swallow the
        // client's next RSET or QUIT as message text: flagging the reply as no error lets
        // it move on to the next transaction. The code sent is unchanged.
        reply.is_error = false;
        reply
    }
}

/// The running server.
pub(crate) struct SmtpSink {
    pub(crate) addr: SocketAddr,
    shared: SharedState,
}

impl SmtpSink {
    /// Starts serving on `127.0.0.1:<random>` (a listener bound before this returns, so
    /// the first connection cannot be refused).
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP server");
        let addr = listener.local_addr().expect("SMTP server address");
        let shared: SharedState = Arc::default();
        let mut server = Server::new(Sink {
            shared: Arc::clone(&shared),
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: Vec::new(),
        });
        server
            .with_name("smtp.test")
            .with_ssl(SslConfig::None)
            .expect("plain SMTP")
            .with_num_threads(4)
            .with_tcp_listener(listener);
        std::thread::Builder::new()
            .name(format!("smtp-{}", addr.port()))
            .spawn(move || {
                if let Err(e) = server.serve() {
                    eprintln!("test SMTP server stopped: {e}");
                }
            })
            .expect("spawn the SMTP server");
        Self { addr, shared }
    }

    /// `smtp://127.0.0.1:PORT` (plain SMTP, no TLS).
    pub(crate) fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Answers the next ends of DATA with these replies (e.g. `"451 4.3.0 try later"`).
    pub(crate) fn reply_to_data(&self, replies: &[&str]) {
        let mut s = self.shared.0.lock().unwrap();
        for r in replies {
            let (code, text) = r.split_once(' ').expect("`CODE text`");
            s.data_replies
                .push_back((code.parse().expect("a 3-digit code"), text.to_owned()));
        }
    }

    /// Messages accepted (2xx) so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.shared.0.lock().unwrap().received.clone()
    }

    /// Every reply given at the end of DATA.
    pub(crate) fn data_replies_given(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().replies_given.clone()
    }

    /// Holds the next session that reaches `at` until [`SmtpSink::release`] (two minutes at
    /// most); later sessions pass.
    pub(crate) fn stall(&self, at: Stall) {
        let mut s = self.shared.0.lock().unwrap();
        s.stall = Some(at);
        s.released = false;
    }

    /// Sessions held so far.
    pub(crate) fn held(&self) -> usize {
        self.shared.0.lock().unwrap().held
    }

    /// Lets held sessions go on (their client may have hung up meanwhile).
    pub(crate) fn release(&self) {
        self.shared.0.lock().unwrap().released = true;
        self.shared.1.notify_all();
    }
}
