//! A fake Kubernetes API server over real HTTP, just enough for a relay's
//! kube client to list and watch one ConfigMap; tests change it at will.

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

#[derive(Clone)]
struct Shared {
    ns: String,
    name: String,
    /// `None` while the ConfigMap does not exist.
    cm: Arc<Mutex<Option<serde_json::Value>>>,
    version: Arc<Mutex<u64>>,
    events: broadcast::Sender<String>,
}

pub struct FakeKube {
    shared: Shared,
    pub kubeconfig: std::path::PathBuf,
}

fn configmap(ns: &str, name: &str, rv: u64, data: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(), "uid": "fake-uid"},
        "data": data,
    })
}

async fn configmaps(
    State(s): State<Shared>,
    Path(_ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    if q.get("watch").map(String::as_str) == Some("true") {
        let rx = s.events.subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(line) => Some((Ok::<_, std::convert::Infallible>(line), rx)),
                Err(_) => None,
            }
        });
        return axum::body::Body::from_stream(stream).into_response();
    }
    let items: Vec<_> = s.cm.lock().unwrap().iter().cloned().collect();
    let rv = *s.version.lock().unwrap();
    axum::Json(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMapList",
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
    .into_response()
}

impl FakeKube {
    pub async fn start(
        dir: &std::path::Path,
        ns: &str,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> FakeKube {
        Self::serve(dir, ns, name, Some(configmap(ns, name, 1, &data))).await
    }

    /// An API in which the ConfigMap does not exist (yet).
    pub async fn start_without(dir: &std::path::Path, ns: &str, name: &str) -> FakeKube {
        Self::serve(dir, ns, name, None).await
    }

    async fn serve(
        dir: &std::path::Path,
        ns: &str,
        name: &str,
        cm: Option<serde_json::Value>,
    ) -> FakeKube {
        let shared = Shared {
            ns: ns.to_owned(),
            name: name.to_owned(),
            cm: Arc::new(Mutex::new(cm)),
            version: Arc::new(Mutex::new(1)),
            events: broadcast::channel(64).0,
        };
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/configmaps",
                axum::routing::get(configmaps),
            )
            .with_state(shared.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: 'http://{addr}'}}\n\
                 users:\n- name: u\n  user: {{token: fake}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u, namespace: {ns}}}\n\
                 current-context: c\n"
            ),
        )
        .unwrap();
        FakeKube { shared, kubeconfig }
    }

    /// Creates or replaces the ConfigMap's data and tells every watcher.
    pub fn update(&self, data: BTreeMap<String, String>) {
        let rv = {
            let mut v = self.shared.version.lock().unwrap();
            *v += 1;
            *v
        };
        let cm = configmap(&self.shared.ns, &self.shared.name, rv, &data);
        let existed = self.shared.cm.lock().unwrap().replace(cm.clone()).is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        let _ = self
            .shared
            .events
            .send(serde_json::json!({"type": kind, "object": cm}).to_string() + "\n");
    }

    pub fn watchers(&self) -> usize {
        self.shared.events.receiver_count()
    }
}
