//! A publish's confirm, as `kumo.amqp` hands it to Lua.

use super::pool::Failure;
use lapin::{Confirmation, PublisherConfirm};
use mlua::{Lua, Table};
use std::time::Duration;

/// How the broker answered a publish (lapin's `Confirmation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmStatus {
    Ack,
    Nack,
    /// The channel was not in confirm mode.
    NotRequested,
}

impl ConfirmStatus {
    /// The name KumoMTA's mod-amqp gives Lua.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfirmStatus::Ack => "Ack",
            ConfirmStatus::Nack => "Nack",
            ConfirmStatus::NotRequested => "NotRequested",
        }
    }
}

/// The confirm outcome, as `{status, reply_code?, reply_text?}`.
pub struct ConfirmOutcome {
    pub status: ConfirmStatus,
    pub reply_code: Option<u16>,
    pub reply_text: Option<String>,
}

impl ConfirmOutcome {
    pub fn from_confirmation(c: Confirmation) -> ConfirmOutcome {
        let (status, returned) = match c {
            Confirmation::Ack(r) => (ConfirmStatus::Ack, r),
            Confirmation::Nack(r) => (ConfirmStatus::Nack, r),
            Confirmation::NotRequested => (ConfirmStatus::NotRequested, None),
        };
        ConfirmOutcome {
            status,
            reply_code: returned.as_ref().map(|r| r.reply_code),
            reply_text: returned.map(|r| r.reply_text.to_string()),
        }
    }

    pub fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let t = lua.create_table_with_capacity(0, 3)?;
        t.raw_set("status", self.status.as_str())?;
        if let Some(code) = self.reply_code {
            t.raw_set("reply_code", code)?;
        }
        if let Some(text) = &self.reply_text {
            t.raw_set("reply_text", text.as_str())?;
        }
        Ok(t)
    }

    /// True when the broker took the message and did not hand it back.
    pub fn accepted(&self) -> bool {
        self.status == ConfirmStatus::Ack && self.reply_code.is_none()
    }
}

pub async fn await_confirm(
    c: PublisherConfirm,
    timeout: Duration,
) -> Result<ConfirmOutcome, Failure> {
    tokio::time::timeout(timeout, c)
        .await
        .map_err(|_| {
            Failure::TimedOut(format!(
                "confirm timed out: no answer from the broker within {timeout:?}"
            ))
        })?
        .map(ConfirmOutcome::from_confirmation)
        .map_err(|e| Failure::Failed(format!("waiting for the confirm: {e}")))
}
