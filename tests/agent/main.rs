//! Real `serf` agents on loopback, driven by our CLI, by Serf 0.9.4's CLI and by raw RPC.

mod author_errors;
mod bad_input;
mod basics;
mod capabilities;
mod commands;
mod containment;
mod doors;
mod embed;
mod go_plugins;
mod gossip;
mod hostile;
mod jobs;
mod keys;
mod operators;
mod plugin_new;
mod plugin_view;
mod python_client;
mod reliability;
mod reload;
mod rtt;
mod sandbox;
mod serf_layer;
mod shell_handlers;
mod snapshot;
mod webhook;
