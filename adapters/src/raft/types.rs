//! The openraft type configuration: the log carries `certfleet_core::Command`s, the state
//! machine answers with `certfleet_core::Response`s.

use std::io::Cursor;

use certfleet_core::{Command, Response};

/// The async runtime openraft runs on: real tokio in production, madsim's simulator under
/// `--cfg madsim` (openraft's `TokioRuntime` would call the real tokio there and panic).
#[cfg(not(madsim))]
pub type Runtime = openraft::TokioRuntime;
/// The async runtime openraft runs on: madsim's simulator.
#[cfg(madsim)]
pub type Runtime = super::sim_runtime::MadsimRuntime;

/// A node's id in the cluster (voters and edge learners alike).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// certfleet's Raft types.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = Runtime,
);

/// A log entry of this cluster.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader, index) of this cluster.
pub type LogId = openraft::LogId<NodeId>;
/// Storage errors of this cluster.
pub type StorageError = openraft::StorageError<NodeId>;
