//! Hot reload: a new policy version is loaded beside the running one; only if
//! it loads does it replace it (a new config epoch). Queues then re-evaluate
//! `get_queue_config`, running sessions finish their current call on the old
//! version and end, and new sessions use the new one. Nothing queued is
//! touched, so nothing is lost.

use super::Engine;
use super::queue::QueueSettings;
use crate::model::config::Protocol;
use crate::policy::Policy;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadError {
    pub error: String,
    /// Unix seconds.
    pub at: u64,
    /// Source files of the version that failed, with their content hashes.
    pub files: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct PolicyReport {
    pub path: String,
    pub hash: String,
    pub epoch: u64,
    pub loaded_at: u64,
    pub files: std::collections::BTreeMap<String, String>,
    pub last_error: Option<ReloadError>,
    /// Keyed digests of the watched routes Secret's keys (absent when none is watched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<std::collections::BTreeMap<String, String>>,
    /// Sources of the routes served from their mounted copies because the
    /// Kubernetes API has not answered (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes_from_mount: Vec<&'static str>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Hashes of the files a failed load read, so the operator can tell whose
/// routes were rejected; the loader does not keep them, so read them again.
fn files_of(
    policy_path: &std::path::Path,
    overlay: &crate::policy::Overlay,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let dir = policy_path.parent().map(|d| d.to_path_buf());
    for (p, text) in overlay.files() {
        out.insert(
            p.display().to_string(),
            crate::model::digest::plain(text.as_bytes()),
        );
    }
    if let Some(dir) = dir
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "lua")
                && let Ok(text) = std::fs::read(&p)
            {
                out.entry(p.display().to_string())
                    .or_insert_with(|| crate::model::digest::plain(&text));
            }
        }
    }
    out
}

impl Engine {
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn policy_report(&self) -> PolicyReport {
        let p = self.policy();
        PolicyReport {
            path: p.path().display().to_string(),
            hash: p.hash().to_owned(),
            epoch: self.epoch(),
            loaded_at: unix(p.loaded_at()),
            files: p.files(),
            last_error: self
                .reload_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            secrets: p.overlay().secret_digests(),
            routes_from_mount: self.routes.names(self.routes.from_mount()),
        }
    }

    /// Loads the policy again; swaps it in if it loads and differs.
    /// `Ok(true)` when a new epoch began.
    pub async fn reload(self: &Arc<Self>) -> Result<bool, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.policy();
        let next = Policy::load_with(current.path(), current.amqp(), current.overlay())
            .map_err(|e| self.reload_failed(&current, e.to_string()))?;
        if next.hash() != current.hash() {
            // A bad make_* configuration for a live queue keeps the running
            // policy, as a file that does not load does.
            let live: Vec<_> = self.queues().iter().map(|q| q.name.clone()).collect();
            next.probe(&live)
                .await
                .map_err(|e| self.reload_failed(&current, e.to_string()))?;
        }
        // The files load again (a bad change reverted): the old error is history.
        *self.reload_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if next.hash() == current.hash() {
            return Ok(false);
        }
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.reloads.inc();
        self.metrics.epoch.set(epoch as i64);
        tracing::info!(epoch, hash = %next.hash(), "policy reloaded");
        self.reevaluate_queues(&next).await;
        Ok(true)
    }

    /// Records why a reload was refused; the running policy stays.
    fn reload_failed(&self, current: &Policy, error: String) -> String {
        self.metrics.reload_failures.inc();
        tracing::error!(%error, "policy reload failed; the running policy stays");
        *self.reload_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadError {
            error: error.clone(),
            at: unix(SystemTime::now()),
            files: files_of(current.path(), &current.overlay()),
        });
        error
    }

    /// Queues the new policy routes take its settings; those it does not
    /// (or whose config fails) are closed and their waiting messages held on
    /// the schedule. Held queues are asked about again.
    async fn reevaluate_queues(self: &Arc<Self>, policy: &Arc<Policy>) {
        for q in self.queues() {
            let config = policy.queue_config(&q.name).await;
            let egress = policy.egress_path_config(&q.name).await;
            let refusal = match (config, egress) {
                (Ok(config), Ok(egress)) => match config.protocol.clone() {
                    Protocol::CustomLua(custom) => {
                        let next = QueueSettings::new(config, custom, egress);
                        if !next.same_as(&q.settings()) {
                            q.set_settings(next);
                        }
                        super::dispatcher::ensure_sessions(self, &q);
                        continue;
                    }
                    Protocol::Smtp => super::unrouted(&q.label),
                },
                (Err(e), _) | (_, Err(e)) => {
                    super::Refusal::policy(e, Some(&format!("queue {}", q.label)))
                }
            };
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&q.label);
            self.held.hold(&q.label, refusal);
            for m in q.close() {
                q.done(1);
                m.drop_uncharged_body();
                self.unload(&q.label, &m);
            }
        }
        self.held.clear();
        self.wake_pager();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::spool::Spool;
    use crate::engine::{Limits, logs::Logs};
    use crate::policy::amqp::AmqpPool;

    #[tokio::test]
    async fn a_reverted_bad_change_clears_the_reported_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.lua");
        let good = "kumo.on('get_queue_config', function() return nil end)\n";
        std::fs::write(&path, good).unwrap();
        let policy = Policy::load(&path, Arc::new(AmqpPool::default())).unwrap();
        let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
        let engine = Engine::new(spool, policy, Logs::default(), Limits::default());

        std::fs::write(&path, "this is not lua").unwrap();
        assert!(engine.reload().await.is_err());
        assert!(engine.policy_report().last_error.is_some());

        std::fs::write(&path, good).unwrap();
        assert_eq!(
            engine.reload().await,
            Ok(false),
            "same content as the running version"
        );
        assert!(
            engine.policy_report().last_error.is_none(),
            "the error of the reverted version is still reported"
        );
    }

    /// A change whose `kumo.make_*` call is refused for a live queue is
    /// refused as a whole: the running policy keeps delivering that queue.
    #[tokio::test]
    async fn a_bad_make_config_for_a_live_queue_keeps_the_running_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.lua");
        let with = |egress: &str| {
            format!(
                "kumo.on('get_queue_config', function(domain)\n\
                   if domain == 'amqp' then\n\
                     return kumo.make_queue_config {{ protocol = {{ custom_lua = {{ constructor = 'make.amqp' }} }} }}\n\
                   end\n\
                 end)\n\
                 kumo.on('get_egress_path_config', function(domain)\n\
                   if domain == 'amqp' then return kumo.make_egress_path {{ {egress} }} end\n\
                 end)\n\
                 kumo.on('make.amqp', function() return {{}} end)\n"
            )
        };
        std::fs::write(&path, with("connection_limit = 2")).unwrap();
        let policy = Policy::load(&path, Arc::new(AmqpPool::default())).unwrap();
        let (spool, _) = Spool::open(&dir.path().join("spool")).unwrap();
        let engine = Engine::new(spool, policy, Logs::default(), Limits::default());
        let amqp = crate::model::queue_name::QueueName::new("amqp", None, None, None);
        let q = engine.queue(&amqp).await.unwrap();
        let running = engine.policy().hash().to_owned();

        std::fs::write(&path, with("enable_tls = 'Required'")).unwrap();
        let err = engine.reload().await.unwrap_err();
        assert!(err.contains("enable_tls") && err.contains("amqp"), "{err}");
        assert_eq!(engine.policy().hash(), running, "the running policy stays");
        assert_eq!(q.settings().egress.connection_limit, 2);
        assert!(engine.policy_report().last_error.is_some());

        std::fs::write(&path, with("connection_limit = 3")).unwrap();
        assert_eq!(engine.reload().await, Ok(true));
        assert_eq!(q.settings().egress.connection_limit, 3);
    }
}
