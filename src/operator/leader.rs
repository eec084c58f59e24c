//! Leader election through a coordination.k8s.io Lease, so two operator
//! replicas never write at once. The holder renews every third of the lease
//! duration; another replica takes over only after a lease has expired.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;

pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// What to do with the lease as found, at `now`: `None` to leave it alone.
pub fn decide(
    found: Option<&Lease>,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let fresh = LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration.as_secs().max(1) as i32),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    };
    let Some(spec) = found.and_then(|l| l.spec.as_ref()) else {
        return Some(fresh);
    };
    if spec.holder_identity.as_deref() == Some(identity) {
        return Some(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: fresh.lease_duration_seconds,
            ..spec.clone()
        });
    }
    let secs = spec.lease_duration_seconds.unwrap_or(15) as i64;
    let expired = match &spec.renew_time {
        Some(t) => t.0 + SignedDuration::from_secs(secs) < now,
        None => true,
    };
    if expired || spec.holder_identity.is_none() {
        Some(LeaseSpec {
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + 1),
            ..fresh
        })
    } else {
        None
    }
}

impl Elector {
    async fn round(&self) -> Result<bool, kube::Error> {
        let found = self.api.get_opt(&self.name).await?;
        let Some(spec) = decide(
            found.as_ref(),
            &self.identity,
            self.duration,
            Timestamp::now(),
        ) else {
            return Ok(false);
        };
        match found {
            None => {
                let mut lease = Lease::default();
                lease.metadata.name = Some(self.name.clone());
                lease.spec = Some(spec);
                self.api.create(&PostParams::default(), &lease).await?;
            }
            Some(mut lease) => {
                // resourceVersion makes this a compare-and-swap: a racing replica fails with 409.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(true)
    }

    /// Runs forever, publishing whether this replica leads.
    pub async fn run(self, leading: watch::Sender<bool>) {
        let period = self.duration / 3;
        loop {
            let now_leading = match self.round().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    false
                }
            };
            if *leading.borrow() != now_leading {
                tracing::info!(leading = now_leading, identity = %self.identity, "leadership changed");
            }
            let _ = leading.send(now_leading);
            tokio::time::sleep(period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn acquire_renew_wait_and_take_over() {
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let d = Duration::from_secs(15);
        let created = decide(None, "a", d, now).unwrap();
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        let renewed = decide(Some(&lease("a", "2026-01-01T00:00:00Z")), "a", d, now).unwrap();
        assert_eq!(renewed.renew_time.unwrap().0, now);
        assert!(decide(Some(&lease("b", "2026-01-01T00:00:00Z")), "a", d, now).is_none());
        let later: Timestamp = "2026-01-01T00:00:16Z".parse().unwrap();
        let taken = decide(Some(&lease("b", "2026-01-01T00:00:00Z")), "a", d, later).unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(1));
    }
}
