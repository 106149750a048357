"""Sound clips → magnitude-spectrogram frames (§4.3 of the Deep NMF paper).

Every clip is read, mixed to mono, resampled to one common rate, cut into segments of at most
``segment_seconds`` (the paper cut bird calls into 3-second segments) and turned into a magnitude
spectrogram with :func:`scipy.signal.stft`. The **frames are the samples** (rows), the
**frequencies the features** (columns, named ``"<Hz>"``), ``groups`` = the segment (pooling runs
over the frames of one segment, never across two), ``y`` = the clip's class. Frames far below the
loudest frame of their segment (``silence_db``) are dropped, so trailing digital silence does not
become a class of its own.

Reading: ``.wav`` with :func:`scipy.io.wavfile.read`; ``.flac`` / ``.ogg`` with the ``soundfile``
package (libsndfile) when it is installed (``pip install soundfile``), else a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

from ..errors import DNMFValueError

__all__ = ["AUDIO_SUFFIXES", "read_audio", "clip_frames", "audio_corpus", "audio_folder", "AudioCorpus"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass
class AudioCorpus:
    """Spectrogram frames of labelled clips.

    X : (n_frames, n_freq) float32 magnitudes (≥ 0); y : (n_frames,) class of the frame's clip;
    groups : (n_frames,) segment index (contiguous); feature_names : frequencies in Hz (str);
    label_names : class names; sample_ids : ``"<clip>#<segment>:<frame>"``; params : the ingest
    parameters (JSON) for the store's provenance; files : the clips, in order.
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    feature_names: np.ndarray
    label_names: np.ndarray
    sample_ids: np.ndarray
    params: dict
    files: list = field(default_factory=list)

    def __repr__(self):
        return (f"AudioCorpus({self.X.shape[0]} frames x {self.X.shape[1]} frequencies, "
                f"{len(np.unique(self.groups))} segments, {len(self.label_names)} classes)")


def read_audio(path) -> tuple[np.ndarray, int]:
    """Mono float64 samples in [-1, 1] and the sample rate of a .wav/.flac/.ogg file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in AUDIO_SUFFIXES:
        raise DNMFValueError(f"path: expected an audio file ({', '.join(AUDIO_SUFFIXES)}), found {p.name!r}")
    if suffix == ".wav":
        from scipy.io import wavfile

        try:
            rate, data = wavfile.read(p)
        except (ValueError, OSError) as e:
            raise DNMFValueError(f"path: expected a readable WAV file, found {p.name!r} ({e})") from None
        if data.dtype.kind == "u":
            info = np.iinfo(data.dtype)
            data = (data.astype(np.float64) - (info.max + 1) / 2) / ((info.max + 1) / 2)
        elif data.dtype.kind == "i":
            data = data.astype(np.float64) / float(-np.iinfo(data.dtype).min)
        else:
            data = data.astype(np.float64)
    else:
        try:
            import soundfile
        except ImportError:
            raise DNMFValueError(f"path: reading {suffix} files needs the 'soundfile' package (pip install soundfile), "
                                 f"found it missing for {p.name!r}") from None
        try:
            data, rate = soundfile.read(str(p), dtype="float64", always_2d=False)
        except RuntimeError as e:
            raise DNMFValueError(f"path: expected a readable {suffix} file, found {p.name!r} ({e})") from None
    if data.ndim == 2:
        data = data.mean(axis=1)
    return np.ascontiguousarray(data, dtype=np.float64), int(rate)


def _resample(x, rate, target):
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(x, int(target) // g, int(rate) // g)


def clip_frames(x, rate, *, sample_rate=22050, nperseg=1024, hop=512, max_freq=None, segment_seconds=3.0,
                silence_db=60.0):
    """Magnitude spectrogram frames of one clip, cut into segments.

    Returns ``(frames, segment_of_frame, frame_index, freqs)``: ``frames`` (n, n_freq) float64
    magnitudes |STFT| (Hann window of ``nperseg`` samples, hop ``hop``, at ``sample_rate``), the
    segment (0, 1, ...) and the position of every kept frame, and the frequencies (Hz).
    """
    from scipy.signal import stft

    x = _resample(np.asarray(x, dtype=np.float64), rate, sample_rate)
    seg_len = len(x) if not segment_seconds else max(int(round(segment_seconds * sample_rate)), nperseg)
    freqs = np.fft.rfftfreq(nperseg, 1.0 / sample_rate)
    keep_f = freqs <= max_freq if max_freq else np.ones(freqs.size, bool)
    out, segs, pos = [], [], []
    for s, start in enumerate(range(0, max(len(x), 1), seg_len)):
        piece = x[start:start + seg_len]
        if len(piece) < nperseg // 2:
            continue
        if len(piece) < nperseg:  # a short clip: one zero-padded frame
            piece = np.r_[piece, np.zeros(nperseg - len(piece))]
        _, _, Z = stft(piece, fs=sample_rate, nperseg=nperseg, noverlap=nperseg - hop, boundary=None, padded=True)
        M = np.abs(Z).T[:, keep_f]  # (frames, freqs)
        energy = M.sum(axis=1)
        if energy.max(initial=0.0) <= 0:
            continue
        ok = energy > energy.max() * 10 ** (-silence_db / 20) if silence_db is not None else energy > 0
        idx = np.flatnonzero(ok)
        out.append(M[idx])
        segs.append(np.full(idx.size, s))
        pos.append(idx)
    if not out:
        return np.empty((0, int(keep_f.sum()))), np.empty(0, np.int64), np.empty(0, np.int64), freqs[keep_f]
    return np.vstack(out), np.concatenate(segs), np.concatenate(pos), freqs[keep_f]


def audio_corpus(files, labels, *, label_names=None, sample_rate=22050, nperseg=1024, hop=512, max_freq=None,
                 segment_seconds=3.0, silence_db=60.0, dtype=np.float32, progress=None) -> AudioCorpus:
    """Spectrogram frames of ``files`` (paths) with class codes ``labels`` (one per file).

    See the module docstring; parameters as :func:`clip_frames`. ``progress``: optional callable
    ``progress(i, n, path)`` called after every file. Clips that give no frame (empty or silent)
    are skipped and listed in ``params['skipped']``.
    """
    files = [Path(f) for f in files]
    labels = np.asarray(labels)
    if labels.shape != (len(files),) or labels.dtype.kind not in "iu":
        raise DNMFValueError(f"labels: expected {len(files)} integer class codes (one per file), found {labels.dtype} {labels.shape}")
    if not files:
        raise DNMFValueError("files: expected at least one audio file, found none")
    for name, v, lo in (("sample_rate", sample_rate, 1), ("nperseg", nperseg, 2), ("hop", hop, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise DNMFValueError(f"{name}: expected an integer >= {lo}, found {v!r}")
    if hop > nperseg:
        raise DNMFValueError(f"hop: expected at most nperseg={nperseg}, found {hop}")
    Xs, ys, gs, ids, skipped, freqs = [], [], [], [], [], None
    g = 0
    for i, (f, c) in enumerate(zip(files, labels)):
        x, rate = read_audio(f)
        F, seg, pos, freqs = clip_frames(x, rate, sample_rate=sample_rate, nperseg=nperseg, hop=hop, max_freq=max_freq,
                                         segment_seconds=segment_seconds, silence_db=silence_db)
        if F.shape[0] == 0:
            skipped.append(str(f))
        else:
            _, seg_ids = np.unique(seg, return_inverse=True)
            Xs.append(F.astype(dtype))
            ys.append(np.full(F.shape[0], int(c), np.int64))
            gs.append(g + seg_ids)
            g += int(seg_ids.max()) + 1
            ids += [f"{f.stem}#{s}:{p}" for s, p in zip(seg, pos)]
        if progress is not None:
            progress(i + 1, len(files), f)
    if not Xs:
        raise DNMFValueError("files: expected at least one clip with sound, found only empty or silent clips")
    n_cls = int(labels.max()) + 1
    names = np.asarray([str(c) for c in range(n_cls)] if label_names is None else [str(s) for s in label_names])
    params = {"source": "audio", "sample_rate": sample_rate, "nperseg": nperseg, "hop": hop, "max_freq": max_freq,
              "segment_seconds": segment_seconds, "silence_db": silence_db, "window": "hann", "n_files": len(files),
              "skipped": skipped}
    return AudioCorpus(X=np.vstack(Xs), y=np.concatenate(ys), groups=np.concatenate(gs),
                       feature_names=np.asarray([f"{v:.1f}" for v in freqs]), label_names=names,
                       sample_ids=np.asarray(ids), params=params, files=[str(f) for f in files])


def audio_folder(root, *, label_from="auto", classes=None):
    """Audio files under ``root`` and their labels.

    ``label_from``: ``"folder"`` (the first sub-folder under ``root``, e.g. ``drums/kick01.ogg``),
    ``"prefix"`` (the file name before its first ``_``, e.g. ``tabla_na.flac`` → ``tabla``), or
    ``"auto"`` (folder when the files sit in sub-folders, else prefix). ``classes``: keep only these
    class names (in this order). Returns ``(files, labels, label_names)`` sorted by class then path.
    """
    root = Path(root)
    if not root.is_dir():
        raise DNMFValueError(f"input: expected a folder of audio files, found {'nothing' if not root.exists() else 'a file'} at {str(root)!r}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise DNMFValueError(f"input: expected audio files ({', '.join(AUDIO_SUFFIXES)}) under {str(root)!r}, found none")
    if label_from not in ("auto", "folder", "prefix"):
        raise DNMFValueError(f"label_from: expected 'auto', 'folder' or 'prefix', found {label_from!r}")
    if label_from == "auto":
        label_from = "folder" if all(len(p.relative_to(root).parts) > 1 for p in files) else "prefix"
    if label_from == "folder":
        names = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files]
    else:
        names = [p.stem.split("_", 1)[0] for p in files]
    label_names = sorted(set(names)) if classes is None else [str(c) for c in classes]
    missing = set(label_names) - set(names)
    if missing:
        raise DNMFValueError(f"classes: expected classes found under {str(root)!r}, found no files for {sorted(missing)}")
    code = {c: i for i, c in enumerate(label_names)}
    pairs = sorted(((code[n], str(p)) for p, n in zip(files, names) if n in code))
    return [Path(os.fspath(p)) for _, p in pairs], np.asarray([c for c, _ in pairs], np.int64), np.asarray(label_names)
