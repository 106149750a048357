"""The Deep NMF paper's audio study (§4.3-4.4, Fig. 14) on real labelled sound samples.

The paper's bird calls (Cornell Master Set) are not redistributable; we use the sound samples of
the Debian package ``sonic-pi-samples`` (FLAC, labels = the file-name category: ``ambi_*``,
``loop_*``, ``tabla_*``, ...), fetched with ``apt-get download`` + ``dpkg-deb -x`` into
``~/.cache/dnmf_dask/`` (or give ``--audio-dir`` with any folder of labelled clips). As in the
paper: clips cut into 3-second segments (the groups), magnitude spectrogram frames as samples,
1% of the frames of every class labelled, rank 30, Deep NMF with 2 and 3 layers and max pooling
over consecutive frames of a segment, against single-layer SSNMF with the same rank. The paper
used pools {0, 25, 50, 75} on 162 frames per segment; our 3 s segments have 129 frames
(22,050 Hz, hop 512), so we use {0, 20, 40, 60}. Needs ``soundfile`` for FLAC (``pip install
dnmf-dask[audio]``).

    python pipelines/deep_audio.py --seeds 0,1,2 --out runs/deep_audio
    python pipelines/layer_angles.py runs/deep_audio               # §4.5 on the audio models

Writes config.json, results.json, table.md, fig14.png, corpus.zarr and models/ (first seed).
"""

from __future__ import annotations

import sys

import deep_text  # (pipelines/ is on sys.path when run as a script)
from _common import debian_package

PACKAGE = "sonic-pi-samples"
DEFAULTS = {
    **deep_text.DEFAULTS,
    "label_unit": "sample",  # the paper: 1% of the data (frames) of each class
    "rank": 30,
    "deeper_rank": 30,
    "pool_sizes": [0, 20, 40, 60],
    "audio_dir": None,  # None: the samples of the Debian package
    "classes": ["ambi", "loop", "tabla"],
    "sample_rate": 22050,
    "nperseg": 1024,
    "hop": 512,
    "max_freq": 8000.0,
    "segment_seconds": 3.0,
    "chunk_rows": 4000,
}
STUDY = {"name": "Sound samples", "unit": "frames", "figure": "fig14.png", "paper_fig": "Fig. 14", "paper_ssnmf_accuracy": 0.59}


def audio_source(cfg):
    from dnmf_dask.ingest.audio import audio_corpus, audio_folder

    folder = cfg["audio_dir"] or debian_package(PACKAGE) / "usr" / "share" / "sonic-pi" / "samples"
    files, labels, names = audio_folder(folder, classes=cfg["classes"])
    print(f"deep_audio: {len(files)} clips of classes {[str(c) for c in names]} from {folder} ...", flush=True)
    ac = audio_corpus(files, labels, label_names=names, sample_rate=cfg["sample_rate"], nperseg=cfg["nperseg"],
                      hop=cfg["hop"], max_freq=cfg["max_freq"], segment_seconds=cfg["segment_seconds"])
    print(f"  {ac!r}", flush=True)
    return ac


if __name__ == "__main__":
    sys.exit(deep_text.main(doc=__doc__, defaults_out="runs/deep_audio", source=audio_source, study=STUDY, defaults=DEFAULTS))
