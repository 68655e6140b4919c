//! Link settings for the `serf` binary.

fn main() {
    // Pack the executable's relative relocations (DT_RELR, glibc 2.36+, binutils 2.38+): about a
    // million relocation bytes that the loader would otherwise read at every start shrink to a
    // few kilobytes, which takes about 0.9 MiB off each agent's resident memory (docs/benchmarks.md).
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
