//! Resurgo: declarative incident recovery for Kubernetes.
//!
//! Platform engineers describe recovery priority, backups and access as custom resources
//! (see [`api`]); during an incident the operator rebuilds services in priority order from
//! clean backups, locks access down and reports every step.

// clippy reads the repeated `type_ = ...` of several `printcolumn(...)` in one
// `#[kube(...)]` as duplicated attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

pub mod access;
pub mod admin;
pub mod api;
pub mod backup;
pub mod conditions;
pub mod crd_files;
pub mod credentials;
pub mod events;
pub mod incident;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod planner;
pub mod recovery;
pub mod status_view;
pub mod yaml;

#[cfg(test)]
mod examples_test;
