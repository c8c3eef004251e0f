#!/bin/sh
# Installs what palisade-detect's tests need on a clean Debian 12 (as root).
# Run from scripts/test: sh crates/detect/tests/install-test-deps.sh
#
# rsyslog and syslog-ng-core conflict as Debian packages (both provide
# system-log-daemon), so rsyslog is installed and syslog-ng-core is only
# unpacked under /opt/syslog-ng (its libraries installed normally); the
# tests find it there. Neither daemon is started by the installation
# (policy-rc.d or no init); the tests start their own on private sockets.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fail2ban rsyslog util-linux bsdutils systemd nftables iproute2 \
    libivykis0 libnet1 libpcre3 libjson-c5 libwrap0 libglib2.0-0 libssl3 libsystemd0 \
    >/dev/null
if ! command -v syslog-ng >/dev/null 2>&1 && [ ! -x /opt/syslog-ng/usr/sbin/syslog-ng ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq syslog-ng-core)
    mkdir -p /opt/syslog-ng
    dpkg -x "$tmp"/syslog-ng-core_*.deb /opt/syslog-ng
    rm -rf "$tmp"
fi
LD_LIBRARY_PATH=/opt/syslog-ng/usr/lib/syslog-ng /opt/syslog-ng/usr/sbin/syslog-ng --version >/dev/null 2>&1 \
    || command -v syslog-ng >/dev/null
