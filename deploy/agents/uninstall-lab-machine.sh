#!/bin/sh
# Takes shim-agent off one lab machine (macOS or Linux), as root:
#   sh uninstall-lab-machine.sh            stop the uploads, take the shim out of PATH, remove the binary
#   sh uninstall-lab-machine.sh --purge    also the settings (/etc/learntrail) and the spool
# Run `shim-agent upload` first if the spool still holds records you want.
set -eu
purge=0
[ "${1:-}" = --purge ] && purge=1
agent=/usr/local/learntrail/bin/shim-agent

case $(uname -s) in
  Darwin)
    launchctl bootout system/com.learntrail.shim-upload 2>/dev/null || true
    rm -f /Library/LaunchDaemons/com.learntrail.shim-upload.plist
    ;;
  Linux)
    systemctl disable --now learntrail-shim-upload.timer 2>/dev/null || true
    rm -f /etc/systemd/system/learntrail-shim-upload.service /etc/systemd/system/learntrail-shim-upload.timer
    systemctl daemon-reload
    ;;
esac
[ -x "$agent" ] && "$agent" uninstall --system
rm -rf /usr/local/learntrail
if [ $purge = 1 ]; then
  rm -rf /etc/learntrail /var/spool/learntrail
fi
echo "shim-agent removed; students' new terminals run the real ruby again"
