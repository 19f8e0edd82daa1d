#!/bin/sh
# Runs on the host, as root, before the new version's container starts,
# with the app's environment properties in its environment.
set -eu
if [ -n "${DATABASE_URL:-}" ]; then db="PostgreSQL at ${RDS_HOSTNAME:-DATABASE_URL}"; else db="SQLite on the data volume"; fi
echo "predeploy: $SPROUT_APP $SPROUT_VERSION will use $db; greeting: ${GREETING:-none}"
