//! The `AmqpRoute` custom resource: which queues go to which broker, exchange
//! and routing key, and how.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// Several printcolumn(...) entries share keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "amqprelay.io",
    version = "v1alpha1",
    kind = "AmqpRoute",
    namespaced,
    shortname = "amqpr",
    category = "amqp-relay",
    status = "AmqpRouteStatus",
    doc = "Routes a relay queue (campaign:tenant@domain) to a RabbitMQ exchange and routing key",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.match.domain"),
    printcolumn(
        name = "Exchange",
        type_ = "string",
        json_path = ".spec.publish.exchange"
    ),
    printcolumn(
        name = "Routing key",
        type_ = "string",
        json_path = ".spec.publish.routingKey"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Relay",
        type_ = "string",
        description = "the relay serving the route (namespace/name)",
        json_path = ".status.relay"
    ),
    printcolumn(
        name = "Relays",
        type_ = "string",
        description = "ready relay pods running this generation / ready relay pods",
        json_path = ".status.relaysReady"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
/// Which queue the route takes, the broker it publishes to, and how it
/// publishes and delivers.
pub struct AmqpRouteSpec {
    /// Which queues take this route.
    #[serde(rename = "match")]
    pub route_match: RouteMatch,
    /// Where to publish.
    pub broker: Broker,
    /// How to publish.
    pub publish: Publish,
    /// Retry, expiry and concurrency of delivery.
    #[serde(default, skip_serializing_if = "Delivery::is_empty")]
    pub delivery: Delivery,
    /// Route the relay's own log records through this route (needs the relay's log hooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_events: Option<LogEvents>,
    /// The relay (an install of amqp-relay, `<release>-amqp-relay`) that
    /// serves this route; without a namespace, the route's own. Without a
    /// relayRef, only an install with the chart's
    /// `operator.serveRoutesWithoutRelayRef` (off by default) serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ref: Option<RelayRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RelayRef {
    /// The relay's name (the operator's `--relay`, `<release>-amqp-relay` in the chart).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The relay's namespace; the route's own when absent (as object
    /// references in Kubernetes are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Recipient domain of the queue (`user@DOMAIN`).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains('@') && !self.contains(':') && !self.contains('!')").message("domain must not contain '@', ':' or '!'"))]
    pub domain: String,
    /// Tenant of the queue; any tenant when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains('@') && !self.contains(':')").message("tenant must not contain '@' or ':'"))]
    pub tenant: Option<String>,
    /// Campaign of the queue; any campaign when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains(':')").message("campaign must not contain ':'"))]
    pub campaign: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.url) ? 1 : 0) + (has(self.urls) ? 1 : 0) + (has(self.urlSecretRef) ? 1 : 0) + (has(self.rabbitmqClusterRef) ? 1 : 0) == 1").message("set exactly one of url, urls, urlSecretRef and rabbitmqClusterRef"),
    validation = Rule::new("!(has(self.credentialsSecretRef) && has(self.urlSecretRef))").message("credentialsSecretRef goes with url, urls or rabbitmqClusterRef (another user than the cluster's default); with urlSecretRef the URL carries its own credentials")
)]
pub struct Broker {
    /// `amqp://host:port/vhost` without credentials (see credentialsSecretRef).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('amqp://') || self.startsWith('amqps://')").message("url must start with amqp:// or amqps://"))]
    pub url: Option<String>,
    /// Several `amqp://` URLs of one cluster, without credentials, tried in
    /// order: a connection goes to the first that answers, and one on a
    /// later URL moves back to an earlier one once it answers again (checked
    /// every `failbackInterval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub urls: Option<Vec<String>>,
    /// A key of a Secret in the route's namespace holding the full URL, credentials included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// A RabbitmqCluster of RabbitMQ's cluster operator, read as RabbitMQ's
    /// topology operator does: the relay connects to its Service (AMQPS
    /// when the cluster has spec.tls) as its default user
    /// (`<cluster>-default-user`) unless credentialsSecretRef names another.
    /// A cluster in another namespace only where the operator shares it
    /// (`sharedRabbitmqClusterNamespaces`) and the cluster's
    /// `rabbitmq.com/topology-allowed-namespaces` annotation admits the
    /// route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq_cluster_ref: Option<ClusterRef>,
    /// A Secret in the route's namespace holding the user name and password
    /// for `url`, `urls` or `rabbitmqClusterRef` (as RabbitMQ's cluster and
    /// topology operators write them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,
    /// With `urls`: how often a connection on a later URL tries the earlier
    /// ones again (a duration such as `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub failback_interval: Option<String>,
    /// TLS for amqps:// URLs: the CA to verify the broker with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BrokerTls>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// The RabbitmqCluster's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; the route's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

fn username_key() -> String {
    "username".into()
}

fn password_key() -> String {
    "password".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// The Secret's name (it needs the label amqprelay.io/credentials=true).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the user name.
    #[serde(default = "username_key")]
    #[schemars(length(min = 1, max = 253))]
    pub username_key: String,
    /// The key holding the password.
    #[serde(default = "password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub password_key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerTls {
    /// A key of a Secret in the route's namespace holding the CA certificate (PEM).
    pub ca_secret_ref: SecretKeyRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name (it needs the label amqprelay.io/credentials=true).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in it.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum Disposition {
    /// Keep the message and try again after the retry interval.
    #[default]
    #[serde(rename = "retry")]
    Retry,
    /// Give up on the message (logged as a bounce).
    #[serde(rename = "bounce")]
    Bounce,
}

fn yes() -> bool {
    true
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    /// Exchange; the default exchange when empty.
    #[serde(default)]
    #[schemars(length(max = 255))]
    pub exchange: String,
    /// Routing key of every message this route publishes.
    #[schemars(length(max = 255))]
    pub routing_key: String,
    /// delivery_mode 2, so the broker writes the message to disk.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// Ask the broker to return messages no queue takes (on by default: with
    /// `onReturn: retry`, a routing key that matches no queue keeps the message
    /// in the relay instead of the broker dropping it).
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// The `content_type` property (e.g. `message/rfc822`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub content_type: Option<String>,
    /// AMQP headers set on every message (string values of at most 1024
    /// characters, at most 64 headers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub headers: BTreeMap<String, String>,
    /// What to do when the broker Nacks.
    #[serde(default)]
    pub on_nack: Disposition,
    /// What to do when the broker returns an unroutable message (with
    /// `mandatory`): `retry` (the default) keeps it until a queue is bound or
    /// it reaches `maxAge`; `bounce` gives up on it.
    #[serde(default)]
    pub on_return: Disposition,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Connections to the broker per relay pod for this queue (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub connection_limit: Option<u32>,
    /// Messages published before waiting for their confirms (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: Option<u32>,
    /// First wait before a failed message is tried again, doubling up to
    /// maxRetryInterval; a duration such as `30s`, `5m`, `1h` (the relay's
    /// default: 20m, as KumoMTA's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub retry_interval: Option<String>,
    /// Longest wait between tries (a duration; default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_retry_interval: Option<String>,
    /// How long a message is kept trying before it expires (a duration;
    /// the relay's default: 7d, as KumoMTA's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_age: Option<String>,
    /// Rate such as `100/s` or `6000/m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+/(s|m|h|d)$"))]
    pub max_message_rate: Option<String>,
}

impl Delivery {
    fn is_empty(&self) -> bool {
        self == &Delivery::default()
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogEvents {
    /// Record types to route: Reception, Delivery, TransientFailure, Bounce, Expiration, AdminBounce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Message headers to copy into each log record (KumoMTA's log hook `headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Message metadata keys to copy into each log record (KumoMTA's log hook `meta`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta: Vec<String>,
}

/// What the operator found for this route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AmqpRouteStatus {
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: the route is valid and serves its queue (reasons `Valid`,
    /// `Invalid`, `Conflict`, `DomainNotAllowed`, `TooLarge`). `Ready`: every
    /// ready relay pod runs this generation (reasons `Published`,
    /// `Propagating`, `RelayRejected`, `NoRelays`, `CompileFailed`,
    /// `NotAccepted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Ready relay pods, and how many of them run this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relays: Option<RelayCount>,
    /// The same as `ready/total` (`2/3`), for the Relays column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 24))]
    pub relays_ready: Option<String>,
    /// The relay serving this route (`namespace/name`); absent while no
    /// relay does (no install claims it, or its relayRef names none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RelayCount {
    /// Ready relay pods running this generation of the route.
    pub ready: u32,
    /// Ready relay pods.
    pub total: u32,
}

impl AmqpRoute {
    /// Whether relay `relay` in `namespace` serves this route: its relayRef
    /// names that relay (a relayRef without a namespace names one in the
    /// route's own), or it has none and that relay claims such routes.
    pub fn served_by(&self, relay: &str, namespace: &str, claims_unreferenced: bool) -> bool {
        match &self.spec.relay_ref {
            None => claims_unreferenced,
            Some(r) => {
                let own = self.metadata.namespace.as_deref().unwrap_or("default");
                r.name == relay && r.namespace.as_deref().unwrap_or(own) == namespace
            }
        }
    }
}

/// The CRD as YAML, as `amqp-relay crd` prints it and `crds/amqproute.yaml` holds it.
pub fn crd_yaml() -> String {
    let crd = AmqpRoute::crd();
    serde_norway::to_string(&crd).expect("a CRD serialises to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crd_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/amqproute.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(),
            "crds/amqproute.yaml is out of date: run `cargo run -- crd > crds/amqproute.yaml`"
        );
    }

    #[test]
    fn crd_has_names_columns_and_rules() {
        let y = crd_yaml();
        for needle in [
            "shortNames:\n    - amqpr",
            "name: Routing key",
            "x-kubernetes-validations",
            "set exactly one of url, urls, urlSecretRef and rabbitmqClusterRef",
            "x-kubernetes-list-map-keys",
            "scope: Namespaced",
        ] {
            assert!(y.contains(needle), "missing {needle:?} in\n{y}");
        }
    }

    #[test]
    fn every_field_is_described_for_kubectl_explain() {
        fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
            let props = node["properties"].as_object().into_iter().flatten();
            for (k, v) in props {
                let p = format!("{path}.{k}");
                if v.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(v, &p, missing);
                walk(&v["items"], &format!("{p}[]"), missing);
            }
        }
        let crd = serde_json::to_value(AmqpRoute::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk(&schema["properties"]["spec"], ".spec", &mut missing);
        walk(&schema["properties"]["status"], ".status", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn spec_defaults() {
        let r: AmqpRouteSpec = serde_json::from_value(serde_json::json!({
            "match": {"domain": "amqp"},
            "broker": {"url": "amqp://rabbit:5672/%2f"},
            "publish": {"routingKey": "logging"}
        }))
        .unwrap();
        assert!(r.publish.persistent);
        assert_eq!(r.publish.on_nack, Disposition::Retry);
        assert!(r.publish.mandatory, "no silent loss by default");
        assert_eq!(r.publish.on_return, Disposition::Retry);
        assert_eq!(r.publish.exchange, "");
    }
}
