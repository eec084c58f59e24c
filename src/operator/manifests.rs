//! What the operator writes, as Kubernetes objects: the policy ConfigMap and
//! the credentials Secret, named after the relay.

use super::crd::AmqpRoute;
use super::render::{POLICY_KEY, Rendered};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const HASH_ANNOTATION: &str = "amqprelay.io/policy-hash";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "amqp-relay-operator");

fn meta(name: String, namespace: &str, relay: &str, hash: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            ("amqprelay.io/relay".to_owned(), relay.to_owned()),
        ])),
        annotations: Some(BTreeMap::from([(
            HASH_ANNOTATION.to_owned(),
            hash.to_owned(),
        )])),
        ..Default::default()
    }
}

pub fn policy_configmap(relay: &str, namespace: &str, r: &Rendered) -> ConfigMap {
    ConfigMap {
        metadata: meta(format!("{relay}-policy"), namespace, relay, &r.hash),
        data: Some(BTreeMap::from([(POLICY_KEY.to_owned(), r.policy.clone())])),
        ..Default::default()
    }
}

pub fn routes_secret(relay: &str, namespace: &str, r: &Rendered) -> Secret {
    Secret {
        metadata: meta(format!("{relay}-routes"), namespace, relay, &r.hash),
        type_: Some("Opaque".into()),
        data: Some(
            r.secret
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Objects read from YAML files: AmqpRoutes and Secrets; other kinds are skipped.
#[derive(Default)]
pub struct Inputs {
    pub routes: Vec<AmqpRoute>,
    pub secrets: Vec<Secret>,
    pub skipped: Vec<String>,
}

/// Reads every YAML document of `text`; `origin` names the file in errors.
pub fn read_yaml(
    text: &str,
    origin: &str,
    default_ns: &str,
    into: &mut Inputs,
) -> Result<(), String> {
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let where_ = format!("{origin}, document {}", i + 1);
        let value = serde_json::Value::deserialize(doc).map_err(|e| format!("{where_}: {e}"))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "AmqpRoute" => {
                let mut r: AmqpRoute = serde_json::from_value(value)
                    .map_err(|e| format!("{where_}: AmqpRoute: {e}"))?;
                r.metadata
                    .namespace
                    .get_or_insert_with(|| default_ns.to_owned());
                into.routes.push(r);
            }
            "Secret" => {
                let mut s: Secret =
                    serde_json::from_value(value).map_err(|e| format!("{where_}: Secret: {e}"))?;
                s.metadata
                    .namespace
                    .get_or_insert_with(|| default_ns.to_owned());
                into.secrets.push(s);
            }
            other => into
                .skipped
                .push(format!("{where_}: kind {other:?} skipped")),
        }
    }
    Ok(())
}

pub fn to_yaml<T: serde::Serialize>(obj: &T) -> String {
    serde_norway::to_string(obj).expect("Kubernetes objects serialise to YAML")
}
