//! A RabbitmqCluster of RabbitMQ's cluster operator as a route's broker:
//! its status names the Service and the default user's Secret.

use std::collections::BTreeMap;

/// `rabbitmq.com/v1beta1`, kind `RabbitmqCluster`.
pub const GROUP: &str = "rabbitmq.com";
pub const VERSION: &str = "v1beta1";
pub const KIND: &str = "RabbitmqCluster";
pub const PLURAL: &str = "rabbitmqclusters";

/// What a route needs of a RabbitmqCluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub namespace: String,
    pub name: String,
    /// `status.defaultUser.secretReference`; absent until the cluster
    /// operator has created the user.
    pub default_user: Option<UserSecret>,
    /// `status.defaultUser.serviceReference`: (namespace, name).
    pub service: Option<(String, String)>,
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
        let user = &o["status"]["defaultUser"];
        let secret = &user["secretReference"];
        let default_user = secret["name"].as_str().map(|n| UserSecret {
            name: n.to_owned(),
            namespace: secret["namespace"]
                .as_str()
                .unwrap_or(&namespace)
                .to_owned(),
            keys: secret["keys"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
        });
        let svc = &user["serviceReference"];
        let service = svc["name"].as_str().map(|n| {
            (
                svc["namespace"].as_str().unwrap_or(&namespace).to_owned(),
                n.to_owned(),
            )
        });
        Some(Cluster {
            namespace,
            name,
            default_user,
            service,
        })
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
