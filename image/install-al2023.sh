#!/bin/bash
# Make a stock Amazon Linux 2023 host annex-compatible (condor_annex SPEC §2 "Image requirements").
#
#   sudo image/install-al2023.sh                 # on the image-building instance, then snapshot
#   image/install-al2023.sh --root DIR --no-packages   # files only, into DIR (tests, inspection)
#
# Installs: python3-boto3 and iptables-nft (dnf), HTCondor from its own repository
# (HTCONDOR_SERIES, default 25.0), this project's agent (pip, no dependencies beyond boto3),
# the systemd units, the image's HTCondor config and the master shutdown script; enables the units.
# Finish with `condor-annex-ec2 check-image` (run at the end) before creating the AMI.
set -euo pipefail

ROOT=/
PACKAGES=1
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="$SOURCE/image"
HTCONDOR_SERIES="${HTCONDOR_SERIES:-25.0}"
HTCONDOR_RELEASE_RPM="${HTCONDOR_RELEASE_RPM:-https://research.cs.wisc.edu/htcondor/repo/${HTCONDOR_SERIES}/htcondor-release-current.amzn2023.noarch.rpm}"
BINDIR=/usr/local/bin

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --no-packages) PACKAGES=0; shift ;;
        --source) SOURCE="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "install-al2023.sh: unknown option $1" >&2; usage 2 ;;
    esac
done
ROOT="${ROOT%/}"

if [ "$PACKAGES" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then echo "install-al2023.sh: run as root" >&2; exit 1; fi
    dnf install -y python3 python3-pip python3-boto3 iptables-nft
    dnf install -y "$HTCONDOR_RELEASE_RPM"
    dnf install -y condor
    # The agent needs only boto3 (from dnf above) and the standard library.
    python3 -m pip install --no-deps --prefix /usr/local "$SOURCE"
fi

install -d -m 0755 "$ROOT/etc/condor/config.d" "$ROOT/etc/systemd/system" \
    "$ROOT/usr/libexec/condor-annex" "$ROOT/etc/sysconfig"
install -m 0644 "$IMAGE/condor/config.d/10-annex-image.config" "$ROOT/etc/condor/config.d/"
install -m 0755 "$IMAGE/libexec/master-shutdown" "$ROOT/usr/libexec/condor-annex/master-shutdown"
for unit in "$IMAGE"/systemd/*.service "$IMAGE"/systemd/*.timer; do
    install -m 0644 "$unit" "$ROOT/etc/systemd/system/"
done
if [ "$(id -u)" = 0 ]; then
    chown root:root "$ROOT/usr/libexec/condor-annex/master-shutdown" \
        "$ROOT/etc/condor/config.d/10-annex-image.config"
fi

UNITS="condor-annex-firewall.service condor-annex-ec2.service condor-annex-spot-watcher.service condor-annex-refresh.timer"
if command -v systemctl >/dev/null 2>&1; then
    # --root works offline (no running systemd needed), also for ROOT=/ during image builds.
    # shellcheck disable=SC2086
    systemctl --root="${ROOT:-/}" enable $UNITS
    if [ "$PACKAGES" = 1 ]; then systemctl --root="${ROOT:-/}" enable condor.service; fi
else
    for unit in $UNITS; do
        case "$unit" in *.timer) wants=timers.target.wants ;; *) wants=multi-user.target.wants ;; esac
        install -d -m 0755 "$ROOT/etc/systemd/system/$wants"
        ln -sf "/etc/systemd/system/$unit" "$ROOT/etc/systemd/system/$wants/$unit"
    done
fi

if [ "$PACKAGES" = 1 ]; then
    "$BINDIR/condor-annex-ec2" check-image --root "${ROOT:-/}"
fi
