//! The fake API held to the API server's semantics, each through kube's
//! real client, citing the Kubernetes documentation it follows.

use super::fake_api::FakeApi;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::sync::Arc;

const CMS: &str = "/api/v1/namespaces/ns/configmaps";

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns", "labels": labels}})
}

fn api_error(e: &kube::Error) -> (u16, &str) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.as_str()),
        other => panic!("not an API error: {other}"),
    }
}

/// https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors,
/// https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/,
/// and the API conventions' status codes
/// (https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#http-status-codes).
#[tokio::test]
async fn selectors_404s_409s_and_preconditions() {
    let fake = Arc::new(FakeApi::default());
    let api: Api<ConfigMap> = Api::namespaced(fake.client("ns"), "ns");
    fake.put(CMS, cm("a", json!({"app": "x", "tier": "1"})));
    fake.put(CMS, cm("b", json!({"app": "y"})));
    fake.put(
        "/api/v1/namespaces/other/configmaps",
        cm("c", json!({"app": "x"})),
    );
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
    // A list without a namespace spans every namespace.
    let all: Api<ConfigMap> = Api::all(fake.client("ns"));
    let everywhere = all
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(names(everywhere.items), ["a", "c"]);

    let missing = api.get("zz").await.unwrap_err();
    assert_eq!(api_error(&missing), (404, "NotFound"));
    assert!(api.get_opt("zz").await.unwrap().is_none());
    let dup: ConfigMap = serde_json::from_value(cm("a", json!({}))).unwrap();
    let err = api.create(&PostParams::default(), &dup).await.unwrap_err();
    assert_eq!(api_error(&err), (409, "AlreadyExists"));

    let with_uid = |uid: &str| DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let err = api.delete("a", &with_uid("not-it")).await.unwrap_err();
    assert_eq!(api_error(&err).0, 409);
    let uid = fake.get(CMS, "a").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    api.delete("a", &with_uid(&uid)).await.unwrap();
    let err = api.delete("a", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_error(&err).0, 404);
    let patch = Patch::Merge(json!({"data": {"k": "v"}}));
    let err = api
        .patch("a", &Default::default(), &patch)
        .await
        .unwrap_err();
    assert_eq!(api_error(&err).0, 404);
    let patched = api.patch("b", &Default::default(), &patch).await.unwrap();
    assert_eq!(patched.data.unwrap()["k"], "v");
}

/// Optimistic concurrency
/// (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions,
/// api-conventions.md#concurrency-control-and-consistency): a write that
/// names a resourceVersion other than the stored one is 409 Conflict; every
/// write makes a new one.
#[tokio::test]
async fn a_stale_resource_version_is_a_conflict() {
    let fake = Arc::new(FakeApi::default());
    let api: Api<ConfigMap> = Api::namespaced(fake.client("ns"), "ns");
    let made = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(cm("a", json!({}))).unwrap(),
        )
        .await
        .unwrap();
    let mut first = made.clone();
    first.data = Some([("k".to_string(), "1".to_string())].into());
    let after = api
        .replace("a", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(
        after.metadata.resource_version,
        made.metadata.resource_version
    );
    // The same old version again: someone else wrote meanwhile.
    let err = api
        .replace("a", &PostParams::default(), &first)
        .await
        .unwrap_err();
    assert_eq!(api_error(&err), (409, "Conflict"));
    let stale = Patch::Merge(
        json!({"metadata": {"resourceVersion": made.metadata.resource_version},
        "data": {"k": "2"}}),
    );
    let err = api
        .patch("a", &Default::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_error(&err).0, 409);
    let fresh = Patch::Merge(
        json!({"metadata": {"resourceVersion": after.metadata.resource_version},
        "data": {"k": "2"}}),
    );
    api.patch("a", &Default::default(), &fresh).await.unwrap();
    let err = api
        .replace("zz", &PostParams::default(), &first)
        .await
        .unwrap_err();
    assert_eq!(api_error(&err).0, 404, "PUT does not create");
}

/// Secret `stringData` is write-only and merged into `data`
/// (https://kubernetes.io/docs/concepts/configuration/secret/#restriction-names-data).
#[tokio::test]
async fn string_data_is_folded_into_data() {
    let fake = Arc::new(FakeApi::default());
    let api: Api<Secret> = Api::namespaced(fake.client("ns"), "ns");
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "s"},
        "data": {"a": "MQ=="}, "stringData": {"b": "two"}}))
    .unwrap();
    let made = api.create(&PostParams::default(), &s).await.unwrap();
    assert!(made.string_data.is_none());
    let data = made.data.unwrap();
    assert_eq!(data["a"].0, b"1");
    assert_eq!(data["b"].0, b"two");
}

/// The status subresource
/// (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#status-subresource):
/// writes to the object ignore `status`, writes to `/status` change only
/// `status`, and `metadata.generation` grows on changes other than to
/// metadata and status; `/status` of an object that is gone is 404.
#[tokio::test]
async fn the_status_subresource_and_generation() {
    use crate::operator::crd::AmqpRoute;
    let fake = Arc::new(FakeApi::default());
    let api: Api<AmqpRoute> = Api::namespaced(fake.client("team"), "team");
    let route = json!({"apiVersion": "amqprelay.io/v1alpha1", "kind": "AmqpRoute",
        "metadata": {"name": "r", "namespace": "team"},
        "spec": {"match": {"domain": "a"}, "broker": {"url": "amqp://b"}, "publish": {"routingKey": "k"}},
        "status": {"relay": "forged"}});
    let made = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(route).unwrap(),
        )
        .await
        .unwrap();
    assert!(made.status.is_none(), "create drops status");
    assert_eq!(made.metadata.generation, Some(1));
    let pp = PatchParams::default();
    let labelled = api
        .patch(
            "r",
            &pp,
            &Patch::Merge(
                json!({"metadata": {"labels": {"x": "y"}}, "status": {"relay": "forged"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata is not a generation"
    );
    assert!(
        labelled.status.is_none(),
        "the object's write ignores status"
    );
    let status = api
        .patch_status(
            "r",
            &pp,
            &Patch::Merge(
                json!({"spec": {"match": {"domain": "z"}}, "status": {"relay": "ns/edge"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status.status.unwrap().relay.as_deref(), Some("ns/edge"));
    assert_eq!(
        status.spec.route_match.domain, "a",
        "a status write ignores spec"
    );
    assert_eq!(status.metadata.generation, Some(1));
    let edited = api
        .patch(
            "r",
            &pp,
            &Patch::Merge(json!({"spec": {"publish": {"routingKey": "k2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(edited.metadata.generation, Some(2));
    assert_eq!(
        edited.status.unwrap().relay.as_deref(),
        Some("ns/edge"),
        "kept"
    );
    api.delete("r", &DeleteParams::default()).await.unwrap();
    let err = api
        .patch_status(
            "r",
            &PatchParams::apply("m").force(),
            &Patch::Apply(json!({"status": {"relay": "x"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(&err).0, 404);
    assert!(
        fake.get(
            "/apis/amqprelay.io/v1alpha1/namespaces/team/amqproutes",
            "r"
        )
        .is_none(),
        "not re-created"
    );
}

/// Server-side apply
/// (https://kubernetes.io/docs/reference/using-api/server-side-apply/):
/// fields are owned per field manager; an apply keeps the fields others
/// own, removes those its manager applied before and no longer sends, and
/// merges list-type maps (`conditions`, keyed by `type`) by key; without
/// `force`, a field another manager set differently is a conflict.
#[tokio::test]
async fn server_side_apply_keeps_other_managers_fields() {
    let fake = Arc::new(FakeApi::default());
    let api: Api<Secret> = Api::namespaced(fake.client("ns"), "ns");
    let obj = |data: Value| {
        Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "ns"}, "data": data}))
    };
    let op = PatchParams::apply("operator").force();
    api.patch("s", &op, &obj(json!({"a": "MQ==", "b": "Mg=="})))
        .await
        .unwrap();
    api.patch(
        "s",
        &PatchParams::apply("kubectl"),
        &obj(json!({"extra": "Mw=="})),
    )
    .await
    .unwrap();
    // Another manager setting the operator's field differently: refused
    // unless forced; the same value is no conflict.
    let err = api
        .patch(
            "s",
            &PatchParams::apply("kubectl"),
            &obj(json!({"a": "OQ=="})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(&err), (409, "Conflict"));
    assert!(err.to_string().contains("operator"), "{err}");
    api.patch(
        "s",
        &PatchParams::apply("kubectl"),
        &obj(json!({"extra": "Mw==", "a": "MQ=="})),
    )
    .await
    .unwrap();
    // The operator stops sending b: b goes, kubectl's extra stays.
    let now = api
        .patch("s", &op, &obj(json!({"a": "MQ=="})))
        .await
        .unwrap();
    let keys: Vec<String> = now.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["a", "extra"]);

    // Conditions merge by type; each manager's stay.
    let route = "/apis/amqprelay.io/v1alpha1/namespaces/ns/amqproutes/r";
    fake.put(
        "/apis/amqprelay.io/v1alpha1/namespaces/ns/amqproutes",
        json!({"metadata": {"name": "r", "namespace": "ns"}}),
    );
    let status = |conds: Value| json!({"status": {"conditions": conds}});
    fake.apply(
        route,
        "operator",
        &status(json!([{"type": "Ready", "status": "True"}])),
        true,
    );
    fake.apply(
        route,
        "other",
        &status(json!([{"type": "Audited", "status": "True"}])),
        true,
    );
    let now = fake.apply(
        route,
        "operator",
        &status(json!([{"type": "Ready", "status": "False"}])),
        true,
    );
    let types: Vec<(&str, &str)> = now["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(types, [("Ready", "False"), ("Audited", "True")]);
    // The operator's empty status removes its fields only.
    let now = fake.apply(route, "operator", &json!({"status": {}}), true);
    assert_eq!(now["status"]["conditions"].as_array().unwrap().len(), 1);
}

/// Watches (https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):
/// from a resourceVersion, the changes after it, filtered by the selector;
/// a version older than the retained history is an ERROR event with 410
/// Expired (#410-gone-responses).
#[tokio::test]
async fn a_watch_sends_changes_after_its_version_and_410_once_compacted() {
    let fake = Arc::new(FakeApi::default());
    let api: Api<ConfigMap> = Api::namespaced(fake.client("ns"), "ns");
    fake.put(CMS, cm("a", json!({})));
    let listed = api.list(&ListParams::default()).await.unwrap();
    let from = listed.metadata.resource_version.unwrap();
    fake.put(CMS, cm("b", json!({})));
    fake.edit(CMS, "a", |o| o["data"] = json!({"k": "v"}));
    fake.remove(CMS, "b");
    let wp = WatchParams::default().fields("metadata.name=a").timeout(1);
    let seen: Vec<String> = api
        .watch(&wp, &from)
        .await
        .unwrap()
        .take(1)
        .map_ok(|e| match e {
            WatchEvent::Modified(c) => format!("MODIFIED {}", c.data.unwrap()["k"]),
            other => format!("{other:?}"),
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(seen, ["MODIFIED v"], "b's changes are not a's");

    fake.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let first = stream.next().await.unwrap().unwrap();
    match first {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("a compacted version must be 410 Gone, got {other:?}"),
    }
}

/// kube's watcher recovers from an API server restart and a compacted
/// history as it does against a real one: 410 → a fresh list, nothing
/// missed (a change made while no watch was open arrives).
#[tokio::test]
async fn a_watcher_relists_after_410_and_misses_nothing() {
    let fake = Arc::new(FakeApi::default());
    let api: Api<ConfigMap> = Api::namespaced(fake.client("ns"), "ns");
    fake.put(CMS, cm("a", json!({})));
    let cfg = watcher::Config::default().fields("metadata.name=a");
    let mut events = watcher(api, cfg).boxed();
    let (mut inits, mut expired) = (0, 0);
    let mut next_data = async || loop {
        match events.next().await.unwrap() {
            Ok(watcher::Event::Init) => inits += 1,
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                return (c.data.unwrap_or_default().get("k").cloned(), inits, expired);
            }
            Ok(_) => {}
            // The watcher reports the 410, then lists again.
            Err(watcher::Error::WatchError(e)) if e.code == 410 => expired += 1,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(next_data().await, (None, 1, 0));
    fake.edit(CMS, "a", |o| o["data"] = json!({"k": "1"}));
    assert_eq!(next_data().await, (Some("1".into()), 1, 0));
    assert_eq!(fake.watchers(), 1);
    // The server restarts; while no watch is open, a change lands and the
    // history is compacted past the watcher's version.
    fake.end_watches();
    fake.edit(CMS, "a", |o| o["data"] = json!({"k": "2"}));
    fake.compact();
    assert_eq!(
        next_data().await,
        (Some("2".into()), 2, 1),
        "relisted once, after a 410"
    );
    assert!(fake.count(http::Method::GET, CMS) >= 3);
}
