//! The Lua policy: loading, a pool of ready Lua states, and the events the
//! engine fires into it.

mod call_limit;
mod config_ud;
pub mod conn_meta;
pub mod delivery;
pub mod events;
pub mod kumo;
pub mod message_ud;
pub mod overlay;
pub mod reject;
pub use kumo::mod_amqp as amqp;
pub use kumo::{TimerLabel, USER_LUA_LATENCY};
mod place;
mod unsupported;

use crate::model::config::{EgressPathConfig, QueueConfig};
use crate::model::listener_config::ListenerDomain;
use crate::model::message::MessageRef;
use crate::model::queue_name::QueueName;
use amqp::AmqpPool;
use kumo::{InitConfig, StateCtx};
use message_ud::MessageUd;
use mlua::{Lua, Value};
use reject::{Rejection, describe, find_rejection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// KumoMTA's bundled helpers this relay does not ship, and why.
const NOT_BUNDLED: &[(&str, &str)] = &[
    (
        "policy-extras.shaping",
        "traffic shaping is for SMTP delivery, which this relay does not do",
    ),
    (
        "policy-extras.sources",
        "egress sources are for SMTP delivery, which this relay does not do",
    ),
    ("policy-extras.dkim_sign", "DKIM signing is out of scope"),
];

/// KumoMTA's helpers this relay ships, written to behave as KumoMTA's do.
const BUNDLED: &[(&str, &str)] = &[
    ("policy-extras.log_hooks", include_str!("log_hooks.lua")),
    ("policy-extras.queue", include_str!("queue_helper.lua")),
    (
        "policy-extras.listener_domains",
        include_str!("listener_domains.lua"),
    ),
];

/// States kept for reuse; more are created on demand and dropped when surplus.
const POOL_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {path}: {message}")]
    Load { path: String, message: String },
    #[error("event '{event}': {message}")]
    Event { event: String, message: String },
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// A handler built a configuration `kumo.make_*` refuses.
    #[error("event '{event}': {message}")]
    BadConfig { event: String, message: String },
}

impl PolicyError {
    fn event(event: &str, err: mlua::Error) -> PolicyError {
        match find_rejection(&err) {
            Some(r) => PolicyError::Rejected(r),
            None if reject::is_bad_config(&err) => PolicyError::BadConfig {
                event: event.to_owned(),
                message: describe(&err),
            },
            None => PolicyError::Event {
                event: event.to_owned(),
                message: describe(&err),
            },
        }
    }
}

/// The domain [`Policy::probe`] asks about: reserved (RFC 2606), so no
/// policy routes real mail to it.
pub const PROBE_DOMAIN: &str = "probe.amqp-relay.invalid";

/// One loaded version of the policy.
pub struct Policy {
    path: PathBuf,
    source: String,
    /// Of the main file and every module it required at load.
    hash: String,
    amqp: Arc<AmqpPool>,
    pool: Mutex<Vec<Lua>>,
    modules: Modules,
    overlay: Overlay,
    loaded_at: std::time::SystemTime,
    /// Events with handlers, as the main chunk registered them: an event
    /// without one costs no Lua state per message.
    events: std::collections::HashSet<String>,
}

/// The Lua modules a policy version is made of, path → source, captured the
/// first time each is required: every state of one version runs the same code
/// even while the files change underneath (a reload makes a new version).
type Modules = Arc<Mutex<BTreeMap<PathBuf, String>>>;

pub use overlay::Overlay;

/// A Lua state borrowed from the pool; it goes back on drop unless discarded.
pub struct PooledState {
    lua: Option<Lua>,
    policy: Arc<Policy>,
}

impl std::ops::Deref for PooledState {
    type Target = Lua;
    fn deref(&self) -> &Lua {
        self.lua.as_ref().expect("present until drop or discard")
    }
}

/// Coroutines kept per Lua state for async calls (a state runs one call at
/// a time; nested awaits need none).
const THREAD_POOL: usize = 4;

/// How long any one event handler may run.
pub const EVENT_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl PooledState {
    /// Lua running in this state past `limit` from now is stopped with an error.
    pub fn limit(&self, limit: Option<std::time::Duration>) {
        if let Some(ctx) = self.app_data_ref::<StateCtx>() {
            ctx.limit.start(limit);
        }
    }

    /// Drops the state instead of reusing it (after a timeout or an error
    /// that may have left it half-way through something).
    pub fn discard(mut self) {
        self.lua = None;
    }
}

impl Drop for PooledState {
    fn drop(&mut self) {
        if let Some(lua) = self.lua.take() {
            let mut pool = self.policy.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(lua);
            }
        }
    }
}

impl Policy {
    /// Reads and runs the policy once; any error names the file and line.
    pub fn load(path: &Path, amqp: Arc<AmqpPool>) -> Result<Arc<Policy>, PolicyError> {
        Self::load_with(path, amqp, Overlay::default())
    }

    pub fn load_with(
        path: &Path,
        amqp: Arc<AmqpPool>,
        overlay: Overlay,
    ) -> Result<Arc<Policy>, PolicyError> {
        let cached = overlay.file(path);
        let source = match cached {
            Some(s) => s,
            None => std::fs::read_to_string(path).map_err(|e| PolicyError::Load {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
        };
        let mut policy = Policy {
            path: path.to_owned(),
            source,
            hash: String::new(),
            amqp,
            pool: Mutex::new(Vec::new()),
            modules: Modules::default(),
            overlay,
            loaded_at: std::time::SystemTime::now(),
            events: Default::default(),
        };
        unsupported::scan(&path.display().to_string(), &policy.source).map_err(|message| {
            PolicyError::Load {
                path: path.display().to_string(),
                message,
            }
        })?;
        let first = policy.new_state(None)?;
        Self::scan_kumo_refs(&first, &path.display().to_string(), &policy.source).map_err(
            |message| PolicyError::Load {
                path: path.display().to_string(),
                message,
            },
        )?;
        policy.snapshot_modules(&first);
        policy.events = events::names(&first).map_err(|e| policy.load_err(&e))?;
        let mut all = policy.source.clone().into_bytes();
        for (p, text) in policy
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            all.extend_from_slice(p.to_string_lossy().as_bytes());
            all.push(0);
            all.extend_from_slice(text.as_bytes());
            all.push(0);
        }
        if let Some(secrets) = policy.overlay.secrets_hash() {
            all.extend_from_slice(secrets.as_bytes());
        }
        policy.hash = content_hash(&all);
        policy
            .pool
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .push(first);
        // A new version: memoized results asked to follow it start afresh.
        kumo::mod_memoize::EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Arc::new(policy))
    }

    /// Refuses at load a `kumo.*` function the relay lacks, instead of when a
    /// handler first reaches it.
    fn scan_kumo_refs(lua: &Lua, file: &str, source: &str) -> Result<(), String> {
        let Ok(kumo) = lua.globals().raw_get::<mlua::Table>("kumo") else {
            return Ok(());
        };
        let provided = |name: &str, sub: Option<&str>| match kumo.raw_get::<Value>(name) {
            Ok(Value::Nil) | Err(_) => false,
            Ok(Value::Table(module)) => {
                sub.is_none_or(|s| !matches!(module.raw_get::<Value>(s), Ok(Value::Nil) | Err(_)))
            }
            Ok(_) => true,
        };
        unsupported::scan_kumo(file, source, &provided)
    }

    /// Captures every module this version could `require` later (the Lua
    /// files in the directories on `package.path`, the overlay's first), so
    /// a module first required inside a handler runs the code this version
    /// reported, not whatever is on disk by then.
    fn snapshot_modules(&self, lua: &Lua) {
        let search: String = lua
            .globals()
            .get::<mlua::Table>("package")
            .and_then(|p| p.get("path"))
            .unwrap_or_default();
        let overlay = self.overlay.files();
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let mut budget = SNAPSHOT_FILES;
        for root in module_roots(&search) {
            for (path, text) in &overlay {
                if path.starts_with(&root) && path.extension().is_some_and(|x| x == "lua") {
                    modules.entry(path.clone()).or_insert_with(|| text.clone());
                }
            }
            collect_lua_files(&root, SNAPSHOT_DEPTH, &mut budget, &mut |path, text| {
                if path != self.path {
                    modules.entry(path).or_insert(text);
                }
            });
        }
        if budget == 0 {
            tracing::warn!(policy = %self.path.display(), "more than {SNAPSHOT_FILES} Lua files on package.path; the rest are captured when first required");
        }
    }

    /// Directories this version reads from: its own, its modules', and those on `package.path`.
    pub fn watch_dirs(self: &Arc<Self>) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut add = |p: &Path| {
            if p.is_dir() && !dirs.iter().any(|d| d == p) {
                dirs.push(p.to_owned());
            }
        };
        if let Some(d) = self.path.parent() {
            add(d);
        }
        for p in self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
        {
            if let Some(d) = p.parent() {
                add(d);
            }
        }
        if let Ok(lua) = self.acquire()
            && let Ok(package) = lua.globals().get::<mlua::Table>("package")
            && let Ok(search) = package.get::<String>("path")
        {
            for t in search.split(';') {
                if let Some(d) = Path::new(t).parent() {
                    add(d);
                }
            }
        }
        dirs
    }

    pub fn amqp(&self) -> Arc<AmqpPool> {
        self.amqp.clone()
    }

    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.loaded_at
    }

    pub fn overlay(&self) -> Overlay {
        self.overlay.clone()
    }

    /// Every source file of this version with the hash of its content.
    pub fn files(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(
            self.path.display().to_string(),
            content_hash(self.source.as_bytes()),
        );
        for (p, text) in self
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.insert(p.display().to_string(), content_hash(text.as_bytes()));
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    fn load_err(&self, e: &mlua::Error) -> PolicyError {
        PolicyError::Load {
            path: self.path.display().to_string(),
            message: describe(e),
        }
    }

    fn new_state(&self, init: Option<Arc<Mutex<InitConfig>>>) -> Result<Lua, PolicyError> {
        // Each async call (a delivery's `send`, an event) runs on a coroutine;
        // reused ones spare creating and collecting one per message.
        let options = mlua::LuaOptions::new().thread_pool_size(THREAD_POOL);
        let lua = Lua::new_with(mlua::StdLib::ALL_SAFE, options).map_err(|e| self.load_err(&e))?;
        // Per-message garbage (argument tables, payload strings, confirms) dies
        // young: the generational collector spends less on it than incremental.
        lua.gc_set_mode(mlua::prelude::LuaGcMode::Generational(
            mlua::prelude::LuaGcGenParams::default(),
        ));
        lua.set_app_data(StateCtx {
            amqp: self.amqp.clone(),
            overlay: self.overlay.clone(),
            init,
            limit: call_limit::CallLimit::default(),
        });
        lua.set_global_hook(
            mlua::HookTriggers::new().every_nth_instruction(call_limit::HOOK_EVERY),
            |lua, _| match lua.app_data_ref::<StateCtx>() {
                Some(c) => c.limit.check(),
                None => Ok(mlua::VmState::Continue),
            },
        )
        .map_err(|e| self.load_err(&e))?;
        let setup = || -> mlua::Result<()> {
            let kumo = kumo::register(&lua)?;
            let package: mlua::Table = lua.globals().get("package")?;
            let loaded: mlua::Table = package.get("loaded")?;
            loaded.set("kumo", &kumo)?;
            lua.globals().set("kumo", kumo)?;
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let dir = dir.to_string_lossy().replace(';', "");
            package.set("path", format!("{dir}/?.lua;{dir}/?/init.lua"))?;
            // Native modules are not loaded into the relay.
            package.set("cpath", "")?;
            let searchers: mlua::Table = package.get("searchers")?;
            searchers.set(
                2,
                module_searcher(&lua, self.modules.clone(), self.overlay.clone())?,
            )?;
            // Bundled helpers KumoMTA policies `require`.
            let preload: mlua::Table = package.get("preload")?;
            // Compiled when required, not for every new state.
            for (name, source) in BUNDLED {
                preload.set(
                    *name,
                    lua.create_function(move |lua, args: mlua::MultiValue| {
                        lua.load(*source)
                            .set_name(format!("={name}"))
                            .call::<mlua::MultiValue>(args)
                    })?,
                )?;
            }
            // KumoMTA's other helpers: requiring one says it is not here
            // (and why), instead of "module not found".
            for (name, why) in NOT_BUNDLED {
                let message = format!("require '{name}': not provided by amqp-relay ({why})");
                preload.set(
                    *name,
                    lua.create_function(move |_, _: mlua::MultiValue| -> mlua::Result<()> {
                        Err(mlua::Error::runtime(message.clone()))
                    })?,
                )?;
            }
            Ok(())
        };
        setup().map_err(|e| self.load_err(&e))?;
        // '@' makes Lua report positions as "path:line:".
        let set_limit = |l: Option<std::time::Duration>| {
            if let Some(ctx) = lua.app_data_ref::<StateCtx>() {
                ctx.limit.start(l);
            }
        };
        set_limit(Some(EVENT_TIME_LIMIT));
        lua.load(&self.source)
            .set_name(format!("@{}", self.path.display()))
            .exec()
            .map_err(|e| self.load_err(&e))?;
        set_limit(None);
        Ok(lua)
    }

    pub fn acquire(self: &Arc<Self>) -> Result<PooledState, PolicyError> {
        let reused = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let lua = match reused {
            Some(l) => l,
            None => self.new_state(None)?,
        };
        let state = PooledState {
            lua: Some(lua),
            policy: self.clone(),
        };
        state.limit(Some(EVENT_TIME_LIMIT));
        Ok(state)
    }

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

/// Replaces Lua's file searcher: finds `require`d modules on `package.path`,
/// serving each version's snapshot first, then the overlay, then the disk.
fn module_searcher(lua: &Lua, modules: Modules, overlay: Overlay) -> mlua::Result<mlua::Function> {
    use mlua::IntoLuaMulti;
    lua.create_function(move |lua, name: String| {
        let package: mlua::Table = lua.globals().get("package")?;
        let search: String = package.get("path")?;
        let file = name.replace('.', "/");
        let mut tried = String::new();
        for template in search.split(';').filter(|t| !t.is_empty()) {
            let candidate = PathBuf::from(template.replace('?', &file));
            let known = modules
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&candidate)
                .cloned();
            let text = known.or_else(|| {
                overlay
                    .file(&candidate)
                    .or_else(|| std::fs::read_to_string(&candidate).ok())
            });
            match text {
                Some(text) => {
                    let chunk = lua
                        .load(text.as_str())
                        .set_name(format!("@{}", candidate.display()))
                        .into_function()?;
                    modules
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(candidate.clone())
                        .or_insert(text);
                    return (chunk, candidate.display().to_string()).into_lua_multi(lua);
                }
                None => tried.push_str(&format!("\n\tno file '{}'", candidate.display())),
            }
        }
        tried.into_lua_multi(lua)
    })
}

/// Bounds of the module snapshot taken at load.
const SNAPSHOT_FILES: usize = 512;
const SNAPSHOT_DEPTH: usize = 4;
const SNAPSHOT_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The directories `package.path` templates search (`/dir/?.lua` → `/dir`).
fn module_roots(search: &str) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for template in search.split(';') {
        let Some((before, _)) = template.split_once('?') else {
            continue;
        };
        let root = PathBuf::from(before.trim_end_matches('/'));
        if root.as_os_str().is_empty() || roots.contains(&root) {
            continue;
        }
        roots.push(root);
    }
    roots
}

/// Calls `found` with each `.lua` file under `dir` (readable, not too large),
/// `depth` levels deep, at most `budget` of them.
fn collect_lua_files(
    dir: &Path,
    depth: usize,
    budget: &mut usize,
    found: &mut dyn FnMut(PathBuf, String),
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if *budget == 0 {
            return;
        }
        let path = e.path();
        // Kubelet mounts keep their files behind `..data`; the visible names are links.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if meta.is_dir() && depth > 0 && !hidden {
            collect_lua_files(&path, depth - 1, budget, found);
        } else if meta.is_file()
            && path.extension().is_some_and(|x| x == "lua")
            && meta.len() <= SNAPSHOT_FILE_BYTES
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            *budget -= 1;
            found(path, text);
        }
    }
}

pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod extras_tests;
#[cfg(test)]
mod tests;
