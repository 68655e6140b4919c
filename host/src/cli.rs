//! The `serf` command line: Go-style flags parsed with clap, and the client subcommands, which
//! talk to an agent over [`serf_rpc::client`] and print exactly what Serf 0.9.4 prints.
//!
//! Owns argument parsing, output formats (text and `-format json`) and exit codes; see
//! `docs/cli.md` for the captured reference output. The only module that prints. It does not
//! run the agent: the `agent` subcommand hands over to the agent module.
//!
//! Like Serf's own CLI, errors from a subcommand go to stdout with exit code 1; only flag
//! syntax errors and help go to stderr. Flags may be written `-flag`, `--flag`, `-flag=value`
//! or `-flag value`, and stop at the first positional argument ([`normalize_args`]).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod agent;
mod plugin;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, CommandFactory, FromArgMatches};

pub use crate::config::{parse_go_bool, parse_go_duration};
use serf_rpc::client::{self, Client};
use serf_rpc::protocol::{Member, QueryRecordType, QueryRequest, Stats, StreamRecord};

/// Where the CLI finds the agent when neither `-rpc-addr` nor `SERF_RPC_ADDR` says.
pub const DEFAULT_RPC_ADDR: &str = "127.0.0.1:7373";

/// Serf's exit code when no (or an unknown) subcommand is given.
const EXIT_NO_COMMAND: u8 = 127;

#[derive(Debug, clap::Parser)]
#[command(
    name = "serf",
    about = "Serf-compatible gossip membership agent with WebAssembly event handlers",
    disable_help_subcommand = true,
    disable_version_flag = true,
    after_help = "Flags may be written -flag, --flag, -flag=value or -flag value; \
                  they end at the first argument that is not a flag."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    // The agent's flags live in `config`; `normalize_args` reads every subcommand's flags from
    // clap, so adding flags or subcommands needs no change there. For Go-style booleans
    // (`-rejoin`, `-rejoin=false`) copy the attributes of `MembersArgs::detailed`.
    /// Runs a Serf agent
    Agent(Box<crate::config::AgentFlags>),
    /// Lists the members of a Serf cluster
    Members(MembersArgs),
    /// Send a custom event through the Serf cluster
    Event(EventArgs),
    /// Send a query to the Serf cluster
    Query(QueryArgs),
    /// Stream logs from a Serf agent
    Monitor(MonitorArgs),
    /// Provides debugging information for operators
    Info(InfoArgs),
    /// Gracefully leaves the Serf cluster and shuts down
    Leave(LeaveArgs),
    /// Tell Serf agent to join cluster
    Join(JoinArgs),
    /// Forces a member of the cluster to enter the "left" state
    ForceLeave(ForceLeaveArgs),
    /// Estimates network round trip time between nodes
    Rtt(RttArgs),
    /// Generates a new encryption key
    Keygen(KeygenArgs),
    /// Manipulate the internal encryption keyring used by Serf
    Keys(KeysArgs),
    /// Test network reachability
    Reachability(ReachabilityArgs),
    /// Modify tags of a running Serf agent
    Tags(TagsArgs),
    /// Reload the agent's configuration and plugins (an extension; SIGHUP does the same)
    Reload(ReloadArgs),
    /// List, show, kill or reap the plugins' long jobs (an extension)
    Jobs(JobsArgs),
    /// Lists or shows a running agent's plugins, or checks or runs a module offline (an extension)
    Plugin(plugin::PluginArgs),
    /// Prints the Serf version
    Version,
    /// Compiles one plugin module for the agent, in a child process it can stop (internal)
    #[command(name = "__compile-plugin", hide = true)]
    CompilePlugin {
        /// Bytes of the module, read from stdin.
        len: usize,
        /// The file to write the compiled module into.
        out: std::path::PathBuf,
    },
}

/// How every client subcommand reaches the agent.
#[derive(Debug, Clone, clap::Args)]
struct RpcFlags {
    /// RPC address of the Serf agent.
    #[arg(long = "rpc-addr", env = "SERF_RPC_ADDR", value_name = "ADDR",
          default_value = DEFAULT_RPC_ADDR, hide_env_values = true)]
    rpc_addr: String,
    /// RPC auth token of the Serf agent.
    #[arg(
        long = "rpc-auth",
        env = "SERF_RPC_AUTH",
        value_name = "TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    rpc_auth: String,
}

/// Outputs the members of a running Serf agent.
#[derive(Debug, clap::Args)]
struct MembersArgs {
    /// Also show the Serf protocol version and range (text output only).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    detailed: bool,
    /// Output format: text or json.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: String,
    /// Only members whose name matches this regexp (anchored at both ends).
    #[arg(
        long,
        default_value = "",
        value_name = "REGEXP",
        hide_default_value = true
    )]
    name: String,
    /// Deprecated: the same as -tag role=REGEXP.
    #[arg(
        long,
        default_value = "",
        value_name = "REGEXP",
        hide_default_value = true
    )]
    role: String,
    /// Only members whose status matches this regexp (anchored at both ends).
    #[arg(
        long,
        default_value = "",
        value_name = "REGEXP",
        hide_default_value = true
    )]
    status: String,
    /// Only members whose tag KEY matches REGEXP (anchored at both ends; a member without
    /// the tag is matched as ""); repeatable.
    #[arg(long = "tag", value_name = "KEY=REGEXP")]
    tags: Vec<String>,
    #[command(flatten)]
    rpc: RpcFlags,
    /// Ignored, as by Serf.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// Dispatches a custom event across the Serf cluster: NAME [PAYLOAD].
#[derive(Debug, clap::Args)]
struct EventArgs {
    /// Whether repeated events of this name within a short period may be coalesced into the
    /// last one.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "true", value_name = "BOOL",
          value_parser = parse_go_bool)]
    coalesce: bool,
    #[command(flatten)]
    rpc: RpcFlags,
    /// The event name, then an optional payload.
    #[arg(value_name = "NAME [PAYLOAD]")]
    args: Vec<OsString>,
}

/// Dispatches a query to the Serf cluster and prints the acks and responses: NAME [PAYLOAD].
#[derive(Debug, clap::Args)]
struct QueryArgs {
    /// Output format: text or json.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: String,
    /// Only this node answers; repeatable.
    #[arg(long = "node", value_name = "NAME")]
    nodes: Vec<String>,
    /// Only nodes whose tag KEY matches REGEXP anywhere (unanchored, as in Serf) answer;
    /// repeatable.
    #[arg(long = "tag", value_name = "KEY=REGEXP")]
    tags: Vec<String>,
    /// How long to wait for responses, e.g. 2s or 1m30s (default: the agent's).
    #[arg(long, value_name = "DURATION", default_value = "0", hide_default_value = true,
          value_parser = parse_go_duration)]
    timeout: Duration,
    /// Do not ask nodes to acknowledge the query.
    #[arg(long = "no-ack", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    no_ack: bool,
    /// Number of extra nodes that relay each response (0 to 255).
    #[arg(
        long = "relay-factor",
        value_name = "N",
        default_value = "0",
        allow_negative_numbers = true
    )]
    relay_factor: i64,
    #[command(flatten)]
    rpc: RpcFlags,
    /// The query name, then an optional payload.
    #[arg(value_name = "NAME [PAYLOAD]")]
    args: Vec<OsString>,
}

/// Shows the agent's recent log lines and events, then follows them until interrupted.
#[derive(Debug, clap::Args)]
struct MonitorArgs {
    /// Lowest level shown: TRACE, DEBUG, INFO, WARN or ERR.
    #[arg(long = "log-level", default_value = "INFO", value_name = "LEVEL")]
    log_level: String,
    #[command(flatten)]
    rpc: RpcFlags,
    /// Ignored, as by Serf.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// Provides debugging information for operators.
#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// Output format: text or json.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: String,
    #[command(flatten)]
    rpc: RpcFlags,
    /// Ignored, as by Serf.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// Causes the agent to gracefully leave the Serf cluster and shut down.
#[derive(Debug, clap::Args)]
struct LeaveArgs {
    #[command(flatten)]
    rpc: RpcFlags,
    /// Ignored, as by Serf.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// Asks every member to acknowledge a ping query and compares the acks with the live members.
#[derive(Debug, clap::Args)]
struct ReachabilityArgs {
    /// Print each ack and the query's timing.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    verbose: bool,
    #[command(flatten)]
    rpc: RpcFlags,
    /// Ignored, as by Serf.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// Prints a new random 32-byte key, in base64, for `-encrypt` or `encrypt_key`.
#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Ignored, as by Serf (flags too).
    #[arg(hide = true, allow_hyphen_values = true, trailing_var_arg = true)]
    extra: Vec<OsString>,
}

/// Asks the agent to read serf.toml and its plugin files again and apply the plugin changes.
#[derive(Debug, clap::Args)]
struct ReloadArgs {
    #[command(flatten)]
    rpc: RpcFlags,
}

/// Tells a running agent to join a cluster through one or more existing members: ADDRESS...
#[derive(Debug, clap::Args)]
struct JoinArgs {
    /// Replay past user events.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    replay: bool,
    #[command(flatten)]
    rpc: RpcFlags,
    /// Addresses of existing members.
    #[arg(value_name = "ADDRESS")]
    addrs: Vec<String>,
}

/// Forces a member into the "left" state (most useful for failed nodes that will not return):
/// NODE.
#[derive(Debug, clap::Args)]
struct ForceLeaveArgs {
    /// Also remove the member from the member list at once.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    prune: bool,
    #[command(flatten)]
    rpc: RpcFlags,
    /// The node to force out.
    #[arg(value_name = "NODE")]
    nodes: Vec<String>,
}

/// Estimates the round trip time between two nodes: NODE1 [NODE2].
#[derive(Debug, clap::Args)]
struct RttArgs {
    #[command(flatten)]
    rpc: RpcFlags,
    /// Node names as `serf members` shows them; the second defaults to the agent's own.
    #[arg(value_name = "NODE")]
    nodes: Vec<String>,
}

/// Manages the gossip encryption keyring of every member: one of -install, -use, -remove or
/// -list.
#[derive(Debug, clap::Args)]
struct KeysArgs {
    /// Installs a key on every member; it decrypts at once and encrypts once made primary.
    #[arg(
        long,
        default_value = "",
        value_name = "KEY",
        hide_default_value = true
    )]
    install: String,
    /// Makes an installed key the primary (encrypting) key on every member.
    #[arg(
        long = "use",
        default_value = "",
        value_name = "KEY",
        hide_default_value = true
    )]
    use_key: String,
    /// Removes a key from every member; the primary key cannot be removed.
    #[arg(
        long,
        default_value = "",
        value_name = "KEY",
        hide_default_value = true
    )]
    remove: String,
    /// Lists the keys installed across the cluster and how many members hold each.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    list: bool,
    #[command(flatten)]
    rpc: RpcFlags,
    /// Ignored, as by Serf.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// Modifies tags on a running Serf agent.
#[derive(Debug, clap::Args)]
struct TagsArgs {
    /// Creates or modifies the value of a tag; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Removes a tag, if present; repeatable.
    #[arg(long = "delete", value_name = "KEY")]
    delete: Vec<String>,
    #[command(flatten)]
    rpc: RpcFlags,
    /// Ignored, as by Serf.
    #[arg(hide = true)]
    extra: Vec<OsString>,
}

/// Lists, shows, kills or reaps the long jobs plugins started on one agent: at most one of
/// -list (the default), -show, -kill or -reap.
#[derive(Debug, clap::Args)]
struct JobsArgs {
    /// Lists every job the agent keeps a record of.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    list: bool,
    /// Shows one job, with the last lines it logged.
    #[arg(long, value_name = "ID")]
    show: Option<u64>,
    /// Kills a job that has not ended, and shows how it ended.
    #[arg(long, value_name = "ID")]
    kill: Option<u64>,
    /// Deletes the records of ended jobs: the ID given after it, or every one.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    reap: bool,
    /// Output format: text or json.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: String,
    #[command(flatten)]
    rpc: RpcFlags,
    /// The job to reap (with -reap).
    #[arg(value_name = "ID")]
    ids: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Entry point

/// Parses `args` (program name first), runs the subcommand and returns Serf's exit code.
pub fn run(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // Serf treats -v or --version anywhere as the version command.
    if args
        .iter()
        .skip(1)
        .any(|arg| arg == "-v" || arg == "--version")
    {
        print_version();
        return ExitCode::SUCCESS;
    }
    let definition = cli_definition();
    let subcommand = subcommand_position(&definition, &args).map(|(_, name)| name);
    let normalized = normalize_args(&definition, args.clone());
    let parsed = definition
        .clone()
        .try_get_matches_from(normalized)
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches));
    // Plugins compile in a child process of this very binary, under the compile budget.
    // `/proc/self/exe` still runs after the binary was replaced on disk (an upgrade).
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        serf_plugins::engine::set_compiler_program(proc_exe.to_path_buf());
    } else if let Ok(program) = std::env::current_exe() {
        serf_plugins::engine::set_compiler_program(program);
    }
    match parsed {
        Ok(cli) => ExitCode::from(execute(cli.command)),
        Err(error) => ExitCode::from(report_parse_error(&error, &args, subcommand.as_deref())),
    }
}

/// The clap definition with Go's flag semantics (a repeated flag overrides the earlier one)
/// and help laid out like Serf's.
fn cli_definition() -> clap::Command {
    Cli::command()
        .override_usage("serf [--version] [--help] <command> [<args>]")
        .help_template("Usage: {usage}\n\nAvailable commands are:\n{subcommands}\n")
        .mut_subcommands(|sub| {
            let sub = sub.args_override_self(true);
            match subcommand_synopsis(sub.get_name()) {
                Some((usage, description)) => sub.override_usage(usage).help_template(format!(
                    "Usage: {{usage}}\n\n  {description}\n\nOptions:\n\n{{options}}\n"
                )),
                None => sub,
            }
        })
}

/// Usage line and description of each client subcommand's help.
fn subcommand_synopsis(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "members" => (
            "serf members [options]",
            "Outputs the members of a running Serf agent.",
        ),
        "event" => (
            "serf event [options] name payload",
            "Dispatches a custom event across the Serf cluster.",
        ),
        "query" => (
            "serf query [options] name payload",
            "Dispatches a query to the Serf cluster and prints the acks and responses.",
        ),
        "monitor" => (
            "serf monitor [options]",
            "Shows the recent log lines of a Serf agent, then follows its log and\n  \
             events as they happen, until interrupted. The log level may be lower\n  \
             than the agent's own.",
        ),
        "info" => (
            "serf info [options]",
            "Provides debugging information for operators.",
        ),
        "leave" => (
            "serf leave",
            "Causes the agent to gracefully leave the Serf cluster and shut down.",
        ),
        "join" => (
            "serf join [options] address ...",
            "Tells a running Serf agent to join a cluster through at least one\n  \
             existing member.",
        ),
        "force-leave" => (
            "serf force-leave [options] name",
            "Forces a member of a Serf cluster into the \"left\" state. A member that\n  \
             is still alive rejoins eventually; this is for cleaning out failed\n  \
             nodes that are never coming back.",
        ),
        "rtt" => (
            "serf rtt [options] node1 [node2]",
            "Estimates the round trip time between two nodes using Serf's network\n  \
             coordinate model of the cluster.\n\n  \
             At least one node name is required. If the second node name isn't given, it\n  \
             is set to the agent's node name. Note that these are node names as known to\n  \
             Serf as \"serf members\" would show, not IP addresses.",
        ),
        "reachability" => (
            "serf reachability [options]",
            "Tests the network reachability of this node",
        ),
        "keygen" => (
            "serf keygen",
            "Generates a new encryption key that can be used to configure the\n  \
             agent to encrypt traffic. The output of this command is already\n  \
             in the proper format that the agent expects.",
        ),
        "keys" => (
            "serf keys [options]...",
            "Manages the encryption keyring of every member of the cluster: the change\n  \
             is sent to all members and applied on each; every operation is idempotent.\n  \
             Only the primary key encrypts; the others decrypt, so a new key can be rolled\n  \
             out before it is used.\n\n  \
             Exits 0 when every member answered without a failure, 1 otherwise.",
        ),
        "tags" => (
            "serf tags [options] ...",
            "Modifies tags on a running Serf agent.",
        ),
        "jobs" => (
            "serf jobs [options] [-list | -show ID | -kill ID | -reap [ID]]",
            "Lists, shows, kills or reaps the long jobs that plugins started on the\n  \
             agent (an extension of this agent; Serf has no jobs). -reap deletes the\n  \
             records of ended jobs: the one named, or every one. Flags end at the\n  \
             first argument, so put -format before -reap ID.",
        ),
        "version" => ("serf version", "Prints the Serf version."),
        _ => return None,
    })
}

fn execute(command: Command) -> u8 {
    match command {
        Command::Agent(flags) => agent::run(&flags),
        Command::Version => {
            print_version();
            0
        }
        Command::Members(args) => block_on(members(args)),
        Command::Event(args) => block_on(event(args)),
        Command::Query(args) => block_on(query(args)),
        Command::Monitor(args) => block_on(monitor(args)),
        Command::Info(args) => block_on(info(args)),
        Command::Leave(args) => block_on(leave(args)),
        Command::Join(args) => block_on(join(args)),
        Command::ForceLeave(args) => block_on(force_leave(args)),
        Command::Rtt(args) => block_on(rtt(args)),
        Command::Keygen(_) => keygen(),
        Command::Reachability(args) => block_on(reachability(args)),
        Command::Keys(args) => block_on(keys(args)),
        Command::Tags(args) => block_on(tags(args)),
        Command::Reload(args) => block_on(reload(args)),
        Command::Jobs(args) => block_on(jobs(args)),
        Command::Plugin(args) => plugin::run(args),
        Command::CompilePlugin { len, out } => serf_plugins::engine::compile_child(len, &out),
    }
}

/// How a client subcommand ends: `Ok` with its exit code, or `Err` with the exit code of a
/// failure whose message is already printed (so that `?` can end a subcommand).
type Exit = Result<u8, u8>;

/// Prints `{what}: {error}`, as Serf's CLI reports a failed step, for `map_err`; the exit
/// code is 1.
fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> u8 + '_ {
    move |error| {
        out(&format!("{what}: {error}"));
        1
    }
}

/// Runs a client subcommand on a small single-threaded runtime.
fn block_on(command: impl Future<Output = Exit>) -> u8 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command).unwrap_or_else(|code| code),
        Err(error) => {
            eprintln!("Error starting the client runtime: {error}");
            1
        }
    }
}

/// Serf's advice after a reachability test that missed or got too many acks.
const REACHABILITY_TIPS: &str = "
Troubleshooting tips:
* Ensure that the bind addr:port is accessible by all other nodes
* If an advertise address is set, ensure it routes to the bind address
* Check that no nodes are behind a NAT
* If nodes are behind firewalls or iptables, check that Serf traffic is permitted (UDP and TCP)
* Verify networking equipment is functional";

/// `serf reachability`: Serf's `_serf_ping` query, every member asked to ack; the acks are
/// compared with the members the agent lists as alive. Exit 1 when they differ or a node
/// acked twice (two nodes of one name).
async fn reachability(args: ReachabilityArgs) -> Exit {
    let client = connect(&args.rpc).await?;
    let members = client
        .members()
        .await
        .map_err(failed("Error getting members"))?;
    let live: std::collections::BTreeSet<String> = members
        .iter()
        .filter(|member| member.status == "alive")
        .map(|member| member.name.clone())
        .collect();
    out(&format!(
        "Total members: {}, live members: {}",
        members.len(),
        live.len()
    ));
    let request = QueryRequest {
        filter_nodes: Vec::new(),
        filter_tags: BTreeMap::new(),
        name: format!("{}ping", serf_core::INTERNAL_QUERY_PREFIX),
        payload: None,
        relay_factor: 0,
        request_ack: true,
        timeout: Duration::ZERO,
    };
    let mut records = client
        .query(request)
        .await
        .map_err(failed("Error sending query"))?;
    out("Starting reachability test...");
    let start = std::time::Instant::now();
    let mut last = start;
    let mut acked = std::collections::BTreeSet::new();
    let mut num_acks = 0_usize;
    let mut duplicates = false;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let record = tokio::select! {
            record = records.recv() => record,
            () = &mut shutdown => {
                out("Test interrupted");
                return Err(1);
            }
        };
        let Some(record) = record else { break };
        // As the query command: an empty `From` (the `done` record) ends it.
        if record.kind == QueryRecordType::Done || record.from.is_empty() {
            break;
        }
        if record.kind != QueryRecordType::Ack {
            continue;
        }
        if args.verbose {
            out(&format!("\tAck from '{}'", record.from));
        }
        num_acks += 1;
        if !acked.insert(record.from.clone()) {
            duplicates = true;
            out(&format!("Duplicate response from '{}'", record.from));
        }
        last = std::time::Instant::now();
    }
    if args.verbose {
        out(&format!(
            "Query time: {:.2} sec, time to last response: {:.2} sec",
            start.elapsed().as_secs_f64(),
            last.duration_since(start).as_secs_f64()
        ));
    }
    let mut code = 0;
    if duplicates {
        out(
            "Duplicate responses means there is a misconfiguration. Verify that node names are unique.",
        );
        code = 1;
    }
    // Serf compares counts, then lists names (in map order; we sort them).
    match num_acks.cmp(&live.len()) {
        std::cmp::Ordering::Equal => out("Successfully contacted all live nodes"),
        std::cmp::Ordering::Greater => {
            out("Received more acks than live nodes! Acks from non-live nodes:");
            for name in acked.difference(&live) {
                out(&format!("\t{name}"));
            }
            out(
                "This could mean Serf is detecting false-failures due to a misconfiguration or network issue.",
            );
            out(REACHABILITY_TIPS);
            return Err(1);
        }
        std::cmp::Ordering::Less => {
            out("Received less acks than live nodes! Missing acks from:");
            for name in live.difference(&acked) {
                out(&format!("\t{name}"));
            }
            out(
                "This could mean Serf gossip packets are being lost due to a misconfiguration or network issue.",
            );
            out(REACHABILITY_TIPS);
            return Err(1);
        }
    }
    Ok(code)
}

/// `serf keygen`: 32 bytes from the thread's CSPRNG (ChaCha, seeded by the operating system),
/// in standard base64, as Serf prints them from `crypto/rand`.
fn keygen() -> u8 {
    use base64::Engine as _;
    use rand::Rng as _;
    let mut key = [0u8; 32];
    rand::rng().fill(&mut key);
    out(&base64::engine::general_purpose::STANDARD.encode(key));
    0
}

fn print_version() {
    let [min, max, _] = serf_core::ProtocolVersions::SERF_0_9_4.delegate;
    out(&version_text(min, max));
}

fn version_text(min: u8, max: u8) -> String {
    format!(
        "Serf v{}\nAgent Protocol: {max} (Understands back to: {min})\nPlugin ABI: {}",
        env!("CARGO_PKG_VERSION"),
        serf_plugin_sdk::abi::ABI_VERSION
    )
}

/// Prints a flag error the way Go's `flag` package and `mitchellh/cli` do; returns the exit
/// code.
fn report_parse_error(error: &clap::Error, args: &[OsString], subcommand: Option<&str>) -> u8 {
    let mut definition = cli_definition();
    definition.build();
    match error.kind() {
        ErrorKind::DisplayHelp => {
            eprint!("{}", error.render());
            0
        }
        ErrorKind::DisplayVersion => {
            print_version();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ErrorKind::MissingSubcommand
        | ErrorKind::InvalidSubcommand => {
            eprintln!("{}", definition.render_help());
            EXIT_NO_COMMAND
        }
        _ => {
            let sub = subcommand.and_then(|name| definition.find_subcommand_mut(name));
            match go_flag_error(error, args, sub.as_deref()) {
                Some(message) => eprintln!("{message}"),
                None => eprint!("{}", error.render()),
            }
            if let Some(sub) = sub {
                out(sub.render_help().to_string().trim_end());
            }
            1
        }
    }
}

/// Go's wording for the common flag errors, when clap's error maps onto one.
fn go_flag_error(
    error: &clap::Error,
    args: &[OsString],
    sub: Option<&clap::Command>,
) -> Option<String> {
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    // `--timeout <DURATION>` or `--coalesce[=<BOOL>]` → `timeout`, `coalesce`.
    let flag_name = |text: String| -> String {
        text.trim_start_matches('-')
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    };
    match error.kind() {
        ErrorKind::UnknownArgument => {
            let sub = sub?;
            let (_, name) = subcommand_position(&cli_definition(), args)?;
            let position = args
                .iter()
                .position(|arg| arg.to_str() == Some(name.as_str()))?;
            undefined_flag(sub, &args[position + 1..])
                .map(|flag| format!("flag provided but not defined: -{flag}"))
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::NoEquals => {
            let name = flag_name(context(ContextKind::InvalidArg)?);
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            if value.is_empty() && error.kind() == ErrorKind::InvalidValue {
                return Some(format!("flag needs an argument: -{name}"));
            }
            let is_bool = sub
                .and_then(|sub| sub.get_arguments().find(|a| a.get_long() == Some(&name)))
                .is_some_and(|arg| !takes_required_value(arg));
            Some(if is_bool {
                format!("invalid boolean value {value:?} for -{name}: parse error")
            } else {
                format!("invalid value {value:?} for flag -{name}: parse error")
            })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Go-style flags

/// Rewrites Go-style flags into the `--long[=value]` form clap parses, for the subcommand named
/// by the first non-flag argument.
///
/// A single-dash (or double-dash) argument whose name before `=` is a long flag of that
/// subcommand becomes `--name` or `--name=value`; a flag that requires a value and has no `=`
/// takes the next argument as its value, whatever it looks like (as Go does). Flags end at `--`
/// or at the first positional argument, before which `--` is inserted so that clap treats the
/// rest (`serf event name -x`) as positional. Unknown flags are left as they are for clap to
/// report. The subcommand's flags are read from `command`, so new flags and subcommands need no
/// change here.
pub fn normalize_args(command: &clap::Command, args: Vec<OsString>) -> Vec<OsString> {
    let Some((position, name)) = subcommand_position(command, &args) else {
        return args;
    };
    let Some(sub) = command.find_subcommand(&name) else {
        return args;
    };
    // Subcommands with subcommands of their own (`serf plugin run`) take clap's own flags,
    // but for the client ones (`serf plugin list`), which take Serf's.
    if sub.has_subcommands() {
        let rest = args[position..].to_vec();
        return match subcommand_position(sub, &rest) {
            Some((_, nested)) if plugin::CLIENT_COMMANDS.contains(&nested.as_str()) => {
                let mut out = args[..position].to_vec();
                out.extend(normalize_args(sub, rest));
                out
            }
            _ => args,
        };
    }
    let mut sub = sub.clone();
    sub.build();
    let mut rest = args.into_iter();
    let mut out: Vec<OsString> = rest.by_ref().take(position + 1).collect();
    while let Some(arg) = rest.next() {
        match classify(&sub, &arg) {
            Token::EndOfFlags => {
                out.push(arg);
                out.extend(rest);
                break;
            }
            Token::Positional => {
                out.push("--".into());
                out.push(arg);
                out.extend(rest);
                break;
            }
            Token::Unknown => out.push(arg),
            Token::Known {
                long,
                value,
                needs_value,
            } => {
                let mut flag = OsString::from(format!("--{long}"));
                match value {
                    Some(value) => {
                        flag.push("=");
                        flag.push(value);
                    }
                    None if needs_value => {
                        if let Some(value) = rest.next() {
                            flag.push("=");
                            flag.push(value);
                        }
                    }
                    None => {}
                }
                out.push(flag);
            }
        }
    }
    out
}

/// The first flag of `args` (a subcommand's arguments) that `sub` does not define, without
/// dashes, if flag parsing reaches one.
fn undefined_flag(sub: &clap::Command, args: &[OsString]) -> Option<String> {
    let mut sub = sub.clone();
    sub.build();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match classify(&sub, arg) {
            Token::EndOfFlags | Token::Positional => return None,
            Token::Unknown => {
                let text = arg.to_string_lossy();
                let body = text.trim_start_matches('-');
                return Some(body.split('=').next().unwrap_or_default().to_owned());
            }
            Token::Known {
                value: None,
                needs_value: true,
                ..
            } => {
                rest.next();
            }
            Token::Known { .. } => {}
        }
    }
    None
}

/// Index and name of the subcommand: the first argument after the program name that does not
/// start with `-`.
fn subcommand_position(command: &clap::Command, args: &[OsString]) -> Option<(usize, String)> {
    let (position, name) = args
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, arg)| !arg.as_encoded_bytes().starts_with(b"-"))?;
    let name = name.to_str()?;
    let sub = command.find_subcommand(name)?;
    Some((position, sub.get_name().to_owned()))
}

enum Token {
    /// `--`: everything after is positional.
    EndOfFlags,
    /// Not a flag: it and everything after are positional.
    Positional,
    /// Looks like a flag but is not one of the subcommand's.
    Unknown,
    Known {
        long: String,
        value: Option<OsString>,
        needs_value: bool,
    },
}

fn classify(sub: &clap::Command, arg: &OsStr) -> Token {
    let bytes = arg.as_encoded_bytes();
    if bytes == b"--" {
        return Token::EndOfFlags;
    }
    if !bytes.starts_with(b"-") || bytes == b"-" {
        return Token::Positional;
    }
    let Some(text) = arg.to_str() else {
        return Token::Unknown;
    };
    let body = text
        .strip_prefix("--")
        .or_else(|| text.strip_prefix('-'))
        .unwrap_or(text);
    let (name, value) = match body.split_once('=') {
        Some((name, value)) => (name, Some(OsString::from(value))),
        None => (body, None),
    };
    match sub
        .get_arguments()
        .find(|candidate| candidate.get_long() == Some(name))
    {
        Some(flag) => Token::Known {
            long: name.to_owned(),
            value,
            needs_value: takes_required_value(flag),
        },
        None => Token::Unknown,
    }
}

/// Whether the flag consumes the next argument when written without `=`.
fn takes_required_value(arg: &clap::Arg) -> bool {
    arg.get_action().takes_values()
        && arg
            .get_num_args()
            .is_none_or(|range| range.min_values() > 0)
}

/// Serf's `key=value` list to a map; the key must be non-empty, the value may contain `=`.
pub fn parse_tags(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => {
                tags.insert(key.to_owned(), value.to_owned());
            }
            _ => return Err(format!("Invalid tag: '{pair}'")),
        }
    }
    Ok(tags)
}

// ---------------------------------------------------------------------------------------------
// Subcommands

/// Prints a line to stdout (Serf prints errors there too). A closed stdout is ignored.
fn out(text: &str) {
    out_bytes(text.as_bytes());
}

fn out_bytes(text: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text);
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
}

/// A usage error: the message, an empty line, the subcommand's help; exit code 1.
fn usage_error(message: &str, subcommand: &str) -> u8 {
    out(message);
    out("");
    out(&subcommand_help(subcommand));
    1
}

fn subcommand_help(name: &str) -> String {
    let mut definition = cli_definition();
    definition.build();
    definition
        .find_subcommand_mut(name)
        .map(|sub| sub.render_help().to_string().trim_end().to_owned())
        .unwrap_or_default()
}

async fn connect(rpc: &RpcFlags) -> Result<Client, u8> {
    // Serf ignores an empty SERF_RPC_ADDR; clap would take it as the value.
    let env_is_empty = std::env::var_os("SERF_RPC_ADDR").is_some_and(|addr| addr.is_empty());
    let addr = if rpc.rpc_addr.is_empty() && env_is_empty {
        DEFAULT_RPC_ADDR.to_owned()
    } else {
        rpc.rpc_addr.clone()
    };
    let mut config = client::Config::new(addr);
    config.auth_key = Some(rpc.rpc_auth.clone()).filter(|key| !key.is_empty());
    Client::connect_with(config).await.map_err(|error| {
        out(&format!("Error connecting to Serf agent: {error}"));
        1
    })
}

/// Resolves on SIGINT or SIGTERM, like Serf's shutdown channel.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn members(args: MembersArgs) -> Exit {
    let mut tag_filters = args.tags.clone();
    if !args.role.is_empty() {
        out("Deprecation warning: 'Role' has been replaced with 'Tags'");
        tag_filters.push(format!("role={}", args.role));
    }
    let tags = parse_tags(&tag_filters).map_err(failed("Error"))?;
    let client = connect(&args.rpc).await?;
    let members = client
        .members_filtered(&tags, &args.status, &args.name)
        .await
        .map_err(failed("Error retrieving members"))?;
    let output = match args.format.as_str() {
        "text" => format_members_text(&members, args.detailed),
        "json" => format_members_json(&members),
        other => {
            out(&format!(
                "Encoding error: Invalid output format \"{other}\""
            ));
            return Err(1);
        }
    };
    out(&output);
    Ok(0)
}

/// Splits `NAME [PAYLOAD]`, with Serf's messages for a wrong count.
fn name_and_payload(
    args: &[OsString],
    missing: &str,
    subcommand: &str,
) -> Result<(String, Option<Vec<u8>>), u8> {
    match args {
        [] => Err(usage_error(missing, subcommand)),
        [name] => Ok((name.to_string_lossy().into_owned(), None)),
        [name, payload] => Ok((
            name.to_string_lossy().into_owned(),
            Some(payload.as_encoded_bytes().to_vec()),
        )),
        _ => Err(usage_error(
            "Too many command line arguments. Only a name and payload must be specified.",
            subcommand,
        )),
    }
}

async fn event(args: EventArgs) -> Exit {
    let (name, payload) =
        name_and_payload(&args.args, "An event name must be specified.", "event")?;
    let client = connect(&args.rpc).await?;
    client
        .user_event(&name, payload.as_deref(), args.coalesce)
        .await
        .map_err(failed("Error sending event"))?;
    out(&format!(
        "Event '{name}' dispatched! Coalescing enabled: {}",
        args.coalesce
    ));
    Ok(0)
}

async fn query(args: QueryArgs) -> Exit {
    let filter_tags = parse_tags(&args.tags).map_err(failed("Error"))?;
    let (name, payload) = name_and_payload(&args.args, "A query name must be specified.", "query")?;
    let Ok(relay_factor) = u8::try_from(args.relay_factor) else {
        out("Relay factor must be between 0 and 255");
        return Err(1);
    };
    let client = connect(&args.rpc).await?;
    let json = match args.format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            out(&format!("Invalid format: {other}"));
            return Err(1);
        }
    };
    let request = QueryRequest {
        filter_nodes: args.nodes.clone(),
        filter_tags,
        name: name.clone(),
        payload,
        relay_factor,
        request_ack: !args.no_ack,
        timeout: args.timeout,
    };
    let mut records = client
        .query(request)
        .await
        .map_err(failed("Error sending query"))?;
    if !json {
        out(&format!("Query '{name}' dispatched"));
    }
    let mut acks: Vec<String> = Vec::new();
    let mut responses: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut num_responses = 0_usize;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let record = tokio::select! {
            record = records.recv() => record,
            () = &mut shutdown => return Err(1),
        };
        let Some(record) = record else { break };
        // An empty `From` ends the query, as in Serf's CLI.
        if record.kind == QueryRecordType::Done || record.from.is_empty() {
            break;
        }
        let payload = record.payload.unwrap_or_default();
        match record.kind {
            QueryRecordType::Ack if json => acks.push(record.from),
            QueryRecordType::Ack => {
                acks.push(record.from.clone());
                out(&format!("Ack from '{}'", record.from));
            }
            QueryRecordType::Response => {
                num_responses += 1;
                if !json {
                    out_bytes(&query_response_line(&record.from, &payload));
                }
                responses.insert(record.from, payload);
            }
            QueryRecordType::Done => break,
        }
    }
    if json {
        out(&format_query_json(&acks, &responses));
    } else {
        if !args.no_ack {
            out(&format!("Total Acks: {}", acks.len()));
        }
        out(&format!("Total Responses: {num_responses}"));
    }
    Ok(0)
}

async fn monitor(args: MonitorArgs) -> Exit {
    let client = connect(&args.rpc).await?;
    let mut events = client
        .stream("*")
        .await
        .map_err(failed("Error starting stream"))?;
    let mut logs = match client.monitor(&args.log_level).await {
        Ok(logs) => logs,
        Err(error) => {
            out(&format!("Error starting monitor: {error}"));
            let _ = client.stop(events.seq()).await;
            return Err(1);
        }
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            line = logs.recv() => match line {
                Some(line) => out(&line),
                None => break,
            },
            record = events.recv() => match record {
                Some(record) => out(&format_event_info(&record)),
                None => break,
            },
            () = &mut shutdown => {
                let _ = client.stop(logs.seq()).await;
                let _ = client.stop(events.seq()).await;
                return Ok(0);
            }
        }
    }
    // The connection ended both; print what is still queued on the other one.
    while let Some(line) = logs.recv().await {
        out(&line);
    }
    while let Some(record) = events.recv().await {
        out(&format_event_info(&record));
    }
    out("");
    out(
        "Remote side ended the monitor! This usually means that the\nremote side has exited or crashed.",
    );
    Err(1)
}

async fn info(args: InfoArgs) -> Exit {
    let client = connect(&args.rpc).await?;
    let stats = client
        .stats()
        .await
        .map_err(failed("Error querying agent"))?;
    let output = match args.format.as_str() {
        "text" => format_stats_text(&stats),
        "json" => format_stats_json(&stats),
        other => {
            out(&format!(
                "Encoding error: Invalid output format \"{other}\""
            ));
            return Err(1);
        }
    };
    out(&output);
    Ok(0)
}

async fn leave(args: LeaveArgs) -> Exit {
    let client = connect(&args.rpc).await?;
    client.leave().await.map_err(failed("Error leaving"))?;
    out("Graceful leave complete");
    Ok(0)
}

async fn reload(args: ReloadArgs) -> Exit {
    let client = connect(&args.rpc).await?;
    let response = client.reload().await.map_err(failed("Error reloading"))?;
    out("Configuration reloaded");
    for line in &response.settings {
        out(line);
    }
    for plugin in &response.plugins {
        let error = Some(plugin.error.as_str()).filter(|error| !error.is_empty());
        out(&crate::agent::reload::describe_outcome(
            &plugin.name,
            &plugin.change,
            &plugin.detail,
            error,
        ));
    }
    if !response.restart.is_empty() {
        out(&format!(
            "needs a restart to apply: {}",
            response.restart.join(", ")
        ));
    }
    let failed = response
        .plugins
        .iter()
        .any(|plugin| !plugin.error.is_empty());
    Ok(u8::from(failed))
}

async fn join(args: JoinArgs) -> Exit {
    if args.addrs.is_empty() {
        return Err(usage_error(
            "At least one address to join must be specified.",
            "join",
        ));
    }
    let client = connect(&args.rpc).await?;
    let num = client
        .join(&args.addrs, args.replay)
        .await
        .map_err(failed("Error joining the cluster"))?;
    out(&format!(
        "Successfully joined cluster by contacting {num} nodes."
    ));
    Ok(0)
}

async fn force_leave(args: ForceLeaveArgs) -> Exit {
    let [node] = args.nodes.as_slice() else {
        return Err(usage_error(
            "A node name must be specified to force leave.",
            "force-leave",
        ));
    };
    let client = connect(&args.rpc).await?;
    client
        .force_leave(node, args.prune)
        .await
        .map_err(failed("Error force leaving"))?;
    Ok(0)
}

async fn rtt(args: RttArgs) -> Exit {
    // Serf connects before it looks at the arguments.
    let client = connect(&args.rpc).await?;
    let mut nodes = args.nodes;
    match nodes.len() {
        1 => {
            let stats = client
                .stats()
                .await
                .map_err(failed("Error querying agent"))?;
            let name = stats.get("agent").and_then(|agent| agent.get("name"));
            nodes.push(name.cloned().unwrap_or_default());
        }
        2 => {}
        _ => {
            return Err(usage_error(
                "One or two node names must be specified",
                "rtt",
            ));
        }
    }
    let mut coordinates = Vec::new();
    for node in &nodes {
        let coordinate = client
            .get_coordinate(node)
            .await
            .map_err(failed("Error getting coordinates"))?;
        let Some(coordinate) = coordinate else {
            out(&format!(
                "Could not find a coordinate for node {}",
                go_quote(node)
            ));
            return Err(1);
        };
        coordinates.push(coordinate);
    }
    match format_rtt(&nodes[0], &nodes[1], &coordinates[0], &coordinates[1]) {
        Some(line) => {
            out(&line);
            Ok(0)
        }
        None => {
            out("Error estimating the round trip time: coordinate dimensionality does not match");
            Err(1)
        }
    }
}

async fn keys(args: KeysArgs) -> Exit {
    let mut found = args.list;
    for key in [&args.install, &args.use_key, &args.remove] {
        if found && !key.is_empty() {
            out("Only one of -install, -use, -remove, or -list allowed");
            return Err(1);
        }
        found |= !key.is_empty();
    }
    if !found {
        out(&subcommand_help("keys"));
        return Err(1);
    }
    let client = connect(&args.rpc).await?;
    if args.list {
        out("==> Asking all members for installed keys...");
        return match client.list_keys().await {
            Ok(response) => {
                out("==> Keys gathered, listing cluster keys...");
                out("");
                let keys = response.keys.unwrap_or_default();
                out(&format_key_list(&keys, response.num_nodes));
                Ok(0)
            }
            Err(error) => Err(key_failure("Failed to gather member keys", &error)),
        };
    }
    let (result, failure, success) = if !args.install.is_empty() {
        out("==> Installing key on all members...");
        (
            client.install_key(&args.install).await,
            "Error installing key",
            "==> Successfully installed key!",
        )
    } else if !args.use_key.is_empty() {
        out("==> Changing primary key on all members...");
        (
            client.use_key(&args.use_key).await,
            "Error changing primary key",
            "==> Successfully changed primary key!",
        )
    } else {
        out("==> Removing key on all members...");
        (
            client.remove_key(&args.remove).await,
            "Error removing key",
            "==> Successfully removed key!",
        )
    };
    match result {
        Ok(_) => {
            out(success);
            Ok(0)
        }
        Err(error) => Err(key_failure(failure, &error)),
    }
}

/// Prints what each node reported, then the error; returns the exit code.
fn key_failure(what: &str, error: &client::RpcError) -> u8 {
    if let client::RpcError::Key { response, .. } = error
        && !response.messages.is_empty()
    {
        out(&format_key_failures(&response.messages));
    }
    out("");
    out(&format!("{what}: {error}"));
    1
}

async fn tags(args: TagsArgs) -> Exit {
    if args.set.is_empty() && args.delete.is_empty() {
        out(&subcommand_help("tags"));
        return Err(1);
    }
    let client = connect(&args.rpc).await?;
    let set = parse_tags(&args.set).map_err(failed("Error"))?;
    client
        .tags(&set, &args.delete)
        .await
        .map_err(failed("Error setting tags"))?;
    out("Successfully updated agent tags");
    Ok(0)
}

async fn jobs(args: JobsArgs) -> Exit {
    let chosen = [
        args.list,
        args.show.is_some(),
        args.kill.is_some(),
        args.reap,
    ];
    if chosen.iter().filter(|&&chosen| chosen).count() > 1 {
        return Err(usage_error(
            "Only one of -list, -show, -kill or -reap allowed",
            "jobs",
        ));
    }
    let json = match args.format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            out(&format!("Invalid format: {other}"));
            return Err(1);
        }
    };
    let reap_id = match (args.reap, args.ids.as_slice()) {
        (_, []) => None,
        (true, [id]) => match id.parse::<u64>() {
            Ok(id) if id > 0 => Some(id),
            _ => return Err(usage_error(&format!("Invalid job ID: {id}"), "jobs")),
        },
        _ => return Err(usage_error("Too many arguments", "jobs")),
    };
    let client = connect(&args.rpc).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if let Some(id) = args.show {
        let job = client
            .job_show(id)
            .await
            .map_err(failed("Error showing job"))?;
        if json {
            return print_json(&job_json(&job));
        }
        out(&format_job_text(&job, now_ms));
        return Ok(0);
    }
    if let Some(id) = args.kill {
        let job = client
            .job_kill(id)
            .await
            .map_err(failed("Error killing job"))?;
        if json {
            return print_json(&job_json(&job));
        }
        out(&match job.state.as_str() {
            "killed" => format!("Job {id} killed"),
            "starting" | "running" => format!("Job {id} is being killed ({})", job.state),
            state => format!("Job {id} had already ended: {state}"),
        });
        return Ok(0);
    }
    if args.reap {
        let ids = client
            .job_reap(reap_id)
            .await
            .map_err(failed("Error reaping jobs"))?;
        if json {
            return print_json(&serde_json::json!({ "reaped": ids }));
        }
        out(&match ids.as_slice() {
            [] => "No ended jobs to reap".to_owned(),
            [id] => format!("Reaped job {id}"),
            ids => format!(
                "Reaped {} jobs: {}",
                ids.len(),
                ids.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        return Ok(0);
    }
    let jobs = client
        .jobs_list()
        .await
        .map_err(failed("Error listing jobs"))?;
    if json {
        return print_json(&serde_json::Value::Array(
            jobs.iter().map(job_json).collect(),
        ));
    }
    out(&format_jobs_text(&jobs, now_ms));
    Ok(0)
}

fn print_json(value: &serde_json::Value) -> Exit {
    let text = serde_json::to_string_pretty(value).map_err(failed("Encoding error"))?;
    out(&text);
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// Output formats (pure)

/// A time in milliseconds since the Unix epoch as RFC 3339 UTC text; `-` for 0.
fn format_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || ms.to_string(),
            |ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

/// How long a job ran (or has been running, at `now_ms`), to the second.
fn job_elapsed(job: &serf_rpc::protocol::Job, now_ms: u64) -> String {
    let end = if job.ended_ms == 0 {
        now_ms
    } else {
        job.ended_ms
    };
    let seconds = end.saturating_sub(job.started_ms) / 1000;
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// `serf jobs`: one line per job, in columns.
pub fn format_jobs_text(jobs: &[serf_rpc::protocol::Job], now_ms: u64) -> String {
    if jobs.is_empty() {
        return "No jobs".to_owned();
    }
    let cell = |text: &str| text.replace('|', "/");
    let mut lines = vec!["ID|PLUGIN|NAME|STATE|EXIT|STARTED|ELAPSED".to_owned()];
    for job in jobs {
        let exit = if job.state == "finished" {
            job.exit_status.to_string()
        } else {
            "-".to_owned()
        };
        lines.push(format!(
            "{}|{}|{}|{}|{}|{}|{}",
            job.id,
            cell(&job.plugin),
            cell(&job.name),
            job.state,
            exit,
            format_ms(job.started_ms),
            job_elapsed(job, now_ms)
        ));
    }
    columnize(&lines)
}

/// `serf jobs -show ID`: every field, then the output tail.
pub fn format_job_text(job: &serf_rpc::protocol::Job, now_ms: u64) -> String {
    let exit = if job.state == "finished" {
        job.exit_status.to_string()
    } else {
        "-".to_owned()
    };
    let mut text = format!(
        "ID:          {}\nPlugin:      {}\nName:        {}\nArgument:    {:?}\n\
         State:       {}\nExit status: {exit}\nError:       {}\nStarted:     {}\n\
         Ended:       {}\nElapsed:     {}\nOutput:",
        job.id,
        job.plugin,
        job.name,
        String::from_utf8_lossy(&job.arg),
        job.state,
        job.error,
        format_ms(job.started_ms),
        format_ms(job.ended_ms),
        job_elapsed(job, now_ms),
    );
    if job.output.is_empty() {
        text.push_str(" (none)");
    }
    for line in &job.output {
        text.push_str("\n    ");
        text.push_str(line);
    }
    text
}

/// A job for `-format json`.
fn job_json(job: &serf_rpc::protocol::Job) -> serde_json::Value {
    let time = |ms: u64| (ms != 0).then(|| format_ms(ms));
    serde_json::json!({
        "id": job.id,
        "plugin": job.plugin,
        "name": job.name,
        "arg": String::from_utf8_lossy(&job.arg),
        "state": job.state,
        "exit_status": job.exit_status,
        "error": job.error,
        "started": time(job.started_ms),
        "ended": time(job.ended_ms),
        "output": job.output,
        "command": job.command,
    })
}

/// `serf rtt`'s line for two nodes' coordinates; `None` if their dimensions differ.
pub fn format_rtt(
    a: &str,
    b: &str,
    coordinate_a: &serf_rpc::protocol::Coordinate,
    coordinate_b: &serf_rpc::protocol::Coordinate,
) -> Option<String> {
    let vivaldi = |c: &serf_rpc::protocol::Coordinate| serf_core::wire::Coordinate {
        vec: c.vec.clone(),
        error: c.error,
        adjustment: c.adjustment,
        height: c.height,
    };
    let rtt = serf_core::coordinate::distance(&vivaldi(coordinate_a), &vivaldi(coordinate_b))?;
    let millis = rtt.as_secs_f64() * 1000.0;
    Some(format!("Estimated {a} <-> {b} rtt: {millis:.3} ms"))
}

/// `serf keys` failures: `failed:  NODE  MESSAGE` per node, aligned, in name order.
pub fn format_key_failures(messages: &BTreeMap<String, String>) -> String {
    let lines: Vec<String> = messages
        .iter()
        .map(|(node, message)| format!("failed: | {node} | {message}"))
        .collect();
    columnize(&lines)
}

/// `serf keys -list`: `KEY  [holders/members]` per key, aligned, in key order.
pub fn format_key_list(keys: &BTreeMap<String, i64>, num_nodes: i64) -> String {
    let lines: Vec<String> = keys
        .iter()
        .map(|(key, holders)| format!("{key} | [{holders}/{num_nodes}]"))
        .collect();
    columnize(&lines)
}

/// `serf members` text: aligned columns name, address, status, tags (`k=v,...`), and with
/// `detailed` the Serf protocol version and range.
pub fn format_members_text(members: &[Member], detailed: bool) -> String {
    let lines: Vec<String> = members
        .iter()
        .map(|member| {
            let tags: Vec<String> = member
                .tags
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            let mut line = format!(
                "{}|{}|{}|{}",
                member.name,
                member_addr(member),
                member.status,
                tags.join(",")
            );
            if detailed {
                line.push_str(&format!(
                    "|Protocol Version: {}|Available Protocol Range: [{}, {}]",
                    member.delegate_cur, member.delegate_min, member.delegate_max
                ));
            }
            line
        })
        .collect();
    columnize(&lines).trim().to_owned()
}

/// `serf members -format json`.
pub fn format_members_json(members: &[Member]) -> String {
    let list = if members.is_empty() {
        Json::Null
    } else {
        Json::Array(
            members
                .iter()
                .map(|member| {
                    Json::Object(vec![
                        ("name".into(), Json::Str(member.name.clone())),
                        ("addr".into(), Json::Str(member_addr(member))),
                        ("port".into(), Json::Number(member.port.into())),
                        ("tags".into(), string_map_json(&member.tags)),
                        ("status".into(), Json::Str(member.status.clone())),
                        (
                            "protocol".into(),
                            Json::Object(vec![
                                ("max".into(), Json::Number(member.delegate_max.into())),
                                ("min".into(), Json::Number(member.delegate_min.into())),
                                ("version".into(), Json::Number(member.delegate_cur.into())),
                            ]),
                        ),
                    ])
                })
                .collect(),
        )
    };
    Json::Object(vec![("members".into(), list)]).to_go_indented()
}

/// `serf info` text: sections and keys sorted, `\tkey = value` lines.
pub fn format_stats_text(stats: &Stats) -> String {
    let mut text = String::new();
    for (section, values) in stats {
        text.push_str(section);
        text.push_str(":\n");
        for (key, value) in values {
            text.push_str(&format!("\t{key} = {value}\n"));
        }
    }
    text.trim().to_owned()
}

/// `serf info -format json`.
pub fn format_stats_json(stats: &Stats) -> String {
    Json::Object(
        stats
            .iter()
            .map(|(section, values)| (section.clone(), string_map_json(values)))
            .collect(),
    )
    .to_go_indented()
}

/// `Response from 'node': payload`, the payload's one trailing newline removed, bytes as is.
pub fn query_response_line(from: &str, payload: &[u8]) -> Vec<u8> {
    let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
    let mut line = format!("Response from '{from}': ").into_bytes();
    line.extend_from_slice(payload);
    line
}

/// `serf query -format json`: `Acks` (null when none) and `Responses` by node.
pub fn format_query_json(acks: &[String], responses: &BTreeMap<String, Vec<u8>>) -> String {
    let acks = if acks.is_empty() {
        Json::Null
    } else {
        Json::Array(acks.iter().cloned().map(Json::Str).collect())
    };
    let responses = Json::Object(
        responses
            .iter()
            .map(|(from, payload)| (from.clone(), Json::Bytes(payload.clone())))
            .collect(),
    );
    Json::Object(vec![("Acks".into(), acks), ("Responses".into(), responses)]).to_go_indented()
}

/// `serf monitor`'s rendering of a stream record: `Event Info:` and one `\tKey: value` line per
/// field, values as Go's `%#v` prints what its msgpack decoder produced. Go prints the fields
/// in random order; we use the wire order.
pub fn format_event_info(record: &StreamRecord) -> String {
    let fields: Vec<(&str, String)> = match record {
        StreamRecord::Member(event) => vec![
            ("Event", go_quote(event.event.as_str())),
            (
                "Members",
                format!(
                    "[]interface {{}}{{{}}}",
                    event
                        .members
                        .iter()
                        .map(go_member)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        ],
        StreamRecord::User(event) => vec![
            ("Coalesce", event.coalesce.to_string()),
            ("Event", go_quote(&event.event)),
            ("LTime", go_uint(event.ltime)),
            ("Name", go_quote(&event.name)),
            ("Payload", go_payload(event.payload.as_deref())),
        ],
        StreamRecord::Query(event) => vec![
            ("Event", go_quote(&event.event)),
            ("ID", go_uint(event.id)),
            ("LTime", go_uint(event.ltime)),
            ("Name", go_quote(&event.name)),
            ("Payload", go_payload(event.payload.as_deref())),
        ],
    };
    let mut text = String::from("Event Info:");
    for (key, value) in fields {
        text.push_str(&format!("\n\t{key}: {value}"));
    }
    text
}

/// `net.TCPAddr{IP, Port}.String()`: `1.2.3.4:7946`, `[::1]:7946`; IPv4-mapped IPv6 prints as
/// IPv4, an address of another length as `?` and hex.
pub fn member_addr(member: &Member) -> String {
    use std::net::IpAddr;
    let host = match member.ip() {
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{v6}]"),
        },
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None if member.addr.is_empty() => String::new(),
        None => {
            let hex: String = member.addr.iter().map(|b| format!("{b:02x}")).collect();
            format!("?{hex}")
        }
    };
    format!("{host}:{}", member.port)
}

/// `columnize.SimpleFormat`: fields split on `|` and trimmed, each column but the last padded
/// to its widest cell (width in bytes, padding in characters, as Go's does), joined by two
/// spaces.
fn columnize(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .map(|line| line.split('|').map(str::trim).collect())
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            match widths.get_mut(i) {
                Some(width) => *width = (*width).max(cell.len()),
                None => widths.push(cell.len()),
            }
        }
    }
    let mut text = String::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            text.push_str(cell);
            if i + 1 == row.len() {
                text.push('\n');
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
                text.push_str("  ");
            }
        }
    }
    if text.ends_with('\n') {
        text.pop();
    }
    text
}

fn string_map_json(map: &BTreeMap<String, String>) -> Json {
    Json::Object(
        map.iter()
            .map(|(key, value)| (key.clone(), Json::Str(value.clone())))
            .collect(),
    )
}

/// Just enough JSON to reproduce Go's `json.MarshalIndent(v, "", "  ")` byte for byte.
enum Json {
    Null,
    Number(u64),
    Str(String),
    /// A Go `string([]byte)`: invalid UTF-8 bytes become U+FFFD, one per byte.
    Bytes(Vec<u8>),
    Array(Vec<Json>),
    /// Entries in output order (Go sorts map keys; struct fields keep declaration order).
    Object(Vec<(String, Json)>),
}

impl Json {
    fn to_go_indented(&self) -> String {
        let mut text = String::new();
        self.write(&mut text, 0);
        text
    }

    fn write(&self, text: &mut String, depth: usize) {
        let indent = |text: &mut String, depth: usize| {
            text.push('\n');
            text.extend(std::iter::repeat_n("  ", depth));
        };
        match self {
            Json::Null => text.push_str("null"),
            Json::Number(number) => text.push_str(&number.to_string()),
            Json::Str(value) => go_json_string(text, value.as_bytes()),
            Json::Bytes(value) => go_json_string(text, value),
            Json::Array(items) if items.is_empty() => text.push_str("[]"),
            Json::Array(items) => {
                text.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    indent(text, depth + 1);
                    item.write(text, depth + 1);
                }
                indent(text, depth);
                text.push(']');
            }
            Json::Object(entries) if entries.is_empty() => text.push_str("{}"),
            Json::Object(entries) => {
                text.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    indent(text, depth + 1);
                    go_json_string(text, key.as_bytes());
                    text.push_str(": ");
                    value.write(text, depth + 1);
                }
                indent(text, depth);
                text.push('}');
            }
        }
    }
}

/// A JSON string as Go's `encoding/json` (1.19) writes it: HTML-safe (`<`, `>`, `&` escaped),
/// U+2028/U+2029 escaped, control characters as `\u00XX` except `\n`, `\r`, `\t`, and each
/// byte of invalid UTF-8 as `\ufffd`.
fn go_json_string(text: &mut String, value: &[u8]) {
    text.push('"');
    for chunk in value.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => text.push_str("\\\""),
                '\\' => text.push_str("\\\\"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                '\t' => text.push_str("\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    text.push_str(&format!("\\u{:04x}", u32::from(c)));
                }
                c if u32::from(c) < 0x20 => text.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => text.push(c),
            }
        }
        for _ in chunk.invalid() {
            text.push_str("\\ufffd");
        }
    }
    text.push('"');
}

/// Go's `strconv.Quote` (what `%#v` prints for a string).
fn go_quote(value: &str) -> String {
    let mut text = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => text.push_str("\\\""),
            '\\' => text.push_str("\\\\"),
            '\x07' => text.push_str("\\a"),
            '\x08' => text.push_str("\\b"),
            '\x0c' => text.push_str("\\f"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            '\t' => text.push_str("\\t"),
            '\x0b' => text.push_str("\\v"),
            ' ' => text.push(' '),
            c if !c.is_control() && !c.is_whitespace() => text.push(c),
            c if u32::from(c) < 0x80 => text.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if u32::from(c) < 0x10000 => text.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => text.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    text.push('"');
    text
}

/// `%#v` of a non-negative integer as go-msgpack decodes it into `interface{}`: a positive
/// fixint (< 128) becomes an `int64` (decimal), wider forms a `uint64` (hex).
fn go_uint(value: u64) -> String {
    if value < 128 {
        value.to_string()
    } else {
        format!("{value:#x}")
    }
}

fn go_byte_list(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `%#v` of a top-level payload: `[]byte{0x68, 0x69}`, or `<nil>` for msgpack nil.
fn go_payload(payload: Option<&[u8]>) -> String {
    match payload {
        Some(bytes) => format!("[]byte{{{}}}", go_byte_list(bytes)),
        None => "<nil>".to_owned(),
    }
}

/// `%#v` of a member decoded into `map[interface{}]interface{}` (keys sorted, as fmt does).
fn go_member(member: &Member) -> String {
    let tags: Vec<String> = member
        .tags
        .iter()
        .map(|(key, value)| format!("{}:{}", go_quote(key), go_quote(value)))
        .collect();
    let fields = [
        ("Addr", format!("[]uint8{{{}}}", go_byte_list(&member.addr))),
        ("DelegateCur", go_uint(member.delegate_cur.into())),
        ("DelegateMax", go_uint(member.delegate_max.into())),
        ("DelegateMin", go_uint(member.delegate_min.into())),
        ("Name", go_quote(&member.name)),
        ("Port", go_uint(member.port.into())),
        ("ProtocolCur", go_uint(member.protocol_cur.into())),
        ("ProtocolMax", go_uint(member.protocol_max.into())),
        ("ProtocolMin", go_uint(member.protocol_min.into())),
        ("Status", go_quote(&member.status)),
        (
            "Tags",
            format!("map[interface {{}}]interface {{}}{{{}}}", tags.join(", ")),
        ),
    ];
    let fields: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", go_quote(key)))
        .collect();
    format!("map[interface {{}}]interface {{}}{{{}}}", fields.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serf_rpc::protocol::{MemberEventRecord, MemberEventType, UserEventRecord};

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn normalized(args: &[&str]) -> Vec<String> {
        normalize_args(&cli_definition(), os(args))
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    fn parse(args: &[&str]) -> Command {
        let matches = cli_definition()
            .try_get_matches_from(normalize_args(&cli_definition(), os(args)))
            .unwrap();
        Cli::from_arg_matches(&matches).unwrap().command
    }

    fn member(name: &str, ip: [u8; 4], tags: &[(&str, &str)]) -> Member {
        Member {
            addr: ip.to_vec(),
            delegate_cur: 5,
            delegate_max: 5,
            delegate_min: 2,
            name: name.into(),
            port: 7946,
            protocol_cur: 2,
            protocol_max: 5,
            protocol_min: 1,
            status: "alive".into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn single_dash_flags_of_the_subcommand_become_long_flags() {
        assert_eq!(
            normalized(&[
                "serf",
                "members",
                "-rpc-addr=1.2.3.4:5",
                "-detailed",
                "-tag",
                "a=b"
            ]),
            [
                "serf",
                "members",
                "--rpc-addr=1.2.3.4:5",
                "--detailed",
                "--tag=a=b"
            ]
        );
        assert_eq!(
            normalized(&["serf", "members", "--status", "alive", "-format=json"]),
            ["serf", "members", "--status=alive", "--format=json"]
        );
    }

    #[test]
    fn flags_stop_at_the_first_positional_argument() {
        assert_eq!(
            normalized(&["serf", "event", "-coalesce=false", "deploy", "-x"]),
            ["serf", "event", "--coalesce=false", "--", "deploy", "-x"]
        );
        assert_eq!(
            normalized(&["serf", "event", "--", "-name"]),
            ["serf", "event", "--", "-name"]
        );
        assert_eq!(
            normalized(&["serf", "join", "-replay", "a:1", "-replay"]),
            ["serf", "join", "--replay", "--", "a:1", "-replay"]
        );
    }

    #[test]
    fn bool_flags_never_take_the_next_argument() {
        // Go: `-no-ack false` is the flag then the positional "false".
        assert_eq!(
            normalized(&["serf", "query", "-no-ack", "false"]),
            ["serf", "query", "--no-ack", "--", "false"]
        );
    }

    #[test]
    fn value_flags_take_the_next_argument_whatever_it_looks_like() {
        assert_eq!(
            normalized(&["serf", "members", "-name", "-odd-", "-status", "--"]),
            ["serf", "members", "--name=-odd-", "--status=--"]
        );
        // A value flag at the very end is left for clap to report.
        assert_eq!(
            normalized(&["serf", "members", "-name"]),
            ["serf", "members", "--name"]
        );
    }

    #[test]
    fn unknown_flags_and_other_commands_are_left_alone() {
        assert_eq!(
            normalized(&["serf", "members", "-bogus", "-h"]),
            ["serf", "members", "-bogus", "-h"]
        );
        assert_eq!(
            normalized(&["serf", "nosuch", "-x"]),
            ["serf", "nosuch", "-x"]
        );
        assert_eq!(normalized(&["serf"]), ["serf"]);
        assert_eq!(
            normalized(&["serf", "members", "-help"]),
            ["serf", "members", "--help"]
        );
        let definition = cli_definition();
        let sub = definition.find_subcommand("members").unwrap();
        assert_eq!(
            undefined_flag(sub, &os(&["-detailed", "-name", "x", "--bogus=1"])),
            Some("bogus".to_owned())
        );
        assert_eq!(undefined_flag(sub, &os(&["x", "-bogus"])), None);
    }

    #[test]
    fn plugin_list_and_status_take_serfs_flags_check_and_run_clap_s() {
        assert_eq!(
            normalized(&[
                "serf",
                "plugin",
                "status",
                "-format",
                "json",
                "-rpc-addr=a:1",
                "up"
            ]),
            [
                "serf",
                "plugin",
                "status",
                "--format=json",
                "--rpc-addr=a:1",
                "--",
                "up"
            ]
        );
        assert_eq!(
            normalized(&["serf", "plugin", "list", "-format=json"]),
            ["serf", "plugin", "list", "--format=json"]
        );
        let run = ["serf", "plugin", "run", "x.wasm", "--event", "user:a"];
        assert_eq!(normalized(&run), run);
        let Command::Plugin(_) = parse(&["serf", "plugin", "status", "-format=json", "up"]) else {
            panic!("not plugin")
        };
    }

    #[test]
    fn normalizer_works_for_any_subcommand_definition() {
        // The agent subcommand is added later; any clap subcommand works the same way.
        let definition = clap::Command::new("serf").subcommand(
            clap::Command::new("agent")
                .arg(clap::Arg::new("bind").long("bind"))
                .arg(
                    clap::Arg::new("rejoin")
                        .long("rejoin")
                        .action(ArgAction::SetTrue),
                ),
        );
        let args = normalize_args(
            &definition,
            os(&["serf", "agent", "-bind", "127.0.0.1", "-rejoin", "extra"]),
        );
        assert_eq!(
            args,
            os(&[
                "serf",
                "agent",
                "--bind=127.0.0.1",
                "--rejoin",
                "--",
                "extra"
            ])
        );
    }

    #[test]
    fn parsed_flags_follow_go_semantics() {
        let Command::Event(event) = parse(&["serf", "event", "-coalesce=false", "n", "-x"]) else {
            panic!("not an event")
        };
        assert!(!event.coalesce);
        assert_eq!(event.args, os(&["n", "-x"]));
        let Command::Members(members) = parse(&[
            "serf",
            "members",
            "-format",
            "text",
            "-format=json",
            "-detailed",
        ]) else {
            panic!("not members")
        };
        assert_eq!(members.format, "json");
        assert!(members.detailed);
        let Command::Query(query) = parse(&["serf", "query", "-timeout", "1m30s", "-no-ack", "q"])
        else {
            panic!("not a query")
        };
        assert_eq!(query.timeout, Duration::from_secs(90));
        assert!(query.no_ack);
        assert_eq!(query.relay_factor, 0);
        let Command::ForceLeave(leave) = parse(&["serf", "force-leave", "-prune=t", "node"]) else {
            panic!("not force-leave")
        };
        assert!(leave.prune);
        assert_eq!(leave.nodes, ["node"]);
    }

    #[test]
    fn agent_gossip_flags_parse_go_style() {
        let Command::Agent(flags) = parse(&[
            "serf",
            "agent",
            "-join",
            "10.0.0.1",
            "-join=10.0.0.2:7000",
            "--retry-join",
            "seed.example",
            "-retry-interval",
            "5s",
            "-retry-max=3",
            "-replay",
            "-encrypt",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "-keyring-file",
            "keys.json",
            "-profile=wan",
            "-protocol",
            "-1",
            "-disable-compression",
        ]) else {
            panic!("not agent")
        };
        assert_eq!(flags.join, ["10.0.0.1", "10.0.0.2:7000"]);
        assert_eq!(flags.retry_join, ["seed.example"]);
        assert_eq!(flags.retry_interval, Some(Duration::from_secs(5)));
        assert_eq!(flags.retry_max, Some(3));
        assert!(flags.replay);
        assert_eq!(
            flags.encrypt.as_deref(),
            Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        );
        assert_eq!(
            flags.keyring_file.as_deref(),
            Some(std::path::Path::new("keys.json"))
        );
        assert_eq!(flags.profile.as_deref(), Some("wan"));
        assert_eq!(flags.protocol, Some(-1));
        assert!(flags.disable_compression);
        let Command::Agent(flags) = parse(&["serf", "agent", "-replay=false"]) else {
            panic!("not agent")
        };
        assert!(!flags.replay);
        assert!(!flags.disable_compression);
        assert!(flags.join.is_empty());
    }

    #[test]
    fn go_bools_and_durations_parse_like_go() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(text), Ok(true));
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(text), Ok(false));
        }
        assert!(parse_go_bool("yes").is_err());
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("1h1m"), Ok(Duration::from_secs(3660)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("10µs"), Ok(Duration::from_micros(10)));
        for bad in ["", "abc", "2", "s", "1x", "-1s", ".s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tag_filters_split_at_the_first_equals_sign() {
        let tags = parse_tags(&["role=w.*".into(), "a=b=c".into(), "empty=".into()]).unwrap();
        assert_eq!(tags["role"], "w.*");
        assert_eq!(tags["a"], "b=c");
        assert_eq!(tags["empty"], "");
        assert_eq!(
            parse_tags(&["role".into()]),
            Err("Invalid tag: 'role'".into())
        );
        assert_eq!(parse_tags(&["=x".into()]), Err("Invalid tag: '=x'".into()));
        assert!(parse_tags(&[]).unwrap().is_empty());
    }

    #[test]
    fn members_text_is_aligned_like_columnize() {
        let members = [
            member("alpha", [127, 0, 0, 77], &[("role", "web"), ("dc", "east")]),
            member("beta-long-name", [127, 0, 0, 78], &[("role", "db")]),
        ];
        assert_eq!(
            format_members_text(&members, false),
            "alpha           127.0.0.77:7946  alive  dc=east,role=web\n\
             beta-long-name  127.0.0.78:7946  alive  role=db"
        );
        assert_eq!(
            format_members_text(&members, true),
            "alpha           127.0.0.77:7946  alive  dc=east,role=web  Protocol Version: 5  Available Protocol Range: [2, 5]\n\
             beta-long-name  127.0.0.78:7946  alive  role=db           Protocol Version: 5  Available Protocol Range: [2, 5]"
        );
        // A member without tags keeps its column separator unless it is the last line.
        let members = [
            member("gamma", [127, 0, 0, 79], &[]),
            member("d", [127, 0, 0, 80], &[("x", "y")]),
        ];
        assert_eq!(
            format_members_text(&members, false),
            "gamma  127.0.0.79:7946  alive  \nd      127.0.0.80:7946  alive  x=y"
        );
        assert_eq!(
            format_members_text(&members[..1], false),
            "gamma  127.0.0.79:7946  alive"
        );
        assert_eq!(format_members_text(&[], false), "");
    }

    #[test]
    fn members_json_matches_go_marshal_indent() {
        let members = [member(
            "alpha",
            [127, 0, 0, 77],
            &[("role", "web"), ("dc", "east")],
        )];
        assert_eq!(
            format_members_json(&members),
            r#"{
  "members": [
    {
      "name": "alpha",
      "addr": "127.0.0.77:7946",
      "port": 7946,
      "tags": {
        "dc": "east",
        "role": "web"
      },
      "status": "alive",
      "protocol": {
        "max": 5,
        "min": 2,
        "version": 5
      }
    }
  ]
}"#
        );
        assert_eq!(format_members_json(&[]), "{\n  \"members\": null\n}");
        let bare = [member("x", [127, 0, 0, 1], &[])];
        assert!(format_members_json(&bare).contains("\"tags\": {},"));
    }

    #[test]
    fn addresses_print_like_go_tcp_addr() {
        let mut m = member("x", [10, 0, 0, 1], &[]);
        assert_eq!(member_addr(&m), "10.0.0.1:7946");
        m.addr = "::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        assert_eq!(member_addr(&m), "[::1]:7946");
        m.addr = "::ffff:10.0.0.2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        assert_eq!(member_addr(&m), "10.0.0.2:7946");
        m.addr = vec![1, 2];
        assert_eq!(member_addr(&m), "?0102:7946");
    }

    #[test]
    fn stats_text_and_json_match_serf_info() {
        let mut stats = Stats::new();
        stats
            .entry("agent".into())
            .or_default()
            .insert("name".into(), "alpha".into());
        stats.insert("event_handlers".into(), BTreeMap::new());
        let tags = stats.entry("tags".into()).or_default();
        tags.insert("role".into(), "web".into());
        tags.insert("dc".into(), "east".into());
        assert_eq!(
            format_stats_text(&stats),
            "agent:\n\tname = alpha\nevent_handlers:\ntags:\n\tdc = east\n\trole = web"
        );
        assert_eq!(
            format_stats_json(&stats),
            "{\n  \"agent\": {\n    \"name\": \"alpha\"\n  },\n  \"event_handlers\": {},\n  \
             \"tags\": {\n    \"dc\": \"east\",\n    \"role\": \"web\"\n  }\n}"
        );
    }

    #[test]
    fn query_output_matches_serf() {
        assert_eq!(
            query_response_line("b", b"HELLO\n"),
            b"Response from 'b': HELLO".to_vec()
        );
        assert_eq!(
            query_response_line("b", b"two\n\n"),
            b"Response from 'b': two\n".to_vec()
        );
        let responses = BTreeMap::from([("beta".to_owned(), b"HELLO\n".to_vec())]);
        assert_eq!(
            format_query_json(&["alpha".into(), "beta".into()], &responses),
            "{\n  \"Acks\": [\n    \"alpha\",\n    \"beta\"\n  ],\n  \"Responses\": {\n    \"beta\": \"HELLO\\n\"\n  }\n}"
        );
        assert_eq!(
            format_query_json(&[], &BTreeMap::new()),
            "{\n  \"Acks\": null,\n  \"Responses\": {}\n}"
        );
    }

    #[test]
    fn json_strings_escape_like_go() {
        let mut text = String::new();
        go_json_string(&mut text, b"<a&b>\"\\\t\x01\xff\xe2\x80\xa8ok\x7f");
        assert_eq!(
            text,
            "\"\\u003ca\\u0026b\\u003e\\\"\\\\\\t\\u0001\\ufffd\\u2028ok\x7f\""
        );
    }

    #[test]
    fn event_info_renders_like_go_sharp_v() {
        let user = StreamRecord::User(UserEventRecord {
            coalesce: true,
            event: "user".into(),
            ltime: 5,
            name: "ev1".into(),
            payload: Some(b"hi".to_vec()),
        });
        assert_eq!(
            format_event_info(&user),
            "Event Info:\n\tCoalesce: true\n\tEvent: \"user\"\n\tLTime: 5\n\tName: \"ev1\"\n\tPayload: []byte{0x68, 0x69}"
        );
        let member_event = StreamRecord::Member(MemberEventRecord {
            event: MemberEventType::Leave,
            members: vec![member(
                "beta",
                [127, 0, 0, 78],
                &[("role", "db"), ("x", "y")],
            )],
        });
        assert_eq!(
            format_event_info(&member_event),
            "Event Info:\n\tEvent: \"member-leave\"\n\tMembers: []interface {}{map[interface {}]interface {}{\
             \"Addr\":[]uint8{0x7f, 0x0, 0x0, 0x4e}, \"DelegateCur\":5, \"DelegateMax\":5, \"DelegateMin\":2, \
             \"Name\":\"beta\", \"Port\":0x1f0a, \"ProtocolCur\":2, \"ProtocolMax\":5, \"ProtocolMin\":1, \
             \"Status\":\"alive\", \"Tags\":map[interface {}]interface {}{\"role\":\"db\", \"x\":\"y\"}}}"
        );
        assert_eq!(go_payload(None), "<nil>");
        assert_eq!(go_payload(Some(&[])), "[]byte{}");
        assert_eq!(go_uint(200), "0xc8");
        assert_eq!(go_quote("a\"b\n\u{1}"), "\"a\\\"b\\n\\x01\"");
    }

    #[test]
    fn rtt_line_matches_serf() {
        use serf_rpc::protocol::Coordinate;
        let bits = [
            0xbef5500cfbdf3166_u64,
            0xbf081404ccb0b7c4,
            0xbef7b188c0734b2e,
            0xbf06d9cc2b3d971d,
            0x3f0567ba0b398670,
            0xbf08a70c8000b1c7,
            0x3ea9fc2ecf537f39,
            0x3f06a45afaeaf865,
        ];
        // A coordinate a Serf agent reported, and a fresh one.
        let moved = Coordinate {
            adjustment: f64::from_bits(0x3efae94a223f9f90),
            error: f64::from_bits(0x3fd766f41fbd04c6),
            height: f64::from_bits(0x3f12e14c8dbfd61f),
            vec: bits.map(f64::from_bits).to_vec(),
        };
        let fresh = Coordinate {
            adjustment: 0.0,
            error: 1.5,
            height: 1.0e-5,
            vec: vec![0.0; 8],
        };
        let negative = Coordinate {
            adjustment: -0.5,
            ..fresh.clone()
        };
        // Serf 0.9.4's own arithmetic printed these.
        for (a, b, expected) in [
            (&moved, &fresh, "0.211"),
            (&moved, &moved, "0.195"),
            (&fresh, &fresh, "0.020"),
            (&moved, &negative, "0.185"),
        ] {
            assert_eq!(
                format_rtt("a", "b", a, b).as_deref(),
                Some(format!("Estimated a <-> b rtt: {expected} ms").as_str())
            );
        }
        let short = Coordinate {
            vec: vec![0.0; 2],
            ..fresh.clone()
        };
        assert_eq!(format_rtt("a", "b", &fresh, &short), None);
    }

    #[test]
    fn key_output_is_aligned_like_serf() {
        let messages = BTreeMap::from([
            (
                "node2".to_owned(),
                "key size must be 16, 24 or 32 bytes".to_owned(),
            ),
            (
                "g1".to_owned(),
                "Removing the primary key is not allowed".to_owned(),
            ),
        ]);
        assert_eq!(
            format_key_failures(&messages),
            "failed:  g1     Removing the primary key is not allowed\n\
             failed:  node2  key size must be 16, 24 or 32 bytes"
        );
        let keys = BTreeMap::from([
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(), 2),
            ("ERESEhISEhISEhISEhISEg==".to_owned(), 1),
        ]);
        assert_eq!(
            format_key_list(&keys, 2),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=  [2/2]\n\
             ERESEhISEhISEhISEhISEg==                      [1/2]"
        );
    }

    #[test]
    fn keys_takes_exactly_one_action() {
        let Command::Keys(args) = parse(&["serf", "keys", "-install", "K", "-rpc-addr=x:1"]) else {
            panic!("not keys")
        };
        assert_eq!(
            (args.install.as_str(), args.list, args.rpc.rpc_addr.as_str()),
            ("K", false, "x:1")
        );
        let Command::Keys(args) = parse(&["serf", "keys", "-list"]) else {
            panic!("not keys")
        };
        assert!(args.list && args.use_key.is_empty());
    }

    #[test]
    fn version_names_our_version_protocol_and_abi() {
        assert_eq!(
            version_text(2, 5),
            format!(
                "Serf v{}\nAgent Protocol: 5 (Understands back to: 2)\nPlugin ABI: 1",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    // --- Jobs (our extension).

    fn job(state: &str, ended_ms: u64) -> serf_rpc::protocol::Job {
        serf_rpc::protocol::Job {
            arg: b"10".to_vec(),
            ended_ms,
            error: String::new(),
            exit_status: if state == "finished" { 0 } else { -1 },
            id: 3,
            name: "deploy|prod".into(),
            output: vec!["1/10 s".into()],
            plugin: "longjob".into(),
            started_ms: 1_767_225_600_000,
            state: state.into(),
            command: Vec::new(),
        }
    }

    #[test]
    fn jobs_list_as_columns_with_exit_only_when_finished() {
        let now = 1_767_225_600_000 + 65_000;
        let text = format_jobs_text(
            &[job("running", 0), job("finished", 1_767_225_610_000)],
            now,
        );
        assert_eq!(
            text,
            "ID  PLUGIN   NAME         STATE     EXIT  STARTED               ELAPSED\n\
             3   longjob  deploy/prod  running   -     2026-01-01T00:00:00Z  1m 5s\n\
             3   longjob  deploy/prod  finished  0     2026-01-01T00:00:00Z  10s"
        );
        assert_eq!(format_jobs_text(&[], now), "No jobs");
    }

    #[test]
    fn a_job_shows_every_field_and_its_output() {
        let text = format_job_text(&job("killed", 1_767_225_601_000), 0);
        assert!(
            text.starts_with("ID:          3\nPlugin:      longjob\n"),
            "{text}"
        );
        assert!(text.contains("Argument:    \"10\"\n"), "{text}");
        assert!(text.contains("Exit status: -\n"), "{text}");
        assert!(
            text.contains("Ended:       2026-01-01T00:00:01Z\n"),
            "{text}"
        );
        assert!(text.ends_with("Output:\n    1/10 s"), "{text}");
    }

    #[test]
    fn jobs_takes_one_action() {
        let Command::Jobs(args) = parse(&["serf", "jobs", "-reap", "4"]) else {
            panic!("not jobs")
        };
        assert!(args.reap && args.ids == ["4"] && args.show.is_none());
        let Command::Jobs(args) = parse(&["serf", "jobs", "-format=json", "-kill", "2"]) else {
            panic!("not jobs")
        };
        assert_eq!((args.kill, args.format.as_str()), (Some(2), "json"));
    }
}
