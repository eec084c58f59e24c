//! Where a route publishes: its broker URLs, in order, with credentials
//! composed in from a Secret when the route names one, and the CA for
//! amqps://. Errors name the field and the Secret, never a value.

use super::RouteId;
use super::cluster::Clusters;
use crate::model::config::parse_duration;
use crate::operator::crd::{Broker, ClusterRef, CredentialsSecretRef, SecretKeyRef};
use k8s_openapi::api::core::v1::Secret;

/// The label a Secret carries for the operator to read it; no other Secret
/// is ever listed or cached.
pub const CREDENTIALS_LABEL: &str = "amqprelay.io/credentials";

/// How long a connection on a later URL waits before trying the earlier ones.
const DEFAULT_FAILBACK_SECONDS: u64 = 30;

/// A route's broker, resolved.
pub(super) struct Target {
    /// Tried in order.
    pub urls: Urls,
    /// CA certificate (PEM) for amqps://.
    pub ca: Option<Vec<u8>>,
    pub failback_seconds: u64,
}

pub(super) enum Urls {
    /// Without credentials: written into the policy.
    Plain(Vec<String>),
    /// With credentials: kept in the rendered Secret.
    Secret(Vec<Vec<u8>>),
}

impl Urls {
    fn tls(&self) -> bool {
        match self {
            Urls::Plain(v) => v.iter().all(|u| u.starts_with("amqps://")),
            Urls::Secret(v) => v.iter().all(|u| u.starts_with(b"amqps://")),
        }
    }
}

pub(super) fn resolve(
    b: &Broker,
    id: &RouteId,
    secrets: &[Secret],
    clusters: &Clusters,
) -> Result<Target, String> {
    let (listed, default_user) = match (&b.url, &b.urls, &b.url_secret_ref, &b.rabbitmq_cluster_ref)
    {
        (Some(u), None, None, None) => {
            plain_url("broker.url", u)?;
            (vec![u.clone()], None)
        }
        (None, Some(list), None, None) => {
            if list.is_empty() || list.len() > 8 {
                return Err("broker.urls must list 1 to 8 URLs".into());
            }
            for (i, u) in list.iter().enumerate() {
                plain_url(&format!("broker.urls[{i}]"), u)?;
            }
            (list.clone(), None)
        }
        (None, None, Some(sr), None) => {
            if b.credentials_secret_ref.is_some() {
                return Err("broker.credentialsSecretRef goes with url, urls or rabbitmqClusterRef; a urlSecretRef URL carries its own credentials".into());
            }
            return with_ca(
                b,
                Urls::Secret(vec![url_from_secret(sr, id, secrets)?]),
                id,
                secrets,
            );
        }
        (None, None, None, Some(cr)) => {
            let (url, user) = cluster_url(b, cr, id, secrets, clusters)?;
            (vec![url], Some(user))
        }
        _ => {
            return Err(
                "broker: set exactly one of url, urls, urlSecretRef and rabbitmqClusterRef".into(),
            );
        }
    };
    let credentials = match &b.credentials_secret_ref {
        Some(c) => Some(credentials(c, id, secrets)?),
        None => default_user,
    };
    let urls = match credentials {
        None => Urls::Plain(listed),
        Some((user, password)) => {
            let composed = listed
                .iter()
                .map(|u| with_credentials(u, &user, &password))
                .collect::<Result<_, _>>()?;
            Urls::Secret(composed)
        }
    };
    with_ca(b, urls, id, secrets)
}

/// The cluster's URL (its Service, or the host and port its default-user
/// Secret gives) and that user's credentials, or why it cannot be used.
fn cluster_url(
    b: &Broker,
    cr: &ClusterRef,
    id: &RouteId,
    secrets: &[Secret],
    clusters: &Clusters,
) -> Result<(String, (String, String)), String> {
    let field = "broker.rabbitmqClusterRef";
    let ns = cr.namespace.as_deref().unwrap_or(&id.namespace);
    let name = &cr.name;
    if ns != id.namespace && !clusters.shared_namespaces.iter().any(|s| s == ns) {
        return Err(format!(
            "{field}: RabbitmqCluster {ns}/{name} is in another namespace, and the operator does not share {ns}'s clusters (sharedRabbitmqClusterNamespaces)"
        ));
    }
    if let Some(why) = clusters.unreadable.get(&(ns.to_owned(), name.clone())) {
        return Err(format!(
            "{field}: RabbitmqCluster {ns}/{name} cannot be read: {why}"
        ));
    }
    let c = clusters
        .find(ns, name)
        .ok_or_else(|| format!("{field}: RabbitmqCluster {ns}/{name} not found"))?;
    if !c.admits(&id.namespace) {
        return Err(format!(
            "{field}: RabbitmqCluster {ns}/{name} does not admit namespace {}: its owner lists the namespaces that may use it in the {} annotation",
            id.namespace,
            super::cluster::ALLOWED_NAMESPACES
        ));
    }
    let user = c.default_user.as_ref().ok_or_else(|| {
        format!("{field}: RabbitmqCluster {ns}/{name} has no status.defaultUser yet (is RabbitMQ's cluster operator running?)")
    })?;
    let s = find(field, secrets, &user.namespace, &user.name).map_err(|_| {
        format!(
            "{field}: the default-user Secret {}/{} of RabbitmqCluster {ns}/{name} was not found",
            user.namespace, user.name
        )
    })?;
    let text = |logical: &str| -> Option<String> {
        let v = secret_value(s, user.key(logical))?;
        Some(String::from_utf8_lossy(&v).trim().to_owned())
    };
    let missing = |logical: &str| {
        format!(
            "{field}: the default-user Secret {}/{} has no {logical:?} key",
            user.namespace, user.name
        )
    };
    let host = match (text("host"), &c.service) {
        (Some(h), _) if !h.is_empty() => h,
        (_, Some((svc_ns, svc))) => format!("{svc}.{svc_ns}.svc"),
        _ => return Err(missing("host")),
    };
    // TLS is the cluster's (MTO's TLSEnabled), never the route's guess: a
    // route's tls block only adds a CA.
    let tls = c.tls;
    if b.tls.is_some() && !tls {
        return Err(format!(
            "{field}: broker.tls is set but RabbitmqCluster {ns}/{name} has no TLS (spec.tls.secretName)"
        ));
    }
    let port = match text("port") {
        Some(p) if !p.is_empty() => p,
        _ if tls => "5671".into(),
        _ => "5672".into(),
    };
    if port.parse::<u16>().is_err()
        || host
            .chars()
            .any(|c| c == '/' || c == '@' || c.is_whitespace())
    {
        return Err(format!(
            "{field}: the default-user Secret {}/{} holds no usable host and port",
            user.namespace, user.name
        ));
    }
    let scheme = if tls { "amqps" } else { "amqp" };
    let username = text("username").ok_or_else(|| missing("username"))?;
    let password = secret_value(s, user.key("password"))
        .map(|v| {
            String::from_utf8_lossy(&v)
                .trim_end_matches(['\r', '\n'])
                .to_owned()
        })
        .ok_or_else(|| missing("password"))?;
    Ok((
        format!("{scheme}://{host}:{port}/%2f"),
        (username, password),
    ))
}

fn with_ca(b: &Broker, urls: Urls, id: &RouteId, secrets: &[Secret]) -> Result<Target, String> {
    let ca = match &b.tls {
        None => None,
        Some(_) if !urls.tls() => {
            return Err("broker.tls needs amqps:// URLs (every one of them)".into());
        }
        Some(tls) => {
            let pem = secret_key("broker.tls.caSecretRef", &tls.ca_secret_ref, id, secrets)?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "broker.tls.caSecretRef: Secret {}/{} key {:?} holds no PEM certificate",
                    id.namespace, tls.ca_secret_ref.name, tls.ca_secret_ref.key
                ));
            }
            Some(pem)
        }
    };
    let failback_seconds = match &b.failback_interval {
        None => DEFAULT_FAILBACK_SECONDS,
        Some(v) => {
            let d = parse_duration(v).map_err(|e| format!("broker.failbackInterval: {e}"))?;
            d.as_secs().max(1)
        }
    };
    Ok(Target {
        urls,
        ca,
        failback_seconds,
    })
}

/// A URL written into the policy: it must not hold credentials.
fn plain_url(field: &str, u: &str) -> Result<(), String> {
    check_url(u).map_err(|e| format!("{field}: {e}"))?;
    let authority = u
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "{field} must not hold credentials; name them with credentialsSecretRef, or put the URL in a Secret and use urlSecretRef"
        ));
    }
    Ok(())
}

pub(super) fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("amqp://")
        .or_else(|| u.strip_prefix("amqps://"))
        .unwrap_or("");
    if rest.is_empty() {
        return Err(format!("{u:?} must start with amqp:// or amqps://"));
    }
    if u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a URL must not contain spaces or control characters".into());
    }
    Ok(())
}

fn url_from_secret(sr: &SecretKeyRef, id: &RouteId, secrets: &[Secret]) -> Result<Vec<u8>, String> {
    let v = secret_key("broker.urlSecretRef", sr, id, secrets)?;
    let text = std::str::from_utf8(&v)
        .map_err(|_| "broker.urlSecretRef: the value is not UTF-8 text".to_string())?;
    // Say what is wrong without echoing the value: it may hold a password.
    check_url(text.trim()).map_err(|_| {
        format!(
            "broker.urlSecretRef: Secret {}/{} key {:?} does not hold an amqp:// URL",
            id.namespace, sr.name, sr.key
        )
    })?;
    Ok(text.trim().as_bytes().to_vec())
}

fn credentials(
    c: &CredentialsSecretRef,
    id: &RouteId,
    secrets: &[Secret],
) -> Result<(String, String), String> {
    let field = "broker.credentialsSecretRef";
    let s = find(field, secrets, &id.namespace, &c.name)?;
    let text = |key: &str| -> Result<String, String> {
        let v = secret_value(s, key).ok_or_else(|| {
            format!(
                "{field}: Secret {}/{} has no key {key:?}",
                id.namespace, c.name
            )
        })?;
        let v = String::from_utf8(v).map_err(|_| {
            format!(
                "{field}: Secret {}/{} key {key:?} is not UTF-8 text",
                id.namespace, c.name
            )
        })?;
        Ok(v.trim_end_matches(['\r', '\n']).to_owned())
    };
    let user = text(&c.username_key)?;
    if user.is_empty() {
        return Err(format!(
            "{field}: Secret {}/{} key {:?} is empty",
            id.namespace, c.name, c.username_key
        ));
    }
    Ok((user, text(&c.password_key)?))
}

/// Everything but RFC 3986's unreserved characters: `url` leaves `%` as it
/// is in user info (taking it for an escape), so encode it all first.
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `u` with the user name and password percent-encoded into its authority.
fn with_credentials(u: &str, user: &str, password: &str) -> Result<Vec<u8>, String> {
    let mut parsed =
        url::Url::parse(u).map_err(|e| format!("broker URL {u:?} does not parse: {e}"))?;
    let user = percent_encoding::utf8_percent_encode(user, USERINFO).to_string();
    let password = percent_encoding::utf8_percent_encode(password, USERINFO).to_string();
    if parsed.set_username(&user).is_err() || parsed.set_password(Some(&password)).is_err() {
        return Err(format!("broker URL {u:?} has no host to log in to"));
    }
    Ok(parsed.as_str().as_bytes().to_vec())
}

fn find<'a>(
    field: &str,
    secrets: &'a [Secret],
    ns: &str,
    name: &str,
) -> Result<&'a Secret, String> {
    secrets
        .iter()
        .find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref().unwrap_or("default") == ns
        })
        .ok_or_else(|| {
            format!(
                "{field}: Secret {ns}/{name} not found (the operator reads only Secrets labeled {CREDENTIALS_LABEL}=true)"
            )
        })
}

fn secret_key(
    field: &str,
    r: &SecretKeyRef,
    id: &RouteId,
    secrets: &[Secret],
) -> Result<Vec<u8>, String> {
    let s = find(field, secrets, &id.namespace, &r.name)?;
    secret_value(s, &r.key).ok_or_else(|| {
        format!(
            "{field}: Secret {}/{} has no key {:?}",
            id.namespace, r.name, r.key
        )
    })
}

fn secret_value(s: &Secret, key: &str) -> Option<Vec<u8>> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            s.string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.clone().into_bytes())
        })
}

/// The Secrets a route's broker comes from, by uid and resourceVersion:
/// their versions, never their values.
pub(super) fn sources(
    b: &Broker,
    ns: &str,
    secrets: &[Secret],
    clusters: &Clusters,
) -> Vec<String> {
    let mut names: Vec<(&str, &str, String)> = Vec::new();
    if let Some(r) = &b.url_secret_ref {
        names.push((ns, &r.name, r.key.clone()));
    }
    if let Some(c) = &b.credentials_secret_ref {
        names.push((
            ns,
            &c.name,
            format!("{},{}", c.username_key, c.password_key),
        ));
    }
    if let Some(t) = &b.tls {
        names.push((ns, &t.ca_secret_ref.name, t.ca_secret_ref.key.clone()));
    }
    let cluster = b
        .rabbitmq_cluster_ref
        .as_ref()
        .and_then(|cr| clusters.find(cr.namespace.as_deref().unwrap_or(ns), &cr.name));
    if let Some(user) = cluster.and_then(|c| c.default_user.as_ref()) {
        names.push((&user.namespace, &user.name, "default-user".into()));
    }
    names
        .into_iter()
        .filter_map(|(ns, name, keys)| {
            let s = find("", secrets, ns, name).ok()?;
            Some(format!(
                "{ns}/{name}/{keys}@{}/{}",
                s.metadata.uid.as_deref().unwrap_or(""),
                s.metadata.resource_version.as_deref().unwrap_or("")
            ))
        })
        .collect()
}
