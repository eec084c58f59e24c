//! `kumo.amqp`: publishing to RabbitMQ over lapin, with publisher confirms on.
//! The pool of connections, the arguments of a publish, its confirm, and
//! here the Lua objects (`build_client`'s Client, `publish`'s Confirm) and
//! the module's functions.

mod confirm;
mod connect;
pub mod metrics;
mod pool;
mod publish;

pub use confirm::{ConfirmOutcome, ConfirmStatus, await_confirm};
pub use pool::for_queue;
pub use pool::{
    AmqpPool, CONFIRM_TIMEOUT, CONNECT_TIMEOUT, Failure, PUBLISH_TIMEOUT, Target, redact,
};
use publish::finish_write;
pub use publish::{Publish, check_keys, connection_target, duration_field};

use lapin::Channel;
use lapin::PublisherConfirm;
use mlua::{Lua, Table, UserData, UserDataMethods, UserDataRef};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A client's channel (its queue's, shared with that queue's other
/// clients); shared with its confirms, which replace a channel the broker
/// rejected a publish on.
type ChannelSlot = Arc<pool::SharedChannel>;

/// `kumo.amqp.build_client(uri)`'s object.
pub struct Client {
    pool: Arc<AmqpPool>,
    /// Shared with each publish's confirm (cloned per message).
    target: Arc<Target>,
    /// Shared with each publish's pending write (lapin's `Channel` is a dozen
    /// `Arc`s: cloning it per message showed in profiles).
    channel: ChannelSlot,
    /// `close()` was called (the slot may also be empty because a rejected
    /// channel could not be replaced).
    closed: std::sync::atomic::AtomicBool,
}

pub(super) type Writing = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// A publish whose frames are queued; `wait()` finishes the write, then awaits the confirm.
enum Pending {
    Writing(Writing, Duration),
    Written(PublisherConfirm),
}

pub struct Confirm {
    pending: Mutex<Option<Pending>>,
    pool: Arc<AmqpPool>,
    target: Arc<Target>,
    /// The client's channel, and the one this publish went on.
    slot: ChannelSlot,
    used: Arc<Channel>,
}

impl Client {
    pub async fn build(
        pool: Arc<AmqpPool>,
        target: Target,
        timeout: Duration,
    ) -> Result<Client, String> {
        let channel = pool.client_channel(&target, timeout).await?;
        Ok(Client {
            pool,
            target: Arc::new(target),
            channel,
            closed: Default::default(),
        })
    }

    fn fail(&self, f: Failure) -> mlua::Error {
        self.pool.after_error(&self.target, &f);
        mlua::Error::runtime(format!("amqp {}: {f}", redact(&self.target.uri)))
    }

    /// Queues the message's frames without waiting for them to be written, so a
    /// batch goes out back to back and `publish` needs no async round trip.
    fn publish(&self, p: Publish, write_timeout: Duration) -> mlua::Result<Confirm> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(mlua::Error::runtime("amqp client is closed"));
        }
        let ch = self
            .channel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                mlua::Error::runtime(if self.closed.load(std::sync::atomic::Ordering::Acquire) {
                    "amqp client is closed".to_string()
                } else {
                    format!(
                        "amqp {}: the broker rejected a publish and no new channel could be opened; build a new client",
                        redact(&self.target.uri)
                    )
                })
            })?;
        let mut write = p.start(ch.clone());
        // Poll once now so the frames are queued in call order; `wait()` does the rest.
        let pending = match write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(confirm)) => Pending::Written(confirm),
            Poll::Ready(Err(e)) => {
                return Err(self.fail(Failure::Failed(format!("publish failed: {e}"))));
            }
            Poll::Pending => Pending::Writing(write, write_timeout),
        };
        Ok(Confirm {
            pending: Mutex::new(Some(pending)),
            pool: self.pool.clone(),
            target: self.target.clone(),
            slot: self.channel.clone(),
            used: ch,
        })
    }
}

impl Confirm {
    async fn outcome(&self) -> Result<ConfirmOutcome, Failure> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Failure::Failed("confirm:wait() was already called".into()))?;
        let confirm = match pending {
            Pending::Written(c) => c,
            Pending::Writing(write, timeout) => finish_write(write, timeout).await?,
        };
        let outcome = await_confirm(confirm, CONFIRM_TIMEOUT).await?;
        if outcome.status == ConfirmStatus::Nack {
            // Boxed: rare, and opening a channel is a large future.
            Box::pin(self.retire_channel()).await;
        }
        Ok(outcome)
    }

    /// The broker rejected a publish on this channel: right after a failover
    /// (a quorum queue's leader moving) it goes on rejecting everything sent
    /// on channels opened then, while a fresh channel is accepted. The
    /// client's next publish goes on a new channel (once per rejected
    /// channel, however many of its confirms were rejected).
    async fn retire_channel(&self) {
        let label = metrics::label(&self.target.uri);
        metrics::NACKS.get_or_create(&label).inc();
        let current = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !current.is_some_and(|c| Arc::ptr_eq(&c, &self.used)) {
            return;
        }
        let fresh = self.pool.channel(&self.target, CONNECT_TIMEOUT).await;
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.used)) {
            return;
        }
        metrics::CHANNELS_RETIRED.get_or_create(&label).inc();
        // A client whose new channel cannot be opened fails its next publish
        // with that error, and the policy reconnects.
        *slot = fresh.ok().map(Arc::new);
    }
}

impl UserData for Client {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_method("publish", |_, this, t: Table| {
            let p = Publish::from_table(&t, "client:publish", &[])?;
            this.publish(p, PUBLISH_TIMEOUT)
        });
        // As in KumoMTA: publishes and waits for the confirm, both within
        // the timeout, and returns the result table (not a confirm).
        m.add_async_method(
            "publish_with_timeout",
            |lua, this: UserDataRef<Client>, (t, ms): (Table, u64)| async move {
                let limit = Duration::from_millis(ms);
                let p = Publish::from_table(&t, "client:publish_with_timeout", &[])?;
                let confirm = this.publish(p, limit)?;
                let outcome = tokio::time::timeout(limit, confirm.outcome())
                    .await
                    .map_err(|_| {
                        mlua::Error::runtime(format!(
                            "client:publish_with_timeout: no confirm within {ms} ms"
                        ))
                    })?
                    .map_err(|f| {
                        confirm.pool.after_error(&confirm.target, &f);
                        mlua::Error::from(f)
                    })?;
                outcome.to_lua(&lua)
            },
        );
        m.add_method("close", |_, this, ()| {
            if this.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return Err(mlua::Error::runtime("amqp client is already closed"));
            }
            // The connection is shared, and so is a queue's channel: only a
            // channel of this client's own goes back now.
            if !this.channel.shared {
                let ch = this
                    .channel
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(ch) = ch {
                    this.pool.give_back(&this.target, Arc::unwrap_or_clone(ch));
                }
            }
            Ok(())
        });
    }
}

impl UserData for Confirm {
    fn add_methods<M: UserDataMethods<Self>>(m: &mut M) {
        m.add_async_method("wait", |lua, this: UserDataRef<Confirm>, ()| async move {
            let outcome = this.outcome().await.map_err(|f| {
                this.pool.after_error(&this.target, &f);
                mlua::Error::from(f)
            })?;
            outcome.to_lua(&lua)
        });
    }
}

/// `kumo.amqp.basic_publish{…}`: publish through the pool and wait for the confirm.
/// A Nack, a returned message or a timeout raises an error, so the message is retried.
pub async fn basic_publish(lua: &Lua, pool: &AmqpPool, t: Table) -> mlua::Result<Table> {
    const CALL: &str = "kumo.amqp.basic_publish";
    let conn: Table = t
        .get::<Option<Table>>("connection")?
        .ok_or_else(|| mlua::Error::runtime(format!("{CALL}: 'connection' is required")))?;
    let target = connection_target(&conn)?;
    let uri = target.uri.clone();
    let connect_timeout = duration_field(&conn, "connect_timeout", CONNECT_TIMEOUT)?;
    let publish_timeout = duration_field(&conn, "publish_timeout", PUBLISH_TIMEOUT)?;
    let p = Publish::from_table(&t, CALL, &["connection"])?;
    let ch = pool
        .channel(&target, connect_timeout)
        .await
        .map_err(mlua::Error::runtime)?;
    let result = async {
        let confirm = p.send(&ch, publish_timeout).await?;
        await_confirm(confirm, publish_timeout.max(CONFIRM_TIMEOUT)).await
    }
    .await;
    match &result {
        Ok(_) => pool.give_back(&target, ch),
        Err(e) => pool.after_error(&target, e),
    }
    let outcome =
        result.map_err(|e| mlua::Error::runtime(format!("{CALL} to {}: {e}", redact(&uri))))?;
    if !outcome.accepted() {
        return Err(mlua::Error::runtime(format!(
            "{CALL} to {}: broker answered {}{}",
            redact(&uri),
            outcome.status.as_str(),
            outcome
                .reply_text
                .as_ref()
                .map(|t| format!(" ({} {t})", outcome.reply_code.unwrap_or(0)))
                .unwrap_or_default()
        )));
    }
    outcome.to_lua(lua)
}

/// `kumo.amqp`: clients (`build_client`) and one-shot publishes (`basic_publish`).
pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let amqp_t = lua.create_table()?;
    amqp_t.set(
        "build_client",
        lua.create_async_function(|lua, (uri, opts): (String, Option<Table>)| async move {
            let pool = amqp_pool(&lua)?;
            // Our extension: an optional table with a CA file for amqps:// and a connect timeout.
            let mut target = Target::plain(uri);
            let mut timeout = CONNECT_TIMEOUT;
            if let Some(o) = opts {
                check_keys(
                    &o,
                    "kumo.amqp.build_client",
                    &["root_ca_cert", "connect_timeout"],
                )?;
                target.ca_file = o.get::<Option<String>>("root_ca_cert")?;
                timeout = duration_field(&o, "connect_timeout", timeout)?;
            }
            Client::build(pool, target, timeout)
                .await
                .map_err(mlua::Error::runtime)
        })?,
    )?;
    amqp_t.set(
        "basic_publish",
        lua.create_async_function(|lua, t: Table| async move {
            let pool = amqp_pool(&lua)?;
            basic_publish(&lua, &pool, t).await
        })?,
    )?;
    kumo.set("amqp", amqp_t)?;
    Ok(())
}

fn amqp_pool(lua: &Lua) -> mlua::Result<Arc<AmqpPool>> {
    lua.app_data_ref::<crate::policy::kumo::StateCtx>()
        .map(|c| c.amqp.clone())
        .ok_or_else(|| mlua::Error::runtime("kumo module used outside the relay"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("amqp://u:secret@h:5672/v"), "amqp://u:***@h:5672/v");
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
    }

    #[test]
    fn connection_table_to_uri() {
        let lua = Lua::new();
        let t: Table = lua
            .load(r#"return {host='h', port=1234, username='u s', password='p@ss/', vhost='/'}"#)
            .eval()
            .unwrap();
        assert_eq!(
            connection_target(&t).unwrap().uri,
            "amqp://u%20s:p%40ss%2F@h:1234/%2F"
        );
        let tls: Table = lua
            .load("return {host='h', enable_tls=true, root_ca_cert='/ca.pem'}")
            .eval()
            .unwrap();
        let target = connection_target(&tls).unwrap();
        assert_eq!(target.uri, "amqps://h:5671/%2F");
        assert_eq!(target.ca_file.as_deref(), Some("/ca.pem"));
        let bad: Table = lua.load("return {host='h', prot=1}").eval().unwrap();
        let err = connection_target(&bad).unwrap_err().to_string();
        assert!(err.contains("'prot'"), "{err}");
    }

    #[test]
    fn ipv6_hosts_are_bracketed_and_bad_hosts_refused() {
        let lua = Lua::new();
        for (host, want) in [
            ("::1", "amqp://[::1]:5672/%2F"),
            ("[::1]", "amqp://[::1]:5672/%2F"),
            ("fd00::a:1", "amqp://[fd00::a:1]:5672/%2F"),
            ("10.0.0.1", "amqp://10.0.0.1:5672/%2F"),
            ("rabbit.mq.svc", "amqp://rabbit.mq.svc:5672/%2F"),
        ] {
            let t = lua.create_table().unwrap();
            t.set("host", host).unwrap();
            let uri = connection_target(&t).unwrap().uri;
            assert_eq!(uri, want);
            let parsed: lapin::uri::AMQPUri = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(parsed.authority.port, 5672, "{uri}");
        }
        for host in ["h/x", "u@h", "h:99", "", "h x", "h?x"] {
            let t = lua.create_table().unwrap();
            t.set("host", host).unwrap();
            let err = connection_target(&t).unwrap_err().to_string();
            assert!(err.contains("is not a host name"), "{host}: {err}");
        }
    }

    #[test]
    fn publish_table_is_checked() {
        let lua = Lua::new();
        let t: Table = lua
            .load(r#"return {routing_key='k', payload='\0\255', properties={headers={a=1,b='x'}, delivery_mode=2}}"#)
            .eval()
            .unwrap();
        let p = Publish::from_table(&t, "t", &[]).unwrap();
        assert_eq!(p.payload, vec![0u8, 255]);
        assert_eq!(p.properties.delivery_mode(), &Some(2));
        let t: Table = lua
            .load("return {routing_key=string.rep('k', 256), payload=''}")
            .eval()
            .unwrap();
        assert!(Publish::from_table(&t, "t", &[]).is_err());
        let t: Table = lua.load("return {routing_key='k'}").eval().unwrap();
        let err = Publish::from_table(&t, "t", &[]).unwrap_err().to_string();
        assert!(err.contains("'payload' is required"), "{err}");
    }

    #[test]
    fn publish_table_errors_name_the_part_and_key() {
        let lua = Lua::new();
        let cases = [
            ("{routing_key='k', payload='', rk=1}", "t: unknown key 'rk'"),
            (
                "{routing_key='k', payload='', [1]=2}",
                "t: unknown key 'Integer(1)'",
            ),
            (
                "{routing_key='k', [true]=1, payload=''}",
                "t: unknown key 'Boolean(true)'",
            ),
            (
                "{routing_key='k', payload='', options={mandatry=true}}",
                "t options: unknown key 'mandatry'",
            ),
            (
                "{routing_key='k', payload='', properties={mesage_id='x'}}",
                "t properties: unknown key 'mesage_id'",
            ),
            (
                "{routing_key='k', payload='', properties={delivery_mode='2'}}",
                "t properties: 'delivery_mode' must be an integer, not string",
            ),
            (
                "{routing_key='k', payload='', properties={priority=300}}",
                "t properties: 'priority' = 300 is out of range",
            ),
            (
                "{routing_key='k', payload='', options={mandatory='yes'}}",
                "t options: 'mandatory' must be a boolean, not string",
            ),
            (
                "{routing_key='k', payload={}}",
                "t: 'payload' must be a string, not table",
            ),
            (
                "{routing_key='k', payload='', properties={headers={x={}}}}",
                "header 'x': a table cannot be an AMQP header value",
            ),
        ];
        for (src, want) in cases {
            let t: Table = lua.load(format!("return {src}")).eval().unwrap();
            let err = Publish::from_table(&t, "t", &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{src}: {err}");
        }
        let t: Table = lua
            .load("return {routing_key='k', payload='p', connection={}, options={mandatory=true}, properties={priority=9.0, app_id=7}}")
            .eval()
            .unwrap();
        let p = Publish::from_table(&t, "t", &["connection"]).unwrap();
        assert!(p.options.mandatory);
        assert_eq!(p.properties.priority(), &Some(9));
        assert_eq!(
            p.properties.app_id().as_ref().map(|s| s.as_str()),
            Some("7")
        );
    }

    #[test]
    fn flags_and_properties_may_also_be_top_level_keys() {
        let lua = Lua::new();
        let t: Table = lua
            .load("return {routing_key='k', payload='p', mandatory=true, app_id='relay', content_type='text/plain', headers={x='1'}}")
            .eval()
            .unwrap();
        let p = Publish::from_table(&t, "t", &[]).unwrap();
        assert!(p.options.mandatory && !p.options.immediate);
        assert_eq!(
            p.properties.app_id().as_ref().map(|s| s.as_str()),
            Some("relay")
        );
        assert_eq!(
            p.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        assert!(p.properties.headers().is_some());
        for (src, want) in [
            (
                "{routing_key='k', payload='p', mandatory=true, options={immediate=true}}",
                "give [\"mandatory\"] either at the top level",
            ),
            (
                "{routing_key='k', payload='p', app_id='a', properties={priority=1}}",
                "give [\"app_id\"] either at the top level",
            ),
            (
                "{routing_key='k', payload='p', mandatory='yes'}",
                "t: 'mandatory' must be a boolean",
            ),
        ] {
            let t: Table = lua.load(format!("return {src}")).eval().unwrap();
            let err = Publish::from_table(&t, "t", &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{src}: {err}");
        }
    }
}
