use super::*;
use crate::operator::fake_api::FakeApi;
use std::sync::Arc;

const D: Duration = Duration::from_secs(15);

fn lease(holder: &str, renewed: &str) -> Lease {
    Lease {
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn acquire_renew_wait_and_take_over_by_observed_time() {
    let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
    let created = decide(None, "a", D, now, Duration::ZERO).unwrap();
    assert_eq!(created.holder_identity.as_deref(), Some("a"));
    let held = lease("b", "2026-01-01T00:00:00Z");
    let renewed = decide(
        Some(&lease("a", "2026-01-01T00:00:00Z")),
        "a",
        D,
        now,
        D * 9,
    )
    .unwrap();
    assert_eq!(renewed.renew_time.unwrap().0, now);
    assert!(decide(Some(&held), "a", D, now, Duration::from_secs(14)).is_none());
    let taken = decide(Some(&held), "a", D, now, Duration::from_secs(16)).unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some("a"));
    assert_eq!(taken.lease_transitions, Some(1));
}

#[test]
fn the_holders_clock_does_not_decide_expiry() {
    // A holder whose clock runs an hour behind, or ahead: only how long this
    // replica has seen the lease unchanged counts.
    let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
    let behind = lease("b", "2026-01-01T11:00:00Z");
    let ahead = lease("b", "2026-01-01T13:00:00Z");
    assert!(decide(Some(&behind), "a", D, now, Duration::from_secs(1)).is_none());
    assert!(decide(Some(&ahead), "a", D, now, Duration::from_secs(16)).is_some());
}

#[test]
fn a_released_lease_is_free_at_once() {
    let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
    let mine = lease("a", "2026-01-01T00:00:09Z");
    assert!(released(&mine, "b", now).is_none());
    let free = Lease {
        spec: released(&mine, "a", now),
        ..Default::default()
    };
    assert_eq!(free.spec.as_ref().unwrap().holder_identity, None);
    assert!(decide(Some(&free), "b", D, now, Duration::ZERO).is_some());
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

/// The Lease API, in the shared fake (get, create, and replace with
/// resourceVersion checks, as the API server does them).
#[derive(Clone, Default)]
struct FakeLeases {
    api: Arc<FakeApi>,
}

impl FakeLeases {
    /// Every written renewTime becomes `t`, as a holder with a wrong
    /// clock would write it.
    fn skewed(t: &'static str) -> Self {
        let fake = FakeLeases::default();
        fake.api.rewrite(move |l| l["spec"]["renewTime"] = t.into());
        fake
    }

    fn elector(&self, identity: &str) -> Elector {
        let api = Api::namespaced(self.api.client("ops"), "ops");
        Elector::new(api, "relay-operator".into(), identity.into(), D)
    }

    fn lease(&self) -> Option<serde_json::Value> {
        self.api.get(LEASES, "relay-operator")
    }

    fn holder(&self) -> Option<String> {
        self.lease()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    }
}

#[tokio::test(start_paused = true)]
async fn a_skewed_holder_keeps_the_lease_while_it_renews() {
    // Every renewal carries a renewTime a day old, as a holder with a slow
    // clock writes it; comparing it with the local clock would take over.
    let fake = FakeLeases::skewed("2026-01-01T00:00:00.000000Z");
    let mut a = fake.elector("a");
    let mut b = fake.elector("b");
    assert!(a.round().await.unwrap());
    assert!(!b.round().await.unwrap());
    for _ in 0..6 {
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(a.round().await.unwrap());
        assert!(
            !b.round().await.unwrap(),
            "b took a lease that is being renewed"
        );
    }
    assert_eq!(fake.holder().as_deref(), Some("a"));

    // a stops renewing: b takes over once it has seen the same lease for
    // longer than its duration, and not before.
    tokio::time::advance(Duration::from_secs(14)).await;
    assert!(!b.round().await.unwrap());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(b.round().await.unwrap());
    assert_eq!(fake.holder().as_deref(), Some("b"));
    assert!(!a.round().await.unwrap(), "the old holder must see it lost");
}

#[tokio::test(start_paused = true)]
async fn stopping_releases_the_lease_for_the_next_replica() {
    let fake = FakeLeases::default();
    let (lead_tx, mut leading) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let a = tokio::spawn(fake.elector("a").run(lead_tx, stop_rx));
    leading.wait_for(|l| *l).await.unwrap();
    let mut b = fake.elector("b");
    assert!(!b.round().await.unwrap());

    stop_tx.send(true).unwrap();
    a.await.unwrap();
    assert!(
        !*leading.borrow(),
        "a stopped replica must not report leading"
    );
    assert_eq!(fake.holder(), None, "the lease was not released");
    // No waiting out the lease duration.
    assert!(b.round().await.unwrap());
    assert_eq!(fake.holder().as_deref(), Some("b"));
}

/// An API server that stops answering mid-lease: the holder stops leading
/// within the renew deadline, before the lease (15 s) could pass to a
/// follower, instead of leading on for as long as the request hangs.
#[tokio::test(start_paused = true)]
async fn a_hanging_api_ends_leadership_before_the_lease_can_pass() {
    let fake = FakeLeases::default();
    let (lead_tx, mut leading) = watch::channel(false);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let _a = tokio::spawn(fake.elector("a").run(lead_tx, stop_rx));
    leading.wait_for(|l| *l).await.unwrap();
    let renewed = fake.lease();
    let last_renewal = Instant::now();
    fake.api.pause(true);
    // Bounded: a replica that leads on while its request hangs fails here.
    tokio::time::timeout(D * 4, leading.wait_for(|l| !*l))
        .await
        .expect("still leading a minute into a hanging API")
        .unwrap();
    let led_for = last_renewal.elapsed();
    assert!(
        led_for < D,
        "led {led_for:?} after its last renewal; a follower takes over after {D:?}"
    );
    assert_eq!(fake.lease(), renewed, "nothing was written meanwhile");
}
