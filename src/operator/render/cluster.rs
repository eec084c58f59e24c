//! A RabbitmqCluster of RabbitMQ's cluster operator as a route's broker, as
//! RabbitMQ's messaging-topology-operator reads one: the default user's
//! Secret and the client Service are the ones the cluster operator makes
//! (`<cluster>-default-user`, `<cluster>`) in the cluster's own namespace,
//! whatever the status says (whoever may write a cluster's status must not
//! be able to point the operator at another Secret); TLS comes from the
//! cluster's `spec.tls`; a cluster in another namespace serves only the
//! namespaces its `rabbitmq.com/topology-allowed-namespaces` annotation
//! names.

use std::collections::BTreeMap;

/// `rabbitmq.com/v1beta1`, kind `RabbitmqCluster`.
pub const GROUP: &str = "rabbitmq.com";
pub const VERSION: &str = "v1beta1";
pub const KIND: &str = "RabbitmqCluster";
pub const PLURAL: &str = "rabbitmqclusters";
/// MTO's annotation: namespaces (comma-separated, `*` for all) whose
/// resources may use a cluster of another namespace.
pub const ALLOWED_NAMESPACES: &str = "rabbitmq.com/topology-allowed-namespaces";

/// What a route needs of a RabbitmqCluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub namespace: String,
    pub name: String,
    /// `status.defaultUser.secretReference`; absent until the cluster
    /// operator has created the user.
    pub default_user: Option<UserSecret>,
    /// The client Service: (namespace, name).
    pub service: Option<(String, String)>,
    /// `spec.tls.secretName` is set: clients speak AMQPS (port 5671).
    pub tls: bool,
    /// The annotation's namespaces (`*` for any).
    pub allowed_namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserSecret {
    pub namespace: String,
    pub name: String,
    /// Logical key (`username`, `password`, `host`, `port`) → the Secret's key.
    pub keys: BTreeMap<String, String>,
}

impl UserSecret {
    pub fn key<'a>(&'a self, logical: &'a str) -> &'a str {
        self.keys
            .get(logical)
            .map(String::as_str)
            .unwrap_or(logical)
    }
}

impl Cluster {
    /// From the object as the API serves it; `None` when it is not one.
    pub fn from_object(o: &serde_json::Value) -> Option<Cluster> {
        let meta = &o["metadata"];
        let name = meta["name"].as_str()?.to_owned();
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
        // The status only says the cluster operator has made the user; where
        // it is is the cluster operator's fixed naming, in this namespace.
        let made = o["status"]["defaultUser"].is_object();
        let default_user = made.then(|| UserSecret {
            namespace: namespace.clone(),
            name: format!("{name}-default-user"),
            keys: BTreeMap::new(),
        });
        let service = made.then(|| (namespace.clone(), name.clone()));
        let tls = o["spec"]["tls"]["secretName"]
            .as_str()
            .is_some_and(|s| !s.is_empty());
        let allowed_namespaces = meta["annotations"][ALLOWED_NAMESPACES]
            .as_str()
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(Cluster {
            namespace,
            name,
            default_user,
            service,
            tls,
            allowed_namespaces,
        })
    }

    /// Whether routes of `namespace` may use this cluster (its own always).
    pub fn admits(&self, namespace: &str) -> bool {
        namespace == self.namespace
            || self
                .allowed_namespaces
                .iter()
                .any(|n| n == "*" || n == namespace)
    }
}

/// The RabbitmqClusters routes refer to, and where a route may refer to one
/// outside its own namespace.
#[derive(Debug, Clone, Default)]
pub struct Clusters {
    pub found: Vec<Cluster>,
    /// (namespace, name) → why it could not be read (other than absence).
    pub unreadable: BTreeMap<(String, String), String>,
    /// Namespaces whose clusters any watched namespace's routes may use.
    pub shared_namespaces: Vec<String>,
}

impl Clusters {
    pub fn find(&self, namespace: &str, name: &str) -> Option<&Cluster> {
        self.found
            .iter()
            .find(|c| c.namespace == namespace && c.name == name)
    }
}
