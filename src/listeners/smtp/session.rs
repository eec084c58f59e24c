//! One SMTP conversation: commands in, replies out, messages into the spool.
//! Replies are buffered while the client's pipelined commands are still
//! buffered, and flushed before the relay waits for more.

use super::Settings;
use super::command::{self, Command};
use super::lines::{Line, read_line};
use crate::engine::{Engine, Refusal};
use crate::model::message::Message;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
    let engine_stop = engine.shutdown_signal();
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
        tls: false,
        stop: engine_stop,
    };
    let banner = settings
        .cfg
        .banner
        .clone()
        .unwrap_or_else(|| "ESMTP amqp-relay".into());
    s.reply(220, &format!("{} {banner}", settings.cfg.hostname));
    let mut io = BufReader::new(sock);
    match s.converse(&mut io).await {
        End::Upgrade => {
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
        End::Close => {
            let _ = io.get_mut().shutdown().await;
        }
    }
}

enum End {
    Close,
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
    tls: bool,
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

    async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
    ) -> std::io::Result<()> {
        if !self.out.is_empty() {
            io.get_mut().write_all(&self.out).await?;
            io.get_mut().flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads a line. A command read (`command`) also ends when the relay
    /// stops; a line of message data does not, so a transaction under way
    /// is finished.
    async fn read<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
        limit: usize,
        command: bool,
    ) -> Option<Line> {
        // Pipelined commands still buffered are answered together.
        if io.buffer().is_empty() && self.flush(io).await.is_err() {
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
                self.reply(421, "4.3.2 relay is shutting down, try again later");
                let _ = self.flush(io).await;
                return None;
            }
        };
        match line {
            Ok(Ok(l)) => Some(l),
            Ok(Err(_)) => None,
            Err(_) => {
                let host = self.settings.cfg.hostname.clone();
                self.reply(421, &format!("4.4.2 {host} timeout waiting for the client"));
                let _ = self.flush(io).await;
                None
            }
        }
    }

    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut BufReader<S>) -> End {
        let limit = self.settings.cfg.line_length_hard_limit;
        let mut buf = Vec::new();
        loop {
            if self.engine.is_shutting_down() {
                self.reply(421, "4.3.2 relay is shutting down, try again later");
                let _ = self.flush(io).await;
                return End::Close;
            }
            let Some(line) = self.read(io, &mut buf, limit, true).await else {
                return End::Close;
            };
            let cmd = match line {
                Line::Eof => return End::Close,
                Line::TooLong => Err(command::Malformed {
                    code: 500,
                    text: "5.5.2 line too long",
                }),
                Line::Line => match std::str::from_utf8(&buf) {
                    Ok(text) => command::parse(text),
                    Err(_) => Err(command::Malformed {
                        code: 500,
                        text: "5.5.2 command is not valid UTF-8",
                    }),
                },
            };
            let cmd = match cmd {
                Ok(c) => c,
                Err(m) => {
                    self.errors += 1;
                    if self.errors > MAX_ERRORS {
                        self.reply(421, "4.7.0 too many errors, closing the connection");
                        let _ = self.flush(io).await;
                        return End::Close;
                    }
                    self.reply(m.code, m.text);
                    continue;
                }
            };
            match cmd {
                Command::Ehlo(domain) => {
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
                    let last = lines.len() - 1;
                    for (i, l) in lines.iter().enumerate() {
                        let sep = if i == last { ' ' } else { '-' };
                        self.out
                            .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
                    }
                }
                Command::Helo(domain) => {
                    self.tx = None;
                    self.helo = Some(domain);
                    let text = format!("{} Hello {}", self.settings.cfg.hostname, self.peer.ip());
                    self.reply(250, &text);
                }
                Command::StartTls => {
                    if self.tls {
                        self.reply(503, "5.5.1 TLS is already active");
                    } else if self.settings.tls.is_none() {
                        self.reply(502, "5.5.1 STARTTLS is not available");
                    } else {
                        self.reply(220, "2.0.0 ready to start TLS");
                        let _ = self.flush(io).await;
                        return End::Upgrade;
                    }
                }
                Command::Mail { from, size } => {
                    let max = self.settings.cfg.max_message_size;
                    if self.helo.is_none() {
                        self.reply(503, "5.5.1 send EHLO or HELO first");
                    } else if self.tx.is_some() {
                        self.reply(503, "5.5.1 nested MAIL command");
                    } else if self.messages >= self.settings.cfg.max_messages_per_connection {
                        self.reply(421, "4.7.0 too many messages on this connection");
                        let _ = self.flush(io).await;
                        return End::Close;
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
                }
                Command::Rcpt { to } => self.rcpt(to),
                Command::Data => {
                    if let Some(end) = self.data(io, &mut buf).await {
                        return end;
                    }
                }
                Command::Rset => {
                    self.tx = None;
                    self.reply(250, "2.0.0 OK");
                }
                Command::Noop => self.reply(250, "2.0.0 OK"),
                Command::Vrfy => {
                    self.reply(252, "2.5.0 cannot VRFY a user, but will accept the message")
                }
                Command::Quit => {
                    self.reply(221, "2.0.0 bye");
                    let _ = self.flush(io).await;
                    return End::Close;
                }
            }
        }
    }

    fn rcpt(&mut self, to: String) {
        let max = self.settings.cfg.max_recipients_per_message;
        let relay_ok = self
            .settings
            .relay_hosts
            .iter()
            .any(|n| n.contains(&self.peer.ip()));
        let Some(tx) = self.tx.as_mut() else {
            self.reply(503, "5.5.1 need MAIL before RCPT");
            return;
        };
        if !relay_ok {
            let ip = self.peer.ip();
            self.reply(550, &format!("5.7.1 relaying denied for {ip}"));
            return;
        }
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

    /// Reads the message after DATA and answers it; `Some` ends the session.
    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
    ) -> Option<End> {
        match &self.tx {
            None => {
                self.reply(503, "5.5.1 need MAIL and RCPT before DATA");
                return None;
            }
            Some(tx) if tx.rcpts.is_empty() => {
                self.reply(554, "5.5.1 no valid recipients");
                return None;
            }
            Some(_) => {}
        }
        self.reply(354, "end data with <CR><LF>.<CR><LF>");
        let max = self.settings.cfg.max_message_size;
        let limit = self.settings.cfg.line_length_hard_limit;
        let mut body: Vec<u8> = Vec::new();
        let mut oversize = false;
        let mut long_line = false;
        loop {
            let line = self.read(io, buf, limit, false).await?;
            match line {
                Line::Eof => return Some(End::Close),
                Line::TooLong => long_line = true,
                Line::Line => {
                    if buf.as_slice() == b"." {
                        break;
                    }
                    let text = buf.strip_prefix(b".").unwrap_or(buf);
                    if body.len() + text.len() + 2 > max {
                        oversize = true;
                        body.clear();
                    }
                    if !oversize {
                        body.extend_from_slice(text);
                        body.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        let tx = self.tx.take().expect("checked above");
        if oversize {
            self.reply(
                552,
                &format!("5.3.4 message size exceeds the maximum of {max} bytes"),
            );
            return None;
        }
        if long_line {
            self.reply(500, &format!("5.5.2 a line was longer than {limit} bytes"));
            return None;
        }
        self.messages += 1;
        match self.accept(tx, Bytes::from(body)).await {
            Ok(ids) => self.reply(250, &format!("2.0.0 OK queued as {ids}")),
            Err(r) => self.refusal(&r),
        }
        None
    }

    async fn accept(&mut self, tx: Transaction, body: Bytes) -> Result<String, Refusal> {
        let mut meta = Map::new();
        meta.insert("reception_protocol".into(), Value::from("ESMTP"));
        meta.insert("received_from".into(), Value::from(self.peer.to_string()));
        if let Some(l) = self.local {
            meta.insert("received_via".into(), Value::from(l.to_string()));
        }
        if let Some(h) = &self.helo {
            meta.insert("ehlo_domain".into(), Value::from(h.clone()));
        }
        let policy = self.engine.policy();
        let mut msgs = Vec::with_capacity(tx.rcpts.len());
        for rcpt in tx.rcpts {
            let m = Arc::new(Message::new(
                tx.from.clone(),
                rcpt,
                meta.clone(),
                body.clone(),
            ));
            match policy
                .message_hook("smtp_server_message_received", &m)
                .await
            {
                Ok(()) => msgs.push(m),
                Err(crate::policy::PolicyError::Rejected(r)) => {
                    return Err(Refusal {
                        code: r.code,
                        reason: r.message,
                    });
                }
                Err(e) => {
                    return Err(Refusal {
                        code: 451,
                        reason: format!("4.3.0 {e}"),
                    });
                }
            }
        }
        let ids: Vec<String> = msgs.iter().map(|m| m.id().simple().to_string()).collect();
        self.engine.receive_all(msgs).await?;
        Ok(ids.join(","))
    }
}
