//! Node-to-node RPC over TCP: length-prefixed postcard frames, a deadline on every call.
//!
//! One request, one response, on a connection reused per peer; each request carries a number
//! the reply echoes, so a reply that is not this call's (a duplicate of an earlier one, which a
//! buggy or buggified server may send) is skipped instead of answering the wrong request.
//! Besides openraft's three RPCs
//! the protocol carries two of ours: `ClientWrite`, a write forwarded by a follower to the
//! leader, and `WaitApplied`, the applied-index acknowledgement of DESIGN §5 step 3 (openraft's
//! replication metrics show what a member stored, not what it applied).
//!
//! Every call runs under a deadline: a clogged link (or a simulated one, which hangs rather
//! than failing) must surface as a timeout, not a stuck task. Frames are refused above
//! [`FRAME_LEN_MAX`] before anything is allocated for them.
//!
//! Not yet here: mTLS (DESIGN §7). This transport is plaintext and for loopback, tests and the
//! simulation until the cluster CA exists.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use certfleet_core::Command;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest,
    InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::state_machine::StateMachineStore;
use super::types::{NodeId, TypeConfig};

/// The largest frame accepted (snapshot chunks are far smaller; see openraft's
/// `snapshot_max_chunk_size`).
pub const FRAME_LEN_MAX: usize = 64 * 1024 * 1024;
/// The protocol version carried in every frame (2: requests and replies are numbered).
pub const RPC_VERSION: u8 = 2;

/// A request between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    /// openraft AppendEntries.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// openraft Vote.
    Vote(VoteRequest<NodeId>),
    /// openraft InstallSnapshot (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write forwarded to the leader.
    ClientWrite(Command),
    /// Answer once this node has applied `index`, or after `timeout_ms` with what it has.
    WaitApplied {
        /// The index to wait for.
        index: u64,
        /// How long to wait.
        timeout_ms: u64,
    },
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcReply {
    /// AppendEntries result.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Vote result.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// InstallSnapshot result.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// ClientWrite result (a follower answers `ForwardToLeader`).
    ClientWrite(
        Result<
            ClientWriteResponse<TypeConfig>,
            RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
        >,
    ),
    /// The index this node has applied when it answered.
    Applied(u64),
}

/// Why a call failed on our side of the wire.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Connecting, reading or writing failed.
    #[error("transport to node {target} at {addr}: {source}")]
    Io {
        /// The peer.
        target: NodeId,
        /// Its address.
        addr: String,
        /// The error.
        source: io::Error,
    },
    /// The call did not complete within its deadline.
    #[error("call to node {target} timed out after {after:?}")]
    Timeout {
        /// The peer.
        target: NodeId,
        /// The deadline.
        after: Duration,
    },
    /// The peer sent bytes that are not a reply of ours.
    #[error("node {target} sent a malformed reply: {reason}")]
    Malformed {
        /// The peer.
        target: NodeId,
        /// What was wrong.
        reason: String,
    },
}

/// Creates one [`Peer`] per target.
#[derive(Clone, Debug)]
pub struct Network {
    /// Deadline for calls that carry none of their own (`ClientWrite`, `WaitApplied`).
    pub deadline: Duration,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
        }
    }
}

/// A connection to one peer, opened lazily and dropped on any error.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    addr: String,
    // Only ever reached through `get_mut` (we hold `&mut self`), so the lock is never taken;
    // it makes the peer `Sync` as openraft requires, which madsim's stream is not.
    stream: std::sync::Mutex<Option<TcpStream>>,
    deadline: Duration,
    /// The number of the last request sent.
    sent: u64,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer::new(target, node.addr.clone(), self.deadline)
    }
}

impl Peer {
    /// A peer at `addr`.
    #[must_use]
    pub fn new(target: NodeId, addr: String, deadline: Duration) -> Self {
        Self {
            target,
            addr,
            stream: std::sync::Mutex::new(None),
            deadline,
            sent: 0,
        }
    }

    /// Forwards a write to this peer (the leader, as a follower's `ForwardToLeader` named it).
    /// The inner result is the leader's own answer.
    pub async fn client_write(
        &mut self,
        command: Command,
    ) -> Result<
        Result<
            ClientWriteResponse<TypeConfig>,
            RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
        >,
        TransportError,
    > {
        match self.call(&Rpc::ClientWrite(command), self.deadline).await? {
            RpcReply::ClientWrite(answer) => Ok(answer),
            other => Err(unexpected(self.target, &other)),
        }
    }

    /// Asks this peer which index it has applied, waiting up to `timeout` for it to reach
    /// `index` (DESIGN §5 step 3). The call's own deadline adds the transport deadline.
    pub async fn wait_applied(
        &mut self,
        index: u64,
        timeout: Duration,
    ) -> Result<u64, TransportError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match self
            .call(
                &Rpc::WaitApplied { index, timeout_ms },
                timeout + self.deadline,
            )
            .await?
        {
            RpcReply::Applied(applied) => Ok(applied),
            other => Err(unexpected(self.target, &other)),
        }
    }

    /// Sends one request and waits for its reply, within `deadline`.
    pub async fn call(
        &mut self,
        rpc: &Rpc,
        deadline: Duration,
    ) -> Result<RpcReply, TransportError> {
        let target = self.target;
        let outcome = tokio::time::timeout(deadline, self.exchange(rpc)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                target,
                after: deadline,
            }),
        };
        if result.is_err() {
            // The stream may hold half a frame: never reuse it.
            *self.stream() = None;
        }
        result
    }

    async fn exchange(&mut self, rpc: &Rpc) -> Result<RpcReply, TransportError> {
        let target = self.target;
        let addr = self.addr.clone();
        let io_error = |source| TransportError::Io {
            target,
            addr: addr.clone(),
            source,
        };
        if self.stream().is_none() {
            let stream = TcpStream::connect(&addr).await.map_err(io_error)?;
            stream.set_nodelay(true).map_err(io_error)?;
            *self.stream() = Some(stream);
        }
        self.sent += 1;
        let id = self.sent;
        let stream = self.stream().as_mut().expect("connected above");
        write_frame(stream, &(id, rpc)).await.map_err(io_error)?;
        loop {
            let bytes = read_frame(stream).await.map_err(io_error)?;
            let (echo, reply): (u64, RpcReply) =
                decode(&bytes).map_err(|reason| TransportError::Malformed { target, reason })?;
            match echo.cmp(&id) {
                // An earlier call's reply sent twice: this call's is behind it.
                std::cmp::Ordering::Less => {
                    tracing::debug!(target, echo, id, "skipped a stale reply");
                }
                std::cmp::Ordering::Equal => return Ok(reply),
                std::cmp::Ordering::Greater => {
                    return Err(TransportError::Malformed {
                        target,
                        reason: format!("reply to request {echo}, only {id} sent"),
                    });
                }
            }
        }
    }

    fn stream(&mut self) -> &mut Option<TcpStream> {
        self.stream
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        error: TransportError,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match error {
            // A peer that stopped answering, or cannot be reached: openraft backs off.
            TransportError::Timeout { .. } | TransportError::Io { .. } => {
                RPCError::Unreachable(Unreachable::new(&error))
            }
            TransportError::Malformed { .. } => RPCError::Network(NetworkError::new(&error)),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&Rpc::AppendEntries(rpc), option.hard_ttl()).await {
            Ok(RpcReply::AppendEntries(reply)) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.rpc_error(unexpected(self.target, &other))),
            Err(error) => Err(self.rpc_error(error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(&Rpc::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(RpcReply::InstallSnapshot(reply)) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.rpc_error(unexpected(self.target, &other))),
            Err(error) => Err(self.rpc_error(error)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&Rpc::Vote(rpc), option.hard_ttl()).await {
            Ok(RpcReply::Vote(reply)) => {
                reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(other) => Err(self.rpc_error(unexpected(self.target, &other))),
            Err(error) => Err(self.rpc_error(error)),
        }
    }
}

fn unexpected(target: NodeId, reply: &RpcReply) -> TransportError {
    let kind = match reply {
        RpcReply::AppendEntries(_) => "AppendEntries",
        RpcReply::Vote(_) => "Vote",
        RpcReply::InstallSnapshot(_) => "InstallSnapshot",
        RpcReply::ClientWrite(_) => "ClientWrite",
        RpcReply::Applied(_) => "Applied",
    };
    TransportError::Malformed {
        target,
        reason: format!("unexpected {kind} reply"),
    }
}

/// Serves RPCs for one node until the listener fails; each connection gets its own task.
pub async fn serve(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    state_machine: StateMachineStore,
) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let raft = raft.clone();
        let state_machine = state_machine.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, raft, state_machine).await {
                tracing::debug!(%error, "rpc connection closed");
            }
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    raft: Raft<TypeConfig>,
    state_machine: StateMachineStore,
) -> io::Result<()> {
    loop {
        let bytes = match read_frame(&mut stream).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        };
        let (id, rpc): (u64, Rpc) =
            decode(&bytes).map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
        let reply = match rpc {
            Rpc::AppendEntries(request) => {
                RpcReply::AppendEntries(raft.append_entries(request).await)
            }
            Rpc::Vote(request) => RpcReply::Vote(raft.vote(request).await),
            Rpc::InstallSnapshot(request) => {
                RpcReply::InstallSnapshot(raft.install_snapshot(request).await)
            }
            Rpc::ClientWrite(command) => RpcReply::ClientWrite(raft.client_write(command).await),
            Rpc::WaitApplied { .. }
                if crate::buggify::fires(crate::buggify::Point::DropAppliedAck) =>
            {
                RpcReply::Applied(*state_machine.acknowledged_index().borrow())
            }
            Rpc::WaitApplied { index, timeout_ms } => RpcReply::Applied(
                wait_applied(&state_machine, index, Duration::from_millis(timeout_ms)).await,
            ),
        };
        crate::buggify::delay(crate::buggify::Point::BeforeRpcReply).await;
        write_frame(&mut stream, &(id, &reply)).await?;
        if crate::buggify::fires(crate::buggify::Point::DuplicateReply) {
            write_frame(&mut stream, &(id, &reply)).await?;
        }
    }
}

/// Waits until the node acknowledges `index` (its data plane serves it, or without a data plane
/// its state machine applied it) or `timeout` passes; returns the acknowledged index either way
/// (the caller compares).
pub async fn wait_applied(state_machine: &StateMachineStore, index: u64, timeout: Duration) -> u64 {
    let mut applied = state_machine.acknowledged_index();
    let reached = tokio::time::timeout(timeout, async {
        applied.wait_for(|at| *at >= index).await.map(|at| *at)
    })
    .await;
    match reached {
        Ok(Ok(at)) => at,
        _ => *state_machine.acknowledged_index().borrow(),
    }
}

/// Binds a listener for a node's RPC port.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, value: &T) -> io::Result<()> {
    let mut payload = vec![RPC_VERSION];
    payload = postcard::to_extend(value, payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if payload.len() > FRAME_LEN_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the limit", payload.len()),
        ));
    }
    let len = u32::try_from(payload.len()).expect("bounded by FRAME_LEN_MAX");
    stream.write_all(&len.to_le_bytes()).await?;
    stream.write_all(&payload).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_LEN_MAX || len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} is out of range"),
        ));
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(payload)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    let (&version, payload) = bytes.split_first().ok_or("empty frame")?;
    if version != RPC_VERSION {
        return Err(format!(
            "rpc version {version}, this node speaks {RPC_VERSION}"
        ));
    }
    let (value, rest) = postcard::take_from_bytes(payload).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}

/// A committed write: where it landed in the log, and the state machine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The log index of the entry.
    pub index: u64,
    /// `apply`'s answer.
    pub response: certfleet_core::Response,
}

/// Why a write could not be committed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// No leader became known within the deadline (an election is taking long, or this node
    /// is cut off from a majority).
    #[error("no leader known after {after:?}")]
    NoLeader {
        /// How long we tried.
        after: Duration,
    },
    /// The write was not committed within the deadline (it may still commit later).
    #[error("not committed within {after:?}; the write may still commit")]
    Timeout {
        /// How long we waited.
        after: Duration,
    },
    /// Forwarding to the leader failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Raft refused the write (shutting down, or a fatal error).
    #[error("raft refused the write: {0}")]
    Raft(String),
}

/// Commits `command` through `raft`, forwarding it to the leader when this node is not the
/// leader, and waiting (up to `deadline`) while no leader is known. Returns the state
/// machine's answer. A write that fails may still commit later: callers treat it as unknown,
/// never as absent (SIMULATION I3).
pub async fn write(
    raft: &Raft<TypeConfig>,
    command: Command,
    deadline: Duration,
) -> Result<Written, WriteError> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        // Even the local call has a deadline: a leader cut off from its majority accepts the
        // write and never commits it (found by the simulator: a clogged leader hung a client).
        let remaining = deadline.saturating_sub(started.elapsed());
        let local = tokio::time::timeout(remaining, raft.client_write(command.clone())).await;
        let forward = match local {
            Err(_) => {
                return Err(WriteError::Timeout {
                    after: started.elapsed(),
                });
            }
            Ok(Ok(reply)) => {
                return Ok(Written {
                    index: reply.log_id.index,
                    response: reply.data,
                });
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => forward,
            Ok(Err(other)) => return Err(WriteError::Raft(other.to_string())),
        };
        let mut last_error = None;
        if let (Some(leader), Some(node)) = (forward.leader_id, forward.leader_node) {
            let remaining = deadline.saturating_sub(started.elapsed());
            let mut peer = Peer::new(leader, node.addr, remaining.max(Duration::from_millis(1)));
            match peer.client_write(command.clone()).await {
                Ok(Ok(reply)) => {
                    return Ok(Written {
                        index: reply.log_id.index,
                        response: reply.data,
                    });
                }
                // The leader moved on between our question and its answer: ask again.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {}
                Ok(Err(other)) => return Err(WriteError::Raft(other.to_string())),
                // The leader we were told of is unreachable (crashed, cut off): an election
                // will name another; keep asking until the deadline.
                Err(error) => last_error = Some(error),
            }
        }
        if started.elapsed() + pause > deadline {
            return Err(match last_error {
                Some(error) => WriteError::Transport(error),
                None => WriteError::NoLeader {
                    after: started.elapsed(),
                },
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    /// A server that answers each `WaitApplied` with its index, and its first reply twice.
    async fn stuttering_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut copies = 2;
            while let Ok(bytes) = read_frame(&mut stream).await {
                let (id, rpc): (u64, Rpc) = decode(&bytes).expect("a request");
                let Rpc::WaitApplied { index, .. } = rpc else {
                    panic!("unexpected {rpc:?}");
                };
                for _ in 0..copies {
                    write_frame(&mut stream, &(id, RpcReply::Applied(index)))
                        .await
                        .expect("write");
                }
                copies = 1;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_duplicated_reply_is_skipped_not_taken_for_the_next_calls() {
        let addr = stuttering_server().await;
        let mut peer = Peer::new(1, addr.to_string(), Duration::from_secs(5));
        for index in [10, 20, 30] {
            // Without the request number the second call read the first reply's copy: 10.
            assert_eq!(
                peer.wait_applied(index, Duration::ZERO).await.unwrap(),
                index
            );
        }
    }

    #[tokio::test]
    async fn a_reply_to_a_request_never_sent_is_malformed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_frame(&mut stream).await.unwrap();
            write_frame(&mut stream, &(7_u64, RpcReply::Applied(1)))
                .await
                .unwrap();
        });
        let mut peer = Peer::new(1, addr.to_string(), Duration::from_secs(5));
        let error = peer.wait_applied(1, Duration::ZERO).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("reply to request 7, only 1 sent"),
            "{error}"
        );
    }
}
