//! Answers the HTTP server (hyper, under poem) writes by itself, before any route or
//! middleware sees the request, made problem documents like every other error.
//!
//! hyper refuses a request line longer than 65,534 bytes with `414 URI Too Long` and a head
//! section over its buffer with `431 Request Header Fields Too Large`, both with an empty
//! body and `connection: close`; no poem middleware runs for them. [`ProblemAcceptor`]
//! wraps each connection so that such an answer, recognised on its way out, is sent as a
//! problem document instead. Only those two statuses are rewritten, and only a bare head
//! of that shape: the application never answers them itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use poem::http::StatusCode;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::problem::Problem;

/// An acceptor whose connections answer hyper's own 414 and 431 with problem documents.
pub struct ProblemAcceptor<A>(pub A);

impl<A: Acceptor> Acceptor for ProblemAcceptor<A> {
    type Io = ProblemIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let (io, local, remote, scheme) = self.0.accept().await?;
        Ok((
            ProblemIo {
                inner: io,
                pending: None,
            },
            local,
            remote,
            scheme,
        ))
    }
}

/// A connection that rewrites hyper's bare 414 and 431 (see the module docs).
pub struct ProblemIo<T> {
    inner: T,
    /// A rewritten answer being written: its bytes, how many are written, and the length
    /// of the buffer it replaces (reported to hyper once all are written).
    pending: Option<(Vec<u8>, usize, usize)>,
}

/// The problem answer that replaces `head`, when `head` is one of hyper's bare error
/// answers.
pub fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let (status, kind, detail) = if head.starts_with(b"HTTP/1.1 414 ") {
        (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request line is longer than 65,534 bytes; shorten the path or the query",
        )
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_fields_too_large",
            "the request's header fields are too large",
        )
    } else {
        return None;
    };
    let text = std::str::from_utf8(head).ok()?;
    let lines: Vec<&str> = text.strip_suffix("\r\n\r\n")?.split("\r\n").collect();
    let bare = lines
        .iter()
        .any(|l| l.eq_ignore_ascii_case("content-length: 0"));
    if !bare || lines.iter().skip(1).any(|l| !l.contains(": ")) {
        return None;
    }
    let body = serde_json::to_string(&Problem::new(status, kind, detail)).ok()?;
    let mut out = String::with_capacity(text.len() + body.len() + 64);
    out.push_str(lines[0]);
    out.push_str("\r\n");
    for line in &lines[1..] {
        if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!(
        "content-type: {}\r\ncontent-length: {}\r\n\r\n{body}",
        crate::problem::PROBLEM_JSON,
        body.len()
    ));
    Some(out.into_bytes())
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => this.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let Some((answer, written, replaces)) = this.pending.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *written < answer.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let replaces = *replaces;
        this.pending = None;
        Poll::Ready(Ok(replaces))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each answer's head as one buffer, which `rewrite`
    // can recognise.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_414_becomes_a_problem_document() {
        let head = b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(head).expect("rewritten")).expect("utf-8");
        let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(!head.contains("content-length: 0"), "{head}");
        let problem: Problem = serde_json::from_str(body).expect("a problem");
        assert_eq!(
            (problem.status, problem.kind.as_str()),
            (414, "uri_too_long")
        );
    }

    #[test]
    fn other_answers_are_left_alone() {
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        // A 414 with a body, or a head and a body in one buffer, is not hyper's bare one.
        assert!(rewrite(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 2\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n{}").is_none());
    }
}
