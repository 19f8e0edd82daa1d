#!/bin/sh
# Create the tables, then become gunicorn (exec), so that gunicorn gets the
# SIGTERM of a deploy and finishes its requests before it exits.
set -e
python3 -c 'import app; app.init_db()'
exec gunicorn --bind "0.0.0.0:${PORT:-8000}" --workers "${WORKERS:-2}" \
  --graceful-timeout 25 --access-logfile /var/log/gunicorn/access.log \
  --error-logfile - app:app
