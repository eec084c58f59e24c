//! Spools left behind: the plan as a pure function over many cases, the
//! drain Job built from the chart's pod template, and a scale-in carried
//! through kube's client against the fake API.

use super::*;
use crate::operator::fake_api::FakeApi;
use http::Method;
use kube::runtime::events::Reporter;
use serde_json::json;
use std::sync::Arc;

const STS: &str = "edge-relay";

fn cfg(delete_empty: bool) -> Config {
    Config {
        statefulset: STS.into(),
        claim_template: "spool".into(),
        report_configmap: "edge-spools".into(),
        delete_empty,
        retry_after: Duration::from_secs(300),
        drain_timeout: Duration::from_secs(600),
    }
}

fn claim(n: u32) -> Claim {
    Claim {
        name: format!("spool-{STS}-{n}"),
        uid: format!("uid-{n}"),
        ordinal: n,
    }
}

fn stopped(left: u64, at: u64, drain: Option<DrainEnd>) -> SpoolReport {
    SpoolReport {
        state: SpoolState::Stopped,
        left,
        queues: Default::default(),
        held: vec![],
        drain,
        at,
    }
}

const NOW: u64 = 1_800_000_000;

/// Three claims, scaled to two: relay-2's pod gone.
fn scaled_in() -> Observed {
    Observed {
        replicas: 2,
        claims: (0..3).map(claim).collect(),
        pods: [0, 1].into(),
        now: NOW,
        ..Default::default()
    }
}

fn create(n: u32) -> Action {
    Action::CreateJob {
        ordinal: n,
        claim: format!("spool-{STS}-{n}"),
    }
}

#[test]
fn claim_names_give_ordinals_of_this_statefulset_only() {
    let of = |c: &str| ordinal_of(c, "spool", "edge-relay");
    assert_eq!(of("spool-edge-relay-0"), Some(0));
    assert_eq!(of("spool-edge-relay-12"), Some(12));
    assert_eq!(of("spool-edge-relay-012"), None);
    assert_eq!(of("spool-edge-relay-"), None);
    assert_eq!(of("spool-edge-relay-2x"), None);
    assert_eq!(of("spool-edge-relay-other-2"), None);
    assert_eq!(of("spool-edge-2"), None);
    assert_eq!(of("data-edge-relay-2"), None);
    assert_eq!(of("spool-edge-relay-99999999999"), None, "past u32");
}

#[test]
fn a_claim_left_without_a_report_is_drained() {
    let (actions, standing) = plan(&scaled_in(), &cfg(false));
    assert_eq!(actions, [create(2)]);
    assert_eq!(standing[&spool_name(STS, 2)], Standing::Left(None));
    assert_eq!(
        standing.len(),
        1,
        "claims below the replica count are the relays' own"
    );
}

#[test]
fn a_pod_still_stopping_drains_its_own_spool() {
    let mut o = scaled_in();
    o.pods.insert(2);
    let (actions, standing) = plan(&o, &cfg(true));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(standing[&spool_name(STS, 2)], Standing::InUse);
}

#[test]
fn an_empty_spool_is_left_alone_or_its_claim_deleted_when_asked() {
    let mut o = scaled_in();
    o.reports.insert(
        spool_name(STS, 2),
        stopped(0, NOW - 5, Some(DrainEnd::Empty)),
    );
    let (actions, standing) = plan(&o, &cfg(false));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(standing[&spool_name(STS, 2)], Standing::Empty);
    let (actions, _) = plan(&o, &cfg(true));
    assert_eq!(
        actions,
        [Action::DeleteClaim {
            name: format!("spool-{STS}-2"),
            uid: "uid-2".into()
        }]
    );
}

#[test]
fn mail_left_by_a_down_broker_waits_the_retry_interval_and_out_of_time_does_not() {
    let mut o = scaled_in();
    o.reports.insert(
        spool_name(STS, 2),
        stopped(7, NOW - 10, Some(DrainEnd::Undeliverable)),
    );
    let (actions, standing) = plan(&o, &cfg(true));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(standing[&spool_name(STS, 2)], Standing::Left(Some(7)));
    o.reports.insert(
        spool_name(STS, 2),
        stopped(7, NOW - 300, Some(DrainEnd::Undeliverable)),
    );
    assert_eq!(plan(&o, &cfg(true)).0, [create(2)]);
    o.reports.insert(
        spool_name(STS, 2),
        stopped(7, NOW, Some(DrainEnd::Deadline)),
    );
    assert_eq!(
        plan(&o, &cfg(true)).0,
        [create(2)],
        "the drain ran out of time: go on at once"
    );
}

#[test]
fn a_spool_whose_relay_died_with_it_open_is_drained() {
    let mut o = scaled_in();
    o.reports
        .insert(spool_name(STS, 2), SpoolReport::running(NOW - 3600));
    assert_eq!(plan(&o, &cfg(true)).0, [create(2)]);
}

#[test]
fn drain_jobs_are_waited_for_removed_when_done_and_failed_ones_hold_the_retry() {
    let job = |finished| DrainJob {
        name: job_name(STS, 2),
        ordinal: 2,
        finished,
    };
    let mut o = scaled_in();
    o.reports
        .insert(spool_name(STS, 2), SpoolReport::running(NOW - 20));
    o.jobs = vec![job(None)];
    let (actions, standing) = plan(&o, &cfg(true));
    assert!(actions.is_empty(), "running: {actions:?}");
    assert_eq!(standing[&spool_name(STS, 2)], Standing::InUse);

    o.reports.insert(
        spool_name(STS, 2),
        stopped(0, NOW - 2, Some(DrainEnd::Empty)),
    );
    o.jobs = vec![job(Some(Finished {
        succeeded: true,
        at: NOW - 1,
    }))];
    let del = |left| Action::DeleteJob {
        name: job_name(STS, 2),
        left,
    };
    assert_eq!(
        plan(&o, &cfg(true)).0,
        [del(Some(0))],
        "no claim deletion while the Job is there"
    );
    // The Job could not write its report (no API access): its exit 0 says empty.
    o.reports
        .insert(spool_name(STS, 2), SpoolReport::running(NOW - 20));
    assert_eq!(
        plan(&o, &cfg(true)).0,
        [
            Action::RecordEmpty {
                spool: spool_name(STS, 2)
            },
            del(Some(0))
        ]
    );

    o.reports.insert(
        spool_name(STS, 2),
        stopped(4, NOW - 2, Some(DrainEnd::Undeliverable)),
    );
    o.jobs = vec![job(Some(Finished {
        succeeded: false,
        at: NOW - 1,
    }))];
    assert!(plan(&o, &cfg(true)).0.is_empty(), "a failed drain waits");
    o.jobs = vec![job(Some(Finished {
        succeeded: false,
        at: NOW - 301,
    }))];
    assert_eq!(plan(&o, &cfg(true)).0, [del(Some(4))]);
}

#[test]
fn scaled_up_again_the_drain_job_goes_and_the_pod_gets_its_claim() {
    let mut o = scaled_in();
    o.replicas = 3;
    o.pods.insert(2);
    o.jobs = vec![DrainJob {
        name: job_name(STS, 2),
        ordinal: 2,
        finished: None,
    }];
    let (actions, standing) = plan(&o, &cfg(true));
    assert_eq!(
        actions,
        [Action::DeleteJob {
            name: job_name(STS, 2),
            left: None
        }]
    );
    assert!(standing.is_empty());
}

/// The relay StatefulSet as the chart renders it (the parts the Job uses).
fn chart_statefulset() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": STS, "namespace": "mail", "uid": "sts-uid",
            "labels": {"app.kubernetes.io/name": "amqp-relay", "app.kubernetes.io/instance": "edge",
                       "app.kubernetes.io/component": "relay", "helm.sh/chart": "amqp-relay-0.1.0"}},
        "spec": {
            "replicas": 2,
            "serviceName": "edge-relay-headless",
            "selector": {"matchLabels": {"app.kubernetes.io/component": "relay"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/component": "relay", "app.kubernetes.io/instance": "edge"}},
                "spec": {
                    "serviceAccountName": "edge-relay",
                    "securityContext": {"runAsNonRoot": true},
                    "containers": [
                        {"name": "relay", "image": "amqp-relay:1",
                         "args": ["relay", "--policy", "/etc/amqp-relay/base/policy.lua"],
                         "env": [{"name": "AMQP_RELAY_SPOOL_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                 {"name": "AMQP_RELAY_DRAIN_TIMEOUT", "value": "120s"},
                                 {"name": "AMQP_RELAY_SPOOL_REPORT_CONFIGMAP", "value": "mail/edge-spools"}],
                         "ports": [{"name": "http", "containerPort": 8000}],
                         "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                         "livenessProbe": {"httpGet": {"path": "/api/check-liveness/v1", "port": "http"}},
                         "securityContext": {"readOnlyRootFilesystem": true},
                         "volumeMounts": [{"name": "spool", "mountPath": "/var/spool/amqp-relay"},
                                          {"name": "routes-policy", "mountPath": "/etc/amqp-relay/routes-policy"}]},
                        {"name": "sidecar", "image": "log-shipper:1"}
                    ],
                    "volumes": [{"name": "routes-policy", "configMap": {"name": "edge-policy"}}]
                }
            },
            "volumeClaimTemplates": [{"metadata": {"name": "spool"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
        }
    })
}

#[test]
fn the_drain_job_is_the_relay_pod_running_drain_on_the_claim_and_nothing_else() {
    let sts: StatefulSet = serde_json::from_value(chart_statefulset()).unwrap();
    let job = drain_job(&sts, 2, "spool-edge-relay-2", &cfg(false)).unwrap();
    let j = serde_json::to_value(&job).unwrap();
    assert_eq!(j["metadata"]["name"], "edge-relay-drain-2");
    assert_eq!(j["metadata"]["labels"][DRAIN_OF], STS);
    assert_eq!(j["metadata"]["labels"][SPOOL_LABEL], "spool-edge-relay-2");
    assert_eq!(
        j["metadata"]["labels"]["app.kubernetes.io/instance"],
        "edge"
    );
    assert!(j["metadata"]["labels"].get("helm.sh/chart").is_none());
    assert_eq!(j["metadata"]["ownerReferences"][0]["uid"], "sts-uid");
    assert_eq!(j["spec"]["backoffLimit"], 0);
    let pod = &j["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/component"], "drain",
        "not selected by the relay Services"
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["serviceAccountName"], "edge-relay");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(
        containers.len(),
        1,
        "no sidecar that would keep the Job running"
    );
    let c = &containers[0];
    assert_eq!(
        c["args"],
        json!([
            "drain",
            "--policy",
            "/etc/amqp-relay/base/policy.lua",
            "--timeout",
            "600s"
        ])
    );
    assert!(
        c.get("ports").is_none()
            && c.get("readinessProbe").is_none()
            && c.get("livenessProbe").is_none()
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let env = c["env"].as_array().unwrap();
    let value = |n: &str| env.iter().find(|e| e["name"] == n).cloned();
    assert_eq!(
        value("AMQP_RELAY_SPOOL_NAME").unwrap(),
        json!({"name": "AMQP_RELAY_SPOOL_NAME", "value": "edge-relay-2"})
    );
    assert!(value("AMQP_RELAY_DRAIN_TIMEOUT").is_none());
    assert_eq!(
        value("AMQP_RELAY_SPOOL_REPORT_CONFIGMAP").unwrap()["value"],
        "mail/edge-spools"
    );
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert!(
        volumes.iter().any(|v| v["name"] == "spool"
            && v["persistentVolumeClaim"]["claimName"] == "spool-edge-relay-2")
    );
    assert!(volumes.iter().any(|v| v["name"] == "routes-policy"));
}

#[test]
fn a_pod_template_the_job_cannot_be_built_from_is_an_error_that_says_why() {
    let mut v = chart_statefulset();
    v["spec"]["template"]["spec"]["containers"][0]["args"] = json!(["operator"]);
    let sts: StatefulSet = serde_json::from_value(v).unwrap();
    let err = drain_job(&sts, 2, "c", &cfg(false)).unwrap_err();
    assert!(err.contains("does not run 'relay'"), "{err}");
    let mut v = chart_statefulset();
    v["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = json!([]);
    let sts: StatefulSet = serde_json::from_value(v).unwrap();
    let err = drain_job(&sts, 2, "c", &cfg(false)).unwrap_err();
    assert!(err.contains("mounts the 'spool' claim"), "{err}");
}

const STSS: &str = "/apis/apps/v1/namespaces/mail/statefulsets";
const PVCS: &str = "/api/v1/namespaces/mail/persistentvolumeclaims";
const PODS: &str = "/api/v1/namespaces/mail/pods";
const JOBS: &str = "/apis/batch/v1/namespaces/mail/jobs";
const CMS: &str = "/api/v1/namespaces/mail/configmaps";

fn object(kind: &str, api: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "mail"}})
}

fn recorder(client: &Client) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: "amqp-relay-operator".into(),
            instance: None,
        },
    )
}

fn report_text(r: &SpoolReport) -> String {
    serde_json::to_string(r).unwrap()
}

#[tokio::test]
async fn a_scale_in_is_drained_through_the_api_and_the_empty_claim_deleted() {
    let api = Arc::new(FakeApi::default());
    let client = api.client("mail");
    let rec = recorder(&client);
    let cfg = cfg(true);
    api.put(STSS, chart_statefulset());
    for n in 0..3 {
        api.put(
            PVCS,
            object("PersistentVolumeClaim", "v1", &format!("spool-{STS}-{n}")),
        );
    }
    // Another release's claim and drain Job in the same namespace.
    api.put(
        PVCS,
        object("PersistentVolumeClaim", "v1", "spool-other-relay-5"),
    );
    let mut foreign = object("Job", "batch/v1", "other-relay-drain-5");
    foreign["metadata"]["labels"] = json!({DRAIN_OF: "other-relay"});
    api.put(JOBS, foreign);
    for n in 0..2 {
        api.put(PODS, object("Pod", "v1", &format!("{STS}-{n}")));
    }
    let mut cm = object("ConfigMap", "v1", "edge-spools");
    cm["data"] = json!({
        "edge-relay-0": report_text(&SpoolReport::running(NOW)),
        "edge-relay-2": report_text(&stopped(9, NOW, Some(DrainEnd::Deadline))),
    });
    api.put(CMS, cm);

    let standing = reconcile(&client, "mail", &cfg, &rec).await.unwrap();
    assert_eq!(standing[&spool_name(STS, 2)], Standing::Left(Some(9)));
    assert_eq!(
        api.names(JOBS),
        ["edge-relay-drain-2", "other-relay-drain-5"]
    );
    let job = api.get(JOBS, "edge-relay-drain-2").unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"],
        "spool-edge-relay-2"
    );
    assert!(
        api.calls
            .lock()
            .unwrap()
            .iter()
            .any(|(m, p)| *m == Method::GET
                && p.starts_with(JOBS)
                && p.contains("labelSelector=amqprelay.io%2Fdrain-of%3Dedge-relay")),
        "drain Jobs are listed by their label"
    );
    // Again, while the Job runs: nothing new.
    reconcile(&client, "mail", &cfg, &rec).await.unwrap();
    assert_eq!(api.count(Method::POST, JOBS), 1);

    // The Job ends, the spool empty; the Job goes, then the claim.
    api.edit(JOBS, "edge-relay-drain-2", |j| {
        j["status"] = json!({"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-06T00:00:00Z"}]});
    });
    api.edit(CMS, "edge-spools", |c| {
        c["data"]["edge-relay-2"] = json!(report_text(&stopped(0, NOW, Some(DrainEnd::Empty))));
    });
    reconcile(&client, "mail", &cfg, &rec).await.unwrap();
    assert_eq!(api.names(JOBS), ["other-relay-drain-5"]);
    let standing = reconcile(&client, "mail", &cfg, &rec).await.unwrap();
    assert_eq!(standing[&spool_name(STS, 2)], Standing::Empty);
    assert_eq!(
        api.names(PVCS),
        [
            "spool-edge-relay-0",
            "spool-edge-relay-1",
            "spool-other-relay-5"
        ]
    );
    let events = api.count(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/mail/events",
    );
    assert_eq!(events, 3, "DrainStarted, SpoolDrained, SpoolClaimDeleted");
}

#[tokio::test]
async fn an_empty_spool_the_job_could_not_report_is_recorded_once_and_not_drained_again() {
    let api = Arc::new(FakeApi::default());
    let client = api.client("mail");
    let rec = recorder(&client);
    let cfg = cfg(false);
    api.put(STSS, chart_statefulset());
    api.put(
        PVCS,
        object("PersistentVolumeClaim", "v1", "spool-edge-relay-2"),
    );
    // No report ConfigMap at all.
    reconcile(&client, "mail", &cfg, &rec).await.unwrap();
    api.edit(JOBS, "edge-relay-drain-2", |j| {
        j["status"] = json!({"conditions": [{"type": "Complete", "status": "True"}]});
    });
    reconcile(&client, "mail", &cfg, &rec).await.unwrap();
    let cm = api.get(CMS, "edge-spools").unwrap_or_else(|| {
        panic!(
            "created to hold the report: {:?}",
            api.calls.lock().unwrap()
        )
    });
    let r: SpoolReport =
        serde_json::from_str(cm["data"]["edge-relay-2"].as_str().unwrap()).unwrap();
    assert!(r.is_empty(), "{r:?}");
    for _ in 0..3 {
        reconcile(&client, "mail", &cfg, &rec).await.unwrap();
    }
    assert_eq!(
        api.count(Method::POST, JOBS),
        1,
        "one drain, not one per pass"
    );
    assert_eq!(
        api.names(PVCS),
        ["spool-edge-relay-2"],
        "kept: not asked to delete"
    );
}

#[tokio::test]
async fn a_claim_recreated_under_the_same_name_is_never_deleted() {
    let api = Arc::new(FakeApi::default());
    let client = api.client("mail");
    let cfg = cfg(true);
    let sts: StatefulSet = serde_json::from_value(chart_statefulset()).unwrap();
    api.put(
        PVCS,
        object("PersistentVolumeClaim", "v1", "spool-edge-relay-2"),
    );
    // The plan saw the old claim; a new one with that name exists now.
    let stale = Action::DeleteClaim {
        name: "spool-edge-relay-2".into(),
        uid: "the-old-uid".into(),
    };
    act(&client, "mail", &cfg, &sts, &[stale], &recorder(&client))
        .await
        .unwrap();
    assert_eq!(api.names(PVCS), ["spool-edge-relay-2"]);
}

#[tokio::test]
async fn without_the_statefulset_there_is_nothing_to_do() {
    let api = Arc::new(FakeApi::default());
    let client = api.client("mail");
    api.put(
        PVCS,
        object("PersistentVolumeClaim", "v1", "spool-edge-relay-2"),
    );
    let standing = reconcile(&client, "mail", &cfg(true), &recorder(&client))
        .await
        .unwrap();
    assert!(standing.is_empty());
    assert_eq!(api.count(Method::POST, JOBS), 0);
    assert_eq!(api.names(PVCS), ["spool-edge-relay-2"]);
}
