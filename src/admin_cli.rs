//! `amqp-relay admin …`: the admin API from a shell, as KumoMTA's `kcli` is
//! for kumod. A client of the HTTP API only; it shares no code with the
//! relay beyond the wire format.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The relay's HTTP listener.
    #[arg(
        long,
        env = "AMQP_RELAY_ADMIN_ENDPOINT",
        default_value = "http://127.0.0.1:8000"
    )]
    pub endpoint: String,
    /// An `admin_users` name (HTTP Basic); none: the relay must trust this host.
    #[arg(long, env = "AMQP_RELAY_ADMIN_USER")]
    pub user: Option<String>,
    /// Its password; prefer the environment or --password-file to the command line.
    #[arg(long, env = "AMQP_RELAY_ADMIN_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A file holding the password (a mounted Secret), trailing newline ignored.
    #[arg(long, env = "AMQP_RELAY_ADMIN_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// A directory with `username` and `password` files (the chart mounts the
    /// admin Secret so and points this at it in the relay's container, so
    /// `kubectl exec … amqp-relay admin queue-summary` needs no flags).
    #[arg(long, env = "AMQP_RELAY_ADMIN_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// The relay's JSON answer as is, for scripts.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the relay.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Which queues an action applies to (KumoMTA's criteria).
#[derive(clap::Args, Debug, Default)]
pub struct Criteria {
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub campaign: Option<String>,
    #[arg(long)]
    pub routing_domain: Option<String>,
    /// Every queue (required when no criteria are given).
    #[arg(long)]
    pub everything: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// Per queue: scheduled, ready, in flight, sessions, held, suspended.
    QueueSummary,
    /// Bounces (AdminBounce) what the matching queues hold now.
    Bounce {
        #[command(flatten)]
        criteria: Criteria,
        #[arg(long)]
        reason: String,
    },
    /// Stops delivery from the matching queues (mail waits) until resumed
    /// or the duration passes.
    Suspend {
        #[command(flatten)]
        criteria: Criteria,
        #[arg(long)]
        reason: String,
        /// e.g. `30m`; none: until resumed.
        #[arg(long)]
        duration: Option<String>,
    },
    /// Lifts a suspension by its id.
    Resume { id: String },
    /// The suspensions in force.
    Suspensions,
    /// Re-reads the policy now (KumoMTA's bump-config-epoch).
    BumpEpoch,
    /// The running policy version, its files and the last reload error.
    Policy,
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    let (method, path, body) = request(&args.command);
    let answer = client.call(method, path, body).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    print!("{}", show(&args.command, &answer));
    Ok(())
}

/// The API call a command makes.
fn request(command: &AdminCommand) -> (reqwest::Method, &'static str, Option<Value>) {
    use reqwest::Method;
    let criteria = |c: &Criteria, extra: Value| {
        let mut body = json!({
            "domain": c.domain, "tenant": c.tenant, "campaign": c.campaign,
            "routing_domain": c.routing_domain, "everything": c.everything,
        });
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
            b.retain(|_, v| !v.is_null());
        }
        body
    };
    match command {
        AdminCommand::QueueSummary => (Method::GET, "/api/admin/queue-summary/v1", None),
        AdminCommand::Bounce {
            criteria: c,
            reason,
        } => (
            Method::POST,
            "/api/admin/bounce/v1",
            Some(criteria(c, json!({ "reason": reason }))),
        ),
        AdminCommand::Suspend {
            criteria: c,
            reason,
            duration,
        } => (
            Method::POST,
            "/api/admin/suspend/v1",
            Some(criteria(
                c,
                json!({ "reason": reason, "duration": duration }),
            )),
        ),
        AdminCommand::Resume { id } => (
            Method::DELETE,
            "/api/admin/suspend/v1",
            Some(json!({ "id": id })),
        ),
        AdminCommand::Suspensions => (Method::GET, "/api/admin/suspend/v1", None),
        AdminCommand::BumpEpoch => (Method::POST, "/api/admin/bump-config-epoch", None),
        AdminCommand::Policy => (Method::GET, "/api/policy", None),
    }
}

struct Client {
    http: reqwest::Client,
    endpoint: String,
    auth: Option<(String, String)>,
}

impl Client {
    fn new(args: &AdminArgs) -> anyhow::Result<Client> {
        let read = |f: &std::path::Path| -> anyhow::Result<String> {
            Ok(std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned())
        };
        // Flags and their variables first; the credentials directory fills in.
        let from_dir = |name: &str| args.credentials.as_ref().map(|d| read(&d.join(name)));
        let user = match (&args.user, from_dir("username")) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(u)) => Some(u?),
            (None, None) => None,
        };
        let password = match (&args.password, &args.password_file, from_dir("password")) {
            (Some(p), _, _) => Some(p.clone()),
            (None, Some(f), _) => Some(read(f)?),
            (None, None, Some(p)) => Some(p?),
            (None, None, None) => None,
        };
        let auth = match (&user, password) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            (Some(_), None) => bail!(
                "--user needs a password: --password, AMQP_RELAY_ADMIN_PASSWORD or --password-file"
            ),
            (None, Some(_)) => bail!("a password was given without --user"),
            (None, None) => None,
        };
        let http = reqwest::Client::builder().timeout(args.timeout).build()?;
        Ok(Client {
            http,
            endpoint: args.endpoint.trim_end_matches('/').to_owned(),
            auth,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.endpoint);
        let mut req = self.http.request(method, &url);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the relay at {url}: {}", cause(&e)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        match status.as_u16() {
            200..=299 => Ok(answer),
            401 => bail!(
                "the relay wants credentials (401): give an admin_users name with --user and its \
                 password (--password, AMQP_RELAY_ADMIN_PASSWORD or --password-file)"
            ),
            403 => bail!(
                "the relay refused this caller (403): it is neither a trusted host nor an admin user{}",
                if self.auth.is_some() {
                    " (check the user is in admin_users, not only an injection user)"
                } else {
                    ""
                }
            ),
            code => bail!("the relay answered {code}: {}", error_text(&answer)),
        }
    }
}

/// The innermost cause of a request failure (refused, timed out, bad URL).
fn cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    if e.is_timeout() {
        format!("timed out ({source})")
    } else {
        source.to_string()
    }
}

fn error_text(answer: &Value) -> String {
    match answer {
        Value::Object(m) => m
            .get("error")
            .or_else(|| m.get("errors"))
            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
            .unwrap_or_else(|| answer.to_string()),
        Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    }
}

/// A person's view of an answer.
fn show(command: &AdminCommand, answer: &Value) -> String {
    match command {
        AdminCommand::QueueSummary => queue_table(answer),
        AdminCommand::Suspensions => suspension_table(answer),
        AdminCommand::Bounce { .. } => format!(
            "bounced {} message(s) (bounce id {})\n",
            answer["total_bounced"],
            answer["id"].as_str().unwrap_or("?")
        ),
        AdminCommand::Suspend { .. } => {
            format!("suspended: id {}\n", answer["id"].as_str().unwrap_or("?"))
        }
        AdminCommand::Resume { id } => format!("resumed {id}\n"),
        AdminCommand::BumpEpoch => format!(
            "epoch {}{}\n",
            answer["epoch"],
            if answer["changed"] == true {
                " (the policy changed)"
            } else {
                " (no change)"
            }
        ),
        AdminCommand::Policy => serde_json::to_string_pretty(answer).unwrap_or_default() + "\n",
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        cells.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r);
    }
    out
}

fn queue_table(answer: &Value) -> String {
    let queues = answer["queues"].as_array().cloned().unwrap_or_default();
    if queues.is_empty() {
        return "no queues\n".into();
    }
    let yes = |v: &Value| if v == true { "yes" } else { "" }.to_owned();
    let rows = queues
        .iter()
        .map(|q| {
            vec![
                q["name"].as_str().unwrap_or("?").to_owned(),
                q["scheduled"].to_string(),
                q["ready"].to_string(),
                q["in_flight"].to_string(),
                q["sessions"].to_string(),
                yes(&q["held"]),
                yes(&q["suspended"]),
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "SCHEDULED",
            "READY",
            "IN-FLIGHT",
            "SESSIONS",
            "HELD",
            "SUSPENDED",
        ],
        rows,
    )
}

fn suspension_table(answer: &Value) -> String {
    let list = answer["suspensions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return "no suspensions\n".into();
    }
    let field = |s: &Value, k: &str| s[k].as_str().unwrap_or("").to_owned();
    let rows = list
        .iter()
        .map(|s| {
            vec![
                field(s, "id"),
                field(s, "domain"),
                field(s, "tenant"),
                field(s, "campaign"),
                field(s, "reason"),
                s["expires"]
                    .as_u64()
                    .map_or_else(|| "until resumed".into(), |e| format!("unix {e}")),
            ]
        })
        .collect();
    table(
        &["ID", "DOMAIN", "TENANT", "CAMPAIGN", "REASON", "EXPIRES"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_go_out_as_the_api_takes_them() {
        let (_, path, body) = request(&AdminCommand::Suspend {
            criteria: Criteria {
                tenant: Some("acme".into()),
                ..Default::default()
            },
            reason: "maintenance".into(),
            duration: Some("10m".into()),
        });
        assert_eq!(path, "/api/admin/suspend/v1");
        assert_eq!(
            body.unwrap(),
            json!({"tenant": "acme", "everything": false, "reason": "maintenance", "duration": "10m"})
        );
    }

    #[test]
    fn the_queue_table_lines_up() {
        let out = queue_table(&json!({"queues": [
            {"name": "t@amqp", "scheduled": 12, "ready": 3, "in_flight": 1, "sessions": 1, "held": false, "suspended": true},
            {"name": "campaign:tenant@amqp", "scheduled": 0, "ready": 0, "in_flight": 0, "sessions": 0, "held": true, "suspended": false},
        ]}));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("QUEUE                 SCHEDULED"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("t@amqp                12         3"),
            "{out}"
        );
        assert!(lines[1].ends_with("yes"), "suspended: {out}");
        let held_col = lines[0].find("HELD").unwrap();
        assert_eq!(&lines[2][held_col..held_col + 3], "yes", "{out}");
        assert_eq!(queue_table(&json!({"queues": []})), "no queues\n");
    }
}
