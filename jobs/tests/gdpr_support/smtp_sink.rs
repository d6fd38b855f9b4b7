//! A small SMTP server on loopback that speaks real SMTP (RFC 5321 subset: EHLO/HELO, MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT) and keeps what it receives. Replies to
//! the end of DATA can be scripted (451, 554, …) to test how the sender reacts.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) mail_from: String,
    pub(crate) rcpt_to: Vec<String>,
    /// The message as sent (headers and body), CRLF line ends, dots unstuffed.
    pub(crate) data: String,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Replies to give at the end of DATA, in order; empty: "250 OK".
    data_replies: VecDeque<String>,
    /// Every DATA end reply given, in order.
    replies_given: Vec<String>,
}

/// The running sink.
pub(crate) struct SmtpSink {
    pub(crate) addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    /// Starts listening on `127.0.0.1:<random>`.
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind SMTP sink");
        let addr = listener.local_addr().expect("sink address");
        let state: Arc<Mutex<State>> = Arc::default();
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let _ = session(stream, st).await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `smtp://127.0.0.1:PORT` (plain SMTP, no TLS).
    pub(crate) fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Answers the next ends of DATA with these replies (e.g. `"451 4.3.0 try later"`).
    pub(crate) fn reply_to_data(&self, replies: &[&str]) {
        let mut s = self.state.lock().unwrap();
        s.data_replies.extend(replies.iter().map(|r| r.to_string()));
    }

    /// Messages accepted (250) so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Every reply given at the end of DATA.
    pub(crate) fn data_replies_given(&self) -> Vec<String> {
        self.state.lock().unwrap().replies_given.clone()
    }
}

async fn session(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink.test\r\n250-8BITMIME\r\n250 SIZE 10485760".into()
        } else if upper.starts_with("HELO") {
            "250 sink.test".into()
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = cmd[10..].trim().to_owned();
            rcpt_to.clear();
            "250 2.1.0 OK".into()
        } else if upper.starts_with("RCPT TO:") {
            rcpt_to.push(cmd[8..].trim().to_owned());
            "250 2.1.5 OK".into()
        } else if upper == "DATA" {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                data.push_str(unstuffed);
            }
            let mut s = state.lock().unwrap();
            let reply = s
                .data_replies
                .pop_front()
                .unwrap_or_else(|| "250 2.0.0 OK queued".to_owned());
            s.replies_given.push(reply.clone());
            if reply.starts_with('2') {
                s.received.push(Received {
                    mail_from: mail_from.clone(),
                    rcpt_to: rcpt_to.clone(),
                    data,
                });
            }
            reply
        } else if upper == "RSET" {
            mail_from.clear();
            rcpt_to.clear();
            "250 2.0.0 OK".into()
        } else if upper == "NOOP" {
            "250 2.0.0 OK".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 Command not recognized".into()
        };
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\r\n").await?;
    }
}
