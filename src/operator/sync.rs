//! One sync: every route the relay serves → render → compile → apply the
//! ConfigMap and Secret if their hash changed → write each route's status if
//! it changed. Level-triggered: it reads only the cache it is given, so
//! running it twice in a row writes nothing the second time.

use super::crd::{AmqpRoute, AmqpRouteStatus};
use super::manifests::{HASH_ANNOTATION, KEYS_ANNOTATION, policy_configmap, routes_secret};
use super::render::cluster::Clusters;
use super::render::{self, POLICY_KEY, Rendered, RouteId};
use super::status::{self, Verdict};
use crate::policy::Policy;
use crate::policy::overlay::DIGEST_KEY;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The operator's name as an Event reporter.
pub const MANAGER: &str = "amqp-relay-operator";

/// The field manager of the install serving `relay` in `namespace`: one
/// per install, so two installs' applies never count as one owner's (the
/// API caps a manager's name at 128 bytes; longer ones are a digest).
pub fn field_manager(namespace: &str, relay: &str) -> String {
    let name = format!("amqp-relay/{namespace}/{relay}");
    if name.len() <= 128 {
        return name;
    }
    let digest = crate::model::digest::plain(format!("{namespace}/{relay}").as_bytes());
    format!("amqp-relay/{}", &digest[..32])
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the rendered policy does not load; the previous one stays: {0}")]
    Compile(String),
    #[error("{failed} route status write(s) failed, the first: {first}")]
    Status { failed: usize, first: kube::Error },
}

impl Error {
    /// Label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Compile(_) => "compile",
            Error::Status { .. } => "status",
        }
    }
}

pub struct Ctx {
    pub client: Client,
    /// Label selector of the relay pods, whose `/api/policy` tells what they run.
    pub relay_selector: String,
    pub relay_port: u16,
    pub http: reqwest::Client,
    pub recorder: Recorder,
    /// The relay: objects are `<relay>-policy` and `<relay>-routes`.
    pub relay: String,
    /// Where those objects live.
    pub namespace: String,
    pub secrets_dir: String,
    /// Which namespaces may claim which domains.
    pub ownership: crate::operator::ownership::Ownership,
    /// Whether this install serves routes without a relayRef.
    pub serve_unreferenced: bool,
    /// Namespaces whose RabbitmqClusters routes of other namespaces may use.
    pub shared_cluster_namespaces: Vec<String>,
    /// Route digests of the policies seen, to read what relays run.
    pub history: Mutex<status::History>,
    /// What each relay pod (by uid) last said it runs.
    pub relay_views: Mutex<BTreeMap<String, status::RelayView>>,
    /// Routes already reported as claimed by another install (uid → install).
    pub conflicts: Mutex<BTreeMap<String, String>>,
    /// Tests make the engine refuse a policy holding this text.
    #[cfg(test)]
    pub refuse: Option<&'static str>,
}

impl Ctx {
    /// `namespace/name` of the relay this install serves, as status.relay says it.
    fn relay_id(&self) -> String {
        format!("{}/{}", self.namespace, self.relay)
    }

    fn field_manager(&self) -> String {
        field_manager(&self.namespace, &self.relay)
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub policy_written: bool,
    /// Some accepted route is not yet running on every relay pod.
    pub propagating: bool,
    pub statuses_written: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub hash: String,
    /// Why the rendered policy was not published (its routes say so too).
    pub compile_error: Option<String>,
}

fn id_of(r: &AmqpRoute) -> RouteId {
    RouteId {
        namespace: r.namespace().unwrap_or_else(|| "default".into()),
        name: r.name_any(),
    }
}

/// Loads the policy in the engine, as a relay will, including `pre_init`.
pub async fn compile(policy: &str) -> Result<(), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Compile(e.to_string()))?;
    let path = dir.path().join(POLICY_KEY);
    std::fs::write(&path, policy).map_err(|e| Error::Compile(e.to_string()))?;
    let p = Policy::load(&path, Default::default()).map_err(|e| Error::Compile(e.to_string()))?;
    p.run_init()
        .await
        .map_err(|e| Error::Compile(e.to_string()))?;
    p.probe(&[])
        .await
        .map_err(|e| Error::Compile(e.to_string()))
}

/// What the relay is to run after a sync.
struct Published {
    written: bool,
    /// The policy now in the ConfigMap.
    policy: String,
    /// The key of the credential digests, kept in the routes Secret.
    digest_key: Vec<u8>,
}

/// The operator's part of the live routes Secret: the keys it last wrote
/// (its annotation) with their values. Keys another field manager added are
/// theirs: server-side apply keeps them, so comparing them would re-apply
/// forever.
fn secret_data(s: Option<Secret>) -> BTreeMap<String, Vec<u8>> {
    let Some(s) = s else {
        return BTreeMap::new();
    };
    let ours: Option<std::collections::BTreeSet<String>> = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KEYS_ANNOTATION))
        .map(|k| {
            k.split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect()
        });
    s.data
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| ours.as_ref().is_none_or(|o| o.contains(k)))
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Writes the Secret, then the ConfigMap, unless both already hold exactly
/// what was rendered (so a hand edit or deletion of either is repaired).
async fn publish(ctx: &Ctx, out: &Rendered, compiled: bool) -> Result<Published, Error> {
    let cm_name = format!("{}-policy", ctx.relay);
    let secret_name = format!("{}-routes", ctx.relay);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let live = cms.get_opt(&cm_name).await?;
    let live_hash = live
        .as_ref()
        .and_then(|cm| cm.annotations().get(HASH_ANNOTATION).cloned());
    let live_policy = live
        .and_then(|cm| cm.data)
        .and_then(|mut d| d.remove(POLICY_KEY))
        .unwrap_or_default();
    let live_secret = secret_data(secrets.get_opt(&secret_name).await?);
    let digest_key = live_secret
        .get(DIGEST_KEY)
        .filter(|k| !k.is_empty())
        .cloned()
        .unwrap_or_else(|| crate::model::digest::random_key().into_bytes());
    let mut wanted = out.secret.clone();
    wanted.insert(DIGEST_KEY.to_owned(), digest_key.clone());
    let same_hash = live_hash.as_deref() == Some(out.hash.as_str());
    let policy_in_place = same_hash && live_policy == out.policy;
    let secret_in_place = live_secret == wanted;
    if !compiled || (policy_in_place && secret_in_place) {
        return Ok(Published {
            written: false,
            policy: live_policy,
            digest_key,
        });
    }
    if same_hash {
        tracing::warn!(configmap = %cm_name, secret = %secret_name, "the published policy or credentials were changed by someone else; restoring them");
    }
    let apply = PatchParams::apply(&ctx.field_manager()).force();
    // The Secret first: the new policy may read keys only it holds.
    if !secret_in_place {
        let secret = routes_secret(&ctx.relay, &ctx.namespace, out, Some(&digest_key));
        secrets
            .patch(&secret_name, &apply, &Patch::Apply(&secret))
            .await?;
    }
    if !policy_in_place {
        let cm = policy_configmap(&ctx.relay, &ctx.namespace, out);
        cms.patch(&cm_name, &apply, &Patch::Apply(&cm)).await?;
    }
    tracing::info!(hash = %out.hash, accepted = out.accepted.len(), rejected = out.rejected.len(), "policy published");
    Ok(Published {
        written: true,
        policy: out.policy.clone(),
        digest_key,
    })
}

pub async fn sync(
    ctx: &Ctx,
    routes: &[Arc<AmqpRoute>],
    secrets: &[Arc<Secret>],
) -> Result<Report, Error> {
    let left = left_routes(ctx, routes);
    let mut claimed = std::collections::BTreeSet::new();
    for r in routes {
        if let Some(other) = claimed_elsewhere(ctx, r) {
            claimed.insert(conflict_key(r));
            report_conflict(ctx, r, other).await;
        }
    }
    // A conflict that ends is forgotten: if it comes back, it is said again.
    ctx.conflicts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|uid, _| claimed.contains(uid));
    let mut report = sync_served(ctx, routes, secrets).await?;
    report.statuses_written += clear_statuses(ctx, &left).await;
    Ok(report)
}

/// Routes whose status says this install serves them though it no longer
/// does (their relayRef now names another): their status is this
/// install's to clear, or it would say Ready for a relay that dropped them.
fn left_routes(ctx: &Ctx, routes: &[Arc<AmqpRoute>]) -> Vec<RouteId> {
    let ours = ctx.relay_id();
    routes
        .iter()
        .filter(|r| !serves(ctx, r))
        .filter(|r| r.status.as_ref().and_then(|s| s.relay.as_deref()) == Some(ours.as_str()))
        .map(|r| id_of(r))
        .collect()
}

/// Applies an empty status as this install's field manager: what it wrote
/// goes. A route deleted meanwhile (404) needs nothing.
async fn clear_statuses(ctx: &Ctx, left: &[RouteId]) -> usize {
    let mut cleared = 0;
    for id in left {
        match write_status(ctx, id, &AmqpRouteStatus::default()).await {
            Ok(()) => {
                tracing::info!(route = %id, "route left this relay: its status cleared");
                cleared += 1;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(route = %id, error = %e, "clearing a departed route's status failed")
            }
        }
    }
    cleared
}

/// Renders, publishes and reports on the routes this install serves.
async fn sync_served(
    ctx: &Ctx,
    routes: &[Arc<AmqpRoute>],
    secrets: &[Arc<Secret>],
) -> Result<Report, Error> {
    let routes: Vec<AmqpRoute> = routes
        .iter()
        .filter(|r| serves(ctx, r))
        .map(|r| (**r).clone())
        .collect();
    let secrets: Vec<Secret> = secrets.iter().map(|s| (**s).clone()).collect();
    let mut secrets = secrets;
    let clusters = fetch_clusters(ctx, &routes, &mut secrets).await;
    let out = render::render_owned(
        &routes,
        &secrets,
        &clusters,
        &ctx.secrets_dir,
        &ctx.ownership,
    );
    #[cfg(test)]
    if let Some(text) = ctx.refuse.filter(|t| out.policy.contains(t)) {
        return finish(
            ctx,
            &routes,
            out,
            Some(format!("refused for holding {text:?}")),
        )
        .await;
    }
    let compile_error = compile(&out.policy).await.err().map(|e| match e {
        Error::Compile(m) => m,
        other => other.to_string(),
    });
    finish(ctx, &routes, out, compile_error).await
}

/// The RabbitmqClusters the routes name, read each sync (a few GETs), and
/// their default-user Secrets (which carry no label for the Secret cache)
/// added to `secrets`. A cluster that cannot be read is recorded with why,
/// for its routes to say; the others are not held up.
async fn fetch_clusters(ctx: &Ctx, routes: &[AmqpRoute], secrets: &mut Vec<Secret>) -> Clusters {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    use render::cluster::{Cluster, GROUP, KIND, PLURAL, VERSION};
    let mut clusters = Clusters {
        shared_namespaces: ctx.shared_cluster_namespaces.clone(),
        ..Default::default()
    };
    // (namespace, name) → the namespaces of the routes naming it.
    let mut refs: BTreeMap<(String, String), std::collections::BTreeSet<String>> = BTreeMap::new();
    for r in routes {
        let Some(cr) = r.spec.broker.rabbitmq_cluster_ref.as_ref() else {
            continue;
        };
        let Some(own) = r.metadata.namespace.clone() else {
            continue;
        };
        let ns = cr.namespace.clone().unwrap_or_else(|| own.clone());
        refs.entry((ns, cr.name.clone())).or_default().insert(own);
    }
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL);
    for ((ns, name), users) in refs {
        // Nothing is read from a namespace the operator does not share with
        // the routes naming it; the routes say why when rendered.
        let shared = clusters.shared_namespaces.contains(&ns);
        if !shared && !users.contains(&ns) {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        let found = match api.get_opt(&name).await {
            Ok(o) => o.and_then(|o| Cluster::from_object(&serde_json::to_value(o).ok()?)),
            Err(e) => {
                clusters.unreadable.insert((ns, name), e.to_string());
                continue;
            }
        };
        let Some(c) = found else { continue };
        // The default user's Secret only for a cluster that admits a route naming it.
        if let Some(user) = c
            .default_user
            .as_ref()
            .filter(|_| users.iter().any(|u| c.admits(u)))
        {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &user.namespace);
            match api.get_opt(&user.name).await {
                Ok(Some(s)) => secrets.push(s),
                Ok(None) => {}
                Err(e) => {
                    clusters.unreadable.insert((ns, name), e.to_string());
                    continue;
                }
            }
        }
        clusters.found.push(c);
    }
    clusters
}

/// Whether this install serves the route: its relayRef names this relay, or
/// it has none, this install claims such routes and no other install
/// already serves it. Others' routes are neither rendered nor written to.
fn serves(ctx: &Ctx, r: &AmqpRoute) -> bool {
    r.served_by(&ctx.relay, &ctx.namespace, ctx.serve_unreferenced)
        && claimed_elsewhere(ctx, r).is_none()
}

/// The install whose status a route without relayRef carries, when this
/// install would claim the route too: it keeps the route (first come), and
/// this one leaves it alone rather than fight over its status and copy
/// its credentials.
fn claimed_elsewhere<'r>(ctx: &Ctx, r: &'r AmqpRoute) -> Option<&'r str> {
    if r.spec.relay_ref.is_some() || !ctx.serve_unreferenced {
        return None;
    }
    let other = r.status.as_ref()?.relay.as_deref()?;
    (other != ctx.relay_id()).then_some(other)
}

/// What a reported conflict is remembered by: the route's uid.
fn conflict_key(r: &AmqpRoute) -> String {
    r.uid().unwrap_or_else(|| id_of(r).to_string())
}

/// A Warning Event, once per route and claiming install, that this install
/// leaves the route to another.
async fn report_conflict(ctx: &Ctx, r: &AmqpRoute, other: &str) {
    let uid = conflict_key(r);
    {
        let mut seen = ctx.conflicts.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(&uid).map(String::as_str) == Some(other) {
            return;
        }
        seen.insert(uid, other.to_owned());
    }
    let note = format!(
        "two installs claim routes without relayRef: {other} serves this route, {} leaves it \
         alone; set spec.relayRef to choose one",
        ctx.relay_id()
    );
    tracing::warn!(route = %id_of(r), serving = other, "route claimed by another install");
    let ev = Event {
        type_: EventType::Warning,
        reason: "Conflict".into(),
        note: Some(cut(&note, NOTE_LIMIT)),
        action: "Claim".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &r.object_ref(&())).await {
        tracing::warn!(route = %id_of(r), error = %e, "could not record an event");
    }
}

/// Publishes what compiled, then brings every route's status up to date.
async fn finish(
    ctx: &Ctx,
    routes: &[AmqpRoute],
    out: Rendered,
    compile_error: Option<String>,
) -> Result<Report, Error> {
    let published = publish(ctx, &out, compile_error.is_none()).await?;
    let live = render::route_digests(&published.policy);
    {
        let mut history = ctx.history.lock().unwrap_or_else(|e| e.into_inner());
        history.record(&published.policy);
    }
    let relays = observe_relays(ctx).await?;
    let mut report = Report {
        policy_written: published.written,
        accepted: out.accepted.len(),
        rejected: out.rejected.len(),
        hash: out.hash.clone(),
        compile_error,
        ..Report::default()
    };
    let mut failed = update_statuses(
        ctx,
        routes,
        &out,
        (&live, &published.digest_key),
        &relays,
        &mut report,
    )
    .await;
    match failed.len() {
        0 => Ok(report),
        n => Err(Error::Status {
            failed: n,
            first: failed.swap_remove(0),
        }),
    }
}

/// What the operator says of a route: rejected, its policy not loading
/// (and not live yet), or accepted.
fn verdict_of(
    id: &RouteId,
    out: &Rendered,
    live: &BTreeMap<String, String>,
    compile_error: &Option<String>,
) -> Verdict {
    let digest = out.digests.get(id);
    match (
        out.rejected.iter().find(|(rid, _)| rid == id),
        compile_error,
    ) {
        (Some((_, why)), _) => Verdict::Rejected(why.clone()),
        (None, Some(e)) if digest != live.get(&id.to_string()) => Verdict::CompileFailed(e.clone()),
        (None, _) => Verdict::Accepted,
    }
}

/// What a relay holding this route's credentials reports for them.
fn credential_digests(id: &RouteId, out: &Rendered, digest_key: &[u8]) -> Vec<(String, String)> {
    out.route_keys
        .get(id)
        .into_iter()
        .flatten()
        .filter_map(|k| {
            let value = out.secret.get(k)?;
            Some((k.clone(), crate::model::digest::keyed(digest_key, value)))
        })
        .collect()
}

/// Writes the status of every route whose status changed; failures are
/// returned, not fatal to the rest.
async fn update_statuses(
    ctx: &Ctx,
    routes: &[AmqpRoute],
    out: &Rendered,
    (live, digest_key): (&BTreeMap<String, String>, &[u8]),
    relays: &[status::RelayView],
    report: &mut Report,
) -> Vec<kube::Error> {
    let configmap = format!("{}/{}-policy", ctx.namespace, ctx.relay);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut failed = Vec::new();
    for r in routes {
        let id = id_of(r);
        let digest = out.digests.get(&id);
        let verdict = verdict_of(&id, out, live, &report.compile_error);
        let credentials = credential_digests(&id, out, digest_key);
        let propagation = {
            let history = ctx.history.lock().unwrap_or_else(|e| e.into_inner());
            let version = status::Version {
                route: &id.to_string(),
                digest: digest.map(String::as_str).unwrap_or(""),
                credentials: &credentials,
            };
            status::propagation(&version, relays, &history)
        };
        if verdict == Verdict::Accepted && !matches!(propagation, status::Propagation::Done { .. })
        {
            report.propagating = true;
        }
        let old = r.status.as_ref();
        let mut new = status::desired(
            old,
            r.metadata.generation,
            &verdict,
            &propagation,
            &configmap,
            now.clone(),
        );
        new.relay = Some(ctx.relay_id());
        // Only what this operator writes counts: a condition another
        // controller keeps on the route is theirs (apply leaves it).
        if old.map(status::ours).as_ref() == Some(&new) {
            continue;
        }
        // One route's failed write does not keep the others' from being written.
        match write_status(ctx, &id, &new).await {
            Ok(()) => report.statuses_written += 1,
            // Deleted meanwhile: nothing to say of it.
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => {
                tracing::warn!(route = %id, error = %e, "status write failed");
                failed.push(e);
                continue;
            }
        }
        if status::accepted(old) != status::accepted(Some(&new)) {
            announce(ctx, r, &verdict).await;
        }
    }
    failed
}

/// What the relay pod at `ip` says it runs; `None` when it does not answer.
async fn ask_relay(ctx: &Ctx, name: &str, ip: &str) -> Option<status::RelayView> {
    let url = if ip.contains(':') {
        format!("http://[{ip}]:{}/api/policy", ctx.relay_port)
    } else {
        format!("http://{ip}:{}/api/policy", ctx.relay_port)
    };
    let report = async {
        ctx.http
            .get(&url)
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?
            .json::<serde_json::Value>()
            .await
    }
    .await;
    let hashes = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|m| {
                m.values()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    match report {
        Ok(r) => Some(status::RelayView {
            pod: name.to_owned(),
            running: hashes(&r["files"]),
            secrets: r["secrets"].as_object().map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            }),
            rejected: r["last_error"].as_object().map(|e| {
                (
                    hashes(&e["files"]),
                    e["error"].as_str().unwrap_or("").to_owned(),
                )
            }),
        }),
        Err(e) => {
            tracing::debug!(pod = %name, error = %e, "relay pod did not report its policy");
            None
        }
    }
}

/// A relay pod that is not going away, as the pod list gave it.
struct RelayPod {
    uid: String,
    name: String,
    ready: bool,
    ip: Option<String>,
}

/// Asks every relay pod with an address which policy it runs, all at once
/// (a pod that hangs costs one timeout, not one each). A pod that does not
/// answer runs what it said last; one never heard from counts once ready,
/// as not running the new policy yet.
pub async fn observe_relays(ctx: &Ctx) -> Result<Vec<status::RelayView>, Error> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let list = pods
        .list(&kube::api::ListParams::default().labels(&ctx.relay_selector))
        .await?;
    let relays: Vec<RelayPod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|pod| {
            let status = pod.status.unwrap_or_default();
            RelayPod {
                uid: pod.metadata.uid.unwrap_or_default(),
                name: pod.metadata.name.unwrap_or_default(),
                ready: status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True"),
                ip: status.pod_ip,
            }
        })
        .collect();
    let answers = futures_util::future::join_all(relays.iter().map(|p| async move {
        match &p.ip {
            Some(ip) => ask_relay(ctx, &p.name, ip).await,
            None => None,
        }
    }))
    .await;
    let mut views = Vec::new();
    let mut heard = BTreeMap::new();
    let mut known = ctx.relay_views.lock().unwrap_or_else(|e| e.into_inner());
    for (pod, answer) in relays.into_iter().zip(answers) {
        // Same pod, same mounted policy: a readiness flap changes no route's status.
        let view = match (answer, known.get(&pod.uid), pod.ready) {
            (Some(v), _, _) => v,
            (None, Some(v), _) => v.clone(),
            (None, None, true) => status::RelayView {
                pod: pod.name,
                ..Default::default()
            },
            (None, None, false) => continue,
        };
        heard.insert(pod.uid, view.clone());
        views.push(view);
    }
    *known = heard;
    Ok(views)
}

/// Server-side apply of the whole status with one field manager: what the
/// operator no longer sets (a rejected route's relay count) goes away.
async fn write_status(ctx: &Ctx, id: &RouteId, s: &AmqpRouteStatus) -> Result<(), kube::Error> {
    let api: Api<AmqpRoute> = Api::namespaced(ctx.client.clone(), &id.namespace);
    let patch = serde_json::json!({
        "apiVersion": AmqpRoute::api_version(&()),
        "kind": AmqpRoute::kind(&()),
        "metadata": { "name": id.name, "namespace": id.namespace },
        "status": s,
    });
    api.patch_status(
        &id.name,
        &PatchParams::apply(&ctx.field_manager()).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The API refuses an Event whose note is over 1 KiB (bytes, not characters).
const NOTE_LIMIT: usize = 1024;

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// An Event on the route when it is accepted or rejected; failing to record
/// one is logged, never fatal.
async fn announce(ctx: &Ctx, r: &AmqpRoute, verdict: &Verdict) {
    let ev = match verdict {
        Verdict::Accepted => Event {
            type_: EventType::Normal,
            reason: "Accepted".into(),
            note: Some("route is in the relay policy".into()),
            action: "Render".into(),
            secondary: None,
        },
        Verdict::CompileFailed(_) => return,
        Verdict::Rejected(why) => Event {
            type_: EventType::Warning,
            reason: why.reason.into(),
            note: Some(cut(&why.message, NOTE_LIMIT)),
            action: "Render".into(),
            secondary: None,
        },
    };
    if let Err(e) = ctx.recorder.publish(&ev, &r.object_ref(&())).await {
        tracing::warn!(route = %id_of(r), error = %e, "could not record an event");
    }
}

#[cfg(test)]
mod tests;
