//! The agent's side of Serf's RPC protocol: the listener and per-connection sessions
//! (`server`) and the commands they run against an `agent::AgentHandle` (`handlers`). The
//! wire types and the client are the `serf-rpc` crate.

mod handlers;
pub mod server;
