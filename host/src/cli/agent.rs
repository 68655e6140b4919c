//! `serf agent`: runs an agent until a signal or an RPC `leave`, printing Serf's banner.

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::agent::Agent;
use crate::config::{AgentFlags, Config};
use crate::logging::{LogHub, SerfLogLayer};
use crate::rpc::server::RpcServer;

/// Worker threads of the agent's own runtime (gossip, RPC); plugins have their own.
const AGENT_THREADS: usize = 2;

/// Runs `serf agent` with these flags; returns the process exit code.
pub(super) fn run(flags: &AgentFlags) -> u8 {
    let config = match Config::from_flags(flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("==> {error}");
            return 1;
        }
    };
    let logs = LogHub::new();
    let _ = tracing_subscriber::registry()
        .with(SerfLogLayer::new(logs.clone(), config.log_level))
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(AGENT_THREADS)
        .thread_name("serf-agent")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("==> cannot start the agent runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(serve(config, logs)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("==> Failed to start the Serf agent: {error:#}");
            1
        }
    }
}

async fn serve(config: Config, logs: LogHub) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    println!("==> Starting Serf agent...");
    tracing::info!(target: "serf_host::agent", "Serf agent starting");
    let agent = Agent::start(config.clone(), logs).await?;
    println!("==> Starting Serf agent RPC...");
    let rpc = match RpcServer::start(agent.handle(), config.rpc_addr).await {
        Ok(rpc) => rpc,
        Err(error) => {
            agent.shutdown().await;
            return Err(error)
                .with_context(|| format!("cannot listen for RPC on {}", config.rpc_addr));
        }
    };
    let handle = agent.handle();
    let plugins = handle.plugins().stats();
    let running = plugins.iter().filter(|p| p.state == "running").count();
    println!("==> Serf agent running!");
    println!("                      Node name: '{}'", config.node_name);
    println!("                      Bind addr: '{}'", config.bind);
    println!("                       RPC addr: '{}'", rpc.local_addr());
    println!("                      Encrypted: false");
    println!("                       Snapshot: false");
    println!("                        Profile: lan");
    println!("    Message Compression Enabled: true");
    println!(
        "                        Plugins: {running} of {} loaded",
        plugins.len()
    );
    println!();
    println!("==> Log data will now stream in as it occurs:");
    println!();

    let graceful = tokio::select! {
        _ = interrupt.recv() => {
            println!("==> Caught signal: interrupt");
            true
        }
        _ = terminate.recv() => {
            // As Serf's `leave_on_terminate = false` default: stop without leaving.
            println!("==> Caught signal: terminated");
            false
        }
        () = handle.shutdown_requested() => false,
    };
    // A second signal while shutting down forces the exit, as in Serf.
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        println!("==> Second signal received, exiting without waiting");
        std::process::exit(1);
    });
    if graceful {
        println!("==> Gracefully shutting down agent...");
        if let Err(error) = handle.leave().await {
            tracing::error!(%error, "graceful leave failed");
        }
    }
    tracing::info!(target: "serf_host::agent", "requesting serf shutdown");
    rpc.shutdown().await;
    agent.shutdown().await;
    tracing::info!(target: "serf_host::agent", "shutdown complete");
    Ok(())
}
