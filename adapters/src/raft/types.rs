//! The openraft type configuration: the log carries `certfleet_core::Command`s, the state
//! machine answers with `certfleet_core::Response`s.

use std::io::Cursor;

use certfleet_core::{Command, Response};

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
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log entry of this cluster.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (term, leader, index) of this cluster.
pub type LogId = openraft::LogId<NodeId>;
/// Storage errors of this cluster.
pub type StorageError = openraft::StorageError<NodeId>;
