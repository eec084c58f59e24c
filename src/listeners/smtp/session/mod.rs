//! One SMTP conversation: commands in, replies out, messages into the spool.
//! Replies are buffered while the client's pipelined commands are still
//! buffered, and flushed before the relay waits for more. Each verb has its
//! own handler; the parser (`command`) and the AUTH decoding (`auth`) live
//! apart, the AUTH exchange in `auth_exchange`, relay decisions and trace
//! headers in `relaying`.

mod auth_exchange;
mod relaying;

use super::Settings;
use super::command::{self, Command};
use super::lines::{Line, read_line};
use crate::engine::{Engine, Refusal};
use crate::model::message::Message;
use crate::policy::conn_meta::ConnMeta;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn no_memory() -> (u16, String) {
    (
        452,
        "4.3.1 insufficient system storage for the message now, try again later".into(),
    )
}

/// Bytes of replies kept for a client's pipelined commands before they are
/// written, whether or not more commands are buffered.
const REPLIES_BUFFERED: usize = 4096;

/// Bad commands tolerated before the relay hangs up.
const MAX_ERRORS: usize = 20;

pub async fn refuse(mut sock: TcpStream, hostname: &str) {
    let _ = sock
        .write_all(
            format!("421 4.3.2 {hostname} too many connections, try again later\r\n").as_bytes(),
        )
        .await;
    let _ = sock.shutdown().await;
}

pub async fn run(sock: TcpStream, peer: SocketAddr, settings: Arc<Settings>, engine: Arc<Engine>) {
    let local = sock.local_addr().ok();
    let stop = engine.reception_signal();
    let mut s = Session {
        settings: settings.clone(),
        engine,
        peer,
        local,
        out: Vec::new(),
        helo: None,
        tx: None,
        messages: 0,
        errors: 0,
        auth_failures: 0,
        tls: false,
        authenticated: None,
        authz: None,
        conn: ConnMeta::default(),
        stop,
    };
    let banner = settings
        .cfg
        .banner
        .clone()
        .unwrap_or_else(|| "ESMTP amqp-relay".into());
    s.reply(220, &format!("{} {banner}", settings.cfg.hostname));
    let mut io = BufReader::new(sock);
    match s.converse(&mut io).await {
        Flow::Upgrade => {
            let Some(acceptor) = settings.tls.clone() else {
                return;
            };
            // Bytes pipelined after STARTTLS are dropped with the buffer (RFC 3207).
            let sock = io.into_inner();
            match tokio::time::timeout(settings.cfg.client_timeout, acceptor.accept(sock)).await {
                Ok(Ok(tls)) => {
                    s.tls = true;
                    s.helo = None;
                    s.tx = None;
                    let mut io = BufReader::new(tls);
                    let _ = s.converse(&mut io).await;
                    let _ = io.get_mut().shutdown().await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        Flow::Close | Flow::Continue => {
            let _ = io.get_mut().shutdown().await;
        }
    }
}

/// What a command handler leaves the session to do next.
enum Flow {
    Continue,
    Close,
    /// Start TLS on the connection, then converse again.
    Upgrade,
}

struct Transaction {
    from: String,
    rcpts: Vec<String>,
}

struct Session {
    settings: Arc<Settings>,
    engine: Arc<Engine>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    out: Vec<u8>,
    helo: Option<String>,
    tx: Option<Transaction>,
    messages: usize,
    errors: usize,
    /// Failed AUTH attempts: each is slower to answer than the last.
    auth_failures: u32,
    tls: bool,
    /// The identity the client authenticated as (AUTH).
    authenticated: Option<String>,
    /// The identity it authorised as (AUTH PLAIN's authzid, else the user).
    authz: Option<String>,
    /// KumoMTA's `conn_meta`, shared by this session's event handlers.
    conn: ConnMeta,
    /// Ends a session waiting for its next command when the relay stops.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Session {
    fn reply(&mut self, code: u16, text: &str) {
        self.out
            .extend_from_slice(format!("{code} {text}\r\n").as_bytes());
    }

    fn refusal(&mut self, r: &Refusal) {
        // A refusal's text already starts with its enhanced status code.
        let text = r.reason.replace(['\r', '\n'], " ");
        self.reply(r.code, &text);
    }

    /// Writes the buffered replies, within `client_timeout`: a client that
    /// does not read its replies does not hold the session (or a stop) forever.
    async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
    ) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            io.get_mut().write_all(&self.out).await?;
            io.get_mut().flush().await
        };
        match tokio::time::timeout(self.settings.cfg.client_timeout, write).await {
            Ok(written) => written?,
            Err(_) => {
                tracing::info!(peer = %self.peer, "closing an SMTP session whose client does not read its replies");
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Replies, flushes and ends the session.
    async fn close<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        code: u16,
        text: &str,
    ) -> Flow {
        self.reply(code, text);
        let _ = self.flush(io).await;
        Flow::Close
    }

    /// Reads a line. A command read (`command`) also ends when the relay
    /// stops; a line of message data does not, so a transaction under way
    /// is finished. `None` ends the session (end of input, an I/O error, or
    /// a timeout, which has been answered with 421).
    async fn read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
        limit: usize,
        command: bool,
    ) -> Option<Line> {
        // Pipelined commands still buffered are answered together, up to a
        // bound: a client pipelining without reading does not grow them.
        if (io.buffer().is_empty() || self.out.len() >= REPLIES_BUFFERED)
            && self.flush(io).await.is_err()
        {
            return None;
        }
        let timeout = self.settings.cfg.client_timeout;
        let mut stop = self.stop.clone();
        let stopped = async move {
            if command {
                let _ = stop.wait_for(|s| *s).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let line = tokio::select! {
            r = tokio::time::timeout(timeout, read_line(io, buf, limit)) => r,
            _ = stopped => {
                self.close(io, 421, "4.3.2 relay is shutting down, try again later").await;
                return None;
            }
        };
        match line {
            Ok(Ok(l)) => Some(l),
            Ok(Err(_)) => None,
            Err(_) => {
                let host = self.settings.cfg.hostname.clone();
                self.close(
                    io,
                    421,
                    &format!("4.4.2 {host} timeout waiting for the client"),
                )
                .await;
                None
            }
        }
    }

    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut BufReader<S>) -> Flow {
        let limit = self.settings.cfg.line_length_hard_limit;
        let mut buf = Vec::new();
        loop {
            let Some(line) = self.read(io, &mut buf, limit, true).await else {
                return Flow::Close;
            };
            let cmd = match line {
                Line::Eof => return Flow::Close,
                Line::TooLong => Err(command::Malformed {
                    code: 500,
                    text: "5.5.2 line too long",
                }),
                Line::Line { .. } => match std::str::from_utf8(&buf) {
                    Ok(text) => command::parse(text),
                    Err(_) => Err(command::Malformed {
                        code: 500,
                        text: "5.5.2 command is not valid UTF-8",
                    }),
                },
            };
            let flow = match cmd {
                Ok(c) => self.command(c, io, &mut buf).await,
                Err(m) => self.bad_command(io, m.code, m.text).await,
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
    }

    async fn bad_command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        code: u16,
        text: &str,
    ) -> Flow {
        self.errors += 1;
        if self.errors > MAX_ERRORS {
            return self
                .close(io, 421, "4.7.0 too many errors, closing the connection")
                .await;
        }
        self.reply(code, text);
        Flow::Continue
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cmd: Command,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
    ) -> Flow {
        match cmd {
            Command::Ehlo(domain) => self.ehlo(domain),
            Command::Helo(domain) => self.helo(domain),
            Command::StartTls => return self.starttls(io).await,
            Command::Auth { mechanism, initial } => {
                return self.auth(io, buf, &mechanism, initial).await;
            }
            Command::Mail { from, size } => return self.mail(io, from, size).await,
            Command::Rcpt { to } => self.rcpt(to).await,
            Command::Data => return self.data(io, buf).await,
            Command::Rset => {
                self.tx = None;
                self.reply(250, "2.0.0 OK");
            }
            Command::Noop => self.reply(250, "2.0.0 OK"),
            Command::Vrfy => {
                self.reply(252, "2.5.0 cannot VRFY a user, but will accept the message")
            }
            Command::Quit => return self.close(io, 221, "2.0.0 bye").await,
        }
        Flow::Continue
    }

    /// AUTH is offered on TLS (or where the listener allows it in the clear)
    /// when the policy can check credentials.
    fn auth_offered(&self) -> bool {
        (self.tls || self.settings.cfg.allow_auth_without_tls)
            && self.engine.policy().defines("smtp_server_auth_plain")
    }

    fn ehlo(&mut self, domain: String) {
        self.tx = None;
        self.helo = Some(domain);
        let c = &self.settings.cfg;
        let mut lines = vec![
            format!("{} Hello {}", c.hostname, self.peer.ip()),
            "PIPELINING".into(),
            format!("SIZE {}", c.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.settings.tls.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() && self.authenticated.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    fn helo(&mut self, domain: String) {
        self.tx = None;
        self.helo = Some(domain);
        let text = format!("{} Hello {}", self.settings.cfg.hostname, self.peer.ip());
        self.reply(250, &text);
    }

    async fn starttls<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut BufReader<S>) -> Flow {
        if self.tls {
            self.reply(503, "5.5.1 TLS is already active");
        } else if self.settings.tls.is_none() {
            self.reply(502, "5.5.1 STARTTLS is not available");
        } else {
            self.reply(220, "2.0.0 ready to start TLS");
            let _ = self.flush(io).await;
            return Flow::Upgrade;
        }
        Flow::Continue
    }

    async fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        from: String,
        size: Option<u64>,
    ) -> Flow {
        let max = self.settings.cfg.max_message_size;
        if self.helo.is_none() {
            self.reply(503, "5.5.1 send EHLO or HELO first");
        } else if self.tx.is_some() {
            self.reply(503, "5.5.1 nested MAIL command");
        } else if self.settings.cfg.require_starttls && !self.tls {
            self.reply(530, "5.7.0 must issue a STARTTLS command first");
        } else if self.messages >= self.settings.cfg.max_messages_per_connection {
            return self
                .close(io, 421, "4.7.0 too many messages on this connection")
                .await;
        } else if size.is_some_and(|s| s > max as u64) {
            self.reply(
                552,
                &format!("5.3.4 message size exceeds the maximum of {max} bytes"),
            );
        } else {
            self.tx = Some(Transaction {
                from,
                rcpts: Vec::new(),
            });
            self.reply(250, "2.1.0 OK");
        }
        Flow::Continue
    }

    async fn rcpt(&mut self, to: String) {
        let max = self.settings.cfg.max_recipients_per_message;
        if self.tx.is_none() {
            self.reply(503, "5.5.1 need MAIL before RCPT");
            return;
        }
        match self.may_relay(&to).await {
            Ok(true) => {}
            Ok(false) => {
                let ip = self.peer.ip();
                self.reply(550, &format!("5.7.1 relaying denied for {ip}"));
                return;
            }
            Err(r) => {
                self.refusal(&r);
                return;
            }
        }
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        if tx.rcpts.len() >= max {
            self.reply(452, "4.5.3 too many recipients");
            return;
        }
        // The queue is decided after smtp_server_message_received has run
        // (the policy may set tenant, campaign or queue there), as KumoMTA
        // does: routing is checked at DATA, for all recipients at once.
        tx.rcpts.push(to);
        self.reply(250, "2.1.5 OK");
    }

    /// Reads the message after DATA and answers it.
    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
    ) -> Flow {
        let Some(tx) = &self.tx else {
            self.reply(503, "5.5.1 need MAIL and RCPT before DATA");
            return Flow::Continue;
        };
        if tx.rcpts.is_empty() {
            self.reply(554, "5.5.1 no valid recipients");
            return Flow::Continue;
        }
        // The trace header goes in first, so the body is never copied to
        // put it in front.
        let received = self
            .settings
            .cfg
            .received_header
            .then(|| self.received_header(tx));
        self.reply(354, "end data with <CR><LF>.<CR><LF>");
        let settings = self.settings.clone();
        let mut body = super::DataBuffer::new(&settings.data_memory);
        let header = received.as_deref().unwrap_or_default().as_bytes();
        let read = if body.extend(&[header]) {
            self.read_body(io, buf, &mut body, header.len()).await
        } else {
            self.read_body(io, buf, &mut body, 0)
                .await
                .map(|r| r.and(Err(no_memory())))
        };
        // A timeout (answered with 421), the end of input or an error: the
        // rest of the body must not be read as commands.
        let Some(read) = read else {
            return Flow::Close;
        };
        let tx = self.tx.take().expect("checked above");
        match read {
            Err((code, text)) => self.reply(code, &text),
            Ok(()) => {
                self.messages += 1;
                // `body` stays counted against the listener's data memory
                // until the message is durable.
                let bytes = body.take_bytes();
                match self.accept(tx, bytes).await {
                    Ok(ids) => self.reply(250, &format!("2.0.0 OK queued as {ids}")),
                    Err(r) => self.refusal(&r),
                }
            }
        }
        drop(body);
        Flow::Continue
    }

    /// Reads the message up to `<CR><LF>.<CR><LF>` into `body` (after its
    /// first `header` bytes), through the DATA state machine (`data`).
    /// `None` when the session must end.
    async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
        body: &mut super::DataBuffer,
        header: usize,
    ) -> Option<Result<(), (u16, String)>> {
        let max = self.settings.cfg.max_message_size;
        let limit = self.settings.cfg.line_length_hard_limit;
        let mut reader = super::data::DataReader::new(self.settings.cfg.invalid_line_endings);
        let mut refused: Option<(u16, String)> = None;
        loop {
            let line = self.read(io, buf, limit, false).await?;
            let crlf = match line {
                Line::Eof => return None,
                Line::TooLong => {
                    refused.get_or_insert((
                        500,
                        format!("5.5.2 a line was longer than {limit} bytes"),
                    ));
                    continue;
                }
                Line::Line { crlf } => crlf,
            };
            let (text, end) = match reader.line(buf, crlf) {
                super::data::Fed::End => break,
                super::data::Fed::Skip => continue,
                super::data::Fed::Append(text, end) => (text, end),
            };
            if refused.is_some() {
                continue;
            }
            if body.len() - header + text.len() + end.len() > max {
                refused = Some((
                    552,
                    format!("5.3.4 message size exceeds the maximum of {max} bytes"),
                ));
                body.clear();
            } else if !body.extend(&[&text, end]) {
                refused = Some(no_memory());
                body.clear();
            }
        }
        Some(match refused.or_else(|| reader.refusal()) {
            Some(r) => Err(r),
            None => Ok(()),
        })
    }

    async fn accept(&mut self, tx: Transaction, body: Bytes) -> Result<String, Refusal> {
        let mut meta = Map::new();
        meta.insert("reception_protocol".into(), Value::from("ESMTP"));
        for (k, v) in self.facts() {
            meta.insert(k.into(), Value::from(v));
        }
        let meta = Arc::new(meta);
        let policy = self.engine.policy();
        let mut msgs = Vec::with_capacity(tx.rcpts.len());
        for rcpt in tx.rcpts {
            let m = Arc::new(Message::new(
                tx.from.clone(),
                rcpt,
                meta.clone(),
                body.clone(),
            ));
            policy
                .message_hook(&crate::policy::events::SMTP_SERVER_MESSAGE_RECEIVED, &m)
                .await?;
            msgs.push(m);
        }
        let ids: Vec<String> = msgs.iter().map(|m| m.id().simple().to_string()).collect();
        self.engine.receive_all(msgs).await?;
        Ok(ids.join(","))
    }
}
