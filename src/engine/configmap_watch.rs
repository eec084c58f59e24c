//! Reload from the policy ConfigMap through the Kubernetes API: the kubelet
//! takes a minute or two to update a mounted ConfigMap; a watch sees the
//! change at once. The ConfigMap's keys become the files of its mount
//! directory in the policy's overlay, ahead of the disk.

use super::Engine;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Target {
    pub namespace: String,
    pub name: String,
    /// Where the same ConfigMap is mounted.
    pub dir: PathBuf,
}

impl Target {
    pub fn parse(spec: &str, dir: PathBuf) -> Result<Target, String> {
        match spec.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Target {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    dir,
                })
            }
            _ => Err(format!(
                "--policy-configmap {spec:?}: expected NAMESPACE/NAME"
            )),
        }
    }
}

/// The ConfigMap's keys become files of its mount directory in the overlay;
/// the policy reloads if that changed anything. The routes count as read once
/// a version from the ConfigMap runs.
async fn apply(
    engine: &Arc<Engine>,
    target: &Target,
    data: std::collections::BTreeMap<String, String>,
) {
    let files: HashMap<PathBuf, String> = data
        .into_iter()
        .map(|(k, v)| (target.dir.join(k), v))
        .collect();
    let overlay = engine.policy().overlay();
    let changed = {
        let mut o = overlay.lock().unwrap_or_else(|e| e.into_inner());
        let before = o.clone();
        o.retain(|p, _| !p.starts_with(&target.dir));
        o.extend(files);
        *o != before
    };
    let loaded = if changed {
        engine.reload().await.map(|_| ())
    } else {
        Ok(())
    };
    match loaded {
        Ok(()) => engine.set_routes_ready(true),
        Err(error) if !engine.routes_ready() => {
            tracing::error!(%error, "the policy from the ConfigMap does not load; holding mail until a version that does arrives")
        }
        Err(_) => {}
    }
}

pub fn spawn(engine: Arc<Engine>, target: Target) {
    tokio::spawn(async move {
        let client = loop {
            match Client::try_default().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "policy ConfigMap watch: no Kubernetes client yet; holding mail and trying again in 5 s");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        };
        let api: Api<ConfigMap> = Api::namespaced(client, &target.namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", target.name));
        let mut events = watcher(api, cfg).default_backoff().boxed();
        tracing::info!(namespace = %target.namespace, name = %target.name, "watching the policy ConfigMap");
        while let Some(ev) = events.next().await {
            let data = match ev {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    cm.data.unwrap_or_default()
                }
                Ok(watcher::Event::Delete(_)) => {
                    // The operator never deletes it; keep serving what was read.
                    tracing::warn!(namespace = %target.namespace, name = %target.name, "the policy ConfigMap was deleted; keeping the routes read last");
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    if !engine.routes_ready() {
                        tracing::warn!(namespace = %target.namespace, name = %target.name, "the policy ConfigMap does not exist yet; holding mail until it does");
                    }
                    continue;
                }
                Ok(watcher::Event::Init) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "policy ConfigMap watch error (retrying)");
                    continue;
                }
            };
            apply(&engine, &target, data).await;
        }
    });
}
