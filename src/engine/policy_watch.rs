//! Reload on file changes: inotify on the policy's directories, which also
//! sees the kubelet's symlink swap when a mounted ConfigMap changes.

use super::Engine;
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Changes closer together than this become one reload.
const SETTLE: Duration = Duration::from_millis(15);

pub fn spawn(engine: Arc<Engine>) -> Result<(), String> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("policy watch: {e}"))?;
    let mut watched: Vec<PathBuf> = Vec::new();
    rewatch(&mut watcher, &mut watched, &engine);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
            if let Ok(true) = engine.reload().await {
                // The new version may read modules from other places.
                rewatch(&mut watcher, &mut watched, &engine);
            }
        }
    });
    Ok(())
}

fn rewatch(w: &mut impl Watcher, watched: &mut Vec<PathBuf>, engine: &Arc<Engine>) {
    for dir in engine.policy().watch_dirs() {
        if watched.contains(&dir) {
            continue;
        }
        match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "watching policy directory");
                watched.push(dir);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch policy directory")
            }
        }
    }
}
