//! The events the engine and the listeners fire into the policy, typed.

use super::*;

impl Policy {
    /// Whether the policy registered a handler for `event` when it loaded.
    pub fn defines(&self, event: &str) -> bool {
        self.events.contains(event)
    }

    /// Runs `pre_init` and `init` in a state of their own and returns what they
    /// configured (`has_init` says whether the policy defines `init`).
    pub async fn run_init(&self) -> Result<InitConfig, PolicyError> {
        let cfg = Arc::new(Mutex::new(InitConfig::default()));
        let lua = self.new_state(Some(cfg.clone()))?;
        let has_init = events::defined(&lua, events::INIT.name);
        events::call(&lua, &events::PRE_INIT, ()).await?;
        events::call(&lua, &events::INIT, ()).await?;
        let mut out = cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.has_init = has_init;
        if has_init && out.http_listeners.is_empty() && out.esmtp_listeners.is_empty() {
            // A relay nobody can reach; KumoMTA would run, but silently useless.
            return Err(PolicyError::Event {
                event: "init".into(),
                message: "init starts no listener: call kumo.start_http_listener or kumo.start_esmtp_listener".into(),
            });
        }
        Ok(out)
    }

    /// Calls `event` on a pooled state, if the policy handles it.
    async fn call<A, R>(
        self: &Arc<Self>,
        event: &events::Event<A, R>,
        args: A,
    ) -> Result<Option<R>, PolicyError>
    where
        A: mlua::IntoLuaMulti + Clone,
        R: events::Answer,
    {
        if !self.defines(event.name) {
            return Ok(None);
        }
        let lua = self.acquire()?;
        events::call(&lua, event, args).await
    }

    /// `get_queue_config(domain, tenant, campaign, routing_domain)`; none
    /// answering means KumoMTA's default (SMTP).
    pub async fn queue_config(self: &Arc<Self>, q: &QueueName) -> Result<QueueConfig, PolicyError> {
        let args = (
            q.domain.clone(),
            q.tenant.clone(),
            q.campaign.clone(),
            q.routing_domain.clone(),
        );
        Ok(self
            .call(&events::GET_QUEUE_CONFIG, args)
            .await?
            .unwrap_or_default())
    }

    /// `get_egress_path_config(routing_domain, egress_source, site_name)`.
    pub async fn egress_path_config(
        self: &Arc<Self>,
        q: &QueueName,
    ) -> Result<EgressPathConfig, PolicyError> {
        let domain = q.routing_domain.as_deref().unwrap_or(&q.domain).to_owned();
        let args = (domain, "unspecified".to_owned(), q.to_string());
        Ok(self
            .call(&events::GET_EGRESS_PATH_CONFIG, args)
            .await?
            .unwrap_or_default())
    }

    /// Asks the queue and egress path handlers about a domain no policy
    /// routes and about `queues`, so a handler that builds a configuration
    /// `kumo.make_*` refuses (`make_egress_path { enable_tls = … }`) fails
    /// the load, not the first message. Other errors (a handler that raises
    /// for domains it does not know) are the handler's business.
    pub async fn probe(self: &Arc<Self>, queues: &[QueueName]) -> Result<(), PolicyError> {
        let probe = QueueName::new(PROBE_DOMAIN, None, None, None);
        for q in std::iter::once(&probe).chain(queues) {
            let found = match self.queue_config(q).await {
                Err(e @ PolicyError::BadConfig { .. }) => Some(e),
                _ => match self.egress_path_config(q).await {
                    Err(e @ PolicyError::BadConfig { .. }) => Some(e),
                    _ => None,
                },
            };
            if let Some(PolicyError::BadConfig { event, message }) = found {
                return Err(PolicyError::BadConfig {
                    event,
                    message: format!("{message} (asked about queue {q} at load)"),
                });
            }
        }
        Ok(())
    }

    /// Runs a reception hook ([`events::HTTP_MESSAGE_GENERATED`],
    /// [`events::SMTP_SERVER_MESSAGE_RECEIVED`]) on a message before it is
    /// spooled; `kumo.reject` there refuses it.
    pub async fn message_hook(
        self: &Arc<Self>,
        event: &events::Event<(MessageUd,), ()>,
        msg: &MessageRef,
    ) -> Result<(), PolicyError> {
        self.call(event, (MessageUd(msg.clone()),)).await?;
        Ok(())
    }
}

/// What an authentication event said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// The policy has no handler for the event.
    NoHandler,
    Allow,
    Deny,
}

impl Policy {
    /// A KumoMTA auth event: `true` allows, `false` denies; anything else
    /// (nil included) is an error.
    async fn auth_event<A: mlua::IntoLuaMulti + Clone>(
        self: &Arc<Self>,
        event: &events::Event<A, bool>,
        args: A,
    ) -> Result<AuthVerdict, PolicyError> {
        if !self.defines(event.name) {
            return Ok(AuthVerdict::NoHandler);
        }
        match self.call(event, args).await? {
            Some(true) => Ok(AuthVerdict::Allow),
            Some(false) => Ok(AuthVerdict::Deny),
            None => Err(PolicyError::Event {
                event: event.name.into(),
                message: "the handler returned a nil; expected a boolean".into(),
            }),
        }
    }

    /// `http_server_validate_auth_basic(user, password)`.
    pub async fn http_auth_basic(
        self: &Arc<Self>,
        user: &str,
        password: &str,
    ) -> Result<AuthVerdict, PolicyError> {
        let args = (user.to_owned(), password.to_owned());
        self.auth_event(&events::HTTP_SERVER_VALIDATE_AUTH_BASIC, args)
            .await
    }

    /// `smtp_server_auth_plain(authz, authc, password, conn_meta)`.
    pub async fn smtp_auth_plain(
        self: &Arc<Self>,
        authz: &str,
        authc: &str,
        password: &str,
        conn_meta: &conn_meta::ConnMeta,
    ) -> Result<AuthVerdict, PolicyError> {
        let args = (
            authz.to_owned(),
            authc.to_owned(),
            password.to_owned(),
            conn_meta.clone(),
        );
        self.auth_event(&events::SMTP_SERVER_AUTH_PLAIN, args).await
    }

    /// `get_listener_domain(domain, listener, conn_meta)`; `None` when the
    /// policy has no handler or it answers nil.
    pub async fn listener_domain(
        self: &Arc<Self>,
        domain: &str,
        listener: &str,
        conn_meta: &conn_meta::ConnMeta,
    ) -> Result<Option<ListenerDomain>, PolicyError> {
        let args = (domain.to_owned(), listener.to_owned(), conn_meta.clone());
        self.call(&events::GET_LISTENER_DOMAIN, args).await
    }

    /// `should_enqueue_log_record(msg, hook_name)`: the first non-nil answer wins; none means no.
    pub async fn should_enqueue_log_record(
        self: &Arc<Self>,
        msg: &MessageRef,
        hook: &str,
    ) -> Result<bool, PolicyError> {
        let args = (MessageUd(msg.clone()), hook.to_owned());
        Ok(self
            .call(&events::SHOULD_ENQUEUE_LOG_RECORD, args)
            .await?
            .unwrap_or(false))
    }
}
