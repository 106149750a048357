#!/usr/bin/env bash
# The README's main job: ingest the BBC News corpus (shipped by pip), fit on a LocalCluster,
# write the run folder with its report. Extra arguments go to `dnmf demo`.
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$DNMF_ROOT"
dnmf demo "$@"
