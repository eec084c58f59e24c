//! `amqp-relay operator`: watch AmqpRoutes and Secrets into caches, and run a
//! sync whenever either changes (debounced), every five minutes regardless,
//! and after a failure with backoff. With leader election, only the replica
//! holding the Lease syncs.

use super::crd::AmqpRoute;
use super::leader::Elector;
use super::render::DEFAULT_SECRETS_DIR;
use super::sync::{self, Ctx, MANAGER};
use anyhow::Context;
use axum::routing::get;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// Name of the relay the policy is for: writes <relay>-policy and <relay>-routes.
    #[arg(long, env = "AMQP_RELAY_NAME", default_value = "amqp-relay")]
    pub relay: String,
    /// Namespace of the relay (and of its ConfigMap and Secret); the client's default if unset.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespaces whose AmqpRoutes the relay serves (comma-separated); `*` for all. Default: the relay's.
    #[arg(long, env = "AMQP_RELAY_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Where relay pods mount the routes Secret.
    #[arg(long, default_value = DEFAULT_SECRETS_DIR)]
    pub secrets_dir: String,
    /// Metrics and health endpoint.
    #[arg(
        long,
        env = "AMQP_RELAY_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: String,
    /// Take a Lease before writing, so several replicas are safe.
    #[arg(long, env = "AMQP_RELAY_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Label selector of the relay pods (in --namespace), asked which policy they run.
    #[arg(
        long,
        env = "AMQP_RELAY_RELAY_SELECTOR",
        default_value = "app.kubernetes.io/component=relay"
    )]
    pub relay_selector: String,
    /// The relay pods' HTTP port.
    #[arg(long, env = "AMQP_RELAY_RELAY_PORT", default_value_t = 8000)]
    pub relay_port: u16,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "amqp-relay-operator")]
    pub identity: String,
    /// Which namespaces may claim which domains, as JSON
    /// (`{"team-a": ["a.example", "*.a.example"]}`); empty: any namespace, any domain.
    #[arg(long, env = "AMQP_RELAY_DOMAIN_OWNERSHIP", default_value = "")]
    pub domain_ownership: String,
    /// Serve AmqpRoutes without a relayRef (off by default: a route names
    /// its install; of several installs that claim such routes, the first
    /// to serve one keeps it and the others leave it alone).
    #[arg(
        long,
        env = "AMQP_RELAY_SERVE_ROUTES_WITHOUT_RELAY_REF",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub serve_routes_without_relay_ref: bool,
    /// Namespaces whose RabbitmqClusters routes in any watched namespace may
    /// use (comma-separated); other clusters serve only their own namespace.
    #[arg(
        long,
        env = "AMQP_RELAY_SHARED_RABBITMQ_CLUSTER_NAMESPACES",
        value_delimiter = ','
    )]
    pub shared_rabbitmq_cluster_namespaces: Vec<String>,
    /// Credentials Secrets to create (in --namespace) when missing, with a
    /// random password: SECRET:USERNAME, comma-separated.
    #[arg(long, env = "AMQP_RELAY_ENSURE_CREDENTIALS", value_delimiter = ',')]
    pub ensure_credentials: Vec<String>,
    /// Namespaces whose routes' logEvents take the log records of every
    /// queue (the platform team's); other routes take only their own queues'.
    #[arg(
        long,
        env = "AMQP_RELAY_LOG_EVENTS_ALL_NAMESPACES",
        value_delimiter = ','
    )]
    pub log_events_all_namespaces: Vec<String>,
    /// The relay StatefulSet (in --namespace) whose spools a scale-in leaves
    /// behind are drained by Jobs; unset: no spool is looked after.
    #[arg(long, env = "AMQP_RELAY_STATEFULSET")]
    pub relay_statefulset: Option<String>,
    /// Its volumeClaimTemplate holding the spool.
    #[arg(long, env = "AMQP_RELAY_SPOOL_CLAIM_TEMPLATE", default_value = "spool")]
    pub spool_claim_template: String,
    /// The ConfigMap (in --namespace) the relays write their spool reports to.
    #[arg(long, env = "AMQP_RELAY_SPOOL_REPORT_CONFIGMAP_NAME")]
    pub spool_report_configmap: Option<String>,
    /// Delete a claim left by a scale-in once its spool is known empty.
    #[arg(long, env = "AMQP_RELAY_DELETE_DRAINED_SPOOLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub delete_drained_spools: bool,
    /// After a drain that left mail, wait this long before the next.
    #[arg(long, env = "AMQP_RELAY_SPOOL_DRAIN_RETRY", default_value = "5m", value_parser = crate::model::config::parse_duration)]
    pub spool_drain_retry: Duration,
    /// How long one drain Job delivers.
    #[arg(long, env = "AMQP_RELAY_SPOOL_DRAIN_TIMEOUT", default_value = "10m", value_parser = crate::model::config::parse_duration)]
    pub spool_drain_timeout: Duration,
}

impl OperatorArgs {
    fn spools(&self) -> Option<super::spools::Config> {
        let statefulset = self.relay_statefulset.clone().filter(|s| !s.is_empty())?;
        Some(super::spools::Config {
            report_configmap: self
                .spool_report_configmap
                .clone()
                .unwrap_or_else(|| format!("{}-spools", self.relay)),
            statefulset,
            claim_template: self.spool_claim_template.clone(),
            delete_empty: self.delete_drained_spools,
            retry_after: self.spool_drain_retry,
            drain_timeout: self.spool_drain_timeout,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpoolLabel {
    spool: String,
}

struct Metrics {
    registry: Registry,
    syncs: Counter,
    failures: Family<ErrorLabel, Counter>,
    duration: Histogram,
    routes: Family<StateLabel, Gauge>,
    leader: Gauge,
    propagating: Gauge,
    spools_left: Gauge,
    spool_messages: Family<SpoolLabel, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("amqp_relay_operator");
        let syncs = Counter::default();
        let failures = Family::<ErrorLabel, Counter>::default();
        let duration = Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let routes = Family::<StateLabel, Gauge>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Syncs of routes into the policy",
            syncs.clone(),
        );
        registry.register("failures", "Syncs that failed, by cause", failures.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time per sync",
            duration.clone(),
        );
        registry.register("routes", "Routes by state", routes.clone());
        registry.register("leader", "1 while this replica leads", leader.clone());
        let propagating = Gauge::default();
        registry.register(
            "routes_propagating",
            "1 while an accepted route's policy is not yet run by every ready relay pod",
            propagating.clone(),
        );
        let spools_left = Gauge::default();
        let spool_messages = Family::<SpoolLabel, Gauge>::default();
        registry.register(
            "spools_left_behind",
            "Spool claims above the relay replica count not known to be empty",
            spools_left.clone(),
        );
        registry.register(
            "spool_messages_left",
            "Messages a spool left by a scale-in still holds, by spool (as its last report says)",
            spool_messages.clone(),
        );
        Metrics {
            registry,
            syncs,
            failures,
            duration,
            routes,
            leader,
            propagating,
            spools_left,
            spool_messages,
        }
    }

    fn spools(&self, standing: &std::collections::BTreeMap<String, super::spools::Standing>) {
        use super::spools::Standing;
        self.spool_messages.clear();
        let mut left = 0;
        for (spool, s) in standing {
            if *s != Standing::Empty {
                left += 1;
            }
            if let Standing::Left(Some(n)) = s {
                self.spool_messages
                    .get_or_create(&SpoolLabel {
                        spool: spool.clone(),
                    })
                    .set(*n as i64);
            }
        }
        self.spools_left.set(left);
    }
}

/// How often spools left behind are looked at (claims and Jobs are not watched).
const SPOOLS_EVERY: Duration = Duration::from_secs(30);

/// Looks after spools a scale-in left behind, while this replica leads.
async fn look_after_spools(
    client: Client,
    namespace: String,
    cfg: super::spools::Config,
    recorder: Recorder,
    leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    loop {
        if *leading.borrow() {
            match super::spools::reconcile(&client, &namespace, &cfg, &recorder).await {
                Ok(standing) => metrics.spools(&standing),
                Err(e) => {
                    tracing::warn!(error = %e, "looking after spools left behind failed; again in 30 s");
                    metrics
                        .failures
                        .get_or_create(&ErrorLabel {
                            error: "spools".into(),
                        })
                        .inc();
                }
            }
        }
        tokio::time::sleep(SPOOLS_EVERY).await;
    }
}

/// Only Secrets their owners labeled for the operator: it never lists or
/// caches any other.
fn credential_secrets() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}=true",
        crate::operator::render::CREDENTIALS_LABEL
    ))
}

/// What the operator can watch: a kube resource it can decode and send
/// between tasks.
trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// What of an object a sync depends on, to tell a change that needs one
/// from one that does not: an AmqpRoute's `metadata.generation` (its spec;
/// status writes, the operator's own included, leave it alone). `None`:
/// every change counts (a Secret has no generation).
type Relevant<K> = fn(&K) -> Option<i64>;

fn route_generation(r: &AmqpRoute) -> Option<i64> {
    r.metadata.generation
}

fn any_change<K>(_: &K) -> Option<i64> {
    None
}

/// Whether a watch event needs a sync; `seen` keeps what each object's
/// relevant part was (by uid).
fn needs_sync<K: kube::Resource>(
    seen: &mut std::collections::HashMap<String, i64>,
    ev: &watcher::Event<K>,
    relevant: Relevant<K>,
) -> bool {
    let uid = |o: &K| o.meta().uid.clone().unwrap_or_default();
    match ev {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => match relevant(o) {
            Some(now) => seen.insert(uid(o), now) != Some(now),
            None => true,
        },
        watcher::Event::Delete(o) => {
            seen.remove(&uid(o));
            true
        }
        watcher::Event::Init => false,
        watcher::Event::InitDone => true,
    }
}

fn watch_into<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    changed: Arc<Notify>,
    relevant: Relevant<K>,
) -> Store<K> {
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = std::collections::HashMap::new();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) if needs_sync(&mut seen, &ev, relevant) => changed.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watch error (retrying with backoff)"),
            }
        }
    });
    reader
}

/// Whether an event on the operator's own ConfigMap or Secret needs a
/// sync: its deletion (or its absence at the start), which the sync
/// repairs. Changes are left to the periodic sync: each sync's own write
/// would otherwise start another.
fn own_object_gone<K>(ev: &watcher::Event<K>, seen: &mut bool) -> bool {
    match ev {
        watcher::Event::Delete(_) => {
            *seen = false;
            true
        }
        watcher::Event::InitApply(_) | watcher::Event::Apply(_) => {
            *seen = true;
            false
        }
        watcher::Event::Init => {
            *seen = false;
            false
        }
        watcher::Event::InitDone => !*seen,
    }
}

/// Watches one object of the operator's own (by name) for its deletion.
fn watch_own<K: Watched>(api: Api<K>, name: &str, changed: Arc<Notify>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut seen = false;
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) if own_object_gone(&ev, &mut seen) => {
                    tracing::warn!(%name, "the operator's own object is gone: restoring it");
                    changed.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%name, error = %e, "watch error (retrying with backoff)"),
            }
        }
    });
}

/// The caches the syncs read: AmqpRoutes and the credential Secrets of
/// every namespace watched.
struct Caches {
    routes: Vec<Store<AmqpRoute>>,
    secrets: Vec<Store<Secret>>,
    /// Notified on every watch event.
    changed: Arc<Notify>,
}

impl Caches {
    fn watch(client: &Client, scopes: &[Option<String>]) -> Caches {
        let changed = Arc::new(Notify::new());
        let (mut routes, mut secrets) = (Vec::new(), Vec::new());
        for scope in scopes {
            let (r, s): (Api<AmqpRoute>, Api<Secret>) = match scope {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (Api::all(client.clone()), Api::all(client.clone())),
            };
            routes.push(watch_into(
                r,
                watcher::Config::default(),
                changed.clone(),
                route_generation,
            ));
            secrets.push(watch_into(
                s,
                credential_secrets(),
                changed.clone(),
                any_change,
            ));
        }
        Caches {
            routes,
            secrets,
            changed,
        }
    }

    async fn ready(&self) -> anyhow::Result<()> {
        for s in &self.routes {
            s.wait_until_ready().await.context("route cache")?;
        }
        for s in &self.secrets {
            s.wait_until_ready().await.context("secret cache")?;
        }
        Ok(())
    }
}

/// Whether this replica leads, and the elector to stop on shutdown.
struct Leadership {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    elector: Option<tokio::task::JoinHandle<()>>,
}

impl Leadership {
    fn start(client: &Client, namespace: &str, args: &OperatorArgs) -> Leadership {
        let (lead_tx, leading) = watch::channel(!args.leader_election);
        let (stop, stop_rx) = watch::channel(false);
        let elector = args.leader_election.then(|| {
            let elector = Elector::new(
                Api::namespaced(client.clone(), namespace),
                format!("{}-operator", args.relay),
                args.identity.clone(),
                Duration::from_secs(15),
            );
            tokio::spawn(elector.run(lead_tx, stop_rx))
        });
        Leadership {
            leading,
            stop,
            elector,
        }
    }

    /// The lease goes back before the pod is gone, so a successor need not wait.
    async fn release(self) {
        let _ = self.stop.send(true);
        if let Some(elector) = self.elector {
            let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
        }
    }
}

/// Runs the operator until `shutdown` resolves (SIGTERM in production).
pub async fn run(
    args: OperatorArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or kubeconfig)")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let scopes = scopes(&args, &namespace);
    let caches = Caches::watch(&client, &scopes);
    watch_own::<k8s_openapi::api::core::v1::ConfigMap>(
        Api::namespaced(client.clone(), &namespace),
        &format!("{}-policy", args.relay),
        caches.changed.clone(),
    );
    watch_own::<Secret>(
        Api::namespaced(client.clone(), &namespace),
        &format!("{}-routes", args.relay),
        caches.changed.clone(),
    );
    let wanted = super::credentials::parse(&args.ensure_credentials).map_err(anyhow::Error::msg)?;
    if !wanted.is_empty() {
        // Relay pods mount them: they wait until these exist.
        super::credentials::ensure(&client, &namespace, &wanted)
            .await
            .context("creating the relay's credentials Secrets")?;
    }
    let metrics = Arc::new(Metrics::new());
    let (ready_tx, ready_rx) = watch::channel(false);
    serve_http(&args.listen, metrics.clone(), ready_rx).await?;
    let leadership = Leadership::start(&client, &namespace, &args);
    caches.ready().await?;
    let _ = ready_tx.send(true);
    tracing::info!(relay = %args.relay, namespace = %namespace, scopes = ?scopes, "operator caches ready");
    let ctx = context(client, namespace, &args)?;
    if let Some(cfg) = args.spools() {
        tracing::info!(statefulset = %cfg.statefulset, delete_empty = cfg.delete_empty, "looking after spools a scale-in leaves behind");
        tokio::spawn(look_after_spools(
            ctx.client.clone(),
            ctx.namespace.clone(),
            cfg,
            ctx.recorder.clone(),
            leadership.leading.clone(),
            metrics.clone(),
        ));
    }
    control_loop(&ctx, &caches, leadership, &metrics, shutdown).await
}

/// The namespaces watched: `*` for all, none given for the relay's own.
fn scopes(args: &OperatorArgs, namespace: &str) -> Vec<Option<String>> {
    if args.watch_namespaces.iter().any(|n| n == "*") {
        vec![None]
    } else if args.watch_namespaces.is_empty() {
        vec![Some(namespace.to_owned())]
    } else {
        args.watch_namespaces.iter().cloned().map(Some).collect()
    }
}

fn context(client: Client, namespace: String, args: &OperatorArgs) -> anyhow::Result<Ctx> {
    let ownership = crate::operator::ownership::Ownership::parse(&args.domain_ownership)
        .map_err(anyhow::Error::msg)?
        .with_all_log_records(args.log_events_all_namespaces.clone());
    Ok(Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(args.identity.clone()),
            },
        ),
        client,
        relay_selector: args.relay_selector.clone(),
        relay_port: args.relay_port,
        http: reqwest::Client::new(),
        relay: args.relay.clone(),
        namespace,
        secrets_dir: args.secrets_dir.clone(),
        ownership,
        serve_unreferenced: args.serve_routes_without_relay_ref,
        shared_cluster_namespaces: args.shared_rabbitmq_cluster_namespaces.clone(),
        history: Default::default(),
        conflicts: Default::default(),
        relay_views: Default::default(),
        #[cfg(test)]
        refuse: None,
    })
}

/// A sync on every change (debounced), every five minutes regardless, and
/// after a failure with backoff, while this replica leads; until `shutdown`.
async fn control_loop(
    ctx: &Ctx,
    caches: &Caches,
    mut leadership: Leadership,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut retry_in: Option<Duration> = None;
    // Pinned once: a shutdown during a sync is kept for the next select.
    tokio::pin!(shutdown);
    loop {
        let wait = retry_in.unwrap_or(Duration::from_secs(300));
        tokio::select! {
            _ = caches.changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            r = leadership.leading.changed() => {
                if r.is_err() {
                    anyhow::bail!("leader election stopped");
                }
            }
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                leadership.release().await;
                return Ok(());
            }
        }
        let lead = *leadership.leading.borrow();
        metrics.leader.set(lead as i64);
        if !lead {
            continue;
        }
        // Let a burst of watch events settle into one sync.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let routes: Vec<_> = caches.routes.iter().flat_map(|s| s.state()).collect();
        let secrets: Vec<_> = caches.secrets.iter().flat_map(|s| s.state()).collect();
        let started = Instant::now();
        // Leadership lost mid-sync: stop writing now (the new leader syncs).
        let result = tokio::select! {
            r = sync::sync(ctx, &routes, &secrets) => r,
            _ = leadership.leading.wait_for(|l| !*l) => {
                tracing::warn!("leadership lost during a sync: stopped it");
                metrics.leader.set(0);
                continue;
            }
        };
        metrics.duration.observe(started.elapsed().as_secs_f64());
        metrics.syncs.inc();
        retry_in = after_sync(metrics, &routes, result, retry_in);
    }
}

/// Records a sync's outcome; when to sync again without a change.
fn after_sync(
    metrics: &Metrics,
    routes: &[Arc<AmqpRoute>],
    result: Result<sync::Report, sync::Error>,
    retry_in: Option<Duration>,
) -> Option<Duration> {
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            tracing::error!(error = %e, "sync failed");
            metrics
                .failures
                .get_or_create(&ErrorLabel {
                    error: e.metric_label().into(),
                })
                .inc();
            return Some(retry_in.map_or(Duration::from_secs(1), |d| {
                (d * 2).min(Duration::from_secs(60))
            }));
        }
    };
    if let Some(error) = &report.compile_error {
        // The routes it concerns say so; nothing changes until their input does.
        tracing::error!(%error, "the rendered policy does not load; the previous one stays");
        metrics
            .failures
            .get_or_create(&ErrorLabel {
                error: "compile".into(),
            })
            .inc();
    }
    metrics.propagating.set(report.propagating as i64);
    for (state, n) in [("accepted", report.accepted), ("rejected", report.rejected)] {
        metrics
            .routes
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .set(n as i64);
    }
    // Until every relay runs the policy, look again soon; RabbitmqClusters
    // are not watched, so routes using one are looked at twice a minute.
    let uses_clusters = routes
        .iter()
        .any(|r| r.spec.broker.rabbitmq_cluster_ref.is_some());
    report
        .propagating
        .then_some(Duration::from_secs(2))
        .or(uses_clusters.then_some(Duration::from_secs(30)))
}

async fn serve_http(
    listen: &str,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sock = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("operator http listener: cannot bind {listen}"))?;
    tracing::info!("operator http listener on {}", sock.local_addr()?);
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "caches not ready\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut out = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut out, &metrics.registry);
                async move { out }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(sock, app).await {
            tracing::error!(error = %e, "operator http listener failed");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    #[tokio::test]
    async fn secrets_are_only_ever_read_by_their_label() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                log.lock().unwrap().push(req.uri().to_string());
                let empty = serde_json::json!({
                    "kind": "SecretList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"}, "items": []
                });
                send.send_response(
                    Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&empty).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = Client::new(svc, "team");
        let api: Api<Secret> = Api::namespaced(client, "team");
        let store = watch_into(
            api,
            credential_secrets(),
            Arc::new(Notify::new()),
            any_change,
        );
        store.wait_until_ready().await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        for uri in &seen {
            assert!(uri.contains("/secrets"), "{uri}");
            assert!(
                uri.contains("labelSelector=amqprelay.io%2Fcredentials%3Dtrue"),
                "a request for Secrets without the credentials label: {uri}"
            );
        }
    }
}

#[cfg(test)]
mod metric_names {
    /// Every `amqp_relay_operator_*` name the chart's alerts and dashboard
    /// query is one this registry exports (`_total`, `_bucket` … suffixes
    /// of a counter or histogram included).
    #[test]
    fn the_charts_queries_use_only_exported_operator_metrics() {
        // Families show only once they have a member.
        let m = super::Metrics::new();
        m.failures
            .get_or_create(&super::ErrorLabel {
                error: "kube".into(),
            })
            .inc();
        m.routes
            .get_or_create(&super::StateLabel {
                state: "rejected".into(),
            })
            .set(1);
        m.spool_messages
            .get_or_create(&super::SpoolLabel {
                spool: "relay-2".into(),
            })
            .set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        assert!(
            text.contains("# TYPE amqp_relay_operator_routes_propagating gauge"),
            "{text}"
        );
        crate::test_support::assert_chart_queries_exported(
            &text,
            |w| w.starts_with("amqp_relay_operator_"),
            3,
        );
    }
}

#[cfg(test)]
mod watch_events {
    use super::*;
    use kube::runtime::watcher::Event;

    fn route(uid: &str, generation: i64, status_note: &str) -> AmqpRoute {
        let mut r: AmqpRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "amqprelay.io/v1alpha1", "kind": "AmqpRoute",
            "metadata": {"name": "r", "namespace": "team", "uid": uid, "generation": generation},
            "spec": {"match": {"domain": "amqp"}, "broker": {"url": "amqp://rabbit/"},
                     "publish": {"routingKey": "k"}}
        }))
        .unwrap();
        r.status = Some(serde_json::from_value(serde_json::json!({"relay": status_note})).unwrap());
        r
    }

    /// A status write (the operator's own, or another install's) leaves the
    /// generation alone and starts no sync; a spec edit, a new route and a
    /// deletion do.
    #[test]
    fn status_only_changes_start_no_sync() {
        let mut seen = std::collections::HashMap::new();
        let relevant: Relevant<AmqpRoute> = route_generation;
        assert!(needs_sync(
            &mut seen,
            &Event::InitApply(route("a", 1, "x")),
            relevant
        ));
        assert!(needs_sync(&mut seen, &Event::InitDone, relevant));
        for note in ["ns/relay", "ns/other", "ns/relay"] {
            assert!(!needs_sync(
                &mut seen,
                &Event::Apply(route("a", 1, note)),
                relevant
            ));
        }
        assert!(needs_sync(
            &mut seen,
            &Event::Apply(route("a", 2, "x")),
            relevant
        ));
        assert!(needs_sync(
            &mut seen,
            &Event::Apply(route("b", 1, "x")),
            relevant
        ));
        assert!(needs_sync(
            &mut seen,
            &Event::Delete(route("a", 2, "x")),
            relevant
        ));
        // Re-created under the same name: a new uid, a sync.
        assert!(needs_sync(
            &mut seen,
            &Event::Apply(route("a2", 1, "x")),
            relevant
        ));
        // A Secret has no generation: every change counts.
        let mut seen = std::collections::HashMap::new();
        let secret = Secret::default();
        assert!(needs_sync(
            &mut seen,
            &Event::Apply(secret.clone()),
            any_change
        ));
        assert!(needs_sync(&mut seen, &Event::Apply(secret), any_change));
    }
}

#[cfg(test)]
mod own_objects {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    /// Deleting the policy ConfigMap (or starting without it) starts a sync
    /// at once; the operator's own writes to it do not.
    #[test]
    fn a_deleted_own_object_starts_a_sync_and_a_write_does_not() {
        let mut seen = false;
        let cm = ConfigMap::default();
        assert!(!own_object_gone(&Event::<ConfigMap>::Init, &mut seen));
        assert!(!own_object_gone(&Event::InitApply(cm.clone()), &mut seen));
        assert!(
            !own_object_gone(&Event::<ConfigMap>::InitDone, &mut seen),
            "present at start"
        );
        assert!(
            !own_object_gone(&Event::Apply(cm.clone()), &mut seen),
            "a write"
        );
        assert!(own_object_gone(&Event::Delete(cm.clone()), &mut seen));
        // A relist after the deletion: still absent.
        assert!(!own_object_gone(&Event::<ConfigMap>::Init, &mut seen));
        assert!(own_object_gone(&Event::<ConfigMap>::InitDone, &mut seen));
        assert!(!own_object_gone(&Event::Apply(cm), &mut seen), "restored");
    }
}
