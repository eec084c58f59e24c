//! AUTH PLAIN and LOGIN (RFC 4954): the exchange with the client, the
//! credentials checked by `smtp_server_auth_plain`. Decoding lives in
//! `smtp::auth`.

use super::super::auth::{self, BadAuth};
use super::super::lines::Line;
use super::{Flow, Session};
use crate::policy::AuthVerdict;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};

/// The pause before answering a failed AUTH, times the session's failures.
const AUTH_FAILURE_PAUSE: Duration = Duration::from_secs(1);

impl Session {
    /// AUTH PLAIN (RFC 4616) or LOGIN, checked by `smtp_server_auth_plain`.
    pub(super) async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
        mechanism: &str,
        initial: Option<String>,
    ) -> Flow {
        if self.authenticated.is_some() {
            self.reply(503, "5.5.1 already authenticated");
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.reply(503, "5.5.1 AUTH is not allowed during a mail transaction");
            return Flow::Continue;
        }
        if !self.tls && !self.settings.cfg.allow_auth_without_tls {
            self.reply(538, "5.7.11 encryption required: issue STARTTLS first");
            return Flow::Continue;
        }
        if !self.auth_offered() {
            self.reply(502, "5.5.1 AUTH is not available");
            return Flow::Continue;
        }
        let creds = match mechanism {
            "PLAIN" => self.auth_plain(io, buf, initial).await,
            "LOGIN" => self.auth_login(io, buf, initial).await,
            _ => Err(BadAuth {
                code: 504,
                text: "5.5.4 unrecognized authentication mechanism",
            }),
        };
        let creds = match creds {
            Ok(Some(c)) => c,
            // The connection ended or timed out mid-exchange.
            Ok(None) => return Flow::Close,
            Err(bad) => return self.bad_command(io, bad.code, bad.text).await,
        };
        self.refresh_conn_meta();
        let verdict = self
            .engine
            .policy()
            .smtp_auth_plain(&creds.authz, &creds.authc, &creds.password, &self.conn)
            .await;
        match verdict {
            Ok(AuthVerdict::Allow) => {
                self.authz = Some(creds.authz);
                self.authenticated = Some(creds.authc);
                self.reply(235, "2.7.0 authentication successful");
                Flow::Continue
            }
            Ok(AuthVerdict::Deny | AuthVerdict::NoHandler) => {
                // Each failure costs the client a second more (up to five)
                // and counts toward the session's error limit: guessing
                // passwords through one connection is slow and short.
                self.auth_failures += 1;
                let pause = AUTH_FAILURE_PAUSE * self.auth_failures.min(5);
                tracing::info!(peer = %self.peer, failures = self.auth_failures, "SMTP AUTH failed");
                tokio::time::sleep(pause).await;
                self.bad_command(io, 535, "5.7.8 authentication credentials invalid")
                    .await
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "smtp_server_auth_plain failed");
                self.reply(454, "4.7.0 temporary authentication failure");
                Flow::Continue
            }
        }
    }

    /// The client's next AUTH response line; `Ok(None)` when the session ended.
    async fn auth_response<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
        challenge: &str,
    ) -> Result<Option<String>, BadAuth> {
        self.reply(334, challenge);
        match self.read(io, buf, auth::MAX_RESPONSE, false).await {
            None | Some(Line::Eof) => Ok(None),
            Some(Line::TooLong) => Err(BadAuth {
                code: 500,
                text: "5.5.6 authentication exchange line is too long",
            }),
            Some(Line::Line { .. }) => Ok(Some(String::from_utf8_lossy(buf).into_owned())),
        }
    }

    async fn auth_plain<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
        initial: Option<String>,
    ) -> Result<Option<auth::Credentials>, BadAuth> {
        let response = match initial {
            Some(r) => r,
            None => match self.auth_response(io, buf, "").await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        auth::plain(&response).map(Some)
    }

    async fn auth_login<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut BufReader<S>,
        buf: &mut Vec<u8>,
        initial: Option<String>,
    ) -> Result<Option<auth::Credentials>, BadAuth> {
        let user = match initial {
            Some(r) => auth::login_step(&r)?,
            None => match self.auth_response(io, buf, auth::LOGIN_USERNAME).await? {
                Some(r) => auth::login_step(&r)?,
                None => return Ok(None),
            },
        };
        let Some(password) = self.auth_response(io, buf, auth::LOGIN_PASSWORD).await? else {
            return Ok(None);
        };
        Ok(Some(auth::Credentials {
            authz: user.clone(),
            authc: user,
            password: auth::login_step(&password)?,
        }))
    }
}
