//! The routes through the Kubernetes API: the kubelet takes a minute or two
//! to update a mounted ConfigMap or Secret; a watch sees the change at once.
//! The policy ConfigMap's keys become Lua files of its mount directory, the
//! routes Secret's keys secret files of its own, in the policy's overlay,
//! ahead of the disk; a change reloads the policy (new credentials make a
//! new version too, so sessions reconnect with them).

use super::Engine;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    const BIT: u8 = super::ROUTES_CONFIGMAP;
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
    const BIT: u8 = super::ROUTES_SECRET;
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

pub fn spawn<K: Source>(engine: Arc<Engine>, target: Target) {
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
