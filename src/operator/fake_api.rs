//! An in-process Kubernetes API for tests, behind kube's real client: objects
//! by collection and name, with the semantics the operator relies on.
//! - GET of a missing object is 404 NotFound; LIST honours `labelSelector`
//!   (`k=v`, `k!=v`, `k`, `!k`) and `fieldSelector` (`metadata.name=`).
//! - POST of an existing name is 409 AlreadyExists; created objects get a
//!   uid, a resourceVersion and a creationTimestamp.
//! - DELETE of a missing object is 404; a `preconditions.uid` that does not
//!   match is 409 Conflict.
//! - PATCH (merge) of a missing object is 404.
//!   Every write bumps the resourceVersion.

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct FakeApi {
    /// Collection path (`/api/v1/namespaces/ns/pods`) → name → object.
    objects: Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
    version: Mutex<u64>,
    /// Every request: method and path with query.
    pub calls: Mutex<Vec<(Method, String)>>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": reason, "code": code.as_u16(), "message": message});
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Splits a path into its collection and the object's name, if any.
fn split(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // api/v1/namespaces/NS/PLURAL[/NAME] or apis/G/V/namespaces/NS/PLURAL[/NAME]
    let coll_len = if parts.first() == Some(&"api") { 5 } else { 6 };
    let coll = format!("/{}", parts[..coll_len.min(parts.len())].join("/"));
    (coll, parts.get(coll_len).map(|s| s.to_string()))
}

fn matches_labels(obj: &Value, selector: &str) -> bool {
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

fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
            Some(("metadata.namespace", v)) => obj["metadata"]["namespace"].as_str() == Some(v),
            _ => false,
        })
}

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

impl FakeApi {
    /// A kube client talking to this API, with `ns` as its default namespace.
    pub fn client(self: &Arc<Self>, ns: &str) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                send.send_response(api.handle(req).await);
            }
        });
        Client::new(svc, ns.to_owned())
    }

    fn next_version(&self) -> String {
        let mut v = self.version.lock().unwrap();
        *v += 1;
        v.to_string()
    }

    /// Stores `obj` in `collection` as if created (uid, version and time set if absent).
    pub fn put(&self, collection: &str, mut obj: Value) {
        let name = obj["metadata"]["name"].as_str().expect("a name").to_owned();
        let meta = &mut obj["metadata"];
        if meta.get("uid").is_none() {
            meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        }
        meta["resourceVersion"] = json!(self.next_version());
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        self.objects
            .lock()
            .unwrap()
            .entry(collection.to_owned())
            .or_default()
            .insert(name, obj);
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.objects
            .lock()
            .unwrap()
            .get(collection)?
            .get(name)
            .cloned()
    }

    pub fn names(&self, collection: &str) -> Vec<String> {
        self.objects
            .lock()
            .unwrap()
            .get(collection)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Changes a stored object (as another controller would).
    pub fn edit(&self, collection: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let v = self.next_version();
        let mut objects = self.objects.lock().unwrap();
        let obj = objects
            .get_mut(collection)
            .and_then(|c| c.get_mut(name))
            .expect("the object to edit exists");
        f(obj);
        obj["metadata"]["resourceVersion"] = json!(v);
    }

    pub fn remove(&self, collection: &str, name: &str) {
        if let Some(c) = self.objects.lock().unwrap().get_mut(collection) {
            c.remove(name);
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

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query: BTreeMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        self.calls.lock().unwrap().push((
            method.clone(),
            req.uri()
                .path_and_query()
                .map_or(path.clone(), |p| p.to_string()),
        ));
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let (coll, name) = split(&path);
        match (method, name) {
            (Method::GET, None) => self.list(&coll, &query),
            (Method::GET, Some(name)) => match self.get(&coll, &name) {
                Some(o) => respond(StatusCode::OK, &o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{coll}/{name} not found"),
                ),
            },
            (Method::POST, None) => self.create(&coll, &body),
            (Method::DELETE, Some(name)) => self.delete(&coll, &name, &body),
            (Method::PATCH, Some(name)) => self.patch(&coll, &name, &body),
            (m, _) => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{m} {path}"),
            ),
        }
    }

    fn list(&self, coll: &str, query: &BTreeMap<String, String>) -> Response<Body> {
        let labels = query.get("labelSelector").map_or("", String::as_str);
        let fields = query.get("fieldSelector").map_or("", String::as_str);
        let items: Vec<Value> = self
            .objects
            .lock()
            .unwrap()
            .get(coll)
            .map(|c| c.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|o| matches_labels(o, labels) && matches_fields(o, fields))
            .collect();
        let version = self.version.lock().unwrap().to_string();
        let list = json!({"kind": "List", "apiVersion": "v1",
            "metadata": {"resourceVersion": version}, "items": items});
        respond(StatusCode::OK, &list)
    }

    fn create(&self, coll: &str, body: &[u8]) -> Response<Body> {
        let obj: Value = match serde_json::from_slice(body) {
            Ok(o) => o,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value".into(),
            );
        };
        if self.get(coll, &name).is_some() {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{coll}/{name} already exists"),
            );
        }
        let mut obj = obj;
        obj["metadata"].as_object_mut().map(|m| m.remove("uid"));
        self.put(coll, obj);
        respond(StatusCode::CREATED, &self.get(coll, &name).unwrap())
    }

    fn delete(&self, coll: &str, name: &str, body: &[u8]) -> Response<Body> {
        let Some(obj) = self.get(coll, name) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{coll}/{name} not found"),
            );
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
        self.remove(coll, name);
        respond(StatusCode::OK, &obj)
    }

    fn patch(&self, coll: &str, name: &str, body: &[u8]) -> Response<Body> {
        let patch: Value = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        if self.get(coll, name).is_none() {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{coll}/{name} not found"),
            );
        }
        self.edit(coll, name, |o| merge(o, &patch));
        respond(StatusCode::OK, &self.get(coll, name).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Api;
    use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};

    fn cm(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "labels": labels}})
    }

    #[tokio::test]
    async fn behaves_as_the_api_server_does_where_the_operator_relies_on_it() {
        let fake = Arc::new(FakeApi::default());
        let api: Api<ConfigMap> = Api::namespaced(fake.client("ns"), "ns");
        let coll = "/api/v1/namespaces/ns/configmaps";
        fake.put(coll, cm("a", json!({"app": "x", "tier": "1"})));
        fake.put(coll, cm("b", json!({"app": "y"})));
        let names = |l: Vec<ConfigMap>| {
            l.into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect::<Vec<_>>()
        };
        let list = |sel: &'static str| {
            let api = api.clone();
            async move {
                names(
                    api.list(&ListParams::default().labels(sel))
                        .await
                        .unwrap()
                        .items,
                )
            }
        };
        assert_eq!(list("app=x").await, ["a"]);
        assert_eq!(list("app!=x").await, ["b"]);
        assert_eq!(list("tier").await, ["a"]);
        assert_eq!(list("!tier").await, ["b"]);
        assert_eq!(list("app=x,tier=2").await, Vec::<String>::new());
        let by_name = api
            .list(&ListParams::default().fields("metadata.name=b"))
            .await
            .unwrap();
        assert_eq!(names(by_name.items), ["b"]);

        let missing = api.get("zz").await.unwrap_err();
        assert!(
            matches!(missing, kube::Error::Api(ref e) if e.code == 404),
            "{missing}"
        );
        assert!(api.get_opt("zz").await.unwrap().is_none());
        let dup: ConfigMap = serde_json::from_value(cm("a", json!({}))).unwrap();
        let err = api.create(&PostParams::default(), &dup).await.unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 409 && e.reason == "AlreadyExists"),
            "{err}"
        );

        let wrong_uid = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some("not-it".into()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let err = api.delete("a", &wrong_uid).await.unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 409),
            "{err}"
        );
        let uid = fake.get(coll, "a").unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();
        let right_uid = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        api.delete("a", &right_uid).await.unwrap();
        let err = api.delete("a", &DeleteParams::default()).await.unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 404),
            "{err}"
        );
        let patch = kube::api::Patch::Merge(json!({"data": {"k": "v"}}));
        let err = api
            .patch("a", &Default::default(), &patch)
            .await
            .unwrap_err();
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 404),
            "{err}"
        );
        let patched = api.patch("b", &Default::default(), &patch).await.unwrap();
        assert_eq!(patched.data.unwrap()["k"], "v");
    }
}
