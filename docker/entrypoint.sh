#!/bin/sh
# The image's entry: `prefect` for a bare subcommand, any other command as given.
#   docker run maas:cpu worker start --pool maas    -> prefect worker start --pool maas
#   prefect flow-run execute  (what Prefect workers send) and `maas watch` run as given.
set -e
if [ "$#" -eq 0 ]; then
    set -- version
fi
if command -v "$1" >/dev/null 2>&1; then
    exec "$@"
fi
exec prefect "$@"
