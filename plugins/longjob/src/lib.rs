//! Example plugin: long jobs, started, checked, killed and reaped through queries.
//!
//! A handler must return quickly, so work that takes minutes (a deploy, a backup) runs as a
//! job: the agent runs it in a separate instance of this plugin, on a worker, and the plugin's
//! queue moves on at once. Queries named `longjob` drive it, one command per payload:
//!
//! - `start NAME SECONDS [EXIT]` starts a job that works for `SECONDS` (decimals allowed),
//!   logging one progress line a second, then exits with `EXIT` (default 0); answers
//!   `started ID`;
//! - `check ID` answers `ID NAME STATE exit=N`, then the job's error and its last output line
//!   if it has them (`exit=-` until it finishes);
//! - `kill ID` answers `killed ID`;
//! - `reap ID` deletes the record of an ended job and answers `reaped ID`;
//! - `exec COMMAND [ARGS...]` starts the host command that the plugin's `serf.toml` table grants
//!   as `[plugins.longjob.commands.COMMAND]` as a job (serfx's `AsyncJob`); answers
//!   `started ID`. `check`, `kill` (the command's whole process group) and `reap` work on it
//!   like on any job, and `check` shows its last line of output.
//!
//! A command that fails answers `error: ...`. When a job ends, the plugin logs
//! `job ID NAME STATE exit=N` at info level (warn if it did not finish with 0).
//!
//! ```sh
//! serf query longjob 'start deploy 10'
//! serf query longjob 'check 1'
//! serf jobs
//! ```
//!
//! With a granted command, as serfx's `AsyncJob` example:
//!
//! ```toml
//! [plugins.longjob.commands.count]
//! argv = ["/bin/bash", "-c", "for i in $(seq 1 300); do echo $i; sleep 1; done"]
//! timeout = "10m"
//! ```
//!
//! ```sh
//! serf query longjob 'exec count'    # started 2
//! serf query longjob 'check 2'       # 2 count running exit=- last="7"
//! serf query longjob 'kill 2'
//! serf query longjob 'reap 2'
//! ```

use std::time::Duration;

use serf_plugin_sdk::{Error, Event, Host, HostError, Job, JobDone, JobState, Plugin, Query};

/// Stateless: every job's state lives in the agent's job records.
#[derive(Debug, Default)]
pub struct LongJob;

impl Plugin for LongJob {
    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        match event {
            Event::Query(query) if query.name == "longjob" => {
                let answer =
                    command(&query, host).unwrap_or_else(|error| format!("error: {error}"));
                host.respond(answer.as_bytes())?;
            }
            Event::JobDone(done) => log_done(&done, host),
            _ => {}
        }
        Ok(())
    }

    fn run_job(&mut self, job: Job, host: &mut dyn Host) -> Result<i32, Error> {
        let work = Work::parse(&String::from_utf8_lossy(&job.arg))?;
        host.info(&format!(
            "job {} {}: working for {:?}",
            job.id, job.name, work.duration
        ));
        let whole_seconds = work.duration.as_secs();
        for second in 1..=whole_seconds {
            // A blocking sleep is fine in a job: only this job waits, and it burns no fuel.
            std::thread::sleep(Duration::from_secs(1));
            host.info(&format!(
                "job {} {}: {second}/{whole_seconds} s",
                job.id, job.name
            ));
        }
        std::thread::sleep(work.duration - Duration::from_secs(whole_seconds));
        host.info(&format!("job {} {}: done", job.id, job.name));
        Ok(work.exit_status)
    }
}

serf_plugin_sdk::register_plugin!(LongJob);

/// What a job does: wait this long, then exit with this status.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Work {
    duration: Duration,
    exit_status: i32,
}

impl Work {
    /// `SECONDS [EXIT]`, as `start` passes it on.
    fn parse(arg: &str) -> Result<Work, Error> {
        let mut words = arg.split_whitespace();
        let seconds = words
            .next()
            .and_then(|word| word.parse::<f64>().ok())
            .filter(|seconds| seconds.is_finite() && (0.0..=86_400.0).contains(seconds))
            .ok_or_else(|| Error::new(format!("expected seconds (0 to 86400), got {arg:?}")))?;
        let exit_status = match words.next() {
            None => 0,
            Some(word) => word
                .parse()
                .map_err(|_| Error::new(format!("expected an exit status, got {word:?}")))?,
        };
        Ok(Work {
            duration: Duration::from_secs_f64(seconds),
            exit_status,
        })
    }
}

/// Runs one query's command and returns the answer.
fn command(query: &Query, host: &mut dyn Host) -> Result<String, String> {
    let text = String::from_utf8_lossy(&query.payload);
    let words: Vec<&str> = text.split_whitespace().collect();
    // The host's refusals, in words for this command.
    let failed = |id: &str, error: HostError| match error {
        HostError::NotFound => format!("no job {id}"),
        HostError::NotAllowed if words[0] == "kill" => format!("job {id} has already ended"),
        HostError::NotAllowed if words[0] == "reap" => format!("job {id} has not ended"),
        HostError::Unavailable if words[0] == "start" || words[0] == "exec" => {
            "the agent cannot start it now (max_jobs reached?)".to_owned()
        }
        HostError::Denied if words[0] == "exec" => format!("command {id} is not granted"),
        HostError::NotAllowed if words[0] == "exec" => {
            format!("command {id} takes no arguments")
        }
        other => other.to_string(),
    };
    match words.as_slice() {
        ["start", name, work @ ..] if !work.is_empty() && work.len() <= 2 => {
            let arg = work.join(" ");
            Work::parse(&arg).map_err(|error| error.to_string())?;
            let id = host
                .start_job(name, arg.as_bytes())
                .map_err(|error| failed(name, error))?;
            Ok(format!("started {id}"))
        }
        ["check", id] => {
            let info = host
                .job_status(parse_id(id)?)
                .map_err(|error| failed(id, error))?;
            let exit = if info.state == JobState::Finished {
                info.exit_status.to_string()
            } else {
                "-".to_owned()
            };
            let mut answer = format!(
                "{} {} {} exit={exit}",
                info.id,
                info.name,
                info.state.as_str()
            );
            if !info.error.is_empty() {
                answer.push_str(&format!(" error={:?}", info.error));
            }
            if let Some(last) = info.output.last() {
                answer.push_str(&format!(" last={last:?}"));
            }
            Ok(answer)
        }
        ["exec", name, args @ ..] => {
            let id = host
                .start_command(name, args, b"")
                .map_err(|error| failed(name, error))?;
            Ok(format!("started {id}"))
        }
        ["kill", id] => {
            host.kill_job(parse_id(id)?)
                .map_err(|error| failed(id, error))?;
            Ok(format!("killed {id}"))
        }
        ["reap", id] => {
            host.reap_job(parse_id(id)?)
                .map_err(|error| failed(id, error))?;
            Ok(format!("reaped {id}"))
        }
        _ => Err(format!(
            "unknown command {text:?}: expected start NAME SECONDS [EXIT], exec COMMAND \
             [ARGS...], check ID, kill ID or reap ID"
        )),
    }
}

fn parse_id(word: &str) -> Result<u32, String> {
    word.parse().map_err(|_| format!("bad job id {word:?}"))
}

fn log_done(done: &JobDone, host: &mut dyn Host) {
    let mut line = format!(
        "job {} {} {} exit={}",
        done.id,
        done.name,
        done.state.as_str(),
        done.exit_status
    );
    if !done.error.is_empty() {
        line.push_str(&format!(" error={:?}", done.error));
    }
    if done.state == JobState::Finished && done.exit_status == 0 {
        host.info(&line);
    } else {
        host.warn(&line);
    }
}

#[cfg(test)]
mod tests {
    use serf_plugin_sdk::LogLevel;
    use serf_plugin_sdk::testing::{MockHost, job, job_done, query};

    use super::*;

    fn ask(host: &mut MockHost, payload: &str) -> String {
        host.deliver(&mut LongJob, query("longjob", payload.as_bytes()))
            .unwrap();
        String::from_utf8(host.response().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn start_check_kill_and_reap_answer_like_serfx() {
        let mut host = MockHost::new();
        host.grant(serf_plugin_sdk::abi::Capability::Jobs);
        assert_eq!(ask(&mut host, "start deploy 10"), "started 1");
        assert_eq!(host.jobs[&1].arg, b"10");
        assert_eq!(ask(&mut host, "check 1"), "1 deploy running exit=-");
        assert_eq!(ask(&mut host, "reap 1"), "error: job 1 has not ended");
        assert_eq!(ask(&mut host, "kill 1"), "killed 1");
        assert_eq!(ask(&mut host, "check 1"), "1 deploy killed exit=-");
        assert_eq!(ask(&mut host, "reap 1"), "reaped 1");
        assert_eq!(ask(&mut host, "check 1"), "error: no job 1");
    }

    #[test]
    fn exec_starts_a_granted_command_as_a_job() {
        let mut host = MockHost::new();
        host.grant_command("count");
        assert_eq!(ask(&mut host, "exec count"), "started 1");
        assert_eq!(host.ran[0].job, Some(1));
        assert_eq!(ask(&mut host, "check 1"), "1 count running exit=-");
        assert_eq!(ask(&mut host, "kill 1"), "killed 1");
        assert_eq!(ask(&mut host, "reap 1"), "reaped 1");
        assert_eq!(
            ask(&mut host, "exec rm"),
            "error: command rm is not granted"
        );
        assert_eq!(
            ask(&mut host, "exec count -x"),
            "error: command count takes no arguments"
        );
        assert_eq!(host.runs_of("count"), 1);
    }

    #[test]
    fn a_finished_job_reports_its_exit_status_and_is_logged() {
        let mut host = MockHost::new();
        host.grant(serf_plugin_sdk::abi::Capability::Jobs);
        assert_eq!(ask(&mut host, "start backup 0.5 3"), "started 1");
        let done = host.end_job(1, JobState::Finished, 3).unwrap();
        host.deliver(&mut LongJob, done).unwrap();
        assert!(host.logged(LogLevel::Warn, "job 1 backup finished exit=3"));
        assert_eq!(ask(&mut host, "check 1"), "1 backup finished exit=3");
        host.deliver(&mut LongJob, job_done(2, "ok", JobState::Finished, 0))
            .unwrap();
        assert!(host.logged(LogLevel::Info, "job 2 ok finished exit=0"));
    }

    #[test]
    fn bad_commands_are_answered_with_an_error() {
        let mut host = MockHost::new();
        host.grant(serf_plugin_sdk::abi::Capability::Jobs);
        for (payload, needle) in [
            ("", "unknown command"),
            ("start deploy", "unknown command"),
            ("start deploy soon", "expected seconds"),
            ("start deploy 5 five", "expected an exit status"),
            ("check x", "bad job id"),
            ("kill 9", "no job 9"),
        ] {
            let answer = ask(&mut host, payload);
            assert!(
                answer.starts_with("error: ") && answer.contains(needle),
                "{payload}: {answer}"
            );
        }
        assert!(host.jobs.is_empty());
    }

    #[test]
    fn max_jobs_is_the_limit_of_jobs_running_at_once() {
        let mut host = MockHost::new();
        host.grant(serf_plugin_sdk::abi::Capability::Jobs);
        host.max_jobs = 1;
        assert_eq!(ask(&mut host, "start a 1"), "started 1");
        assert_eq!(
            ask(&mut host, "start b 1"),
            "error: the agent cannot start it now (max_jobs reached?)"
        );
    }

    #[test]
    fn a_job_works_for_its_seconds_then_exits_with_its_status() {
        let mut host = MockHost::new();
        host.grant(serf_plugin_sdk::abi::Capability::Jobs);
        let status = host
            .run_job(&mut LongJob, job(7, "deploy", b"1.2 4"))
            .unwrap();
        assert_eq!(status, 4);
        assert!(host.logged(LogLevel::Info, "job 7 deploy: 1/1 s"));
        assert!(host.logged(LogLevel::Info, "job 7 deploy: done"));
    }

    #[test]
    fn a_job_with_a_bad_argument_fails() {
        let mut host = MockHost::new();
        host.grant(serf_plugin_sdk::abi::Capability::Jobs);
        let error = host
            .run_job(&mut LongJob, job(1, "x", b"never"))
            .unwrap_err();
        assert!(error.message().contains("expected seconds"), "{error}");
    }
}
