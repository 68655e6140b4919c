//! Errors worded as Serf's Go code words them, for messages clients compare with Serf's.

/// An OS error as Go prints it: `connection refused`, not `Connection refused (os error 111)`.
pub fn io_error(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(end) => &text[..end],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
