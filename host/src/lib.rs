//! The `serf` agent and command line: Serf-compatible membership, RPC and WebAssembly handlers.
//!
//! See ARCHITECTURE.md for the map of modules and the rules between them.
#![deny(unsafe_code)]

pub mod accept;
pub mod agent;
pub mod cli;
pub mod config;
mod go_text;
pub mod gossip;
pub mod logging;
pub mod plugin;
pub mod rpc;
pub mod serf;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_serf;
#[cfg(test)]
mod tidy;
