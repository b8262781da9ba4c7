"""Text-to-speech engines behind one small interface, and the text chunking they share.

/v1/audio/speech streams long input: the worker cuts the text into sentence-sized chunks
(`split_sentences`) and asks an engine for one chunk at a time, so the first audio leaves before
the whole text is synthesized and no model sees more than it handles well at once. Two engines
stand behind the same `SpeechEngine` protocol so a config can swap them without the worker
knowing: hibari, a tiny English model whose default voice ships inside its wheel and runs far
faster than real time on one CPU core (the CPU default), and Kokoro-82M through kokoro-onnx, the
larger model the GPU config serves. Both run on onnxruntime, so neither pulls in torch.

OpenAI's speed range (0.25 to 4.0) is wider than what the models do well natively. Both slow
down well by themselves (hibari to 0.25, kokoro-onnx to its floor of 0.5), but when asked to go
fast they squeeze phonemes until Whisper tiny.en stops understanding them (at 2.0, word error
rate 0.15 for hibari and 0.25 to 0.9 for Kokoro, against 0.04 to 0.24 for a time stretch of the
1.0 audio). So each model sets the pace up to 1.25 and a pitch-preserving time stretch (WSOLA,
`time_stretch`) of its output does the rest. Heavy imports happen inside the loaders, so
importing this module is cheap.
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SAMPLE_RATE = 24_000
MIN_SPEED, MAX_SPEED = 0.25, 4.0
ENGINES = ("hibari", "kokoro")

# Kokoro model files, best first: the prepared folder's own name, then the layouts of the hub
# repo onnx-community/Kokoro-82M-v1.0-ONNX (fp32, then int8).
KOKORO_MODEL_FILES = ("model.onnx", "onnx/model.onnx", "onnx/model_quantized.onnx")
# npz archives of voice name -> style table; voices-v1.0.bin is kokoro-onnx's release name.
KOKORO_VOICE_ARCHIVES = ("voices.npz", "voices-v1.0.bin")
KOKORO_VOICE_DIR = "voices"  # one raw little-endian float32 file per voice, <name>.bin
KOKORO_STYLE_DIM = 256


class SpeechEngine(Protocol):
    """What the speech worker needs from a text-to-speech model."""

    sample_rate: int

    def voices(self) -> list[str]:
        """The model's own voice names."""
        ...

    def synthesize(self, text: str, voice: str, speed: float) -> np.ndarray:
        """float32 mono samples in [-1, 1] for one chunk of text; same input, same samples.

        Raises ValueError for an unknown voice or a speed outside [0.25, 4.0].
        """
        ...


def load_engine(
    engine: str,
    model_dir: Path | None,
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    lang: str = "en-us",
) -> SpeechEngine:
    """Load a speech engine by name ("hibari" or "kokoro").

    hibari ignores model_dir, providers and lang (its model, G2P and voice are in its wheel);
    kokoro needs model_dir (see `find_kokoro_model` and `load_kokoro_voices`).
    """
    if engine == "hibari":
        return HibariEngine(threads=threads)
    if engine == "kokoro":
        if model_dir is None:
            raise ValueError("the kokoro speech engine needs a model_dir")
        return KokoroEngine(Path(model_dir), threads=threads, providers=providers, lang=lang)
    raise ValueError(f"unknown speech engine {engine!r}; expected one of {', '.join(ENGINES)}")


# -- speed -----------------------------------------------------------------------------------


def _split_speed(speed: float, low: float, high: float) -> tuple[float, float]:
    """(what the model does natively, what the time stretch does after) for a requested speed."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
    native = min(max(speed, low), high)
    return native, speed / native


def _finish(audio: Any, stretch: float, sample_rate: int) -> np.ndarray:
    """The engine's raw output as the protocol promises it: 1-D float32 in [-1, 1]."""
    out = np.asarray(audio, dtype=np.float32).reshape(-1)
    if stretch != 1.0:
        out = time_stretch(out, stretch, sample_rate)
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


def time_stretch(audio: np.ndarray, rate: float, sample_rate: int) -> np.ndarray:
    """Play `audio` `rate` times as fast (2.0: half as long) at the same pitch, by WSOLA.

    Frames of 40 ms are overlap-added at a 20 ms hop; each is taken near where plain resampling
    would take it, shifted by up to 10 ms (one pitch period of a low voice) to line up best
    with the natural continuation of the previous frame, so the waveform stays periodic.
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if rate == 1.0 or x.size == 0:
        return x.copy()
    hop = max(1, round(0.02 * sample_rate))
    frame, tol = 2 * hop, max(1, round(0.01 * sample_rate))
    window = np.hanning(frame + 1)[:-1].astype(np.float32)  # periodic: 50 % overlaps sum to 1
    n_out = max(1, round(x.size / rate))
    n_frames = n_out // hop + 1
    step = hop * rate
    need = int(np.ceil((n_frames - 1) * step)) + frame + 2 * tol + hop + 1
    xp = np.pad(x, (tol, max(0, need - tol - x.size)))  # xp[i + tol] == x[i]
    out = np.zeros((n_frames + 1) * hop, np.float32)
    norm = np.zeros_like(out)
    prev = 0
    for k in range(n_frames):
        nominal = round(k * step)
        pos = 0
        if k:
            follow = xp[prev + tol + hop : prev + tol + hop + frame]
            region = xp[nominal : nominal + frame + 2 * tol]
            scores = np.lib.stride_tricks.sliding_window_view(region, frame) @ follow
            pos = nominal - tol + int(np.argmax(scores))
        out[k * hop : k * hop + frame] += xp[pos + tol : pos + tol + frame] * window
        norm[k * hop : k * hop + frame] += window
        prev = pos
    out /= np.where(norm > 1e-6, norm, 1.0)
    return out[:n_out]


# -- hibari ----------------------------------------------------------------------------------


class HibariEngine:
    """hibari: each voice is a whole 8 MB ONNX model; "heart" ships in the wheel, the others are
    usable only once something has put them in hibari's cache (it downloads them on first use,
    which fails offline), so only those already present are offered."""

    sample_rate = SAMPLE_RATE
    native_speed = (0.25, 1.25)  # the model's own pace; faster is a time stretch (see top)
    seed = 0  # hibari adds shaped noise; a fixed seed makes every call bit-identical

    def __init__(self, threads: int | None = None) -> None:
        import hibari
        from hibari.voices import DEFAULT, VOICES, voice_path

        self.sample_rate = int(hibari.SAMPLE_RATE)
        self._threads = threads or 1  # hibari's own default; one core is plenty for it
        self._voice_path = voice_path
        self._voices = [name for name in VOICES if self._present(name)]
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._model(DEFAULT)("Ready.", seed=self.seed)  # load the G2P now, not on a request

    def _present(self, name: str) -> bool:
        try:
            return Path(self._voice_path(name, download_missing=False)).is_file()
        except (FileNotFoundError, ValueError):
            return False

    def _model(self, voice: str) -> Any:
        if voice not in self._voices:
            raise ValueError(f"unknown voice {voice!r}; available: {', '.join(self._voices)}")
        with self._lock:
            model = self._models.get(voice)
            if model is None:
                from hibari import Hibari

                model = self._models[voice] = Hibari(voice=voice, threads=self._threads)
            return model

    def voices(self) -> list[str]:
        """Voices whose model is on disk (the bundled "heart", plus any cached ones)."""
        return list(self._voices)

    def synthesize(self, text: str, voice: str, speed: float) -> np.ndarray:
        """One chunk of text at `speed`; hibari splits it into sentences itself."""
        model = self._model(voice)
        native, stretch = _split_speed(speed, *self.native_speed)
        audio = model(text, speed=native, seed=self.seed)
        return _finish(audio, stretch, self.sample_rate)


# -- kokoro ----------------------------------------------------------------------------------


def find_kokoro_model(model_dir: Path) -> Path:
    """The Kokoro ONNX file in model_dir: model.onnx, else onnx/model.onnx, else
    onnx/model_quantized.onnx."""
    for name in KOKORO_MODEL_FILES:
        path = model_dir / name
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no Kokoro model in {model_dir}: expected one of {', '.join(KOKORO_MODEL_FILES)}"
    )


def load_kokoro_voices(model_dir: Path) -> dict[str, np.ndarray]:
    """Voice name -> style table of shape (n, 1, 256), from voices.npz (or voices-v1.0.bin)
    and from voices/<name>.bin files of raw float32 (the hub repo's layout)."""
    styles: dict[str, np.ndarray] = {}
    for name in KOKORO_VOICE_ARCHIVES:
        path = model_dir / name
        if path.is_file():
            with np.load(path, allow_pickle=False) as archive:
                for voice in archive.files:
                    styles.setdefault(voice, _style_table(archive[voice], path))
    voice_dir = model_dir / KOKORO_VOICE_DIR
    if voice_dir.is_dir():
        for path in sorted(voice_dir.glob("*.bin")):
            styles.setdefault(path.stem, _style_table(np.fromfile(path, dtype="<f4"), path))
    if not styles:
        raise FileNotFoundError(
            f"no Kokoro voices in {model_dir}: expected {' or '.join(KOKORO_VOICE_ARCHIVES)} "
            f"or {KOKORO_VOICE_DIR}/*.bin"
        )
    return styles


def _style_table(data: np.ndarray, source: Path) -> np.ndarray:
    if data.size == 0 or data.size % KOKORO_STYLE_DIM:
        raise ValueError(f"{source}: a voice must hold rows of {KOKORO_STYLE_DIM} floats")
    return np.ascontiguousarray(data, dtype=np.float32).reshape(-1, 1, KOKORO_STYLE_DIM)


class KokoroEngine:
    """Kokoro-82M through kokoro-onnx, on a session built here so that threads and execution
    providers are ours to choose. Text is phonemized with espeak-ng in `lang`, so any voice can
    read any language espeak knows (with that voice's accent)."""

    sample_rate = SAMPLE_RATE
    native_speed = (0.5, 1.25)  # kokoro-onnx refuses < 0.5; faster is a time stretch (see top)

    def __init__(
        self,
        model_dir: Path,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        lang: str = "en-us",
    ) -> None:
        import onnxruntime as ort
        from kokoro_onnx import Kokoro

        model = find_kokoro_model(model_dir)
        self._styles = load_kokoro_voices(model_dir)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(model), options, providers=providers or ["CPUExecutionProvider"]
        )
        # kokoro-onnx insists on a voices archive to read names from; styles are passed to it
        # as arrays, so when the voices are loose .bin files an empty archive will do.
        archive = next((model_dir / n for n in KOKORO_VOICE_ARCHIVES if (model_dir / n).is_file()),
                       None)
        if archive is not None:
            self._kokoro = Kokoro.from_session(session, str(archive))
        else:
            with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
                empty = Path(tmp) / "voices.npz"
                np.savez(empty)
                self._kokoro = Kokoro.from_session(session, str(empty))
        self._lang = lang
        try:
            self._phonemize("a")
        except RuntimeError as e:  # phonemizer: language "xx" is not supported by the espeak...
            raise ValueError(f"kokoro: espeak-ng cannot phonemize lang {lang!r}: {e}") from e

    def _phonemize(self, text: str) -> str:
        return self._kokoro.tokenizer.phonemize(text, self._lang)

    def voices(self) -> list[str]:
        """The style tables found in model_dir, by name (e.g. jf_alpha)."""
        return sorted(self._styles)

    def synthesize(self, text: str, voice: str, speed: float) -> np.ndarray:
        """One chunk of text at `speed`; kokoro-onnx batches long phoneme strings itself."""
        style = self._styles.get(voice)
        if style is None:
            raise ValueError(f"unknown voice {voice!r}; available: {', '.join(self.voices())}")
        native, stretch = _split_speed(speed, *self.native_speed)
        phonemes = self._phonemize(text)
        if not any(ch.isalpha() for ch in phonemes):  # nothing to say (empty, "...", "--")
            return np.zeros(0, np.float32)
        audio, _ = self._kokoro.create(phonemes, style, speed=native, is_phonemes=True)
        return _finish(audio, stretch, self.sample_rate)


# -- text ------------------------------------------------------------------------------------

# A sentence ends after . ! ? ; or an ellipsis (with any closing quotes or brackets) followed
# by whitespace, after the CJK full stop, exclamation, question mark and semicolon even without
# whitespace, and at every line break. Escapes, not the characters: ruff flags look-alikes.
_CLOSERS = "\"'\u201d\u2019\u00bb)\\]"  # quotes (straight and right curly), guillemet, ) ]
_SENTENCE_END = re.compile(
    rf"[.!?;\u2026]+[{_CLOSERS}]*(?=\s)"  # ... followed by whitespace
    r"|[\u3002\uff01\uff1f\uff1b]+[\u300d\u300f\u201d\u2019\uff09)]*"  # CJK marks, closing brackets
    r"|\n"
)
# Clause marks a long sentence may be cut after: , and the CJK comma, ideographic comma and
# colon, : and the em and en dashes.
_CLAUSE_END = re.compile(r"[,\uff0c\u3001:\uff1a\u2014\u2013]")
MIN_CHUNK_CHARS = 20  # shorter sentences ("Hi.", "Dr.") are joined to the next one


def split_sentences(text: str, max_chars: int = 400) -> list[str]:
    """Chunks of whole sentences, none longer than max_chars, in order, none empty.

    Very short sentences are merged into their neighbour; a sentence longer than max_chars is
    cut at its last comma (or similar) or else its last space before the limit, or hard at the
    limit if it has neither. Whitespace inside a chunk is collapsed to single spaces, so
    " ".join(chunks) is the text up to whitespace.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    pieces: list[str] = []
    for sentence in _sentences(text):
        pieces += _hard_split(sentence, max_chars)
    chunks: list[str] = []
    buf = ""
    for piece in pieces:
        if buf and len(buf) < MIN_CHUNK_CHARS and len(buf) + 1 + len(piece) <= max_chars:
            buf = f"{buf} {piece}"
            continue
        if buf:
            chunks.append(buf)
        buf = piece
    if buf:
        if (chunks and len(buf) < MIN_CHUNK_CHARS
                and len(chunks[-1]) + 1 + len(buf) <= max_chars):
            chunks[-1] = f"{chunks[-1]} {buf}"
        else:
            chunks.append(buf)
    return chunks


def _sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start : m.end()])
        start = m.end()
    out.append(text[start:])
    return [s for s in (" ".join(part.split()) for part in out) if s]


def _hard_split(sentence: str, max_chars: int) -> list[str]:
    pieces = []
    rest = sentence
    while len(rest) > max_chars:
        head = rest[:max_chars]
        cut = max((m.end() for m in _CLAUSE_END.finditer(head)), default=0)
        if cut < max_chars // 3:  # no comma, or one so early it would leave a stub
            space = rest.rfind(" ", 0, max_chars + 1)
            if space > 0:
                cut = space
            elif cut == 0:
                cut = max_chars
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    pieces.append(rest)
    return [p for p in pieces if p]
