//! Architecture checks: the invariants of ARCHITECTURE.md that a test can see.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files = Vec::new();
    let mut pending = vec![root];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The code of a file without its `mod tests` (tests sit at the bottom).
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("source file");
    text.split("#[cfg(test)]")
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn core_modules_do_no_io() {
    let forbidden = [
        "tokio::",
        "std::net::UdpSocket",
        "std::net::TcpStream",
        "std::fs",
        "Instant::now",
        "SystemTime::now",
        "thread::spawn",
        "rand::random",
        "thread_rng",
    ];
    for path in sources("src/serf").into_iter().chain(sources("src/gossip")) {
        let code = code(&path);
        for word in forbidden {
            assert!(!code.contains(word), "{} uses `{word}`", path.display());
        }
    }
}

#[test]
fn unsafe_code_stays_in_the_module_cache() {
    let mut places = Vec::new();
    for path in sources("src") {
        for (number, line) in code(&path).lines().enumerate() {
            if line.contains("unsafe {") || line.contains("allow(unsafe_code)") {
                places.push(format!("{}:{}", path.display(), number + 1));
            }
        }
    }
    assert_eq!(
        places.len(),
        2,
        "unsafe outside plugin::engine::deserialize_cached: {places:?}"
    );
    assert!(
        places
            .iter()
            .all(|place| place.contains("plugin/engine.rs")),
        "{places:?}"
    );
}

#[test]
fn only_the_agent_task_touches_the_core() {
    for path in sources("src") {
        let relative = path.to_string_lossy();
        if relative.contains("/src/serf/")
            || relative.contains("/src/agent/")
            || relative.ends_with("tidy.rs")
            || relative.ends_with("sim.rs")
            || relative.ends_with("sim_serf.rs")
        {
            continue;
        }
        let code = code(&path);
        assert!(
            !code.contains("Serf::new")
                && !code.contains("Mutex<Serf>")
                && !code.contains("Memberlist::new"),
            "{} reaches into the Serf core; use agent::AgentHandle",
            path.display()
        );
    }
}

/// Every `*.md` file that the documentation names in backticks or links to is in the
/// repository: users have only what is in it.
#[test]
fn docs_name_only_markdown_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the repository");
    let mut docs: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "plugin-sdk/README.md"]
        .iter()
        .map(|file| root.join(file))
        .collect();
    for entry in fs::read_dir(root.join("docs")).expect("docs/") {
        docs.push(entry.expect("directory entry").path());
    }
    let mut missing = Vec::new();
    for doc in docs
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
    {
        let text = fs::read_to_string(doc).expect("doc");
        // `name.md`, `dir/name.md` and link targets `](dir/name.md)` or `](name.md#anchor)`.
        for piece in text.split(['`', '(', ')', ' ', '\n', '#']) {
            if !piece.ends_with(".md") || piece.contains("://") || piece.contains('*') {
                continue;
            }
            let beside = doc.parent().expect("a directory").join(piece);
            if !root.join(piece).exists() && !beside.exists() {
                missing.push(format!("{}: {piece}", doc.display()));
            }
        }
    }
    assert!(missing.is_empty(), "docs name missing files: {missing:#?}");
}
