//! Spools a scale-in left behind. A relay StatefulSet scaled from 3 to 2
//! leaves relay-2's claim, and whatever mail relay-2 could not deliver
//! before it stopped, on a volume no pod mounts. Strimzi and RabbitMQ's
//! cluster operator refuse such a scale-down; here it is allowed and loses
//! nothing: each claim at or above the replica count whose pod is gone and
//! whose spool is not known empty is drained by a Job running `amqp-relay
//! drain` on it (the relay's own pod template, policy and routes), retried
//! while mail is left, reported, and the claim deleted once empty if asked.
//!
//! `plan` decides from what was observed (a pure function); `observe` and
//! `act` are the API calls around it.

mod job;
#[cfg(test)]
mod tests;

use crate::model::spool_report::{DrainEnd, SpoolReport, SpoolState};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions, PropagationPolicy};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

pub use job::{DRAIN_OF, SPOOL_LABEL, drain_job, job_name};

#[derive(Debug, Clone)]
pub struct Config {
    /// The relay StatefulSet.
    pub statefulset: String,
    /// Its volumeClaimTemplate holding the spool: claims are `<it>-<sts>-<n>`.
    pub claim_template: String,
    /// The ConfigMap relays and drain Jobs write their spool reports to.
    pub report_configmap: String,
    /// Delete a claim once its spool is known empty.
    pub delete_empty: bool,
    /// After a drain that left mail (or failed), wait this long before the next.
    pub retry_after: Duration,
    /// How long one drain Job delivers.
    pub drain_timeout: Duration,
}

/// A spool claim of the StatefulSet.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub name: String,
    pub uid: String,
    pub ordinal: u32,
}

/// A drain Job as seen.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainJob {
    pub name: String,
    pub ordinal: u32,
    pub finished: Option<Finished>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished {
    pub succeeded: bool,
    /// Unix seconds.
    pub at: u64,
}

/// What the API showed.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub replicas: u32,
    pub claims: Vec<Claim>,
    /// Ordinals whose pod exists (running or terminating).
    pub pods: HashSet<u32>,
    pub jobs: Vec<DrainJob>,
    /// By spool name (`<sts>-<n>`).
    pub reports: HashMap<String, SpoolReport>,
    /// Unix seconds.
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Drain the claim of this ordinal.
    CreateJob { ordinal: u32, claim: String },
    /// A finished drain (its report says what it left), or one whose ordinal is served again.
    DeleteJob { name: String, left: Option<u64> },
    /// The claim's spool is empty and the user asked for empty claims to go.
    DeleteClaim { name: String, uid: String },
    /// A drain Job succeeded (exit 0: the spool is empty) but the report does
    /// not say so (the Job could not write it): the operator records it.
    RecordEmpty { spool: String },
}

/// What a spool left behind holds now, as far as the operator knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// A pod or a drain Job has it.
    InUse,
    /// Known empty.
    Empty,
    /// Mail left (or unknown: never reported, or its relay died).
    Left(Option<u64>),
}

pub fn spool_name(statefulset: &str, ordinal: u32) -> String {
    format!("{statefulset}-{ordinal}")
}

/// The ordinal of a claim of `statefulset` from `template`, by its name.
pub fn ordinal_of(claim: &str, template: &str, statefulset: &str) -> Option<u32> {
    let rest = claim.strip_prefix(template)?.strip_prefix('-')?;
    let n = rest.strip_prefix(statefulset)?.strip_prefix('-')?;
    if n.is_empty() || n.starts_with('0') && n.len() > 1 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// What to do, and where each spool left behind stands.
pub fn plan(o: &Observed, cfg: &Config) -> (Vec<Action>, BTreeMap<String, Standing>) {
    let mut actions = Vec::new();
    let mut standing = BTreeMap::new();
    let job_of: HashMap<u32, &DrainJob> = o.jobs.iter().map(|j| (j.ordinal, j)).collect();
    // Scaled up again: the pod needs its claim; a drain under way stops (SIGTERM).
    for j in &o.jobs {
        if j.ordinal < o.replicas {
            actions.push(Action::DeleteJob {
                name: j.name.clone(),
                left: None,
            });
        }
    }
    for c in o.claims.iter().filter(|c| c.ordinal >= o.replicas) {
        let name = spool_name(&cfg.statefulset, c.ordinal);
        let report = o.reports.get(&name);
        if o.pods.contains(&c.ordinal) {
            // Still stopping: it drains itself and reports.
            standing.insert(name, Standing::InUse);
            continue;
        }
        if let Some(j) = job_of.get(&c.ordinal) {
            match j.finished {
                None => {}
                // A failed drain waits out the retry interval before it goes.
                Some(f) if !f.succeeded && o.now < f.at + cfg.retry_after.as_secs() => {}
                Some(f) => {
                    let known_empty = report.is_some_and(SpoolReport::is_empty);
                    if f.succeeded && !known_empty {
                        actions.push(Action::RecordEmpty {
                            spool: name.clone(),
                        });
                    }
                    let left = if f.succeeded {
                        Some(0)
                    } else {
                        report
                            .filter(|r| r.state == SpoolState::Stopped)
                            .map(|r| r.left)
                    };
                    actions.push(Action::DeleteJob {
                        name: j.name.clone(),
                        left,
                    });
                }
            }
            standing.insert(name, Standing::InUse);
            continue;
        }
        match report {
            Some(r) if r.is_empty() => {
                standing.insert(name, Standing::Empty);
                if cfg.delete_empty {
                    actions.push(Action::DeleteClaim {
                        name: c.name.clone(),
                        uid: c.uid.clone(),
                    });
                }
            }
            Some(r) if r.state == SpoolState::Stopped => {
                standing.insert(name, Standing::Left(Some(r.left)));
                // Out of time is no reason to wait; a broker that was down is.
                let out_of_time = r.drain == Some(DrainEnd::Deadline);
                if out_of_time || o.now >= r.at + cfg.retry_after.as_secs() {
                    actions.push(Action::CreateJob {
                        ordinal: c.ordinal,
                        claim: c.name.clone(),
                    });
                }
            }
            // Never reported, or its last user died with it open.
            _ => {
                standing.insert(name, Standing::Left(None));
                actions.push(Action::CreateJob {
                    ordinal: c.ordinal,
                    claim: c.name.clone(),
                });
            }
        }
    }
    (actions, standing)
}

fn unix(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> u64 {
    u64::try_from(t.0.as_second()).unwrap_or(0)
}

/// Reads the StatefulSet, its claims, pods, drain Jobs and spool reports;
/// `None` when the StatefulSet does not exist.
pub async fn observe(
    client: &Client,
    ns: &str,
    cfg: &Config,
    now: u64,
) -> Result<Option<(StatefulSet, Observed)>, kube::Error> {
    let Some(sts) = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&cfg.statefulset)
        .await?
    else {
        return Ok(None);
    };
    let replicas = sts.spec.replicas.unwrap_or(1).max(0) as u32;
    let claims: Vec<Claim> = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let name = p.metadata.name?;
            let ordinal = ordinal_of(&name, &cfg.claim_template, &cfg.statefulset)?;
            Some(Claim {
                name,
                uid: p.metadata.uid.unwrap_or_default(),
                ordinal,
            })
        })
        .collect();
    let pods_api = Api::<Pod>::namespaced(client.clone(), ns);
    let mut pods = HashSet::new();
    for c in claims.iter().filter(|c| c.ordinal >= replicas) {
        if pods_api
            .get_opt(&spool_name(&cfg.statefulset, c.ordinal))
            .await?
            .is_some()
        {
            pods.insert(c.ordinal);
        }
    }
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{DRAIN_OF}={}", cfg.statefulset)))
        .await?
        .items
        .into_iter()
        .filter_map(|j| drain_job_seen(j, &cfg.statefulset))
        .collect();
    let reports = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&cfg.report_configmap)
        .await?
        .and_then(|cm| cm.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_str(&v) {
            Ok(r) => Some((k, r)),
            Err(e) => {
                tracing::warn!(spool = %k, error = %e, "unreadable spool report; treated as unknown");
                None
            }
        })
        .collect();
    let observed = Observed {
        replicas,
        claims,
        pods,
        jobs,
        reports,
        now,
    };
    Ok(Some((sts, observed)))
}

fn drain_job_seen(j: Job, statefulset: &str) -> Option<DrainJob> {
    let name = j.metadata.name?;
    let ordinal = name
        .strip_prefix(statefulset)?
        .strip_prefix("-drain-")?
        .parse()
        .ok()?;
    let status = j.status.unwrap_or_default();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind && c.status == "True")
            .map(|c| c.last_transition_time.as_ref().map_or(0, unix))
    };
    let finished = match (condition("Complete"), condition("Failed")) {
        (Some(at), _) => Some(Finished {
            succeeded: true,
            at,
        }),
        (None, Some(at)) => Some(Finished {
            succeeded: false,
            at,
        }),
        (None, None) => None,
    };
    Some(DrainJob {
        name,
        ordinal,
        finished,
    })
}

/// Carries out the plan; one failed call does not stop the others.
pub async fn act(
    client: &Client,
    ns: &str,
    cfg: &Config,
    sts: &StatefulSet,
    actions: &[Action],
    recorder: &Recorder,
) -> Result<(), kube::Error> {
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let mut first_error = None;
    for a in actions {
        let (result, event) = match a {
            Action::RecordEmpty { spool } => {
                let report = SpoolReport {
                    drain: Some(DrainEnd::Empty),
                    ..SpoolReport::running(crate::model::message::now_ms() / 1000)
                };
                let report = SpoolReport {
                    state: SpoolState::Stopped,
                    ..report
                };
                match record(client, ns, &cfg.report_configmap, spool, &report).await {
                    Ok(()) => continue,
                    Err(e) => (Err(e), note(EventType::Normal, "", String::new())),
                }
            }
            Action::CreateJob { ordinal, claim } => match drain_job(sts, *ordinal, claim, cfg) {
                Ok(job) => (
                    jobs.create(&PostParams::default(), &job).await.map(|_| ()),
                    note(
                        EventType::Normal,
                        "DrainStarted",
                        format!(
                            "draining the spool left on {claim} with Job {}",
                            job_name(&cfg.statefulset, *ordinal)
                        ),
                    ),
                ),
                Err(why) => {
                    tracing::error!(%claim, %why, "cannot build a drain Job");
                    continue;
                }
            },
            Action::DeleteJob { name, left } => {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                let event = match left {
                    Some(0) => note(
                        EventType::Normal,
                        "SpoolDrained",
                        format!("drain Job {name}: the spool is empty"),
                    ),
                    Some(n) => note(
                        EventType::Warning,
                        "SpoolLeft",
                        format!(
                            "drain Job {name}: {n} message(s) left in the spool; draining again in {:?}",
                            cfg.retry_after
                        ),
                    ),
                    None => note(
                        EventType::Normal,
                        "DrainEnded",
                        format!("drain Job {name} removed"),
                    ),
                };
                (jobs.delete(name, &dp).await.map(|_| ()), event)
            }
            Action::DeleteClaim { name, uid } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                (
                    claims.delete(name, &dp).await.map(|_| ()),
                    note(
                        EventType::Normal,
                        "SpoolClaimDeleted",
                        format!("{name}: its spool is empty"),
                    ),
                )
            }
        };
        match result {
            // Someone else got there first: the next pass sees how things are.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                tracing::info!(?a, reason = %e.reason, "spool action overtaken");
            }
            Err(e) => {
                tracing::warn!(?a, error = %e, "spool action failed");
                first_error.get_or_insert(e);
            }
            Ok(()) => {
                tracing::info!(?a, "spool action");
                if let Err(e) = recorder.publish(&event, &sts.object_ref(&())).await {
                    tracing::warn!(error = %e, "could not record an event");
                }
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Writes a spool's report key, creating the ConfigMap if it is missing.
async fn record(
    client: &Client,
    ns: &str,
    configmap: &str,
    spool: &str,
    report: &SpoolReport,
) -> Result<(), kube::Error> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let text = serde_json::to_string(report).expect("a report is plain data");
    let patch = serde_json::json!({"data": {spool: text}});
    match api
        .patch(
            configmap,
            &Default::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(configmap.to_owned()),
                    ..Default::default()
                },
                data: Some([(spool.to_owned(), text)].into()),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

fn note(type_: EventType, reason: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Drain".into(),
        secondary: None,
    }
}

/// One look and the actions it calls for; returns where each spool left behind stands.
pub async fn reconcile(
    client: &Client,
    ns: &str,
    cfg: &Config,
    recorder: &Recorder,
) -> Result<BTreeMap<String, Standing>, kube::Error> {
    let now = crate::model::message::now_ms() / 1000;
    let Some((sts, observed)) = observe(client, ns, cfg, now).await? else {
        tracing::debug!(statefulset = %cfg.statefulset, "no relay StatefulSet: no spools to look after");
        return Ok(BTreeMap::new());
    };
    let (actions, standing) = plan(&observed, cfg);
    act(client, ns, cfg, &sts, &actions, recorder).await?;
    Ok(standing)
}
