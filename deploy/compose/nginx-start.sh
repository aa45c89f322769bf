#!/bin/sh
# nginx-start.sh CONF [NGINX_ARGS...]: run nginx with CONF (plus NGINX_ARGS, e.g. -g 'daemon off;').
#
# CONF is written for nginx >= 1.25.1 (nginx:1.27-alpine): `listen PORT;` followed on the next line by
# `http2 on;`. Older nginx (Debian bookworm's 1.22, Ubuntu 24.04's 1.24) rejects that directive and only
# knows `listen PORT http2;`; for those the same file is rewritten to that form first. Plain POSIX sh:
# the official image has busybox, a Debian-based one dash.
set -eu
conf=$1
shift
if ! out=$(nginx -t -c "$conf" "$@" 2>&1); then
    case $out in
    *'unknown directive "http2"'*)
        legacy=$(mktemp "${TMPDIR:-/tmp}/nginx-legacy.XXXXXX")
        sed -e '/^[[:space:]]*listen [^;]*;[[:space:]]*$/{N;s/\(listen [^;]*\);[[:space:]]*\n[[:space:]]*http2 on;/\1 http2;/;}' \
            "$conf" >"$legacy"
        echo "nginx-start.sh: $(nginx -v 2>&1) predates 'http2 on;': using 'listen ... http2;' ($legacy)" >&2
        conf=$legacy
        ;;
    *)
        printf '%s\n' "$out" >&2
        exit 1
        ;;
    esac
fi
exec nginx -c "$conf" "$@"
