//! An in-process Kubernetes API server for tests, shared by the unit tests
//! (through kube's client over a tower mock, [`FakeApi::client`]) and the
//! end-to-end tests (over real HTTP, [`FakeApi::serve`]). It holds objects
//! by collection and name with the semantics the operator and the relay rely
//! on, each checked by a test in `fake_api_tests.rs` that cites the
//! Kubernetes documentation it follows:
//! - GET of a missing object is 404; LIST honours `labelSelector` (`k=v`,
//!   `k!=v`, `k`, `!k`) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`); a list without a namespace spans them all.
//! - POST of an existing name is 409 AlreadyExists; created objects get a
//!   uid, a resourceVersion, a creationTimestamp and generation 1; a
//!   Secret's `stringData` is merged into `data`.
//! - PUT and merge PATCH of a missing object are 404; a `resourceVersion`
//!   in the body that is not the stored one is 409 Conflict; writes to the
//!   object ignore `status`, writes to `/status` change only `status` (404
//!   when the object is gone); `generation` grows when anything but
//!   metadata and status changes.
//! - Server-side apply ([`ssa`]): field ownership per manager, others'
//!   fields kept, list-type maps merged by key, `force` taking ownership
//!   and its absence a 409 on a field another manager set differently.
//! - DELETE of a missing object is 404; a `preconditions.uid` that does not
//!   match is 409.
//! - WATCH ([`watch`]): from a resourceVersion, the changes after it; from
//!   none, the current objects as ADDED; bookmarks when asked; a version
//!   older than the retained history is a 410 Expired ERROR event.
//!
//! This file is also compiled into the e2e test crate (`#[path]`), so it
//! names nothing of this crate.

pub mod ssa;
pub mod watch;

use axum::body::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use kube::Client;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the fake answers with, on either transport.
pub type Reply = Response<axum::body::Body>;

/// One change, as a watch reports it.
struct Change {
    version: u64,
    collection: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    /// Collection path (`/api/v1/namespaces/ns/pods`) → name → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    /// Object path → its server-side apply field owners.
    owners: BTreeMap<String, ssa::Owners>,
    version: u64,
    log: Vec<Change>,
    /// Changes at or below this version are forgotten (etcd compaction).
    compacted: u64,
}

type Rewrite = Box<dyn Fn(&mut Value) + Send + Sync>;

pub struct FakeApi {
    store: Mutex<Store>,
    /// The store's version after each change, for watches to wait on.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to end every open watch, as an API server restart does.
    restarts: tokio::sync::watch::Sender<u64>,
    /// While true, requests wait (an API server that hangs).
    paused: tokio::sync::watch::Sender<bool>,
    /// Every request: method and path with query.
    pub calls: Mutex<Vec<(Method, String)>>,
    /// Writes to a path ending so are refused with that code.
    failing: Mutex<Vec<(String, StatusCode)>>,
    /// Applied to every object a client creates or replaces.
    rewrite: Mutex<Option<Rewrite>>,
    /// Watches open now.
    watching: Arc<AtomicUsize>,
}

impl Default for FakeApi {
    fn default() -> Self {
        FakeApi {
            store: Default::default(),
            changed: tokio::sync::watch::Sender::new(0),
            restarts: tokio::sync::watch::Sender::new(0),
            paused: tokio::sync::watch::Sender::new(false),
            calls: Default::default(),
            failing: Default::default(),
            rewrite: Default::default(),
            watching: Default::default(),
        }
    }
}

pub fn status(code: StatusCode, reason: &str, message: String) -> Reply {
    respond(code, &status_body(code, reason, message))
}

fn status_body(code: StatusCode, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "code": code.as_u16(), "message": message})
}

fn respond(code: StatusCode, body: &Value) -> Reply {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn not_found(coll: &str, name: &str) -> Reply {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{coll}/{name} not found"),
    )
}

fn conflict(coll: &str, name: &str) -> Reply {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {coll}/{name}: the object has been modified; \
             please apply your changes to the latest version and try again"
        ),
    )
}

/// A request's target: the collection, the object's name and subresource.
struct Target {
    collection: String,
    name: Option<String>,
    subresource: Option<String>,
}

/// `/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]` or the same under `/apis/G/V`.
fn split(path: &str) -> Target {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let prefix = if parts.first() == Some(&"api") { 2 } else { 3 };
    let rest = parts.get(prefix..).unwrap_or_default();
    let (coll_len, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (prefix + 3, &rest[3..])
    } else {
        (prefix + 1, rest.get(1..).unwrap_or_default())
    };
    Target {
        collection: format!("/{}", parts[..coll_len.min(parts.len())].join("/")),
        name: rest.first().map(|s| s.to_string()),
        subresource: rest.get(1).map(|s| s.to_string()),
    }
}

/// Whether objects of `stored` are listed at `asked`: the same collection,
/// or `asked` is the all-namespaces path of the same resource.
fn lists(asked: &str, stored: &str) -> bool {
    if asked == stored {
        return true;
    }
    let (Some((a_base, a_plural)), Some((s_base, s_plural))) =
        (asked.rsplit_once('/'), stored.rsplit_once('/'))
    else {
        return false;
    };
    a_plural == s_plural
        && s_base
            .rsplit_once("/namespaces/")
            .is_some_and(|(base, _ns)| base == a_base)
}

pub fn matches_labels(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k].as_str() == Some(v.trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

pub fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
            Some(("metadata.namespace", v)) => obj["metadata"]["namespace"].as_str() == Some(v),
            _ => false,
        })
}

/// JSON merge patch (RFC 7386): maps merged, null removes, the rest replaced.
fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// A Secret's write-only `stringData`, folded into `data` as the API does.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    for (k, v) in plain {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// Everything but metadata and status: what a generation counts.
fn body_of(obj: &Value) -> Value {
    let mut b = obj.clone();
    if let Some(m) = b.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    b
}

/// Changes kept for watches; older ones are compacted away, as etcd does.
const HISTORY: usize = 1024;

impl Store {
    fn log(&mut self, change: Change) {
        if self.log.len() == HISTORY {
            let oldest = self.log.remove(0);
            self.compacted = oldest.version;
        }
        self.log.push(change);
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn get(&self, coll: &str, name: &str) -> Option<&Value> {
        self.objects.get(coll)?.get(name)
    }

    /// Stores `obj` at `coll` as a write: a new resourceVersion, a change
    /// in the log, and (unless `keep_status`) the status it carries.
    fn write(&mut self, coll: &str, mut obj: Value, kind: &'static str) -> Value {
        let version = self.next_version();
        obj["metadata"]["resourceVersion"] = json!(version.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        self.objects
            .entry(coll.to_owned())
            .or_default()
            .insert(name, obj.clone());
        self.log(Change {
            version,
            collection: coll.to_owned(),
            kind,
            object: obj.clone(),
        });
        obj
    }

    /// A new object: identity, time and generation set, status dropped.
    fn create(&mut self, coll: &str, mut obj: Value) -> Value {
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        meta["generation"] = json!(1);
        if meta.get("namespace").is_none()
            && let Some(ns) = coll.split("/namespaces/").nth(1)
        {
            meta["namespace"] = json!(ns.split('/').next().unwrap_or(""));
        }
        fold_string_data(&mut obj);
        self.write(coll, obj, "ADDED")
    }

    /// `new` in place of the stored object: server-owned metadata kept;
    /// `status` only from a status write, and only `status` from one.
    fn update(&mut self, coll: &str, name: &str, new: Value, status_write: bool) -> Value {
        let old = self.get(coll, name).cloned().unwrap_or(Value::Null);
        let mut obj = if status_write {
            let mut o = old.clone();
            o["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if o["status"].is_null() {
                o.as_object_mut().map(|m| m.remove("status"));
            }
            o
        } else {
            let mut o = new;
            match old.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    o.as_object_mut().map(|m| m.remove("status"));
                }
            }
            o
        };
        fold_string_data(&mut obj);
        for key in ["uid", "creationTimestamp", "namespace", "name"] {
            if let Some(v) = old["metadata"].get(key) {
                obj["metadata"][key] = v.clone();
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let grown = !status_write && body_of(&obj) != body_of(&old);
        obj["metadata"]["generation"] = json!(generation + i64::from(grown));
        self.write(coll, obj, "MODIFIED")
    }

    fn remove(&mut self, coll: &str, name: &str) -> Option<Value> {
        let obj = self.objects.get_mut(coll)?.remove(name)?;
        self.owners.remove(&format!("{coll}/{name}"));
        let version = self.next_version();
        let mut gone = obj.clone();
        gone["metadata"]["resourceVersion"] = json!(version.to_string());
        self.log(Change {
            version,
            collection: coll.to_owned(),
            kind: "DELETED",
            object: gone,
        });
        Some(obj)
    }
}

/// A `resourceVersion` the writer sent that is not the stored one.
fn stale(sent: &Value, stored: &Value) -> bool {
    sent["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| Some(v) != stored["metadata"]["resourceVersion"].as_str())
}

impl FakeApi {
    /// A kube client talking to this API, with `ns` as its default namespace.
    pub fn client(self: &Arc<Self>, ns: &str) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Reply>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let api = api.clone();
                // Each on its own: a watch or a paused request holds no other up.
                tokio::spawn(async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect_bytes().await.unwrap_or_default();
                    send.send_response(
                        api.handle(&parts.method, &parts.uri, &parts.headers, body)
                            .await,
                    );
                });
            }
        });
        Client::new(svc, ns.to_owned())
    }

    /// Serves this API over HTTP on `listener` (for a relay process's kubeconfig).
    pub fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) {
        let api = self.clone();
        let app = axum::Router::new().fallback(move |req: Request<axum::body::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                api.handle(&parts.method, &parts.uri, &parts.headers, body)
                    .await
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }

    fn notify(&self) {
        let v = self.store.lock().unwrap().version;
        self.changed.send_replace(v);
    }

    /// Stores `obj` in `collection` as another writer would (uid, version
    /// and time set if absent; status as given).
    pub fn put(&self, collection: &str, mut obj: Value) {
        {
            let mut store = self.store.lock().unwrap();
            let name = obj["metadata"]["name"].as_str().expect("a name").to_owned();
            let existed = store.get(collection, &name).is_some();
            let meta = &mut obj["metadata"];
            if meta.get("uid").is_none() {
                meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
            }
            if meta.get("creationTimestamp").is_none() {
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            if meta.get("generation").is_none() {
                meta["generation"] = json!(1);
            }
            store.write(collection, obj, if existed { "MODIFIED" } else { "ADDED" });
        }
        self.notify();
    }

    /// [`FakeApi::put`] at the object's path (`collection/name`).
    pub fn put_at(&self, path: &str, obj: Value) {
        self.put(&split(path).collection, obj);
    }

    /// [`FakeApi::remove`] at the object's path.
    pub fn remove_at(&self, path: &str) {
        let t = split(path);
        self.remove(&t.collection, t.name.as_deref().unwrap_or(""));
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.store.lock().unwrap().get(collection, name).cloned()
    }

    /// The object at `path` (`collection/name`).
    pub fn at(&self, path: &str) -> Option<Value> {
        let t = split(path);
        self.get(&t.collection, t.name.as_deref()?)
    }

    pub fn names(&self, collection: &str) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(collection)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Changes a stored object (as another controller would).
    pub fn edit(&self, collection: &str, name: &str, f: impl FnOnce(&mut Value)) {
        {
            let mut store = self.store.lock().unwrap();
            let mut obj = store
                .get(collection, name)
                .cloned()
                .expect("the object to edit exists");
            f(&mut obj);
            store.write(collection, obj, "MODIFIED");
        }
        self.notify();
    }

    pub fn remove(&self, collection: &str, name: &str) {
        let gone = self.store.lock().unwrap().remove(collection, name);
        if gone.is_some() {
            self.notify();
        }
    }

    /// Requests made with `method` whose path starts with `prefix`.
    pub fn count(&self, method: Method, prefix: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| *m == method && p.starts_with(prefix))
            .count()
    }

    /// Every write so far as `METHOD path` (no query).
    pub fn writes(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m != Method::GET)
            .map(|(m, p)| format!("{m} {}", p.split('?').next().unwrap_or(p)))
            .collect()
    }

    /// Writes to paths ending with `suffix` fail with `code` from now on.
    pub fn fail_writes_to(&self, suffix: &str, code: StatusCode) {
        self.failing.lock().unwrap().push((suffix.to_owned(), code));
    }

    /// While paused, requests are not answered (a hanging API server).
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Every object a client creates or replaces passes through `f` first.
    pub fn rewrite(&self, f: impl Fn(&mut Value) + Send + Sync + 'static) {
        *self.rewrite.lock().unwrap() = Some(Box::new(f));
    }

    /// Forgets the change history (as etcd compaction does): a watch from
    /// an older resourceVersion gets 410 Expired.
    pub fn compact(&self) {
        let mut store = self.store.lock().unwrap();
        store.compacted = store.version;
        store.log.clear();
    }

    /// Ends every open watch, as an API server restart does.
    pub fn end_watches(&self) {
        self.restarts.send_modify(|n| *n += 1);
    }

    /// Watches open now.
    pub fn watchers(&self) -> usize {
        self.watching.load(Ordering::SeqCst)
    }

    /// Server-side apply of `patch` by `manager`, forced, as a test's other
    /// controller would send it; the object after it.
    pub fn apply(&self, path: &str, manager: &str, patch: &Value, status_write: bool) -> Value {
        let t = split(path);
        let name = t.name.expect("an object path");
        let reply = {
            let mut store = self.store.lock().unwrap();
            ssa::apply(
                &mut store,
                &t.collection,
                &name,
                manager,
                patch,
                status_write,
                true,
            )
        };
        self.notify();
        reply.expect("the apply is accepted")
    }

    pub async fn handle(
        self: &Arc<Self>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Reply {
        let path = uri.path().to_owned();
        self.calls.lock().unwrap().push((
            method.clone(),
            uri.path_and_query().map_or(path.clone(), |p| p.to_string()),
        ));
        let _ = self.paused.subscribe().wait_for(|p| !*p).await;
        if method != Method::GET
            && let Some((_, code)) = self
                .failing
                .lock()
                .unwrap()
                .iter()
                .find(|(s, _)| path.ends_with(s.as_str()))
        {
            return status(
                *code,
                "InternalError",
                "etcdserver: request timed out".into(),
            );
        }
        let query: BTreeMap<String, String> = uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let target = split(&path);
        let reply = self.route(method, target, &query, headers, &body);
        if method != Method::GET {
            self.notify();
        }
        match reply {
            Routed::Now(r) => r,
            Routed::Watch(coll) => watch::start(self, &coll, &query),
        }
    }

    fn route(
        &self,
        method: &Method,
        t: Target,
        query: &BTreeMap<String, String>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Routed {
        let coll = t.collection;
        let status_write = t.subresource.as_deref() == Some("status");
        let json = || serde_json::from_slice::<Value>(body);
        let reply = match (method.clone(), t.name) {
            (Method::GET, None)
                if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
            {
                return Routed::Watch(coll);
            }
            (Method::GET, None) => self.list(&coll, query),
            (Method::GET, Some(name)) => match self.get(&coll, &name) {
                Some(o) => respond(StatusCode::OK, &o),
                None => not_found(&coll, &name),
            },
            (m, name) if m != Method::DELETE => match json() {
                Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                Ok(mut obj) => {
                    if matches!(m, Method::POST | Method::PUT)
                        && let Some(f) = self.rewrite.lock().unwrap().as_ref()
                    {
                        f(&mut obj);
                    }
                    let mut store = self.store.lock().unwrap();
                    match (m, name) {
                        (Method::POST, None) => create(&mut store, &coll, obj),
                        (Method::PUT, Some(name)) => {
                            replace(&mut store, &coll, &name, obj, status_write)
                        }
                        (Method::PATCH, Some(name)) => {
                            patch(&mut store, &coll, &name, obj, status_write, query, headers)
                        }
                        (m, _) => status(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "MethodNotAllowed",
                            format!("{m} {coll}"),
                        ),
                    }
                }
            },
            (_, Some(name)) => self.delete(&coll, &name, body),
            (m, None) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} {coll}"),
            ),
        };
        Routed::Now(reply)
    }

    fn list(&self, coll: &str, query: &BTreeMap<String, String>) -> Reply {
        let labels = query.get("labelSelector").map_or("", String::as_str);
        let fields = query.get("fieldSelector").map_or("", String::as_str);
        let store = self.store.lock().unwrap();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|(c, _)| lists(coll, c))
            .flat_map(|(_, objs)| objs.values())
            .filter(|o| matches_labels(o, labels) && matches_fields(o, fields))
            .cloned()
            .collect();
        let list = json!({"kind": "List", "apiVersion": "v1",
            "metadata": {"resourceVersion": store.version.to_string()}, "items": items});
        respond(StatusCode::OK, &list)
    }

    fn delete(&self, coll: &str, name: &str, body: &[u8]) -> Reply {
        let mut store = self.store.lock().unwrap();
        let Some(obj) = store.get(coll, name).cloned() else {
            return not_found(coll, name);
        };
        let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Some(uid) = opts["preconditions"]["uid"].as_str()
            && obj["metadata"]["uid"].as_str() != Some(uid)
        {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    obj["metadata"]["uid"]
                ),
            );
        }
        store.remove(coll, name);
        respond(StatusCode::OK, &obj)
    }
}

/// A relay pod's `/api/policy` on its own loopback address (`port` 0:
/// any), answering with what `report` holds; the port it serves on.
pub async fn relay_pod(ip: &str, port: u16, report: Arc<Mutex<Value>>) -> u16 {
    let app = axum::Router::new().route(
        "/api/policy",
        axum::routing::get(move || {
            let r = report.lock().unwrap().clone();
            async move { axum::Json(r) }
        }),
    );
    let l = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    port
}

enum Routed {
    Now(Reply),
    Watch(String),
}

fn create(store: &mut Store, coll: &str, mut obj: Value) -> Reply {
    if obj["metadata"]["name"].is_null()
        && let Some(prefix) = obj["metadata"]["generateName"].as_str()
    {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..5];
        obj["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
    }
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value".into(),
        );
    };
    if store.get(coll, &name).is_some() {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{coll}/{name} already exists"),
        );
    }
    obj.as_object_mut().map(|m| m.remove("status"));
    respond(StatusCode::CREATED, &store.create(coll, obj))
}

fn replace(store: &mut Store, coll: &str, name: &str, obj: Value, status_write: bool) -> Reply {
    let Some(old) = store.get(coll, name) else {
        return not_found(coll, name);
    };
    if stale(&obj, old) {
        return conflict(coll, name);
    }
    respond(StatusCode::OK, &store.update(coll, name, obj, status_write))
}

fn patch(
    store: &mut Store,
    coll: &str,
    name: &str,
    body: Value,
    status_write: bool,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Reply {
    let kind = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if kind == "application/apply-patch+yaml" {
        let Some(manager) = query.get("fieldManager") else {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "PATCH with apply requires fieldManager".into(),
            );
        };
        let force = query.get("force").map(String::as_str) == Some("true");
        return match ssa::apply(store, coll, name, manager, &body, status_write, force) {
            Ok(o) => respond(StatusCode::OK, &o),
            Err(r) => *r,
        };
    }
    if !matches!(
        kind,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the fake takes no {kind:?} patch"),
        );
    }
    let Some(old) = store.get(coll, name).cloned() else {
        return not_found(coll, name);
    };
    if stale(&body, &old) {
        return conflict(coll, name);
    }
    let mut new = old;
    merge(&mut new, &body);
    respond(StatusCode::OK, &store.update(coll, name, new, status_write))
}
