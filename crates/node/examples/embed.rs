//! A program that embeds a Serf node: it joins a cluster of `serf` agents (this project's or
//! Serf's own), prints every event it sees, greets back, and answers a query.
//!
//! ```text
//! cargo run -p serf-node --example embed -- NAME BIND_ADDR [JOIN_ADDR...]
//! ```
//!
//! - prints one line per event: `member-join NAME...`, `user NAME PAYLOAD`, `query NAME PAYLOAD`;
//! - on the user event `greet`, fires the user event `greeted` with its own name as payload;
//! - answers the query `whoami` with its name and its tags;
//! - on Ctrl-C (or SIGTERM) leaves the cluster gracefully and exits.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program whose output is its lines

use std::net::SocketAddr;
use std::time::Duration;

use serf_node::serf_core::filter::EventFilter;
use serf_node::serf_core::{Event, Tags};
use serf_node::{Node, NodeConfig, NodeHandle};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: embed NAME BIND_ADDR [JOIN_ADDR...]";
    let name = args.next().ok_or(usage)?;
    let bind: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let seeds: Vec<String> = args.collect();

    let tags = Tags::from([("role".to_owned(), "embedded".to_owned())]);
    let mut config = NodeConfig::lan(&name, bind, tags);
    // Serf's agent coalesces member events; an embedding program chooses (Go's
    // `CoalescePeriod`/`QuiescentPeriod`). This one wants every event as it happens.
    config.serf.coalesce = serf_node::serf_core::coalesce::Config::OFF;
    let node = Node::start(config).await?;
    let handle = node.handle();
    // At most 256 undelivered events; beyond that they are dropped and counted.
    let mut events = handle.subscribe(EventFilter::all(), 256).await?.events;
    if !seeds.is_empty() {
        let joined = handle.join(seeds, false).await?;
        println!("joined {joined}");
    }

    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            event = events.recv() => match event {
                Some(event) => react(&handle, &name, &event).await,
                None => break,
            },
        }
    }
    println!("leaving");
    let _ = tokio::time::timeout(Duration::from_secs(15), handle.leave()).await;
    node.shutdown().await;
    Ok(())
}

/// Prints the event and does what it asks.
async fn react(handle: &NodeHandle, name: &str, event: &Event) {
    match event {
        Event::Member(members) => {
            let names: Vec<&str> = members.members.iter().map(|m| m.name.as_str()).collect();
            println!("{} {}", members.kind.as_str(), names.join(" "));
        }
        Event::User(user) => {
            println!(
                "user {} {}",
                user.name,
                String::from_utf8_lossy(&user.payload)
            );
            if user.name == "greet" {
                let fired = handle
                    .user_event("greeted".into(), name.as_bytes().to_vec(), false)
                    .await;
                if let Err(error) = fired {
                    eprintln!("cannot greet back: {error}");
                }
            }
        }
        Event::Query(query) => {
            println!(
                "query {} {}",
                query.name,
                String::from_utf8_lossy(&query.payload)
            );
            if query.name == "whoami" {
                let answer = format!("{name} role=embedded").into_bytes();
                if let Err(error) = handle.respond(query.key, answer).await {
                    eprintln!("cannot answer {}: {error}", query.name);
                }
            }
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
