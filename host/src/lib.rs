//! The `serf` agent and command line: Serf-compatible membership, RPC and WebAssembly handlers.
//!
//! See ARCHITECTURE.md for the map of modules and the rules between them.
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod config;
pub mod logging;
pub mod rpc;
