//! Events as users read them in `kubectl describe` and `kubectl get events`: one Event
//! object per thing that happened.
//!
//! kube-rs's `Recorder` keys its series by object, reason and related object, not by note:
//! every further Event of the same reason about an object only bumps the count of the first
//! one, and its note (which service, which step, which binding) is lost. A recovery of a
//! thousand services showed one `ServiceStarted`, naming one service. [`Recorder`] here
//! creates a new Event each time instead.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::events::{Event, EventType, Reporter},
};

/// Publishes Events for the operator's controllers (the same call as kube-rs's `Recorder`).
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    sequence: AtomicU64,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            sequence: AtomicU64::new(0),
        }
    }

    /// Creates the Event in the namespace of the object it is about (`default` for
    /// cluster-scoped objects).
    pub async fn publish(&self, event: &Event, about: &ObjectReference) -> Result<(), kube::Error> {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let event = event_object(&self.reporter, event, about.clone(), sequence);
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        Api::<K8sEvent>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}

/// The reporter of every Resurgo Event: the controller, and the pod when in a cluster.
pub fn reporter() -> Reporter {
    Reporter {
        controller: "resurgo".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// The Event object for one thing that happened; `sequence` keeps names apart within a
/// nanosecond.
pub fn event_object(
    reporter: &Reporter,
    event: &Event,
    about: ObjectReference,
    sequence: u64,
) -> K8sEvent {
    let now = Timestamp::now();
    // Events of cluster-scoped objects live in `default`.
    let namespace = about.namespace.clone().unwrap_or_else(|| "default".into());
    let name = format!(
        "{}.{:x}.{sequence:x}",
        about.name.as_deref().unwrap_or(&reporter.controller),
        now.as_nanosecond()
    );
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            ..Default::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(about),
        related: event.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .into(),
        ),
        ..Default::default()
    }
}
