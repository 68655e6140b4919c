//! `serf plugin new`, `check` and `run`: tools for plugin authors that need no agent;
//! `serf plugin list` and `serf plugin status NAME`: the live view of a running agent's
//! plugins, over the RPC commands `plugin-list` and `plugin-status`.
//!
//! The offline work is in [`serf_plugins::tool`]; this module parses the flags and prints
//! the reports. Unlike Serf's subcommands, `check` and `run` take GNU-style flags anywhere on
//! the line (`serf plugin run upcase.wasm --event query:upcase --payload foo`). Exit code 0
//! when the plugin loaded (check) or handled the event (run), 1 otherwise. `list` and
//! `status` are client commands like `serf jobs`: Serf's flags (`-format`, `-rpc-addr`,
//! `-rpc-auth`) before the name, exit code 1 on any error (an unknown name included).

mod new;
mod sequence;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serf_plugin_sdk::abi::Capability;

use serf_plugins::engine::CompileBudget;
use serf_plugins::instance::CallError;
use serf_plugins::tool::{self, CallReport, CheckReport, LogLine, RunOptions, RunReport};
use serf_plugins::{Capabilities, Grants};
use serf_rpc::protocol::Plugin;

/// Tools for writing plugins: check a module, or run it against one synthetic event.
#[derive(Debug, clap::Args)]
pub(super) struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PluginCommand {
    /// Writes a new plugin project (Rust or Go) into ./NAME, ready to build and test
    New(new::NewArgs),
    /// Validates a plugin as the agent would, and lists its exports, imports and capabilities
    Check(CheckArgs),
    /// Runs a plugin against one synthetic event and prints its log, response, fuel and time
    Run(RunArgs),
    /// Lists a running agent's plugins: state, version, file and event filter
    List(ListArgs),
    /// Shows one plugin of a running agent: state, grants, limits and counters
    Status(StatusArgs),
    /// Lists the keys a plugin stored in its durable state, or prints one value
    State(StateArgs),
}

/// The client subcommands of `serf plugin`, which take Serf's flags (see [`super::normalize_args`]).
pub(super) const CLIENT_COMMANDS: [&str; 3] = ["list", "status", "state"];

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Output format: text or json.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: String,
    #[command(flatten)]
    rpc: super::RpcFlags,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Output format: text or json.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: String,
    #[command(flatten)]
    rpc: super::RpcFlags,
    /// The plugin's name, as `serf plugin list` shows it.
    #[arg(value_name = "NAME")]
    name: String,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// The plugin module.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
    /// Largest file accepted, in MiB, as the agent's plugin_max_size_mib (default 64).
    #[arg(long, value_name = "MIB")]
    max_size_mib: Option<u64>,
    /// Longest compilation accepted, as the agent's plugin_compile_timeout (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    compile_timeout: Option<Duration>,
    /// Most memory a compilation may take, in MiB, as plugin_compile_memory_mib (default 1024).
    #[arg(long, value_name = "MIB")]
    compile_memory_mib: Option<u64>,
}

impl CheckArgs {
    fn budget(&self) -> CompileBudget {
        let mut budget = CompileBudget::DEFAULT;
        if let Some(mib) = self.max_size_mib {
            budget.max_module_bytes = mib.saturating_mul(1 << 20);
        }
        if let Some(timeout) = self.compile_timeout {
            budget.timeout = timeout;
        }
        if let Some(mib) = self.compile_memory_mib {
            budget.max_memory_bytes = mib.saturating_mul(1 << 20);
        }
        budget
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The plugin module.
    #[arg(value_name = "FILE.wasm")]
    file: PathBuf,
    /// The event: member-join, member-leave, member-failed, member-update, member-reap,
    /// user:NAME or query:NAME.
    #[arg(
        long,
        value_name = "EVENT",
        required_unless_present = "sequence",
        conflicts_with = "sequence"
    )]
    event: Option<String>,
    /// Runs the events of this file in order on one instance instead: JSON lines
    /// (`{"event": "query:ping", "payload": "x"}`) or, for a .toml file, `[[event]]` tables.
    #[arg(long, value_name = "FILE")]
    sequence: Option<PathBuf>,
    /// Takes the plugin's grants, limits, directories and config from this agent config file
    /// (its `[plugins.NAME]` table), as the agent would.
    #[arg(long, value_name = "SERF_TOML", conflicts_with_all = ["grant", "env", "dir"])]
    config_file: Option<PathBuf>,
    /// The table of --config-file to use (default: the module's file stem).
    #[arg(long, value_name = "NAME", requires = "config_file")]
    plugin: Option<String>,
    /// The payload of a user event or query.
    #[arg(long, default_value = "", value_name = "TEXT")]
    payload: String,
    /// A key of the plugin's config table; repeatable. Numbers and true/false are typed.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Capabilities to grant: members, events, queries (comma-separated or repeated).
    #[arg(long = "grant", value_name = "CAPABILITY", value_delimiter = ',')]
    grant: Vec<String>,
    /// An environment variable for the plugin; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A directory to grant, read-write: guest path = host directory; repeatable.
    #[arg(long = "dir", value_name = "GUEST=HOST")]
    dir: Vec<String>,
    /// Fuel for the event (default 1000000000, 0.1-0.5 s of CPU).
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,
}

/// Runs `serf plugin ...`; returns the exit code.
pub(super) fn run(args: PluginArgs) -> u8 {
    let outcome = match args.command {
        PluginCommand::List(args) => return super::block_on(list(args)),
        PluginCommand::Status(args) => return super::block_on(status(args)),
        PluginCommand::New(args) => {
            return match new::run(&args) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(message) => {
                    println!("Error: {message}");
                    1
                }
            };
        }
        PluginCommand::State(args) => return super::block_on(state(args)),
        PluginCommand::Check(args) => tool::check(&args.file, args.budget()).map(|report| {
            print!("{}", format_check(&report));
            0
        }),
        PluginCommand::Run(args) if args.sequence.is_some() || args.config_file.is_some() => {
            match sequence::prepare(&args) {
                Ok((spec, config, steps)) => tool::run_sequence(&args.file, &spec, config, &steps)
                    .map(|report| {
                        print!("{}", sequence::format(&report));
                        u8::from(!report.is_ok())
                    }),
                Err(message) => {
                    println!("Error: {message}");
                    return 1;
                }
            }
        }
        PluginCommand::Run(args) => match run_options(&args) {
            Ok(options) => tool::run(&args.file, &options).map(|report| {
                print!("{}", format_run(&report));
                u8::from(!report.is_ok())
            }),
            Err(message) => {
                println!("Error: {message}");
                return 1;
            }
        },
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            println!("Error: {error}");
            1
        }
    }
}

/// `text` → false, `json` → true; anything else is printed as an error.
fn json_format(format: &str) -> Result<bool, u8> {
    match format {
        "text" => Ok(false),
        "json" => Ok(true),
        other => {
            super::out(&format!("Invalid format: {other}"));
            Err(1)
        }
    }
}

async fn list(args: ListArgs) -> super::Exit {
    let json = json_format(&args.format)?;
    let client = super::connect(&args.rpc).await?;
    let plugins = client
        .plugin_list()
        .await
        .map_err(super::failed("Error listing plugins"))?;
    if json {
        return super::print_json(&serde_json::Value::Array(
            plugins.iter().map(plugin_json).collect(),
        ));
    }
    super::out(&format_plugins_text(&plugins));
    Ok(0)
}

async fn status(args: StatusArgs) -> super::Exit {
    let json = json_format(&args.format)?;
    let client = super::connect(&args.rpc).await?;
    let plugin = client
        .plugin_status(&args.name)
        .await
        .map_err(super::failed("Error getting plugin status"))?;
    if json {
        return super::print_json(&plugin_json(&plugin));
    }
    super::out(&format_plugin_text(&plugin));
    Ok(0)
}

/// `serf plugin list`: one line per plugin, in columns; the SHA-256 cut to 12 digits.
fn format_plugins_text(plugins: &[Plugin]) -> String {
    if plugins.is_empty() {
        return "No plugins configured".to_owned();
    }
    let cell = |text: &str| text.replace(['|', '\n'], " ");
    let mut lines = vec!["NAME|STATE|SHA256|EVENTS|PATH".to_owned()];
    for plugin in plugins {
        let sha = plugin.sha256.get(..12).unwrap_or(&plugin.sha256);
        lines.push(format!(
            "{}|{}|{}|{}|{}",
            cell(&plugin.name),
            cell(&plugin.state),
            if sha.is_empty() { "-" } else { sha },
            cell(&plugin.events),
            cell(&plugin.path),
        ));
    }
    super::columnize(&lines)
}

/// `serf plugin status NAME`: sections of `key = value` lines, as `serf info` prints them.
/// Environment variables are listed by name only.
fn format_plugin_text(plugin: &Plugin) -> String {
    let mut text = String::new();
    let mut section = |title: &str, pairs: Vec<(String, String)>| {
        let _ = writeln!(text, "{title}:");
        for (key, value) in pairs {
            let _ = writeln!(text, "\t{key} = {value}");
        }
    };
    let pair = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(",")
        }
    };
    section(
        "plugin",
        vec![
            pair("name", &plugin.name),
            pair("state", &plugin.state),
            pair("path", &plugin.path),
            pair("sha256", &plugin.sha256),
            pair("events", &plugin.events),
        ],
    );
    let mut grants = vec![
        pair("capabilities", &list(&plugin.capabilities)),
        pair("env_keys", &list(&plugin.env_keys)),
    ];
    if plugin.dirs.is_empty() {
        grants.push(pair("dirs", "none"));
    }
    for (guest, host) in &plugin.dirs {
        grants.push((format!("dir {guest}"), host.clone()));
    }
    section("grants", grants);
    section("limits", plugin.limits.clone().into_iter().collect());
    section("counters", plugin.counters.clone().into_iter().collect());
    text.trim().to_owned()
}

/// A plugin for `-format json`.
fn plugin_json(plugin: &Plugin) -> serde_json::Value {
    serde_json::json!({
        "name": plugin.name,
        "state": plugin.state,
        "path": plugin.path,
        "sha256": plugin.sha256,
        "events": plugin.events,
        "capabilities": plugin.capabilities,
        "dirs": plugin.dirs,
        "env_keys": plugin.env_keys,
        "limits": plugin.limits,
        "counters": plugin.counters,
    })
}

fn run_options(args: &RunArgs) -> Result<RunOptions, String> {
    let event = tool::SyntheticEvent::parse(args.event.as_deref().unwrap_or_default())
        .map_err(|error| error.to_string())?;
    let (config, grants, dirs) = flag_grants(args)?;
    Ok(RunOptions {
        event,
        payload: args.payload.clone().into_bytes(),
        config,
        grants,
        dirs,
        fuel: args.fuel,
    })
}

/// The config table, grants and directories that `--config`, `--grant`, `--env` and `--dir` give.
#[allow(clippy::type_complexity)]
fn flag_grants(
    args: &RunArgs,
) -> Result<
    (
        BTreeMap<String, rmpv::Value>,
        Grants,
        BTreeMap<String, PathBuf>,
    ),
    String,
> {
    let capabilities = Capabilities::from_names(&args.grant).map_err(|unknown| {
        format!("unknown capability {unknown:?} (known: members, events, queries)")
    })?;
    let config = flag_config(args)?;
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let (key, value) = split_pair(pair, "--env")?;
        serf_plugins::grants::check_env_name(key).map_err(str::to_owned)?;
        env.insert(key.to_owned(), value.to_owned());
    }
    let mut dirs = BTreeMap::new();
    for pair in &args.dir {
        let (guest, host) = split_pair(pair, "--dir")?;
        dirs.insert(guest.to_owned(), PathBuf::from(host));
    }
    let grants = Grants {
        capabilities,
        env,
        ..Grants::default()
    };
    Ok((config, grants, dirs))
}

/// The `--config KEY=VALUE` pairs as config values.
fn flag_config(args: &RunArgs) -> Result<BTreeMap<String, rmpv::Value>, String> {
    let mut config = BTreeMap::new();
    for pair in &args.config {
        let (key, value) = split_pair(pair, "--config")?;
        config.insert(key.to_owned(), config_value(value));
    }
    Ok(config)
}

fn split_pair<'a>(pair: &'a str, flag: &str) -> Result<(&'a str, &'a str), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key, value)),
        _ => Err(format!("{flag} wants KEY=VALUE, not {pair:?}")),
    }
}

/// A `--config` value as serf.toml would type it: integer, float, boolean, else a string.
fn config_value(text: &str) -> rmpv::Value {
    if let Ok(number) = text.parse::<i64>() {
        rmpv::Value::from(number)
    } else if let Ok(number) = text.parse::<f64>()
        && text.contains('.')
    {
        rmpv::Value::from(number)
    } else if let Ok(flag) = text.parse::<bool>() {
        rmpv::Value::from(flag)
    } else {
        rmpv::Value::from(text)
    }
}

fn format_check(report: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: serf plugin, ABI v{}",
        report.path.display(),
        report.abi_version
    );
    let _ = writeln!(out, "  size:      {} bytes", report.size_bytes);
    let _ = writeln!(out, "  sha256:    {}", report.sha256);
    let _ = writeln!(out, "  compiled:  {}", millis(report.compile_time));
    let _ = writeln!(out, "exports:");
    for (name, ty) in &report.exports {
        let _ = writeln!(out, "  {name} {ty}");
    }
    let _ = writeln!(out, "serf imports:");
    for import in &report.serf_imports {
        match import.capability {
            Some(capability) => {
                let _ = writeln!(
                    out,
                    "  {} (needs capability {})",
                    import.name,
                    capability.name()
                );
            }
            None => {
                let _ = writeln!(out, "  {}", import.name);
            }
        }
    }
    let wasi = if report.wasi_imports.is_empty() {
        "none".to_owned()
    } else {
        report.wasi_imports.join(", ")
    };
    let _ = writeln!(out, "wasi imports: {wasi}");
    let needed = report.capabilities();
    if needed.is_empty() {
        let _ = writeln!(out, "capabilities: none needed");
    } else {
        let names: Vec<String> = needed
            .iter()
            .map(|c| format!("\"{}\"", Capability::name(*c)))
            .collect();
        let _ = writeln!(
            out,
            "capabilities: grant with capabilities = [{}] in its serf.toml table",
            names.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "events handled: not declared by the module (ABI v1 has no such declaration); its \
         serf.toml `events` filter decides what it receives, and it ignores what it does not handle"
    );
    let _ = writeln!(out, "init with an empty config: {}", outcome(&report.init));
    format_logs(&mut out, &report.logs);
    out
}

fn format_run(report: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "init: {}", outcome(&report.init));
    format_logs(&mut out, &report.logs);
    format_outputs(
        &mut out,
        report.response.as_deref(),
        &report.fired,
        &report.queries,
        " (answered here by query-done only)",
    );
    if let Some(event) = &report.event {
        let result = match &event.result {
            Ok(()) => "ok".to_owned(),
            Err(_) => outcome(event),
        };
        let _ = writeln!(out, "event: {result}");
        if let Some(fuel) = event.fuel {
            let _ = writeln!(out, "fuel: {fuel}");
        }
        let _ = writeln!(out, "time: {}", millis(event.time));
    }
    for done in &report.query_done {
        let _ = writeln!(out, "query-done: {}", outcome(done));
    }
    out
}

/// What a call produced besides its logs: the response, the user events it fired and the
/// queries it sent (`query_note` follows each query).
pub(super) fn format_outputs(
    out: &mut String,
    response: Option<&[u8]>,
    fired: &[serf_plugin_sdk::abi::FireEvent],
    queries: &[(u32, serf_plugin_sdk::abi::QueryRequest)],
    query_note: &str,
) {
    if let Some(response) = response {
        let _ = writeln!(out, "response: {}", text(response));
    }
    for event in fired {
        let _ = writeln!(
            out,
            "fired event: {} payload {} (coalesce {})",
            event.name,
            text(&event.payload),
            event.coalesce
        );
    }
    for (handle, query) in queries {
        let _ = writeln!(
            out,
            "sent query {handle}: {} payload {}{query_note}",
            query.name,
            text(&query.payload)
        );
    }
}

fn format_logs(out: &mut String, logs: &[LogLine]) {
    for line in logs {
        let level = line.level.as_str().to_ascii_lowercase();
        let _ = writeln!(out, "log [{level}] {}", line.text);
    }
}

fn outcome(report: &CallReport) -> String {
    match &report.result {
        Ok(()) => format!("ok in {}", millis(report.time)),
        Err(CallError::Refused { code, message }) => {
            format!("failed: status {code}: {message}")
        }
        Err(error) => format!("failed: {error}"),
    }
}

/// Bytes as text when they are UTF-8, escaped otherwise.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}

// --- Effects (ABI v1.2): `serf plugin state`. --------------------------------------------

#[derive(Debug, clap::Args)]
struct StateArgs {
    /// Only keys that start with this text (when no KEY is given).
    #[arg(long, default_value = "", value_name = "TEXT")]
    prefix: String,
    /// Output format: text or json.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    format: String,
    #[command(flatten)]
    rpc: super::RpcFlags,
    /// The plugin's name.
    #[arg(value_name = "NAME")]
    name: String,
    /// A key whose value to print (as stored: bytes that are not UTF-8 are replaced).
    #[arg(value_name = "KEY")]
    key: Option<String>,
}

/// `serf plugin state NAME [KEY]`: the keys (one a line, then the totals), or one value.
async fn state(args: StateArgs) -> super::Exit {
    let json = json_format(&args.format)?;
    let client = super::connect(&args.rpc).await?;
    let key = args.key.as_deref().unwrap_or_default();
    let state = client
        .plugin_state(&args.name, key, &args.prefix)
        .await
        .map_err(super::failed("Error reading plugin state"))?;
    if json {
        let value = state
            .value
            .as_ref()
            .map(|value| serde_json::Value::from(String::from_utf8_lossy(value).into_owned()));
        return super::print_json(&serde_json::json!({
            "keys": state.keys,
            "more": state.more,
            "value": value,
            "bytes": state.bytes,
            "key_count": state.key_count,
        }));
    }
    if let Some(value) = &state.value {
        super::out(&String::from_utf8_lossy(value));
        return Ok(0);
    }
    let mut lines = state.keys.clone();
    if state.more {
        lines.push("... (more keys: narrow with -prefix)".to_owned());
    }
    lines.push(format!(
        "{} keys, {} bytes stored",
        state.key_count, state.bytes
    ));
    super::out(&lines.join("\n"));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &str, state: &str) -> Plugin {
        Plugin {
            name: name.into(),
            state: state.into(),
            events: "*".into(),
            path: format!("plugins/{name}.wasm"),
            ..Plugin::default()
        }
    }

    #[test]
    fn plugins_list_as_columns_with_a_short_sha() {
        let mut up = plugin("upcase", "running");
        up.sha256 = "7bbd1fcfaf7498adddd43c15002db9ce".into();
        let text = format_plugins_text(&[up, plugin("bad", "failed: not|wasm")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME "), "{text}");
        assert!(lines[1].contains(" 7bbd1fcfaf74 "), "{text}");
        assert!(!lines[1].contains("7bbd1fcfaf749"), "{text}");
        assert!(lines[2].contains("failed: not wasm"), "{text}");
        assert!(lines[2].contains(" - "), "{text}");
        assert_eq!(format_plugins_text(&[]), "No plugins configured");
    }

    #[test]
    fn a_plugins_status_shows_grants_limits_and_counters_as_info_does() {
        let mut up = plugin("upcase", "running");
        up.capabilities = vec!["members".into(), "queries".into()];
        up.env_keys = vec!["REGION".into()];
        up.dirs = BTreeMap::from([("/data".into(), "/srv/data".into())]);
        up.limits = BTreeMap::from([("fuel_per_event".into(), "5".into())]);
        up.counters = BTreeMap::from([("handled".into(), "2".into())]);
        let text = format_plugin_text(&up);
        assert!(
            text.starts_with("plugin:\n\tname = upcase\n\tstate = running\n"),
            "{text}"
        );
        for expected in [
            "grants:\n\tcapabilities = members,queries\n\tenv_keys = REGION\n\tdir /data = /srv/data\n",
            "limits:\n\tfuel_per_event = 5\n",
            "counters:\n\thandled = 2",
        ] {
            assert!(text.contains(expected), "{expected:?} not in {text}");
        }
        let bare = format_plugin_text(&plugin("hello", "loading"));
        assert!(
            bare.contains("\tcapabilities = none\n\tenv_keys = none\n\tdirs = none\n"),
            "{bare}"
        );
    }

    #[test]
    fn config_values_are_typed_as_serf_toml_types_them() {
        assert_eq!(config_value("3"), rmpv::Value::from(3));
        assert_eq!(config_value("0.5"), rmpv::Value::from(0.5));
        assert_eq!(config_value("true"), rmpv::Value::from(true));
        assert_eq!(config_value("/data/x"), rmpv::Value::from("/data/x"));
        assert_eq!(config_value("inf"), rmpv::Value::from("inf"));
    }

    #[test]
    fn pairs_need_a_key() {
        assert_eq!(split_pair("a=b=c", "--env"), Ok(("a", "b=c")));
        assert!(split_pair("=b", "--env").is_err());
        assert!(split_pair("ab", "--env").is_err());
    }
}
