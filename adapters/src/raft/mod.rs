//! openraft glue (DESIGN §3, §7), split as openraft's own examples are: the type
//! configuration, the log store, the state machine, the network. The node driver comes next
//! (issue #4).

pub mod log_store;
pub mod network;
#[cfg(madsim)]
pub mod sim_runtime;
pub mod state_machine;
pub mod types;

pub use log_store::MemLogStore;
pub use state_machine::StateMachineStore;
pub use types::TypeConfig;
