//! Delivery through a policy's `custom_lua` protocol: the engine's one
//! interface to Lua for sending. A session calls the queue's constructor
//! event once to get a sender object, then `send` (or `send_batch`) per
//! call, and `close` at the end; what each call returned is classified here
//! as KumoMTA does.

use super::message_ud::MessageUd;
use super::reject::{describe, find_rejection};
use super::{Policy, PooledState, events};
use crate::model::message::MessageRef;
use crate::model::queue_name::QueueName;
use crate::model::response::Response;
use mlua::{Function, Table, Value};
use std::sync::Arc;
use std::time::Duration;

/// How one delivery attempt ended, with the response KumoMTA's custom_lua
/// path records for it (its `lua_deliver.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered(Response),
    Transient(Response),
    Bounced(Response),
}

impl Outcome {
    /// A temporary failure the relay itself reports (`"451 4.4.0 why"`).
    pub fn transient(text: &str) -> Outcome {
        Outcome::Transient(Response::parse(text))
    }
}

/// The outcome for the messages of one call; `close` ends the session afterwards.
#[derive(Debug)]
pub struct SendResult {
    pub outcome: Outcome,
    pub close: bool,
}

/// A sender object made by a constructor event, on one Lua state.
pub struct DeliverySession {
    lua: Option<PooledState>,
    sender: Table,
    send: Function,
    method: &'static str,
    batch: bool,
    timeout: Duration,
    /// False after a call was cut off: the state may be half-way through
    /// something and is not reused.
    healthy: bool,
}

impl Policy {
    /// Calls `constructor(domain, tenant, campaign)` and checks that what it
    /// returned has the method the engine will call (`send_batch` when `batch`).
    /// Every call on the session is bounded by `timeout`.
    pub async fn open_session(
        self: &Arc<Self>,
        q: &QueueName,
        constructor: &str,
        batch: bool,
        timeout: Duration,
    ) -> Result<DeliverySession, String> {
        let lua = self.acquire().map_err(|e| e.to_string())?;
        let ctor = events::handlers(&lua, constructor)
            .map_err(|e| describe(&e))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("the policy has no kumo.on('{constructor}', …) handler"))?;
        lua.limit(Some(timeout));
        // Clients the constructor builds share this queue's channel.
        let made = tokio::time::timeout(
            timeout,
            crate::policy::amqp::for_queue(
                q.to_string(),
                ctor.call_async::<Value>((
                    q.domain.as_str(),
                    q.tenant.as_deref(),
                    q.campaign.as_deref(),
                )),
            ),
        )
        .await;
        let sender = match made {
            Err(_) => {
                lua.discard();
                return Err(format!(
                    "constructor '{constructor}' timed out after {timeout:?}"
                ));
            }
            Ok(Err(e)) => return Err(format!("constructor '{constructor}': {}", describe(&e))),
            Ok(Ok(Value::Table(t))) => t,
            Ok(Ok(other)) => {
                return Err(format!(
                    "constructor '{constructor}' returned a {}, expected a table with a send method",
                    other.type_name()
                ));
            }
        };
        let method = if batch { "send_batch" } else { "send" };
        let send = sender
            .get::<Option<Function>>(method)
            .map_err(|e| describe(&e))?
            .ok_or_else(|| {
                format!("constructor '{constructor}' returned an object without a {method} method")
            })?;
        Ok(DeliverySession {
            lua: Some(lua),
            sender,
            send,
            method,
            batch,
            timeout,
            healthy: true,
        })
    }
}

impl DeliverySession {
    fn lua(&self) -> &PooledState {
        self.lua.as_ref().expect("present until close")
    }

    /// One `send` (or one `send_batch` with every message); its outcome
    /// applies to all of them.
    pub async fn send(&mut self, msgs: &[MessageRef]) -> SendResult {
        let timeout = self.timeout;
        let method = self.method;
        self.lua().limit(Some(timeout));
        let call = async {
            if self.batch {
                let list = self.lua().create_table().map_err(|e| describe(&e))?;
                for m in msgs {
                    list.push(MessageUd(m.clone())).map_err(|e| describe(&e))?;
                }
                Ok::<_, String>(self.send.call_async::<Value>((&self.sender, list)).await)
            } else {
                Ok(self
                    .send
                    .call_async::<Value>((&self.sender, MessageUd(msgs[0].clone())))
                    .await)
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                self.healthy = false;
                SendResult {
                    outcome: Outcome::transient(&format!(
                        "421 4.4.2 {method} did not finish within {timeout:?}"
                    )),
                    close: true,
                }
            }
            Ok(Err(e)) => SendResult {
                outcome: Outcome::transient(&format!("400 {e}")),
                close: true,
            },
            Ok(Ok(r)) => classify(method, r),
        }
    }

    /// Calls the sender's `close`, if it has one, within the time limit.
    pub async fn close(mut self, queue: &str) {
        let lua = self.lua.take().expect("present until close");
        if !self.healthy {
            lua.discard();
            return;
        }
        lua.limit(Some(self.timeout));
        let Ok(Some(close)) = self.sender.get::<Option<Function>>("close") else {
            return;
        };
        match tokio::time::timeout(self.timeout, close.call_async::<Value>(&self.sender)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%queue, error = %describe(&e), "sender:close failed")
            }
            Err(_) => {
                tracing::warn!(%queue, "sender:close timed out");
                lua.discard();
            }
        }
    }
}

/// Maps what `send` returned (or raised) to an outcome, as KumoMTA does.
fn classify(method: &str, r: mlua::Result<Value>) -> SendResult {
    match r {
        // KumoMTA logs a delivery as code 200 with what `send` returned.
        Ok(Value::String(s)) => SendResult {
            outcome: Outcome::Delivered(Response::new(200, s.to_string_lossy())),
            close: false,
        },
        Ok(other) => SendResult {
            outcome: Outcome::transient(&format!(
                "400 4.0.0 {method} returned a {} instead of a string",
                other.type_name()
            )),
            close: true,
        },
        Err(e) => match find_rejection(&e) {
            Some(r) if r.is_transient() => SendResult {
                outcome: Outcome::Transient(Response::new(r.code, r.message)),
                close: false,
            },
            Some(r) => SendResult {
                outcome: Outcome::Bounced(Response::new(r.code, r.message)),
                close: false,
            },
            None => SendResult {
                outcome: Outcome::transient(&format!(
                    "400 4.0.0 {method} failed: {}",
                    describe(&e)
                )),
                close: true,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(r: mlua::Result<Value>) -> (Outcome, bool) {
        let SendResult { outcome, close } = classify("send", r);
        (outcome, close)
    }

    #[test]
    fn outcome_mapping() {
        let lua = mlua::Lua::new();
        let (o, close) = outcome(Ok(Value::String(lua.create_string("250 ok").unwrap())));
        // KumoMTA (lua_deliver.rs): code 200, content what send returned.
        assert_eq!(o, Outcome::Delivered(Response::new(200, "250 ok")));
        assert!(!close);
        let (o, close) = outcome(Ok(Value::Nil));
        assert!(
            matches!(&o, Outcome::Transient(t) if t.content.contains("nil")),
            "{o:?}"
        );
        assert!(close);
        let reject = |code| {
            mlua::Error::external(crate::policy::reject::Rejection {
                code,
                message: "x".into(),
            })
        };
        let (o, close) = outcome(Err(reject(451)));
        // kumo.reject's code and text, no enhanced code, as KumoMTA records it.
        assert_eq!(o, Outcome::Transient(Response::new(451, "x")));
        assert!(!close);
        let (o, _) = outcome(Err(reject(500)));
        assert_eq!(o, Outcome::Bounced(Response::new(500, "x")));
        let (o, close) = outcome(Err(mlua::Error::runtime("boom")));
        assert!(
            matches!(&o, Outcome::Transient(t) if t.code == 400 && t.content.contains("boom")),
            "{o:?}"
        );
        assert!(close);
    }
}
