#!/bin/sh
# Makes syslog-ng available to palisade-detect's source tests on Debian 12
# (as root; scripts/test runs it after installing the Debian packages).
#
# rsyslog and syslog-ng-core conflict as Debian packages (both provide
# system-log-daemon), so rsyslog is installed normally and syslog-ng-core is
# only unpacked under /opt/syslog-ng (its libraries installed normally by
# scripts/test); the tests find it there and start their own daemon on a
# private socket.
set -eu
if command -v syslog-ng >/dev/null 2>&1 || [ -x /opt/syslog-ng/usr/sbin/syslog-ng ]; then
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq syslog-ng-core)
mkdir -p /opt/syslog-ng
dpkg -x "$tmp"/syslog-ng-core_*.deb /opt/syslog-ng
LD_LIBRARY_PATH=/opt/syslog-ng/usr/lib/syslog-ng /opt/syslog-ng/usr/sbin/syslog-ng --version >/dev/null
