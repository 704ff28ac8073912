#!/usr/bin/env bash
# Installs what Learntrail needs to build, run and test, skipping what is already there:
# Debian/Ubuntu packages (nats-server, redis-server, ruby, protoc, ...) and the Rust toolchain.
set -euo pipefail

sudo_cmd() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v ruby >/dev/null 2>&1 || need+=(ruby)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo_cmd apt-get update -qq
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "installing the Rust toolchain (rustup)"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
fi

# Garage, a real S3-compatible server, for the archive tests (8-15 minutes to build cold, so only
# when missing). Set SKIP_GARAGE=1 to skip it (the s3-rotator tests then fail with how to get it).
export PATH="$HOME/.cargo/bin:$PATH"
if [ "${SKIP_GARAGE:-0}" != 1 ] && ! command -v garage >/dev/null 2>&1; then
  echo "building garage (S3 server for tests; cached in ~/.cargo/bin afterwards)"
  cargo install garage --locked --quiet
fi
