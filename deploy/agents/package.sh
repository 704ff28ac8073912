#!/bin/sh
# Builds the lab rollout tarball for this machine's OS and CPU (run it on a Mac for Macs):
#   sh deploy/agents/package.sh              -> target/dist/learntrail-agent-<version>-<os>-<arch>.tar.gz
#   TARGET=aarch64-apple-darwin sh deploy/agents/package.sh   (a cross target cargo can build)
# The tarball holds shim-agent, install-lab-machine.sh, uninstall-lab-machine.sh and the launchd
# and systemd units: push it with your usual tools (Munki, Jamf, Ansible, ssh) and run
#   NATS_URL=... PSEUDONYM_KEY=... sh learntrail-agent-*/install-lab-machine.sh learntrail-agent-*/shim-agent
set -eu
cd "$(dirname "$0")/../.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
if [ -n "${SHIM_AGENT_BIN:-}" ]; then   # an already built binary
  binary=$SHIM_AGENT_BIN
  platform=${PLATFORM:-$(uname -s | tr '[:upper:]' '[:lower:]')-$(uname -m)}
elif [ -n "${TARGET:-}" ]; then
  cargo build --release --locked -p learntrail-shim-agent --bin shim-agent --target "$TARGET"
  binary=target/$TARGET/release/shim-agent
  platform=$TARGET
else
  cargo build --release --locked -p learntrail-shim-agent --bin shim-agent
  binary=target/release/shim-agent
  platform=$(uname -s | tr '[:upper:]' '[:lower:]')-$(uname -m)
fi
name=learntrail-agent-$version-$platform
stage=$(mktemp -d)
mkdir -p "$stage/$name/macos" "$stage/$name/linux" target/dist
cp "$binary" "$stage/$name/shim-agent"
cp deploy/agents/install-lab-machine.sh deploy/agents/uninstall-lab-machine.sh "$stage/$name/"
cp deploy/agents/macos/com.learntrail.shim-upload.plist "$stage/$name/macos/"
cp deploy/agents/linux/learntrail-shim-upload.service deploy/agents/linux/learntrail-shim-upload.timer "$stage/$name/linux/"
(cd "$stage" && tar czf - "$name") > "target/dist/$name.tar.gz"
rm -rf "$stage"
(cd target/dist && { sha256sum "$name.tar.gz" 2>/dev/null || shasum -a 256 "$name.tar.gz"; } > "$name.tar.gz.sha256")
echo "target/dist/$name.tar.gz"
