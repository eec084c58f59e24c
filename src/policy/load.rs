//! Loading a policy version: reading and running the main file, the
//! modules it may `require` (snapshotted), the bundled helpers, and a fresh
//! Lua state with the `kumo` module.

use super::*;

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

/// Coroutines kept per Lua state for async calls (a state runs one call at
/// a time; nested awaits need none).
const THREAD_POOL: usize = 4;

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
        policy.hash = crate::model::digest::plain(&all);
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

    fn load_err(&self, e: &mlua::Error) -> PolicyError {
        PolicyError::Load {
            path: self.path.display().to_string(),
            message: describe(e),
        }
    }

    pub(super) fn new_state(
        &self,
        init: Option<Arc<Mutex<InitConfig>>>,
    ) -> Result<Lua, PolicyError> {
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
        self.install_modules(&lua).map_err(|e| self.load_err(&e))?;
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

    /// `kumo` as a global and a module, `require` on the policy's directory
    /// (snapshotted, overlay first, no native modules), the bundled helpers,
    /// and KumoMTA's others refused by name.
    fn install_modules(&self, lua: &Lua) -> mlua::Result<()> {
        let kumo = kumo::register(lua)?;
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
            module_searcher(lua, self.modules.clone(), self.overlay.clone())?,
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
