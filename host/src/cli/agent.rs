//! `serf agent`: runs an agent until a signal or an RPC `leave`, printing Serf's banner.
//!
//! Startup joins (`-join`) happen before the log starts streaming and stop the agent when no
//! seed answers; background joins (`-retry-join`) run beside it and stop it (exit 1) when
//! `-retry-max` attempts have failed. SIGINT leaves gracefully unless
//! `skip_leave_on_interrupt`; SIGTERM leaves only with `leave_on_terminate`. As in Serf, a
//! signal that stops the agent without a leave, or a leave that fails, exits 1. SIGHUP
//! reloads the configuration, as `serf reload` does. Log lines wait until the banner is out
//! (`LogHub::hold_stderr`), as behind Serf's gated log writer.

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::agent::{Agent, AgentHandle};
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
    // As Serf: the log starts streaming once the banner is out, so no line lands inside it.
    logs.hold_stderr();
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
    let result = runtime.block_on(serve(config, logs.clone()));
    // Whatever stopped the agent early, the lines held back say why.
    logs.release_stderr();
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("==> Failed to start the Serf agent: {error:#}");
            1
        }
    }
}

/// The banner's `Plugins:` line from each plugin's state (`running`, `loading`,
/// `failed: ...`) at that moment: plugins load in the background, so only those already
/// running are counted as such, and a failed one never is.
fn plugins_line(states: &[&str]) -> String {
    if states.is_empty() {
        return "none configured".to_owned();
    }
    let running = states.iter().filter(|s| **s == "running").count();
    let loading = states.iter().filter(|s| **s == "loading").count();
    let failed = states.len() - running - loading;
    let mut parts = vec![format!("{running} running")];
    if loading > 0 {
        parts.push(format!("{loading} loading in the background"));
    }
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    let mut line = format!("{} configured: {}", states.len(), parts.join(", "));
    if running < states.len() {
        line.push_str(" (`serf plugin list` shows their state)");
    }
    line
}

/// Runs the agent until it should stop; returns the exit code.
async fn serve(config: Config, logs: LogHub) -> anyhow::Result<u8> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    if config.rejoin_after_leave && config.snapshot_path.is_none() {
        // Serf's words: without a snapshot there is nobody to rejoin.
        println!("==> Warning: 'RejoinAfterLeave' enabled without snapshot file");
    }
    println!("==> Starting Serf agent...");
    tracing::info!(target: "serf_host::agent", "Serf agent starting");
    // Connections are bounded by file descriptors, not by fixed caps: take all we may.
    let open_files = serf_node::accept::raise_fd_limit();
    tracing::debug!(open_files, "open file limit");
    let agent = Agent::start(config.clone(), logs.clone()).await?;
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
    let reloads = reload_on_hangup(hangup, handle.clone());
    let plugins = handle.plugins().stats();
    let states: Vec<&str> = plugins.iter().map(|p| p.state.as_str()).collect();
    println!("==> Serf agent running!");
    println!("                      Node name: '{}'", config.node_name);
    println!("                      Bind addr: '{}'", config.bind);
    println!("                       RPC addr: '{}'", rpc.local_addr());
    println!(
        "                      Encrypted: {}",
        config.keyring.is_some()
    );
    println!(
        "                       Snapshot: {}",
        config.snapshot_path.is_some()
    );
    println!(
        "                        Profile: {}",
        config.profile.as_str()
    );
    println!(
        "    Message Compression Enabled: {}",
        config.enable_compression
    );
    println!("                        Plugins: {}", plugins_line(&states));
    if !config.start_join.is_empty() {
        println!("==> Joining cluster...(replay: {})", config.replay_on_join);
        match handle
            .join(config.start_join.clone(), config.replay_on_join)
            .await
        {
            Ok(joined) => println!("    Join completed. Synced with {joined} initial agents"),
            Err(error) => {
                // Serf's error text ends in an empty line already.
                eprintln!("==> {error}");
                rpc.shutdown().await;
                agent.shutdown().await;
                return Ok(1);
            }
        }
    }
    println!();
    println!("==> Log data will now stream in as it occurs:");
    println!();
    logs.release_stderr();

    let retry = spawn_retry_join(&config, &handle);
    let retry_abort = retry.as_ref().map(tokio::task::JoinHandle::abort_handle);
    let retry_exhausted = async move {
        if let Some(task) = retry
            && let Ok(None) = task.await
        {
            return;
        }
        std::future::pending::<()>().await;
    };
    // As Serf: a signal that does not leave exits 1, as does a leave that fails; a stop the
    // agent asked for itself (an RPC `leave`, a lost name conflict) exits 0.
    let stop = tokio::select! {
        _ = interrupt.recv() => {
            println!("==> Caught signal: interrupt");
            if config.skip_leave_on_interrupt { Stop::Signalled } else { Stop::Leave }
        }
        _ = terminate.recv() => {
            println!("==> Caught signal: terminated");
            if config.leave_on_terminate { Stop::Leave } else { Stop::Signalled }
        }
        () = handle.shutdown_requested() => Stop::Requested,
        () = retry_exhausted => {
            // As Serf: no leave, exit code 1.
            rpc.shutdown().await;
            agent.shutdown().await;
            tracing::info!(target: "serf_host::agent", "shutdown complete");
            return Ok(1);
        }
    };
    if let Some(abort) = retry_abort {
        abort.abort();
    }
    reloads.abort();
    // A second signal while shutting down forces the exit, as in Serf.
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        println!("==> Second signal received, exiting without waiting");
        std::process::exit(1);
    });
    let code = match stop {
        Stop::Leave => {
            println!("==> Gracefully shutting down agent...");
            match handle.leave().await {
                Ok(()) => 0,
                Err(error) => {
                    tracing::error!(%error, "graceful leave failed");
                    1
                }
            }
        }
        Stop::Signalled => 1,
        Stop::Requested => 0,
    };
    tracing::info!(target: "serf_host::agent", "requesting serf shutdown");
    rpc.shutdown().await;
    agent.shutdown().await;
    tracing::info!(target: "serf_host::agent", "shutdown complete");
    Ok(code)
}

/// Why `serf agent` stops.
enum Stop {
    /// A signal that leaves gracefully first.
    Leave,
    /// A signal that stops without leaving.
    Signalled,
    /// The agent's own request: an RPC `leave`, or a lost name-conflict vote.
    Requested,
}

/// Reloads the configuration on every SIGHUP, as Serf does, printing what changed.
fn reload_on_hangup(mut hangup: Signal, handle: AgentHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            println!("==> Caught signal: hangup");
            println!("==> Reloading configuration...");
            match handle.reload(crate::agent::reload::Trigger::Signal).await {
                Ok(report) => {
                    for line in report.lines() {
                        println!("    {line}");
                    }
                }
                Err(error) => eprintln!("==> Failed to reload configs: {error}"),
            }
        }
    })
}

/// Starts the `-retry-join` loop, if there are seeds; it ends with `None` when it gave up.
fn spawn_retry_join(
    config: &Config,
    handle: &AgentHandle,
) -> Option<tokio::task::JoinHandle<Option<usize>>> {
    if config.retry_join.is_empty() {
        return None;
    }
    let seeds = config.retry_join.clone();
    let replay = config.replay_on_join;
    let interval = config.retry_interval;
    let max_attempts = config.retry_max_attempts;
    let handle = handle.clone();
    Some(tokio::spawn(serf_node::retry_join(
        move || {
            let handle = handle.clone();
            let seeds = seeds.clone();
            async move { handle.join(seeds, replay).await }
        },
        interval,
        max_attempts,
    )))
}

#[cfg(test)]
mod tests {
    use super::plugins_line;

    #[test]
    fn the_banner_counts_only_running_plugins_as_running() {
        assert_eq!(plugins_line(&[]), "none configured");
        assert_eq!(
            plugins_line(&["running", "running"]),
            "2 configured: 2 running"
        );
        assert_eq!(
            plugins_line(&["running", "failed: not a wasm module", "loading"]),
            "3 configured: 1 running, 1 loading in the background, 1 failed \
             (`serf plugin list` shows their state)"
        );
        assert_eq!(
            plugins_line(&["failed: x", "failed: y"]),
            "2 configured: 0 running, 2 failed (`serf plugin list` shows their state)"
        );
    }
}
