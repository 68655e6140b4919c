//! Architecture checks the compiler cannot make: which crates may depend on which (over the
//! whole dependency graph, not only the manifests' direct edges), no clock, socket, file or
//! thread in the sans-io cores, where `unsafe` may be, which code may drive the Serf core, and
//! that the docs name only files that exist. ARCHITECTURE.md says why each rule holds.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

fn sources(dir: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![root().join(dir)];
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
    files.sort();
    files
}

/// The whole file, less every item under `#[cfg(test)]` (a test module, a test-only function
/// or `use`), wherever it sits in the file.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("source file");
    strip_test_items(&text)
}

fn strip_test_items(text: &str) -> String {
    const GATE: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(GATE) {
        out.push_str(&rest[..at]);
        let item = &rest[at + GATE.len()..];
        // The item ends at its first `;` outside braces, or at the brace that closes its
        // first `{`.
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn stripping_test_items_keeps_the_code_around_them() {
    let text = "fn a() {}\n#[cfg(test)]\nuse x::y;\nfn b() {}\n#[cfg(test)]\nmod tests { fn c() { {} } }\nfn d() {}\n";
    assert_eq!(
        strip_test_items(text),
        "fn a() {}\n\nfn b() {}\n\nfn d() {}\n"
    );
}

/// The packages `package` depends on for its normal (not dev) build, all the way down.
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}", "-p", package])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn crates_depend_only_downwards() {
    // (crate, what it must never reach, directly or through another crate)
    let io = [
        "tokio",
        "wasmtime",
        "wasmtime-wasi",
        "clap",
        "toml",
        "notify",
        "socket2",
    ];
    let rules: [(&str, Vec<&str>); 6] = [
        (
            // The shared msgpack scanner sits below both codecs and needs nothing.
            "serf-msgpack",
            [
                &io[..],
                &[
                    "serf-gossip",
                    "serf-core",
                    "serf-rpc",
                    "serf-plugins",
                    "serf-host",
                    "rmpv",
                    "serde",
                ],
            ]
            .concat(),
        ),
        (
            "serf-gossip",
            [
                &io[..],
                &["serf-core", "serf-rpc", "serf-plugins", "serf-host"],
            ]
            .concat(),
        ),
        (
            "serf-core",
            [&io[..], &["serf-rpc", "serf-plugins", "serf-host"]].concat(),
        ),
        (
            "serf-rpc",
            vec![
                "serf-gossip",
                "serf-core",
                "serf-plugins",
                "serf-host",
                "wasmtime",
                "clap",
            ],
        ),
        (
            "serf-plugins",
            vec!["serf-rpc", "serf-node", "serf-host", "clap", "notify"],
        ),
        (
            "serf-node",
            vec![
                "serf-plugins",
                "serf-host",
                "wasmtime",
                "clap",
                "toml",
                "notify",
            ],
        ),
    ];
    for (package, forbidden) in rules {
        let reached = normal_dependencies(package);
        for name in forbidden {
            assert!(!reached.contains(name), "{package} depends on {name}");
        }
    }
}

#[test]
fn the_cores_do_no_io() {
    let forbidden = [
        "tokio::",
        "std::net::UdpSocket",
        "std::net::TcpStream",
        "std::fs",
        "Instant::now",
        "SystemTime::now",
        "thread::spawn",
        "thread::sleep",
        "rand::random",
        "thread_rng",
        "rand::rng()",
    ];
    for path in sources("crates/gossip/src")
        .into_iter()
        .chain(sources("crates/core/src"))
        .chain(sources("crates/msgpack/src"))
    {
        let code = code(&path);
        // The simulator (tests and the `sim` feature only) takes its virtual origin from the
        // clock at most once; nothing else in it reads the clock.
        let simulator = path.file_name().is_some_and(|name| name == "sim.rs");
        for word in forbidden {
            if simulator && word == "Instant::now" {
                assert!(code.matches(word).count() <= 1, "{}", path.display());
                continue;
            }
            assert!(!code.contains(word), "{} uses `{word}`", path.display());
        }
    }
}

#[test]
fn unsafe_code_stays_in_the_module_cache() {
    let mut places = Vec::new();
    for dir in ["crates", "host/src"] {
        for path in sources(dir) {
            for (number, line) in code(&path).lines().enumerate() {
                if line.contains("unsafe {") || line.contains("allow(unsafe_code)") {
                    places.push(format!("{}:{}", path.display(), number + 1));
                }
            }
        }
    }
    assert_eq!(
        places.len(),
        2,
        "unsafe outside engine::deserialize_cached: {places:?}"
    );
    assert!(
        places
            .iter()
            .all(|place| place.contains("crates/plugins/src/engine.rs")),
        "{places:?}"
    );
    // The SDK's `unsafe` is the guest side of the ABI, confined to its guest modules.
    for path in sources("plugin-sdk/src") {
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("guest"))
        {
            continue;
        }
        assert!(!code(&path).contains("unsafe {"), "{}", path.display());
    }
}

#[test]
fn only_the_node_task_drives_the_core() {
    for dir in ["crates/plugins/src", "crates/rpc/src", "host/src"] {
        for path in sources(dir) {
            let code = code(&path);
            assert!(
                !code.contains("Serf::new")
                    && !code.contains("Mutex<Serf>")
                    && !code.contains("Memberlist::new"),
                "{} reaches into the Serf core; use serf_node::NodeHandle",
                path.display()
            );
        }
    }
}

/// Every `*.md` file that the documentation names in backticks or links to is in the
/// repository: users have only what is in it.
#[test]
fn docs_name_only_markdown_files_that_exist() {
    let root = root();
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
