//! The relay's inject and admin credentials, created by the operator when
//! missing: a chart that generated passwords at render time would rotate them
//! on every `helm template` (Argo CD, Flux, `--dry-run`), breaking every
//! client. Created once with a random password, a Secret is never rewritten;
//! to choose the password, create the Secret first (or name your own).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ring::rand::SecureRandom;

/// A Secret to have (`name`) and the user name it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub name: String,
    pub username: String,
}

/// `NAME:USERNAME,NAME:USERNAME` (the chart's form).
pub fn parse(spec: &[String]) -> Result<Vec<Wanted>, String> {
    spec.iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once(':') {
            Some((name, username)) if !name.is_empty() && !username.is_empty() => Ok(Wanted {
                name: name.to_owned(),
                username: username.to_owned(),
            }),
            _ => Err(format!(
                "--ensure-credentials {s:?}: expected SECRET:USERNAME"
            )),
        })
        .collect()
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// 32 characters from the system's random source (~190 bits).
fn password() -> String {
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut b = [0u8; 64];
        rng.fill(&mut b).expect("the system's random source");
        // 62 × 4 = 248: bytes past it are dropped, so no character is likelier.
        out.extend(
            b.iter()
                .filter(|&&x| x < 248)
                .map(|&x| ALPHABET[(x % 62) as usize] as char)
                .take(32 - out.len()),
        );
    }
    out
}

/// Creates each wanted Secret that does not exist; returns the names created.
pub async fn ensure(
    client: &Client,
    ns: &str,
    wanted: &[Wanted],
) -> Result<Vec<String>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut created = Vec::new();
    for w in wanted {
        if api.get_opt(&w.name).await?.is_some() {
            continue;
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(w.name.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "amqp-relay-operator".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            string_data: Some(
                [
                    ("username".to_string(), w.username.clone()),
                    ("password".to_string(), password()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %w.name, "created a credentials Secret with a random password");
                created.push(w.name.clone());
            }
            // Another replica made it meanwhile.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::fake_api::FakeApi;
    use http::Method;
    use std::sync::Arc;

    const SECRETS: &str = "/api/v1/namespaces/mail/secrets";

    #[test]
    fn specs_and_passwords() {
        let w = parse(&["a-credentials:inject".into(), "b:admin".into()]).unwrap();
        assert_eq!(
            w[1],
            Wanted {
                name: "b".into(),
                username: "admin".into()
            }
        );
        assert!(parse(&["nouser".into()]).is_err());
        assert!(parse(&[":x".into()]).is_err());
        let (p, q) = (password(), password());
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(p, q);
    }

    #[tokio::test]
    async fn missing_credentials_are_created_once_and_existing_ones_never_touched() {
        let api = Arc::new(FakeApi::default());
        let client = api.client("mail");
        api.put(
            SECRETS,
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "admin-credentials", "namespace": "mail"},
            "data": {"username": "YWRtaW4=", "password": "bWluZQ=="}}),
        );
        let wanted = parse(&[
            "inject-credentials:inject".into(),
            "admin-credentials:admin".into(),
        ])
        .unwrap();
        let created = ensure(&client, "mail", &wanted).await.unwrap();
        assert_eq!(created, ["inject-credentials"]);
        let made = api.get(SECRETS, "inject-credentials").unwrap();
        // The API folds stringData into data (base64: 32 bytes → 44 characters).
        assert_eq!(made["data"]["username"], "aW5qZWN0");
        assert_eq!(made["data"]["password"].as_str().unwrap().len(), 44);
        assert_eq!(
            api.get(SECRETS, "admin-credentials").unwrap()["data"]["password"],
            "bWluZQ=="
        );
        // Again (a restart, a second replica): nothing is written.
        assert!(ensure(&client, "mail", &wanted).await.unwrap().is_empty());
        assert_eq!(api.count(Method::POST, SECRETS), 1);
    }
}
