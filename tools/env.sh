# Sourced by the quick-start scripts: use the active virtualenv, or make ./.venv, and install
# the package (with the extras named in $DNMF_EXTRAS, e.g. "test").
set -euo pipefail
DNMF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$DNMF_ROOT/.venv/bin/python" ]; then
    python3 -m venv "$DNMF_ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  . "$DNMF_ROOT/.venv/bin/activate"
fi
spec="$DNMF_ROOT"
if [ -n "${DNMF_EXTRAS:-}" ]; then spec="$DNMF_ROOT[$DNMF_EXTRAS]"; fi
python -m pip install --disable-pip-version-check -q -e "$spec"
python -c "import dnmf_dask" 
