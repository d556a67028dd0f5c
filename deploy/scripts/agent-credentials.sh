#!/usr/bin/env bash
# Per-host bus credentials for one agent (docs/operator-guide.md, "Per-host bus credentials").
#
#   deploy/scripts/agent-credentials.sh add MAC [--admin-url amqp://admin:PW@broker:5672/vhost]
#   deploy/scripts/agent-credentials.sh remove MAC [--admin-url ...]
#
# add: RabbitMQ user agent-<mac hex> with a new random password (given to rabbitmqctl on stdin,
# never on a command line), its permissions, its exchanges and queues bound into the shared
# topology; prints the agent's environment (ROOST_AMQP_URL with its credentials,
# ROOST_BUS_SECURED=true, ROOST_MGMT_MAC) for the node's env file. Again: rotates the password.
# remove: closes its connections, deletes the user, its exchanges and queues.
#
# Users and permissions go through rabbitmqctl (ROOST_RABBITMQCTL overrides the command, e.g.
# "kubectl exec -n roost rabbitmq-0 -- rabbitmqctl"); exchanges and queues through AMQP with the
# admin URL (default ROOST_AMQP_URL, else the local guest). The work is roost_agent.credentials.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${ROOST_PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m roost_agent.credentials "$@"
