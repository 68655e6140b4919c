//! placeholder
pub fn run(
    _args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
