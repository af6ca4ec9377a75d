"""How long a voice takes to say a text, learned from earlier renders (duration targeting's first guess).

The unit is a *speakable character*: `str.isalnum()`, so letters and digits count and spaces and punctuation
do not; a CJK ideograph, kana or Hangul syllable is one unit each (isalnum is true for them). Units of
different scripts take very different times, which is why rates are kept per language. The rate is seconds
per unit at engine speed 1.0 (a render at speed s took 1/s as long), an exponentially weighted mean of
observed renders, so it follows a voice whose pace drifts. Leading and trailing silence count (they are part
of the clip the duration is targeted for).

Prediction falls back from the (voice, language) rate to the language's rate over all voices, then to a
rough prior for the language. In memory only, per replica: a restart or another replica relearns within a
few renders, and the stretch step corrects any guess anyway.
"""

from __future__ import annotations

from collections import OrderedDict

#: weight of the newest observation in the running mean
ALPHA = 0.3
#: (voice, language) keys remembered; the least recently used go first
MAX_KEYS = 10_000
#: Seconds per speakable character at speed 1 before anything was observed: typical read speech (English
#: ~12 letters/s, Mandarin and Cantonese ~4.5 syllables/s, Japanese ~7.5 kana-or-kanji/s, Korean ~6
#: syllables/s). Mixed codes (zh = Chinese with English) use their main language's figure.
PRIORS: dict[str, float] = {"en": 0.08, "zh": 0.22, "yue": 0.22, "ja": 0.13, "ko": 0.17}
_DEFAULT_PRIOR = PRIORS["en"]


def speakable_units(text: str) -> int:
    """Letters and digits of any script; one per CJK character."""
    return sum(1 for ch in text if ch.isalnum())


def _base_language(language: str) -> str:
    """`all_zh` → zh, `auto_yue` → yue, `auto` → auto."""
    base = language.removeprefix("all_")
    return "yue" if base == "auto_yue" else base


class SpeakingRates:
    """Per (reference id, language) seconds-per-unit running means, bounded by LRU."""

    def __init__(self, max_keys: int = MAX_KEYS, alpha: float = ALPHA) -> None:
        self._max_keys = max_keys
        self._alpha = alpha
        self._voices: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._languages: dict[str, float] = {}  # a handful of codes: no bound needed

    def predict(self, reference_id: str, language: str, text: str) -> float | None:
        """Seconds the text takes at speed 1.0, or None when it has nothing to speak."""
        units = speakable_units(text)
        if units == 0:
            return None
        base = _base_language(language)
        rate = self._voices.get((reference_id, base))
        if rate is not None:
            self._voices.move_to_end((reference_id, base))
        else:
            rate = self._languages.get(base, PRIORS.get(base, _DEFAULT_PRIOR))
        return units * rate

    def observe(self, reference_id: str, language: str, text: str, seconds: float, speed: float) -> None:
        """Record a render of `text` that lasted `seconds` at engine speed `speed`."""
        units = speakable_units(text)
        if units == 0 or not seconds > 0 or not speed > 0:
            return
        rate = seconds * speed / units
        base = _base_language(language)
        key = (reference_id, base)
        self._voices[key] = self._mean(self._voices.get(key), rate)
        self._voices.move_to_end(key)
        while len(self._voices) > self._max_keys:
            self._voices.popitem(last=False)
        self._languages[base] = self._mean(self._languages.get(base), rate)

    def _mean(self, previous: float | None, new: float) -> float:
        return new if previous is None else previous + self._alpha * (new - previous)

    def __len__(self) -> int:
        return len(self._voices)
