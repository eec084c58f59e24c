//! Who may relay (relay_hosts, AUTH, KumoMTA's `get_listener_domain`), what
//! the session tells handlers through `conn_meta`, and the `Received:`
//! trace header.

use super::{Session, Transaction};
use crate::engine::Refusal;

impl Session {
    /// Whether this client may relay to `to`: from `relay_hosts`,
    /// authenticated, or allowed by `get_listener_domain` for the
    /// recipient's domain (`relay_to`) or the sender's (`relay_from`).
    pub(super) async fn may_relay(&mut self, to: &str) -> Result<bool, Refusal> {
        let ip = self.peer.ip();
        if self.authenticated.is_some() || self.settings.relay_hosts.iter().any(|n| n.contains(&ip))
        {
            return Ok(true);
        }
        let policy = self.engine.policy();
        if !policy.defines(crate::policy::events::GET_LISTENER_DOMAIN.name) {
            return Ok(false);
        }
        self.refresh_conn_meta();
        let listener = self.settings.cfg.listen.as_str();
        let domain_of = |a: &str| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        if let Some(d) = domain_of(to) {
            let ld = policy.listener_domain(&d, listener, &self.conn).await?;
            if ld.is_some_and(|ld| ld.relay_to) {
                return Ok(true);
            }
        }
        let from = self.tx.as_ref().and_then(|t| domain_of(&t.from));
        if let Some(d) = from {
            let ld = policy.listener_domain(&d, listener, &self.conn).await?;
            return Ok(ld.is_some_and(|ld| ld.relays_from(ip)));
        }
        Ok(false)
    }

    /// What the session knows of the connection (peer, listener, EHLO
    /// name, AUTH identities; `authz_id` is what KumoMTA's queue helper
    /// checks against a tenant's require_authz).
    pub(super) fn facts(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("received_from", self.peer.to_string())];
        out.extend(self.local.map(|l| ("received_via", l.to_string())));
        out.extend(self.helo.clone().map(|h| ("ehlo_domain", h)));
        out.extend(self.authenticated.clone().map(|a| ("authn_id", a)));
        out.extend(self.authz.clone().map(|a| ("authz_id", a)));
        out
    }

    /// The facts and the TLS state into `conn_meta` (values handlers set
    /// themselves stay).
    pub(super) fn refresh_conn_meta(&self) {
        for (k, v) in self.facts() {
            self.conn.set(k, v);
        }
        self.conn.set("tls", self.tls.to_string());
    }

    /// The body after the transaction's `Received:` header (one for all its
    /// recipients, naming the recipient when there is only one).
    /// The `Received:` header this relay puts first in a message of `tx`.
    pub(super) fn received_header(&self, tx: &Transaction) -> String {
        use crate::model::trace;
        let helo = self.helo.as_deref().map(trace::clean_word);
        trace::received(&trace::Via {
            helo: helo.as_deref(),
            peer: self.peer.ip(),
            by: &self.settings.cfg.hostname,
            protocol: trace::esmtp_protocol(self.tls, self.authenticated.is_some()),
            for_rcpt: match tx.rcpts.as_slice() {
                [one] => Some(one.as_str()),
                _ => None,
            },
        })
    }
}
