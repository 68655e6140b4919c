//! Serf's RPC ("IPC") protocol: msgpack over TCP, spoken by `serf` CLI commands and by
//! third-party clients (serfclient-py, serfx) to a running agent.
//!
//! [`protocol`] holds the wire types and framing shared by both ends; [`client`] is an async
//! client for any Rust program (the `serf` CLI and the integration tests use it). The agent's
//! side lives in the `serf` binary crate. Nothing in here prints; errors are typed per boundary.
//! This crate depends on none of the gossip, Serf or plugin crates.
#![forbid(unsafe_code)]

pub mod client;
pub mod go_text;
pub mod protocol;
