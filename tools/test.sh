#!/usr/bin/env bash
# The README's test command: set up the environment (active venv or ./.venv), install the
# package with its test extras, run the test suite. Extra arguments go to pytest.
DNMF_EXTRAS=test
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$DNMF_ROOT"
python -m pytest "$@"
