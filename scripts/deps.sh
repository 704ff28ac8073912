#!/usr/bin/env bash
# Installs what Learntrail needs, skipping what is already there.
#   scripts/deps.sh          what `make up` runs: nats-server, redis-server, a C compiler, curl,
#                            openssl and the Rust toolchain
#   scripts/deps.sh --test   also what only the tests use: ruby (the shim's real interpreter), strace
#                            (the shim's write-fsync-rename order is checked with it), chromium
#                            (the dashboard's browser test, headless) and
#                            Garage (an S3 server, built with cargo: 8-15 minutes cold, then cached
#                            in ~/.cargo/bin; SKIP_GARAGE=1 skips it)
# No protoc is needed: the protos are compiled by protox, in Rust.
set -euo pipefail

tests=0
[ "${1:-}" = --test ] && tests=1

sudo_cmd() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ $tests = 1 ]; then
  command -v ruby >/dev/null 2>&1 || need+=(ruby)
  command -v make >/dev/null 2>&1 || need+=(make)
  command -v strace >/dev/null 2>&1 || need+=(strace)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo_cmd apt-get update -qq
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "installing the Rust toolchain (rustup)"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
fi

export PATH="$HOME/.cargo/bin:$PATH"
if [ $tests = 1 ] && [ "${SKIP_GARAGE:-0}" != 1 ] && ! command -v garage >/dev/null 2>&1; then
  echo "building garage (S3 server for tests; cached in ~/.cargo/bin afterwards)"
  cargo install garage --locked --quiet
fi
