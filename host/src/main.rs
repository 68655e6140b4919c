//! The `serf` binary: everything happens in [`serf_host::cli::run`].

fn main() -> std::process::ExitCode {
    serf_host::cli::run(std::env::args_os())
}
