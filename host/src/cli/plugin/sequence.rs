//! `serf plugin run --sequence FILE` and `--config-file SERF_TOML`: many events on one
//! instance, with the grants of the plugin's table in an agent config file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::config::{AgentFlags, Config};
use serf_plugins::PluginSpec;
use serf_plugins::dispatch::toml_to_msgpack;
use serf_plugins::tool::{self, SequenceReport, Step};

use super::{RunArgs, format_logs, format_outputs, millis, outcome, text};

/// A plugin's config table, as `serf_init` receives it.
type ConfigTable = BTreeMap<String, rmpv::Value>;

/// The largest sequence file read, in bytes.
const MAX_SEQUENCE_BYTES: u64 = 16 << 20;

/// The plugin's spec, config table and steps for `args`.
pub(super) fn prepare(args: &RunArgs) -> Result<(PluginSpec, ConfigTable, Vec<Step>), String> {
    let steps = match (&args.sequence, &args.event) {
        (Some(path), _) => read_sequence(path)?,
        (None, Some(event)) => vec![Step {
            event: tool::SyntheticEvent::parse(event).map_err(|error| error.to_string())?,
            payload: args.payload.clone().into_bytes(),
        }],
        (None, None) => return Err("give --event or --sequence".into()),
    };
    let (mut spec, mut config) = match &args.config_file {
        Some(path) => table_spec(path, args)?,
        None => {
            let (config, grants, dirs) = super::flag_grants(args)?;
            (tool::local_spec(&args.file, grants, dirs, None), config)
        }
    };
    // Flags beat the file, as for the agent.
    config.extend(super::flag_config(args)?);
    if let Some(fuel) = args.fuel {
        spec.limits.fuel_per_event = fuel;
    }
    Ok((spec, config, steps))
}

fn read_sequence(path: &Path) -> Result<Vec<Step>, String> {
    let size = std::fs::metadata(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?
        .len();
    if size > MAX_SEQUENCE_BYTES {
        return Err(format!(
            "{}: {size} bytes, more than the {MAX_SEQUENCE_BYTES} a sequence may have",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let toml = path.extension().is_some_and(|ext| ext == "toml");
    tool::parse_sequence(&text, toml).map_err(|error| format!("{}: {error}", path.display()))
}

/// The spec of the `[plugins.NAME]` table of `path`, resolved as the agent resolves it, for
/// the module `args.file`; and its config table.
fn table_spec(path: &Path, args: &RunArgs) -> Result<(PluginSpec, ConfigTable), String> {
    let flags = AgentFlags {
        config_file: Some(path.to_path_buf()),
        ..AgentFlags::default()
    };
    let agent = Config::from_flags(&flags).map_err(|error| error.to_string())?;
    let name = match &args.plugin {
        Some(name) => name.clone(),
        None => args
            .file
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let Some(mut spec) = agent.plugins.into_iter().find(|spec| spec.name == name) else {
        return Err(format!(
            "{} has no [plugins.{name}] table (name another with --plugin)",
            path.display()
        ));
    };
    spec.path = args.file.clone();
    let config = spec
        .config
        .iter()
        .map(|(key, value)| (key.clone(), toml_to_msgpack(value)))
        .collect();
    Ok((spec, config))
}

/// The report: start-up, then each event with its log lines, answer, effects, fuel and time.
pub(super) fn format(report: &SequenceReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "init: {}", outcome(&report.init));
    format_logs(&mut out, &report.init_logs);
    for (number, step) in (1..).zip(&report.steps) {
        let name = match &step.step.event {
            tool::SyntheticEvent::Member(kind) => kind.clone(),
            tool::SyntheticEvent::User(name) => format!("user:{name}"),
            tool::SyntheticEvent::Query(name) => format!("query:{name}"),
        };
        let payload = if step.step.payload.is_empty() {
            String::new()
        } else {
            format!(" payload {}", text(&step.step.payload))
        };
        let fuel = step
            .call
            .fuel
            .map_or_else(String::new, |fuel| format!(", fuel {fuel}"));
        let result = match &step.call.result {
            Ok(()) => format!("ok in {}{fuel}", millis(step.call.time)),
            Err(_) => outcome(&step.call),
        };
        let _ = writeln!(out, "event {number}: {name}{payload}: {result}");
        let mut lines = String::new();
        format_logs(&mut lines, &step.logs);
        format_outputs(
            &mut lines,
            step.response.as_deref(),
            &step.fired,
            &step.queries,
            "",
        );
        for done in &step.query_done {
            let _ = writeln!(lines, "query-done: {}", outcome(done));
        }
        for line in lines.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let failed = report.steps.iter().filter(|step| !step.is_ok()).count();
    let not_run = report.total - report.steps.len();
    let _ = write!(
        out,
        "{} of {} events ok",
        report.steps.len() - failed,
        report.total
    );
    if not_run > 0 {
        let why = if report.init.result.is_ok() {
            "the plugin trapped"
        } else {
            "the plugin did not start"
        };
        let _ = write!(out, "; {not_run} not run: {why}");
    }
    out.push('\n');
    out
}
