#!/usr/bin/env bash
# The image's entrypoint: the mounted data and logs folders must be writable by the user the
# container runs as, else the first run would fail deep inside; this says so in one line. Then it
# runs the command (bash runs.sh by default).
cd "$(dirname "$0")" || exit 2
for dir in data logs; do
  if [[ -e $dir && ! -w $dir ]]; then
    echo "error: $PWD/$dir is not writable by uid $(id -u) (docker creates a missing host folder as root); on the" \
      "host run: mkdir -p data logs && docker run --user \"\$(id -u):\$(id -g)\" ... (the README's command)" >&2
    exit 2
  fi
done
# A --user without a home of its own: torch.compile's and matplotlib's caches go to /tmp.
[[ -n ${HOME:-} && -w $HOME ]] || export HOME=/tmp
exec "$@"
