//! What a reconcile tells the API server without waiting for it: Events and the plan's
//! status, written by one background task.
//!
//! At 1,000 services a status apply costs the API server about a second and a tier boundary
//! announces hundreds of Events; made inside the reconcile, those waits were the largest
//! part of every service's start latency. The reconcile already trusts the status it last
//! computed (see `last_status`), so it hands the writes over and goes on.
//!
//! Order is kept where a reader can see it: the Events queued before a status are published
//! before that status is written, so a `kubectl wait` that sees the plan Ready then finds
//! every Event of the recovery. Statuses are coalesced: only the newest per plan is written.
//! A write that fails is retried (with a pause) unless a newer status replaced it; one
//! refused because the plan was deleted, or recreated under another uid, is dropped.
//! Writes are paced: after a write the task waits five times as long as the write took (at
//! most 5 s), unless the plan's phase changed.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::ObjectReference, events::v1::Event as K8sEvent};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, Reporter},
};
use serde_json::json;
use tokio::sync::Notify;
use tracing::warn;

use crate::{
    api::recovery_plan::{RecoveryPlan, RecoveryPlanStatus},
    labels::FIELD_MANAGER,
};

/// How many Events are in flight at once.
const EVENTS_IN_FLIGHT: usize = 16;
/// The pause before a failed status write is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The longest pause between two status writes.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// A status to write, for the plan of this name and uid.
struct PendingStatus {
    uid: Option<String>,
    status: RecoveryPlanStatus,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<(Event, ObjectReference)>,
    statuses: BTreeMap<String, PendingStatus>,
}

/// The queue the reconciles fill and the background task empties.
#[derive(Clone)]
pub struct Outbox {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    /// Cuts the pause between writes short: a status a reader waits for (the plan's phase
    /// changed, e.g. to Recovered) is not held back.
    hurry: Arc<Notify>,
}

impl Outbox {
    /// Starts the background task that publishes and writes what is queued.
    pub fn start(client: Client, reporter: Reporter) -> Self {
        let outbox = Outbox {
            queue: Arc::default(),
            wake: Arc::new(Notify::new()),
            hurry: Arc::new(Notify::new()),
        };
        tokio::spawn(outbox.clone().deliver(client, reporter));
        outbox
    }

    pub fn event(&self, event: Event, about: ObjectReference) {
        self.queue
            .lock()
            .expect("the outbox lock is never poisoned")
            .events
            .push_back((event, about));
        self.wake.notify_one();
    }

    /// Queues the plan's status; `urgent` when it should not wait for the pause between
    /// writes.
    pub fn status(
        &self,
        plan: String,
        uid: Option<String>,
        status: RecoveryPlanStatus,
        urgent: bool,
    ) {
        self.queue
            .lock()
            .expect("the outbox lock is never poisoned")
            .statuses
            .insert(plan, PendingStatus { uid, status });
        self.wake.notify_one();
        if urgent {
            self.hurry.notify_one();
        }
    }

    /// Whether nothing waits to be written (for tests).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        let queue = self.queue.lock().unwrap();
        queue.events.is_empty() && queue.statuses.is_empty()
    }

    async fn deliver(self, client: Client, reporter: Reporter) {
        let mut sequence: u64 = 0;
        loop {
            self.wake.notified().await;
            loop {
                let (events, statuses) = {
                    let mut queue = self
                        .queue
                        .lock()
                        .expect("the outbox lock is never poisoned");
                    (
                        std::mem::take(&mut queue.events),
                        std::mem::take(&mut queue.statuses),
                    )
                };
                if events.is_empty() && statuses.is_empty() {
                    break;
                }
                let events: Vec<K8sEvent> = events
                    .into_iter()
                    .map(|(event, about)| {
                        sequence += 1;
                        crate::events::event_object(&reporter, &event, about, sequence)
                    })
                    .collect();
                futures::stream::iter(events)
                    .for_each_concurrent(EVENTS_IN_FLIGHT, |event| {
                        let client = &client;
                        async move {
                            let namespace =
                                event.metadata.namespace.as_deref().unwrap_or("default");
                            let api = Api::<K8sEvent>::namespaced(client.clone(), namespace);
                            // An Event that cannot be written must not stop a recovery.
                            if let Err(error) = api.create(&PostParams::default(), &event).await {
                                warn!(reason = ?event.reason, %error, "could not publish event");
                            }
                        }
                    })
                    .await;
                let mut failed = false;
                let writing = tokio::time::Instant::now();
                let wrote = !statuses.is_empty();
                for (plan, pending) in statuses {
                    match write(&client, &plan, &pending).await {
                        Ok(()) => {}
                        Err(kube::Error::Api(status))
                            if status.is_not_found()
                                || status.code == 409
                                || status.code == 422 =>
                        {
                            // Deleted, or a new plan of the same name: this status is not its.
                            warn!(%plan, error = %status.message, "status not written");
                        }
                        Err(error) => {
                            warn!(%plan, %error, "could not write status; will retry");
                            failed = true;
                            let mut queue = self
                                .queue
                                .lock()
                                .expect("the outbox lock is never poisoned");
                            queue.statuses.entry(plan).or_insert(pending);
                        }
                    }
                }
                if failed {
                    tokio::time::sleep(RETRY_AFTER).await;
                } else if wrote {
                    // Five times as long before the next write: a large plan's status
                    // costs the API server half a second of CPU, and back-to-back writes
                    // would keep a core busy that the recovery itself needs. What comes
                    // meanwhile is coalesced into one write.
                    let pause = tokio::time::sleep((writing.elapsed() * 5).min(MAX_PAUSE));
                    tokio::select! {
                        () = pause => {}
                        () = self.hurry.notified() => {}
                    }
                }
            }
        }
    }
}

/// Applies the whole status; the uid makes the write fail on another plan of the same name.
async fn write(client: &Client, plan: &str, pending: &PendingStatus) -> Result<(), kube::Error> {
    let mut patch = json!({
        "apiVersion": "resurgo.dev/v1alpha1",
        "kind": "RecoveryPlan",
        "status": pending.status,
    });
    if let Some(uid) = &pending.uid {
        patch["metadata"] = json!({"uid": uid});
    }
    let mut request = kube::core::Request::new(RecoveryPlan::url_path(&(), None))
        .patch_subresource(
            "status",
            plan,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    // Only the metadata comes back: the whole plan, about 1 MB at 1,000 services, would be
    // encoded by the API server and decoded here on every write, for nothing.
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        ),
    );
    client.request_text(request).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newer_status_replaces_the_one_not_yet_written() {
        let outbox = Outbox {
            queue: Arc::default(),
            wake: Arc::new(Notify::new()),
            hurry: Arc::new(Notify::new()),
        };
        let first = RecoveryPlanStatus {
            ready: Some("1/2".into()),
            ..Default::default()
        };
        let second = RecoveryPlanStatus {
            ready: Some("2/2".into()),
            ..Default::default()
        };
        outbox.status("p".into(), Some("u".into()), first, false);
        outbox.status("p".into(), Some("u".into()), second, false);
        assert!(!outbox.is_empty());
        let queue = outbox.queue.lock().unwrap();
        assert_eq!(queue.statuses.len(), 1);
        assert_eq!(queue.statuses["p"].status.ready.as_deref(), Some("2/2"));
    }
}
