#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672: start the local one, installing
# Debian's rabbitmq-server first if the machine has none. Used by `make test` and CI.
set -euo pipefail

listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

listening && exit 0
if ! command -v rabbitmq-server >/dev/null; then
  echo "installing rabbitmq-server (Debian package) ..."
  if [ "$(id -u)" != 0 ]; then
    echo "need root to install rabbitmq-server; run: sudo apt-get install rabbitmq-server" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
fi
echo "starting rabbitmq-server ..."
rabbitmq-server -detached || true
for _ in $(seq 1 180); do
  listening && { rabbitmqctl -q await_startup >/dev/null 2>&1 || true; exit 0; }
  sleep 0.5
done
echo "rabbitmq-server did not start within 90 s; see /var/log/rabbitmq/" >&2
exit 1
