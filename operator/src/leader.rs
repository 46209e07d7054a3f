//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly
//! one runs the controllers.
//!
//! The rules, the same as client-go's:
//! - A replica takes the Lease when it has no holder, or when its record (seen through its
//!   `resourceVersion`) has not changed for the holder's `leaseDurationSeconds` as measured
//!   by the taker's own clock, so clocks of different nodes never need to agree.
//! - Every write is a replace carrying the `resourceVersion` that was read: of two replicas
//!   racing for it, the API server lets exactly one win (409 Conflict for the other).
//! - The leader renews every third of the duration. When it has not renewed for two thirds
//!   of the duration, or finds another holder, it has lost: [`Elector::hold`] returns and
//!   the process exits before any other replica can take over.
//! - On shutdown the leader clears the holder ([`Elector::release`]), so a standby takes
//!   over at its next attempt instead of waiting for the Lease to expire.
//!
//! The crates that do this (kube-lease-manager is on kube 5) bring rand 0.10 and a third
//! getrandom major version into the tree; this is small enough to own.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use tokio::time::Instant;
use tracing::{info, warn};

/// Which Lease, and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Unique among the replicas: the pod name, or host name and process id.
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("Lease {0} is now held by {1}")]
    TakenBy(String, String),
    #[error("Lease {lease} not renewed for {elapsed:?} (last error: {last_error})")]
    NotRenewed {
        lease: String,
        elapsed: Duration,
        last_error: String,
    },
}

/// Campaigns for, holds and releases one Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

/// What one attempt to take the Lease saw, to tell an expired holder from a live one.
#[derive(Default)]
struct Observed {
    record: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    fn retry_period(&self) -> Duration {
        self.config.duration / 5
    }

    fn renew_period(&self) -> Duration {
        self.config.duration / 3
    }

    fn renew_deadline(&self) -> Duration {
        self.config.duration * 2 / 3
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut observed = Observed::default();
        let mut announced = None;
        loop {
            match self.try_acquire(&mut observed).await {
                Ok(Attempt::Acquired) => {
                    info!(lease = %self.describe(), identity = %self.config.identity, "acquired the leader Lease");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if announced.as_ref() != Some(&holder) {
                        info!(lease = %self.describe(), %holder, "standing by: another replica leads");
                        announced = Some(holder);
                    }
                }
                Err(error) => warn!(lease = %self.describe(), %error, "could not take the Lease"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    async fn try_acquire(&self, observed: &mut Observed) -> Result<Attempt, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Acquired),
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    Ok(Attempt::HeldBy("a replica that just created it".into()))
                }
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let version = lease.resource_version().unwrap_or_default();
        if let Some(holder) = &holder
            && *holder != self.config.identity
        {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.duration, Duration::from_secs);
            let expired = match &observed.record {
                Some((seen, since)) if *seen == version => since.elapsed() >= duration,
                _ => {
                    observed.record = Some((version, Instant::now()));
                    false
                }
            };
            if !expired {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
            info!(lease = %self.describe(), %holder, "the leader stopped renewing: taking over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0)
            + i32::from(holder.as_ref() != Some(&self.config.identity));
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Acquired),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Attempt::HeldBy("a replica that took it first".into()))
            }
            Err(error) => Err(error),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Renews the Lease until leadership is lost, and says why. Never returns while this
    /// replica leads.
    pub async fn hold(&self) -> Lost {
        let mut last_renewed = Instant::now();
        let mut last_error = String::new();
        loop {
            tokio::time::sleep(self.renew_period()).await;
            let deadline = last_renewed + self.renew_deadline();
            match tokio::time::timeout_at(deadline, self.renew()).await {
                Ok(Ok(())) => {
                    last_renewed = Instant::now();
                    last_error.clear();
                }
                Ok(Err(Renewal::TakenBy(holder))) => return Lost::TakenBy(self.describe(), holder),
                Ok(Err(Renewal::Failed(error))) => {
                    warn!(lease = %self.describe(), %error, "could not renew the Lease");
                    last_error = error.to_string();
                }
                Err(_) => last_error = "the request timed out".into(),
            }
            if last_renewed.elapsed() >= self.renew_deadline() {
                return Lost::NotRenewed {
                    lease: self.describe(),
                    elapsed: last_renewed.elapsed(),
                    last_error,
                };
            }
        }
    }

    async fn renew(&self) -> Result<(), Renewal> {
        let mut lease = self
            .api
            .get(&self.config.name)
            .await
            .map_err(Renewal::Failed)?;
        let mut spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.config.identity {
            return Err(Renewal::TakenBy(holder));
        }
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(drop)
            .map_err(Renewal::Failed)
    }

    /// Gives the Lease up, if this replica still holds it, so a standby takes over at once.
    pub async fn release(&self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok(false);
            };
            let mut spec = lease.spec.take().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            lease.spec = Some(spec);
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        }
        .await;
        match result {
            Ok(true) => info!(lease = %self.describe(), "released the leader Lease"),
            Ok(false) => {}
            Err(error) => warn!(lease = %self.describe(), %error, "could not release the Lease"),
        }
    }
}

enum Attempt {
    Acquired,
    HeldBy(String),
}

enum Renewal {
    TakenBy(String),
    Failed(kube::Error),
}

/// This replica's identity: the pod's name (a restarted container may take back its own
/// Lease at once), or outside a pod the host name and the process id.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "resurgo".into());
    format!("{host}-{}", std::process::id())
}
