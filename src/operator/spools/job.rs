//! The Job that drains a spool left behind: the relay StatefulSet's own pod
//! template (image, security context, volumes, environment), with the relay
//! container running `amqp-relay drain` on the claim of that ordinal, and
//! nothing else (no ports, probes or sidecars: it exits when done).

use super::Config;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    EnvVar, PersistentVolumeClaimVolumeSource, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

/// Label on drain Jobs: the StatefulSet whose spool they drain.
pub const DRAIN_OF: &str = "amqprelay.io/drain-of";
/// Label on drain Jobs: the claim they drain.
pub const SPOOL_LABEL: &str = "amqprelay.io/spool";
const COMPONENT: &str = "app.kubernetes.io/component";

pub fn job_name(statefulset: &str, ordinal: u32) -> String {
    format!("{statefulset}-drain-{ordinal}")
}

/// The drain Job for `claim` (ordinal `ordinal`) of `sts`.
pub fn drain_job(
    sts: &StatefulSet,
    ordinal: u32,
    claim: &str,
    cfg: &Config,
) -> Result<Job, String> {
    let name = sts
        .metadata
        .name
        .clone()
        .ok_or("the StatefulSet has no name")?;
    let mut template: PodTemplateSpec = sts.spec.template.clone();
    let mut pod = template
        .spec
        .take()
        .ok_or("the StatefulSet's pod template has no spec")?;
    let at = pod
        .containers
        .iter()
        .position(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == cfg.claim_template)
        })
        .ok_or_else(|| {
            format!(
                "no container of {name} mounts the '{}' claim",
                cfg.claim_template
            )
        })?;
    let mut c = pod.containers.swap_remove(at);
    let args = c.args.take().unwrap_or_default();
    let rest = match args.split_first() {
        Some((first, rest)) if first == "relay" => rest.to_vec(),
        _ => {
            return Err(format!(
                "the {} container of {name} does not run 'relay' ({args:?})",
                c.name
            ));
        }
    };
    c.args = Some(
        ["drain".to_string()]
            .into_iter()
            .chain(rest)
            .chain([
                "--timeout".to_string(),
                format!("{}s", cfg.drain_timeout.as_secs()),
            ])
            .collect(),
    );
    c.ports = None;
    c.liveness_probe = None;
    c.readiness_probe = None;
    c.startup_probe = None;
    let spool_name = format!("{name}-{ordinal}");
    let mut env: Vec<EnvVar> = c.env.take().unwrap_or_default();
    env.retain(|e| e.name != "AMQP_RELAY_SPOOL_NAME" && e.name != "AMQP_RELAY_DRAIN_TIMEOUT");
    env.push(EnvVar {
        name: "AMQP_RELAY_SPOOL_NAME".into(),
        value: Some(spool_name),
        ..Default::default()
    });
    c.env = Some(env);
    pod.containers = vec![c];
    pod.restart_policy = Some("Never".into());
    let mut volumes = pod.volumes.take().unwrap_or_default();
    volumes.retain(|v| v.name != cfg.claim_template);
    volumes.push(Volume {
        name: cfg.claim_template.clone(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_owned(),
            read_only: Some(false),
        }),
        ..Default::default()
    });
    pod.volumes = Some(volumes);
    template.spec = Some(pod);
    // Not a relay: the relay Services must not send traffic to it.
    let mut meta = template.metadata.take().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(COMPONENT.into(), "drain".into());
    labels.insert(DRAIN_OF.into(), name.clone());
    template.metadata = Some(meta);
    let mut job_labels: BTreeMap<String, String> = sts
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("app.kubernetes.io/"))
        .collect();
    job_labels.insert(COMPONENT.into(), "drain".into());
    job_labels.insert(DRAIN_OF.into(), name.clone());
    job_labels.insert(SPOOL_LABEL.into(), claim.to_owned());
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, ordinal)),
            namespace: sts.metadata.namespace.clone(),
            labels: Some(job_labels),
            owner_references: sts.metadata.uid.clone().map(|uid| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "StatefulSet".into(),
                    name: name.clone(),
                    uid,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(cfg.drain_timeout.as_secs() as i64 + 300),
            template,
            ..Default::default()
        }),
        status: None,
    })
}
