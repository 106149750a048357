"""Audio ingestion on generated WAV files (sines and noise): frames, frequencies, groups, labels."""

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import get_window

import dnmf_dask as dd
from dnmf_dask.cli import main
from dnmf_dask.errors import DNMFValueError
from dnmf_dask.ingest.audio import audio_corpus, audio_folder, clip_frames, read_audio

RATE = 8000


def _sine(freq, seconds, rate=RATE, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


@pytest.fixture
def sound_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "sounds"
    for cls, make in (("sine", lambda s: _sine(1000 + 250 * s, 0.5)), ("noise", lambda s: 0.3 * rng.standard_normal(RATE // 2))):
        (root / cls).mkdir(parents=True)
        for s in range(3):
            x = make(s)
            if s == 0:  # int16, stereo
                x16 = (np.c_[x, x] * 32767).astype(np.int16)
                wavfile.write(root / cls / f"{cls}{s}.wav", RATE, x16)
            else:
                wavfile.write(root / cls / f"{cls}{s}.wav", RATE, x.astype(np.float32))
    return root


def test_read_audio_formats(tmp_path):
    x = _sine(440, 0.1)
    wavfile.write(tmp_path / "a.wav", RATE, (np.c_[x, -x] * 32767).astype(np.int16))  # stereo: the mean is ~0
    wavfile.write(tmp_path / "b.wav", RATE, (x * 127 + 128).astype(np.uint8))
    wavfile.write(tmp_path / "c.wav", RATE, x.astype(np.float32))
    y, r = read_audio(tmp_path / "a.wav")
    assert r == RATE and y.ndim == 1 and np.abs(y).max() < 1e-4
    y, _ = read_audio(tmp_path / "b.wav")
    np.testing.assert_allclose(y, x, atol=1.5 / 128)
    y, _ = read_audio(tmp_path / "c.wav")
    np.testing.assert_allclose(y, x, atol=1e-7)
    with pytest.raises(DNMFValueError, match="path: expected an audio file"):
        read_audio(tmp_path / "x.mp3")


def test_clip_frames_peak_at_the_sine_frequency():
    x = _sine(1000, 1.0)
    F, seg, pos, freqs = clip_frames(x, RATE, sample_rate=RATE, nperseg=256, hop=128, segment_seconds=0.5)
    assert F.shape[1] == freqs.size == 129 and np.all(F >= 0)
    assert set(seg.tolist()) == {0, 1}  # two half-second segments
    peak = freqs[np.argmax(F, axis=1)]
    assert np.all(np.abs(peak - 1000) <= RATE / 256)  # within one bin
    # independent check of one frame: |rfft| of the windowed samples (scipy's stft scales by 1/sum(window))
    w = get_window("hann", 256)
    i = pos[seg == 0][3]
    ref = np.abs(np.fft.rfft(x[i * 128: i * 128 + 256] * w)) / w.sum()
    np.testing.assert_allclose(F[3], ref, rtol=1e-6, atol=1e-9)
    # max_freq keeps only the low bins; resampling to a lower rate keeps the peak
    F2, _, _, f2 = clip_frames(x, RATE, sample_rate=4000, nperseg=128, hop=64, max_freq=1500)
    assert f2.max() <= 1500 and np.all(np.abs(f2[np.argmax(F2, axis=1)] - 1000) <= 4000 / 128)


def test_short_clip_gives_one_padded_frame():
    F, seg, pos, freqs = clip_frames(_sine(1000, 0.02), RATE, sample_rate=RATE, nperseg=256, hop=128)
    assert F.shape == (1, 129) and abs(freqs[np.argmax(F[0])] - 1000) <= RATE / 256


def test_silent_frames_dropped():
    x = np.r_[_sine(500, 0.25), np.zeros(RATE // 4)]
    F, seg, pos, _ = clip_frames(x, RATE, sample_rate=RATE, nperseg=256, hop=128, segment_seconds=None)
    n_all = (len(x) - 256) // 128 + 2
    assert 0 < F.shape[0] < n_all and pos.max() * 128 < RATE // 4 + 256


def test_audio_corpus_and_cli(sound_dir, tmp_path):
    files, labels, names = audio_folder(sound_dir)
    assert list(names) == ["noise", "sine"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    ac = audio_corpus(files, labels, label_names=names, sample_rate=RATE, nperseg=256, hop=128)
    assert ac.X.dtype == np.float32 and ac.X.shape[1] == len(ac.feature_names) == 129
    assert np.all(np.diff(ac.groups) >= 0) and len(np.unique(ac.groups)) == 6  # one segment per 0.5 s clip
    for g in np.unique(ac.groups):  # a group has one class
        assert len(np.unique(ac.y[ac.groups == g])) == 1
    sine = ac.y == 1
    f = ac.feature_names.astype(float)
    assert np.all(f[np.argmax(ac.X[sine], axis=1)] > 900)
    # the CLI writes a corpus store with 50% of the clips labelled, the truth kept
    out = tmp_path / "a.zarr"
    assert main(["ingest", "audio", str(out), "--input", str(sound_dir), "--sample-rate", str(RATE), "--nperseg", "256",
                 "--hop", "128", "--label-fraction", "0.5"]) == 0
    c = dd.open_corpus(out)
    assert c.shape == ac.X.shape and np.array_equal(c.y_true, ac.y) and np.array_equal(c.groups, ac.groups)
    assert 0 < (c.y >= 0).sum() < c.shape[0]
    assert main(["ingest", "audio", str(tmp_path / "b.zarr"), "--input", str(tmp_path / "none")]) == 2


def test_audio_folder_prefix_labels(tmp_path):
    for name in ("kick_a.wav", "kick_b.wav", "snare_a.wav"):
        wavfile.write(tmp_path / name, RATE, _sine(300, 0.1).astype(np.float32))
    files, labels, names = audio_folder(tmp_path)
    assert list(names) == ["kick", "snare"] and labels.tolist() == [0, 0, 1]
    files, labels, names = audio_folder(tmp_path, classes=["snare"])
    assert len(files) == 1 and labels.tolist() == [0]
    with pytest.raises(DNMFValueError, match="classes"):
        audio_folder(tmp_path, classes=["hat"])
