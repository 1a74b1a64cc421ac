#!/bin/sh
# Quick start on a fresh Debian 12: install packages, build, then run the demo
# model server (127.0.0.1:8000) and tollgate in front of it with the example
# config (http://127.0.0.1:8080 for HTTP/1.1 and h2c, https://127.0.0.1:8443
# for TLS with h2 / http/1.1).  Ctrl-C stops both.
set -eu
cd "$(dirname "$0")/.."
sh .ci/deps.sh
sh .ci/build.sh
./build/tests/demo_upstream --host 127.0.0.1 --port 8000 --quiet >/dev/null &
DEMO=$!
trap 'kill $DEMO 2>/dev/null || true' EXIT INT TERM
echo "demo model server on 127.0.0.1:8000; tollgate on http://127.0.0.1:8080 and https://127.0.0.1:8443"
echo "try: curl -si http://127.0.0.1:8080/v1/chat/completions -H 'authorization: Bearer tg_demo_quickstart_key_not_a_secret' \\"
echo "       -d '{\"model\":\"demo-model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
./build/tollgate -c config/tollgate.example.json
