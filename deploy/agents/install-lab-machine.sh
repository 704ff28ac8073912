#!/bin/sh
# Rolls shim-agent out to one lab machine (macOS or Linux), as root:
#   NATS_URL=nats://learntrail.school.example:4222 PSEUDONYM_KEY=<deployment secret> \
#     sh install-lab-machine.sh ./shim-agent
# NATS_CREDS / NATS_USER + NATS_PASSWORD / NATS_TOKEN, when set, are kept with the key.
# Secrets travel in the environment, never in a command line (`ps` shows those to every
# account), and land in /etc/learntrail/uploader.env (0600, root); /etc/learntrail/shim.env
# (0644) holds only what every student's shim needs.
set -eu
binary=${1:?usage: install-lab-machine.sh <path to the shim-agent binary for this machine>}
: "${NATS_URL:?set NATS_URL to the NATS server of the school}"
: "${PSEUDONYM_KEY:?set PSEUDONYM_KEY to the pseudonym key of the deployment}"
here=$(cd "$(dirname "$0")" && pwd)

install -d /usr/local/learntrail/bin
install -m 0755 "$binary" /usr/local/learntrail/bin/shim-agent
export PSEUDONYM_KEY
/usr/local/learntrail/bin/shim-agent install --system --nats-url "$NATS_URL"
chown root /etc/learntrail/uploader.env
chmod 0600 /etc/learntrail/uploader.env
chmod 0644 /etc/learntrail/shim.env

case $(uname -s) in
  Darwin)
    install -m 0644 "$here/macos/com.learntrail.shim-upload.plist" /Library/LaunchDaemons/
    launchctl bootout system/com.learntrail.shim-upload 2>/dev/null || true
    launchctl bootstrap system /Library/LaunchDaemons/com.learntrail.shim-upload.plist
    ;;
  Linux)
    install -m 0644 "$here/linux/learntrail-shim-upload.service" "$here/linux/learntrail-shim-upload.timer" /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now learntrail-shim-upload.timer
    ;;
esac
/usr/local/learntrail/bin/shim-agent status
