//! Leader election through a coordination.k8s.io Lease, so two operator
//! replicas never write at once. The holder renews every third of the lease
//! duration. Another replica takes over only when it has seen the lease
//! unchanged for a whole lease duration by its own clock, as client-go does:
//! the holder's `renewTime` is never compared with the local clock, so clock
//! skew between nodes cannot make two leaders. A round that does not finish
//! within the renew deadline (half the lease: an API server that hangs) ends
//! leadership before a follower could take the lease over. On SIGTERM the
//! holder releases the lease so a successor need not wait for it to expire.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// The lease's resourceVersion as last read, and when it was first seen.
    observed: Option<(String, Instant)>,
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// What to do with the lease as found: `None` to leave it alone.
/// `unchanged_for` is how long this replica has seen the lease as it is now;
/// `now` only stamps what is written, for people reading the Lease.
pub fn decide(
    found: Option<&Lease>,
    identity: &str,
    duration: Duration,
    now: Timestamp,
    unchanged_for: Duration,
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
    if holder(spec) == Some(identity) {
        return Some(LeaseSpec {
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: fresh.lease_duration_seconds,
            ..spec.clone()
        });
    }
    let lease_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    if holder(spec).is_none() || unchanged_for > lease_for {
        Some(LeaseSpec {
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + 1),
            ..fresh
        })
    } else {
        None
    }
}

/// The lease as its holder leaves it on shutdown: no holder, so the next
/// replica takes it at once. `None` when `identity` does not hold it.
pub fn released(found: &Lease, identity: &str, now: Timestamp) -> Option<LeaseSpec> {
    let spec = found.spec.as_ref()?;
    (holder(spec) == Some(identity)).then(|| LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..spec.clone()
    })
}

impl Elector {
    pub fn new(api: Api<Lease>, name: String, identity: String, duration: Duration) -> Self {
        Elector {
            api,
            name,
            identity,
            duration,
            observed: None,
        }
    }

    /// How long the lease has looked as it does now, by this replica's clock.
    fn unchanged_for(&mut self, found: Option<&Lease>) -> Duration {
        let version = found
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        match &self.observed {
            Some((v, since)) if *v == version => since.elapsed(),
            _ => {
                self.observed = Some((version, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// One look at the lease: acquires or renews it if it may. Whether this
    /// replica leads afterwards.
    pub async fn round(&mut self) -> Result<bool, kube::Error> {
        let found = self.api.get_opt(&self.name).await?;
        let unchanged_for = self.unchanged_for(found.as_ref());
        let Some(spec) = decide(
            found.as_ref(),
            &self.identity,
            self.duration,
            Timestamp::now(),
            unchanged_for,
        ) else {
            return Ok(false);
        };
        self.write(found, spec).await?;
        Ok(true)
    }

    async fn write(&mut self, found: Option<Lease>, spec: LeaseSpec) -> Result<(), kube::Error> {
        let written = match found {
            None => {
                let mut lease = Lease::default();
                lease.metadata.name = Some(self.name.clone());
                lease.spec = Some(spec);
                self.api.create(&PostParams::default(), &lease).await?
            }
            Some(mut lease) => {
                // resourceVersion makes this a compare-and-swap: a racing replica fails with 409.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?
            }
        };
        self.observed = Some((
            written.metadata.resource_version.unwrap_or_default(),
            Instant::now(),
        ));
        Ok(())
    }

    /// Gives the lease up if this replica holds it.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(found) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let Some(spec) = released(&found, &self.identity, Timestamp::now()) else {
            return Ok(false);
        };
        self.write(Some(found), spec).await?;
        Ok(true)
    }

    /// Publishes whether this replica leads until `stop` turns true, then
    /// releases the lease.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let period = self.duration / 3;
        // Last renewal + period + deadline stays under the lease duration.
        let renew_deadline = self.duration / 2;
        loop {
            let now_leading = match tokio::time::timeout(renew_deadline, self.round()).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader election round failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(deadline = ?renew_deadline, "leader election round did not finish in time: not leading");
                    false
                }
            };
            if *leading.borrow() != now_leading {
                tracing::info!(leading = now_leading, identity = %self.identity, "leadership changed");
            }
            let _ = leading.send(now_leading);
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let _ = leading.send(false);
        match self.release().await {
            Ok(true) => tracing::info!(identity = %self.identity, "lease released"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release the lease; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests;
