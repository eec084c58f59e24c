//! The relay's adapter to the Kubernetes API: the routes (the policy
//! ConfigMap and the routes Secret) read through the API, so the engine sees
//! only files of its overlay and "this source has been read". The kubelet
//! takes a minute or two to update a mounted ConfigMap or Secret; a watch
//! sees the change at once. When the API does not answer at all (control
//! plane down, RBAC broken) the kubelet's mounted copies are served after a
//! bounded wait instead, until the API answers.
//! The policy ConfigMap's keys become Lua files of its mount directory, the
//! routes Secret's keys secret files of its own, in the policy's overlay,
//! ahead of the disk; a change reloads the policy (new credentials make a
//! new version too, so sessions reconnect with them).

use crate::engine::Engine;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The policy ConfigMap, a source of the routes.
pub const CONFIGMAP: u8 = 1;
/// The routes Secret, the other.
pub const SECRET: u8 = 2;

/// One object to watch, and the directory it is (or would be) mounted at.
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub dir: PathBuf,
}

impl Target {
    /// `flag` names the option in the error.
    pub fn parse(flag: &str, spec: &str, dir: PathBuf) -> Result<Target, String> {
        match spec.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Target {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    dir,
                })
            }
            _ => Err(format!("{flag} {spec:?}: expected NAMESPACE/NAME")),
        }
    }
}

/// What a watched object contributes to the overlay.
pub trait Source:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const WHAT: &'static str;
    /// Its bit among the sources the routes wait for.
    const BIT: u8;
    /// Puts the object's keys under `dir`; whether anything changed.
    fn apply(self, engine: &Engine, dir: &Path) -> bool;
}

impl Source for ConfigMap {
    const WHAT: &'static str = "policy ConfigMap";
    const BIT: u8 = CONFIGMAP;
    fn apply(self, engine: &Engine, dir: &Path) -> bool {
        let files: HashMap<PathBuf, String> = self
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (dir.join(k), v))
            .collect();
        engine.policy().overlay().set_files(dir, files)
    }
}

impl Source for Secret {
    const WHAT: &'static str = "routes Secret";
    const BIT: u8 = SECRET;
    fn apply(self, engine: &Engine, dir: &Path) -> bool {
        let secrets: HashMap<PathBuf, Vec<u8>> = self
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (dir.join(k), v.0))
            .collect();
        engine.policy().overlay().set_secrets(dir, secrets)
    }
}

/// The object's keys go into the overlay; the policy reloads if that changed
/// anything. This source counts as read once a version with it runs.
async fn apply<K: Source>(engine: &Arc<Engine>, target: &Target, obj: K) {
    let loaded = if obj.apply(engine, &target.dir) {
        engine.reload().await.map(|_| ())
    } else {
        Ok(())
    };
    match loaded {
        Ok(()) => {
            engine.routes_read(K::BIT);
            engine.routes_via_api(K::BIT);
        }
        Err(error) if !engine.routes_ready() => {
            tracing::error!(%error, "the policy with the {} does not load; holding mail until a version that does arrives", K::WHAT)
        }
        Err(_) => {}
    }
}

fn spawn<K: Source>(engine: Arc<Engine>, target: Target) {
    tokio::spawn(async move {
        let client = loop {
            match Client::try_default().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "{} watch: no Kubernetes client yet; holding mail and trying again in 5 s", K::WHAT);
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        };
        let api: Api<K> = Api::namespaced(client, &target.namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
        let mut events = watcher(api, cfg).default_backoff().boxed();
        tracing::info!(namespace = %target.namespace, name = %target.name, "watching the {}", K::WHAT);
        while let Some(ev) = events.next().await {
            if matches!(
                ev,
                Ok(watcher::Event::InitApply(_) | watcher::Event::InitDone)
            ) {
                engine.routes.answered(K::BIT);
            }
            let obj = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::Delete(_)) => {
                    // The operator never deletes it; keep serving what was read.
                    tracing::warn!(namespace = %target.namespace, name = %target.name, "the {} was deleted; keeping what was read last", K::WHAT);
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if !engine.routes_ready() {
                        tracing::warn!(namespace = %target.namespace, name = %target.name, "the {} does not exist yet (or is not readable); holding mail until it does", K::WHAT);
                    }
                    continue;
                }
                Ok(watcher::Event::Init) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "{} watch error (retrying)", K::WHAT);
                    continue;
                }
            };
            apply(&engine, &target, obj).await;
        }
    });
}

/// With --policy-configmap (and --routes-secret), nothing is delivered or
/// accepted until those have been read.
/// Where the routes are read from: the relay's `--policy-configmap`,
/// `--routes-secret` and related flags.
pub struct Settings<'a> {
    /// `NAMESPACE/NAME`s.
    pub policy_configmap: Option<&'a str>,
    pub routes_secret: Option<&'a str>,
    /// Where the kubelet mounts them.
    pub policy_configmap_dir: PathBuf,
    pub routes_secret_dir: PathBuf,
    /// How long to wait for an API that does not answer before serving the
    /// mounts; zero: never.
    pub api_wait_timeout: Duration,
}

pub fn watch_routes(engine: &Arc<Engine>, args: Settings<'_>) -> anyhow::Result<()> {
    let configmap = args
        .policy_configmap
        .map(|spec| {
            Target::parse(
                "--policy-configmap",
                spec,
                args.policy_configmap_dir.clone(),
            )
        })
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let secret = args
        .routes_secret
        .map(|spec| Target::parse("--routes-secret", spec, args.routes_secret_dir.clone()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut named = Vec::new();
    if configmap.is_some() {
        named.push((CONFIGMAP, ConfigMap::WHAT));
    }
    if secret.is_some() {
        named.push((SECRET, Secret::WHAT));
    }
    engine.wait_for_routes(&named);
    let sources = named.iter().fold(0, |all, (bit, _)| all | bit);
    if sources != 0 && !args.api_wait_timeout.is_zero() {
        let mounts = [
            (CONFIGMAP, args.policy_configmap_dir.clone()),
            (SECRET, args.routes_secret_dir.clone()),
        ];
        tokio::spawn(serve_mounts_without_api(
            engine.clone(),
            sources,
            mounts,
            args.api_wait_timeout,
        ));
    }
    if let Some(t) = secret {
        spawn::<Secret>(engine.clone(), t);
    }
    if let Some(t) = configmap {
        spawn::<ConfigMap>(engine.clone(), t);
    }
    Ok(())
}

/// Every `wait`, while a source is unread and the API has not answered for
/// it, serves it from its mounted copy if the kubelet mounted one (an empty
/// mount means the object does not exist: mail keeps waiting).
async fn serve_mounts_without_api(
    engine: Arc<Engine>,
    sources: u8,
    mounts: [(u8, PathBuf); 2],
    wait: Duration,
) {
    loop {
        tokio::time::sleep(wait).await;
        let unanswered = engine.routes.unanswered(sources);
        if engine.routes_ready() || engine.is_shutting_down() {
            return;
        }
        let mut serve = 0;
        for (bit, dir) in &mounts {
            if unanswered & bit == 0 {
                continue;
            }
            if holds_files(dir) {
                serve |= bit;
            } else {
                tracing::warn!(dir = %dir.display(), source = ?engine.routes.names(*bit),
                    "the Kubernetes API has not answered and nothing is mounted: holding mail");
            }
        }
        if serve != 0 {
            tracing::warn!(sources = ?engine.routes.names(serve), ?wait,
                "the Kubernetes API has not answered: serving the mounted copies until it does");
            engine.serve_mounted_routes(serve);
        }
    }
}

/// A mounted ConfigMap or Secret has a file per key (the kubelet's own
/// entries start with `..`); an optional one whose object does not exist is empty.
fn holds_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with(".."))
    })
}
