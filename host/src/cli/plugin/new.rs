//! `serf plugin new NAME --lang rust|go`: writes a plugin project into `./NAME` that builds for
//! `wasm32-wasip1` and whose unit tests pass as written.
//!
//! The files are templates compiled into the binary: the Rust plugin's code is
//! `examples/plugin-template/src/lib.rs` (built and tested in this repository) with its type
//! renamed; the rest lives in `host/templates/`. Until the SDKs are published, `--sdk-path`
//! points the project at a checkout's SDK instead of the published crate or Go module.

use std::path::{Path, PathBuf};

/// The Rust plugin's code: the repository's template plugin, whose type is `Template`.
const RUST_LIB: &str = include_str!("../../../../examples/plugin-template/src/lib.rs");
const RUST_CARGO: &str = include_str!("../../../templates/rust/Cargo.toml");
const RUST_README: &str = include_str!("../../../templates/rust/README.md");
const RUST_SERF_TOML: &str = include_str!("../../../templates/rust/serf.toml");
const GO_MOD: &str = include_str!("../../../templates/go/go.mod");
const GO_MAIN: &str = include_str!("../../../templates/go/main.go");
const GO_TEST: &str = include_str!("../../../templates/go/main_test.go");
const GO_README: &str = include_str!("../../../templates/go/README.md");
const GO_SERF_TOML: &str = include_str!("../../../templates/go/serf.toml");
const EVENTS: &str = include_str!("../../../templates/events.jsonl");

/// The Rust SDK's crate, as published.
const RUST_SDK_CRATE: &str = "serf-plugin-sdk";
/// The Go SDK's module path; its versions are tags `plugin-sdk/go/vX.Y.Z` of the repository.
pub(crate) const GO_SDK_MODULE: &str = "github.com/serf-wasm/serf-wasm/plugin-sdk/go";

/// Names cargo or Go refuse for a package, or that would shadow the SDK.
const RESERVED: [&str; 12] = [
    "test",
    "core",
    "std",
    "alloc",
    "proc_macro",
    "proc-macro",
    "self",
    "super",
    "crate",
    "main",
    "serf-plugin-sdk",
    "serf_plugin_sdk",
];

/// Which SDK a project is written against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Lang {
    /// A Rust crate (serf-plugin-sdk).
    Rust,
    /// A Go module (the Go SDK).
    Go,
}

#[derive(Debug, clap::Args)]
pub(super) struct NewArgs {
    /// The plugin's name: lower-case letters, digits, `-` and `_`, starting with a letter. The
    /// project goes into ./NAME.
    #[arg(value_name = "NAME")]
    name: String,
    /// The language: rust or go.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Depend on the SDK in this directory instead of the published one: a checkout's
    /// `plugin-sdk` for Rust, `plugin-sdk/go` for Go.
    #[arg(long, value_name = "DIR")]
    sdk_path: Option<PathBuf>,
}

/// One file of a project: its path inside the project directory, and its text.
#[derive(Debug)]
struct File {
    path: &'static str,
    text: String,
}

/// Runs `serf plugin new`: writes the project and says what to do next.
pub(super) fn run(args: &NewArgs) -> Result<String, String> {
    check_name(&args.name)?;
    let dir = PathBuf::from(&args.name);
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let sdk = match &args.sdk_path {
        Some(path) => Some(sdk_dir(path, args.lang)?),
        None => None,
    };
    let absolute = std::env::current_dir()
        .map_err(|error| format!("cannot read the current directory: {error}"))?
        .join(&dir);
    let files = render(&args.name, args.lang, sdk.as_deref(), &absolute);
    for file in &files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
        }
        std::fs::write(&path, &file.text)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    let mut out = format!(
        "Created {} plugin {} in {}\n",
        lang_name(args.lang),
        args.name,
        dir.display()
    );
    let steps = match args.lang {
        Lang::Rust => format!(
            "  cd {name}\n  cargo test\n  cargo build --release --target wasm32-wasip1\n  \
             serf plugin run {wasm} --event query:ping\n",
            name = args.name,
            wasm = rust_wasm(&args.name),
        ),
        Lang::Go => format!(
            "  cd {name}\n{tidy}  go test ./...\n  GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o {name}.wasm .\n  \
             serf plugin run {name}.wasm --event query:ping\n",
            name = args.name,
            tidy = if sdk.is_none() { "  go mod tidy\n" } else { "" },
        ),
    };
    out.push_str("Next:\n");
    out.push_str(&steps);
    out.push_str("Then add serf.toml's table to the agent's serf.toml and `serf query ping`.\n");
    if sdk.is_none() {
        out.push_str(&format!(
            "It uses the published SDK ({}); to build against a checkout, run again with \
             --sdk-path.\n",
            match args.lang {
                Lang::Rust => RUST_SDK_CRATE,
                Lang::Go => GO_SDK_MODULE,
            }
        ));
    }
    Ok(out)
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Go => "Go",
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(format!(
            "invalid plugin name {name:?}: use lower-case letters, digits, - and _, starting \
             with a letter (at most 64)"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "{name:?} is reserved by cargo, Go or the SDK: pick another name"
        ));
    }
    Ok(())
}

/// The SDK directory `path`, absolute, after checking it holds the SDK of `lang`.
fn sdk_dir(path: &Path, lang: Lang) -> Result<PathBuf, String> {
    let (manifest, needle) = match lang {
        Lang::Rust => ("Cargo.toml", format!("name = \"{RUST_SDK_CRATE}\"")),
        Lang::Go => ("go.mod", format!("module {GO_SDK_MODULE}")),
    };
    let dir = std::fs::canonicalize(path)
        .map_err(|error| format!("--sdk-path {}: {error}", path.display()))?;
    let text = std::fs::read_to_string(dir.join(manifest)).unwrap_or_default();
    if !text.contains(&needle) {
        let hint = match lang {
            Lang::Rust => "a checkout's plugin-sdk directory",
            Lang::Go => "a checkout's plugin-sdk/go directory",
        };
        return Err(format!(
            "--sdk-path {}: no {manifest} with {needle}: give {hint}",
            path.display()
        ));
    }
    Ok(dir)
}

/// `my-plugin` → `MyPlugin`, the Rust plugin's type; `PluginHandler` where that would clash
/// with a name the code imports.
fn type_name(name: &str) -> String {
    let camel: String = name
        .split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    const IMPORTED: [&str; 7] = [
        "Error",
        "Event",
        "Host",
        "InitContext",
        "Plugin",
        "MockHost",
        "LogLevel",
    ];
    if IMPORTED.contains(&camel.as_str()) {
        camel + "Handler"
    } else {
        camel
    }
}

fn rust_wasm(name: &str) -> String {
    format!(
        "target/wasm32-wasip1/release/{}.wasm",
        name.replace('-', "_")
    )
}

/// The project's files; `sdk` is a local SDK directory, `dir` where the project will be.
fn render(name: &str, lang: Lang, sdk: Option<&Path>, dir: &Path) -> Vec<File> {
    let fill = |template: &str, pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .fold(template.to_owned(), |text, (key, value)| {
                text.replace(&format!("{{{{{key}}}}}"), value)
            })
    };
    match lang {
        Lang::Rust => {
            let plugin = name.replace('-', "_");
            let wasm = rust_wasm(name);
            let wasm_abs = dir.join(&wasm).display().to_string();
            let (dependency, note) = match sdk {
                Some(path) => (
                    format!(
                        "{RUST_SDK_CRATE} = {{ path = {:?} }}",
                        path.display().to_string()
                    ),
                    format!(
                        "The crate depends on the SDK in `{}`. To use the published crate \
                         instead: `{RUST_SDK_CRATE} = \"{}\"`.",
                        path.display(),
                        sdk_version_req()
                    ),
                ),
                None => (
                    format!("{RUST_SDK_CRATE} = \"{}\"", sdk_version_req()),
                    format!(
                        "The crate depends on `{RUST_SDK_CRATE}` {} from crates.io. To build \
                         against a checkout of serf instead (to try unreleased SDK changes), \
                         point the dependency at it: `{RUST_SDK_CRATE} = {{ path = \
                         \"../serf/plugin-sdk\" }}`, or create the project with `serf plugin \
                         new NAME --sdk-path ../serf/plugin-sdk`.",
                        sdk_version_req()
                    ),
                ),
            };
            let pairs = [
                ("crate", name),
                ("plugin", plugin.as_str()),
                ("wasm_path", wasm.as_str()),
                ("wasm_abs", wasm_abs.as_str()),
                ("sdk_dependency", dependency.as_str()),
                ("sdk_note", note.as_str()),
            ];
            let lib = RUST_LIB.replace("Template", &type_name(name));
            vec![
                File {
                    path: "Cargo.toml",
                    text: fill(RUST_CARGO, &pairs),
                },
                File {
                    path: "src/lib.rs",
                    text: lib,
                },
                File {
                    path: "README.md",
                    text: fill(RUST_README, &pairs),
                },
                File {
                    path: "serf.toml",
                    text: fill(RUST_SERF_TOML, &pairs),
                },
                File {
                    path: "events.jsonl",
                    text: EVENTS.to_owned(),
                },
                File {
                    path: ".gitignore",
                    text: "/target\n".to_owned(),
                },
            ]
        }
        Lang::Go => {
            let wasm = format!("{name}.wasm");
            let wasm_abs = dir.join(&wasm).display().to_string();
            let version = format!("v{}", env!("CARGO_PKG_VERSION"));
            let (replace, note) = match sdk {
                Some(path) => (
                    format!("\nreplace {GO_SDK_MODULE} => {}\n", path.display()),
                    format!(
                        "`go.mod` replaces the SDK module with `{}`. To use the published \
                         module instead, delete the `replace` line and run `go mod tidy`.",
                        path.display()
                    ),
                ),
                None => (
                    String::new(),
                    format!(
                        "The module requires `{GO_SDK_MODULE}` {version} (a tag \
                         `plugin-sdk/go/{version}` of serf's repository); run `go mod tidy` \
                         once to fetch it. To build against a checkout of serf instead, add \
                         `replace {GO_SDK_MODULE} => ../serf/plugin-sdk/go` to `go.mod`, or \
                         create the project with `serf plugin new NAME --lang go --sdk-path \
                         ../serf/plugin-sdk/go`."
                    ),
                ),
            };
            let pairs = [
                ("module", name),
                ("plugin", name),
                ("wasm_path", wasm.as_str()),
                ("wasm_abs", wasm_abs.as_str()),
                ("sdk_module", GO_SDK_MODULE),
                ("sdk_version", version.as_str()),
                ("sdk_replace", replace.as_str()),
                ("sdk_note", note.as_str()),
            ];
            vec![
                File {
                    path: "go.mod",
                    text: fill(GO_MOD, &pairs).trim_end().to_owned() + "\n",
                },
                File {
                    path: "main.go",
                    text: fill(GO_MAIN, &pairs),
                },
                File {
                    path: "main_test.go",
                    text: fill(GO_TEST, &pairs),
                },
                File {
                    path: "README.md",
                    text: fill(GO_README, &pairs),
                },
                File {
                    path: "serf.toml",
                    text: fill(GO_SERF_TOML, &pairs),
                },
                File {
                    path: "events.jsonl",
                    text: EVENTS.to_owned(),
                },
                File {
                    path: ".gitignore",
                    text: "*.wasm\n".to_owned(),
                },
            ]
        }
    }
}

/// The SDK version a new Rust project asks for: this build's `major.minor`.
fn sdk_version_req() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => version.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file<'a>(files: &'a [File], path: &str) -> &'a str {
        &files.iter().find(|f| f.path == path).unwrap().text
    }

    #[test]
    fn names_are_checked() {
        for good in ["ping", "my-plugin", "a_1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Ping",
            "1a",
            "-a",
            "a b",
            "../x",
            "a/b",
            "test",
            "main",
            &"a".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn type_names_avoid_the_imported_ones() {
        assert_eq!(type_name("my-plugin"), "MyPlugin");
        assert_eq!(type_name("ping_pong"), "PingPong");
        assert_eq!(type_name("plugin"), "PluginHandler");
        assert_eq!(type_name("host"), "HostHandler");
    }

    #[test]
    fn a_rust_project_fills_every_placeholder() {
        let dir = Path::new("/home/me/my-plugin");
        for sdk in [None, Some(Path::new("/src/serf/plugin-sdk"))] {
            let files = render("my-plugin", Lang::Rust, sdk, dir);
            for f in &files {
                assert!(!f.text.contains("{{"), "{}: {}", f.path, f.text);
            }
            let lib = file(&files, "src/lib.rs");
            assert!(lib.contains("pub struct MyPlugin {"), "{lib}");
            assert!(lib.contains("register_plugin!(MyPlugin)"), "{lib}");
            assert!(!lib.contains("Template"), "{lib}");
            let cargo = file(&files, "Cargo.toml");
            assert!(cargo.contains("name = \"my-plugin\""), "{cargo}");
            assert!(cargo.contains("\n[workspace]\n"), "{cargo}");
            let table: toml::Table = toml::from_str(file(&files, "serf.toml")).unwrap();
            assert_eq!(
                table["plugins"]["my_plugin"]["path"].as_str(),
                Some("/home/me/my-plugin/target/wasm32-wasip1/release/my_plugin.wasm")
            );
            let manifest: toml::Table = toml::from_str(cargo).unwrap();
            let dependency = &manifest["dependencies"]["serf-plugin-sdk"];
            match sdk {
                Some(_) => assert_eq!(dependency["path"].as_str(), Some("/src/serf/plugin-sdk")),
                None => assert_eq!(dependency.as_str(), Some(sdk_version_req().as_str())),
            }
        }
    }

    #[test]
    fn a_go_project_fills_every_placeholder() {
        let dir = Path::new("/home/me/pinger");
        for sdk in [None, Some(Path::new("/src/serf/plugin-sdk/go"))] {
            let files = render("pinger", Lang::Go, sdk, dir);
            for f in &files {
                assert!(!f.text.contains("{{"), "{}: {}", f.path, f.text);
            }
            let go_mod = file(&files, "go.mod");
            assert!(go_mod.starts_with("module pinger\n"), "{go_mod}");
            assert!(
                go_mod.contains(&format!("require {GO_SDK_MODULE} v")),
                "{go_mod}"
            );
            assert_eq!(
                go_mod.contains(&format!(
                    "replace {GO_SDK_MODULE} => /src/serf/plugin-sdk/go"
                )),
                sdk.is_some(),
                "{go_mod}"
            );
            assert!(file(&files, "main.go").contains(&format!("serf \"{GO_SDK_MODULE}\"")));
            let table: toml::Table = toml::from_str(file(&files, "serf.toml")).unwrap();
            assert_eq!(
                table["plugins"]["pinger"]["path"].as_str(),
                Some("/home/me/pinger/pinger.wasm")
            );
        }
    }
}
