//! What the operator writes, as Kubernetes objects: the policy ConfigMap and
//! the credentials Secret, named after the relay.

use super::crd::AmqpRoute;
use super::render::{POLICY_KEY, Rendered};
use crate::policy::overlay::DIGEST_KEY;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const HASH_ANNOTATION: &str = "amqprelay.io/policy-hash";
/// The routes Secret's keys the operator writes (comma-separated): keys
/// others added (`kubectl edit`) are theirs, kept and not compared.
pub const KEYS_ANNOTATION: &str = "amqprelay.io/keys";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "amqp-relay-operator");

fn meta(name: String, namespace: &str, relay: &str, hash: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            ("amqprelay.io/relay".to_owned(), relay.to_owned()),
        ])),
        annotations: hash.map(|h| BTreeMap::from([(HASH_ANNOTATION.to_owned(), h.to_owned())])),
        ..Default::default()
    }
}

pub fn policy_configmap(relay: &str, namespace: &str, r: &Rendered) -> ConfigMap {
    ConfigMap {
        metadata: meta(format!("{relay}-policy"), namespace, relay, Some(&r.hash)),
        data: Some(BTreeMap::from([(POLICY_KEY.to_owned(), r.policy.clone())])),
        ..Default::default()
    }
}

/// The rendered credentials, plus the key of their digests when given
/// (the operator keeps one per relay; offline renders have none).
pub fn routes_secret(
    relay: &str,
    namespace: &str,
    r: &Rendered,
    digest_key: Option<&[u8]>,
) -> Secret {
    let mut data: BTreeMap<String, ByteString> = r
        .secret
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect();
    if let Some(key) = digest_key {
        data.insert(DIGEST_KEY.to_owned(), ByteString(key.to_vec()));
    }
    let mut metadata = meta(format!("{relay}-routes"), namespace, relay, None);
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    metadata.annotations = Some(BTreeMap::from([(
        KEYS_ANNOTATION.to_owned(),
        keys.join(","),
    )]));
    Secret {
        // No hash: its keys are compared as they are, and written only when they differ.
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Objects read from YAML files: AmqpRoutes, Secrets and RabbitmqClusters; other kinds are
/// skipped. A document that cannot be read is an error naming its file,
/// place and object; the rest are still read.
#[derive(Default)]
pub struct Inputs {
    pub routes: Vec<AmqpRoute>,
    pub secrets: Vec<Secret>,
    /// RabbitmqClusters (with their status), for routes that name one.
    pub clusters: Vec<super::render::cluster::Cluster>,
    pub skipped: Vec<String>,
    pub errors: Vec<String>,
}

/// `namespace/name` of a document, as far as it says.
fn object_id(value: &serde_json::Value, default_ns: &str) -> String {
    let meta = &value["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or(default_ns);
    match meta["name"].as_str() {
        Some(name) => format!("{ns}/{name}"),
        None => format!("{ns}/(no metadata.name)"),
    }
}

/// Deserialises with the path of the offending field in the error.
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// Reads every YAML document of `text`; `origin` names the file in errors.
pub fn read_yaml(text: &str, origin: &str, default_ns: &str, into: &mut Inputs) {
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let where_ = format!("{origin}, document {}", i + 1);
        let value = match serde_json::Value::deserialize(doc) {
            Ok(v) if v.is_null() => continue,
            Ok(v) => v,
            Err(e) => {
                // Broken YAML: the parser cannot find the next document.
                into.errors.push(format!("{where_}: {e}"));
                break;
            }
        };
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let id = object_id(&value, default_ns);
        match kind {
            "AmqpRoute" => match typed::<AmqpRoute>(value) {
                Ok(mut r) => {
                    r.metadata
                        .namespace
                        .get_or_insert_with(|| default_ns.to_owned());
                    into.routes.push(r);
                }
                Err(e) => into.errors.push(format!("{where_}: AmqpRoute {id}: {e}")),
            },
            "Secret" => match typed::<Secret>(value) {
                Ok(mut s) => {
                    s.metadata
                        .namespace
                        .get_or_insert_with(|| default_ns.to_owned());
                    into.secrets.push(s);
                }
                Err(e) => into.errors.push(format!("{where_}: Secret {id}: {e}")),
            },
            super::render::cluster::KIND => {
                let mut value = value;
                if value["metadata"]["namespace"].is_null() {
                    value["metadata"]["namespace"] = default_ns.into();
                }
                match super::render::cluster::Cluster::from_object(&value) {
                    Some(c) => into.clusters.push(c),
                    None => into
                        .errors
                        .push(format!("{where_}: RabbitmqCluster {id}: no metadata.name")),
                }
            }
            other => into
                .skipped
                .push(format!("{where_}: kind {other:?} ({id}) skipped")),
        }
    }
}

pub fn to_yaml<T: serde::Serialize>(obj: &T) -> String {
    serde_norway::to_string(obj).expect("Kubernetes objects serialise to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_yaml_is_one_error_and_reading_ends() {
        let mut inputs = Inputs::default();
        read_yaml(
            "kind: Secret\nmetadata: {name: s}\n---\nkind: AmqpRoute\nspec: [1, 2\n---\nkind: Secret\n",
            "f.yaml",
            "ns",
            &mut inputs,
        );
        assert_eq!(inputs.secrets.len(), 1);
        assert_eq!(inputs.errors.len(), 1, "{:?}", inputs.errors);
        assert!(inputs.errors[0].starts_with("f.yaml, document 2: "));
    }
}
