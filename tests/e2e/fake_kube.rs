//! A fake Kubernetes API server over real HTTP, just enough for a relay's
//! kube client to list and watch one ConfigMap and one Secret in one
//! namespace; tests change them at will.

use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One kind of object the fake serves (at most one object of it).
#[derive(Clone)]
struct Slot {
    kind: &'static str,
    name: String,
    /// `None` while the object does not exist.
    object: Arc<Mutex<Option<serde_json::Value>>>,
    events: broadcast::Sender<String>,
}

#[derive(Clone)]
struct Shared {
    ns: String,
    version: Arc<Mutex<u64>>,
    configmap: Slot,
    secret: Slot,
}

pub struct FakeKube {
    shared: Shared,
    pub kubeconfig: std::path::PathBuf,
    addr: std::net::SocketAddr,
}

fn object(kind: &str, ns: &str, name: &str, rv: u64, data: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(), "uid": format!("fake-{name}")},
        "data": data,
    })
}

async fn serve(slot: &Slot, version: u64, q: &HashMap<String, String>) -> axum::response::Response {
    if q.get("watch").map(String::as_str) == Some("true") {
        let rx = slot.events.subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(line) => Some((Ok::<_, std::convert::Infallible>(line), rx)),
                Err(_) => None,
            }
        });
        return axum::body::Body::from_stream(stream).into_response();
    }
    let items: Vec<_> = slot.object.lock().unwrap().iter().cloned().collect();
    axum::Json(serde_json::json!({
        "apiVersion": "v1", "kind": format!("{}List", slot.kind),
        "metadata": {"resourceVersion": version.to_string()},
        "items": items,
    }))
    .into_response()
}

async fn configmaps(
    State(s): State<Shared>,
    Path(_ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let v = *s.version.lock().unwrap();
    serve(&s.configmap, v, &q).await
}

async fn secrets(
    State(s): State<Shared>,
    Path(_ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let v = *s.version.lock().unwrap();
    serve(&s.secret, v, &q).await
}

fn slot(kind: &'static str, name: &str) -> Slot {
    Slot {
        kind,
        name: name.to_owned(),
        object: Arc::new(Mutex::new(None)),
        events: broadcast::channel(64).0,
    }
}

impl FakeKube {
    /// An API holding the ConfigMap `name` with `data`.
    pub async fn start(
        dir: &std::path::Path,
        ns: &str,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> FakeKube {
        let kube = Self::start_without(dir, ns, name).await;
        kube.update(data);
        kube
    }

    /// An API in which the ConfigMap `name` does not exist (yet).
    pub async fn start_without(dir: &std::path::Path, ns: &str, name: &str) -> FakeKube {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kube = Self::new(dir, ns, name, l.local_addr().unwrap());
        kube.serve_on(l);
        kube
    }

    /// An API server that is down (nothing listens at its address, as when
    /// the control plane is) until `come_up`; the ConfigMap `name` does not
    /// exist until `update`.
    pub fn start_down(dir: &std::path::Path, ns: &str, name: &str) -> FakeKube {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        Self::new(dir, ns, name, addr)
    }

    /// The API server answers from now on.
    pub async fn come_up(&self) {
        let l = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve_on(l);
    }

    fn new(dir: &std::path::Path, ns: &str, name: &str, addr: std::net::SocketAddr) -> FakeKube {
        let shared = Shared {
            ns: ns.to_owned(),
            version: Arc::new(Mutex::new(1)),
            configmap: slot("ConfigMap", name),
            secret: slot("Secret", "unset"),
        };
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
        FakeKube {
            shared,
            kubeconfig,
            addr,
        }
    }

    fn serve_on(&self, l: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/configmaps",
                axum::routing::get(configmaps),
            )
            .route(
                "/api/v1/namespaces/{ns}/secrets",
                axum::routing::get(secrets),
            )
            .with_state(self.shared.clone());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    }

    fn put(&self, slot: &Slot, name: &str, data: serde_json::Value) {
        let rv = {
            let mut v = self.shared.version.lock().unwrap();
            *v += 1;
            *v
        };
        let obj = object(slot.kind, &self.shared.ns, name, rv, data);
        let existed = slot.object.lock().unwrap().replace(obj.clone()).is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        let _ = slot
            .events
            .send(serde_json::json!({"type": kind, "object": obj}).to_string() + "\n");
    }

    /// Creates or replaces the ConfigMap's data and tells every watcher.
    pub fn update(&self, data: BTreeMap<String, String>) {
        let slot = &self.shared.configmap;
        self.put(slot, &slot.name.clone(), serde_json::json!(data));
    }

    /// Creates or replaces the Secret `name` (the one Secret served).
    pub fn update_secret(&self, name: &str, data: BTreeMap<String, Vec<u8>>) {
        use base64::Engine as _;
        let encoded: BTreeMap<String, String> = data
            .into_iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        self.put(&self.shared.secret, name, serde_json::json!(encoded));
    }

    pub fn watchers(&self) -> usize {
        self.shared.configmap.events.receiver_count() + self.shared.secret.events.receiver_count()
    }
}
