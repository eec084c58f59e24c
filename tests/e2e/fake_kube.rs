//! The Kubernetes API a relay process talks to in these tests: the same
//! fake the unit tests use (`src/operator/fake_api`, held to the API
//! server's semantics: selectors, resourceVersions, watches with bookmarks
//! and 410 Gone), served over HTTP, with a kubeconfig pointing at it.

#[allow(dead_code)]
#[path = "../../src/operator/fake_api/mod.rs"]
mod fake_api;

pub use fake_api::FakeApi;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct FakeKube {
    pub api: Arc<FakeApi>,
    ns: String,
    configmap: String,
    pub kubeconfig: std::path::PathBuf,
    addr: std::net::SocketAddr,
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
        kube.api.serve(l);
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
        self.api.serve(l);
    }

    fn new(dir: &std::path::Path, ns: &str, name: &str, addr: std::net::SocketAddr) -> FakeKube {
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
            api: Arc::new(FakeApi::default()),
            ns: ns.to_owned(),
            configmap: name.to_owned(),
            kubeconfig,
            addr,
        }
    }

    fn put(&self, kind: &str, plural: &str, name: &str, data: serde_json::Value) {
        let obj = serde_json::json!({"apiVersion": "v1", "kind": kind,
            "metadata": {"name": name, "namespace": self.ns}, "data": data});
        self.api
            .put(&format!("/api/v1/namespaces/{}/{plural}", self.ns), obj);
    }

    /// Creates or replaces the ConfigMap's data and tells every watcher.
    pub fn update(&self, data: BTreeMap<String, String>) {
        self.put(
            "ConfigMap",
            "configmaps",
            &self.configmap,
            serde_json::json!(data),
        );
    }

    /// Creates or replaces the Secret `name`.
    pub fn update_secret(&self, name: &str, data: BTreeMap<String, Vec<u8>>) {
        use base64::Engine as _;
        let encoded: BTreeMap<String, String> = data
            .into_iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        self.put("Secret", "secrets", name, serde_json::json!(encoded));
    }

    /// Watches open now.
    pub fn watchers(&self) -> usize {
        self.api.watchers()
    }
}
