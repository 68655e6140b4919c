//! Serf's RPC ("IPC") protocol: msgpack over TCP, spoken by `serf` CLI commands and by
//! third-party clients (serfclient-py, serfx) to a running agent.
//!
//! `protocol` holds the wire types and framing shared by both ends; `client` is the async client
//! that our CLI and integration tests use. The agent's side (`server`, `handlers`) answers over an
//! `agent::AgentHandle`. Nothing in here prints; errors are typed per boundary.

pub mod client;
mod handlers;
pub mod protocol;
pub mod server;
