"""Text segmenting and script-run detection for the CPU engine.

Segmenting reproduces GPT-SoVITS so that a client sees the same number of fragments (and so the same
silences, streaming chunks and timing) from the CPU engine as from the real engine:

* api_v2 (`text_split_method`): `TextPreprocessor.pre_seg_text` around the `cut0`..`cut5` methods of
  `TTS_infer_pack/text_segmentation_method.py` (engine-protocol.md §3.3).
* api.py (`cut_punc`): `cut_text`, then the newline split and short-segment merge of `get_tts_wav`
  (engine-protocol.md §2.4).

Upstream quirks are kept on purpose, e.g. `cut1` folds the last group of sentences into the previous
one (5-8 sentences give one segment, 9-12 give two), and `cut2` merges a final chunk shorter than 50
characters into the one before it. Where upstream raises on empty input ("请输入有效文本") we return no
segments instead; input validation is the HTTP layer's job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Sentence-ending marks used by `split()` and the "add a final mark" rule (upstream `splits`).
_SPLITS = frozenset({"，", "。", "？", "！", ",", ".", "?", "!", "~", ":", "：", "—", "…"})
# Segments made only of these are dropped by cut0..cut4 (upstream `punctuation`).
_WEAK_PUNCTUATION = frozenset({"!", "?", "…", ",", ".", "-", " "})
# cut5 splits after each of these, except a `.` between two digits (a decimal point).
_CUT5_MARKS = frozenset({",", ".", ";", "?", "!", "、", "，", "。", "？", "！", "：", "…"})
# The only characters api.py accepts in `cut_punc`.
_CUT_PUNC_ALLOWED = frozenset({",", ".", ";", "?", "!", "、", "，", "。", "？", "！", "；", "：", "…"})
# `replace_consecutive_punctuation` collapses runs of these to their first character.
_CONSECUTIVE = re.compile(r"([!?…,.\-])([!?…,.\-])+")
_MIN_SEGMENT_CHARS = 5
_MAX_SEGMENT_CHARS = 510
_CUT1_SENTENCES = 4
_CUT2_CHARS = 50

SPLIT_METHODS: tuple[str, ...] = ("cut0", "cut1", "cut2", "cut3", "cut4", "cut5")


def _sentences(text: str) -> list[str]:
    """Upstream `split()`: cut after every sentence mark, adding `。` if the text lacks a final one."""
    text = text.replace("……", "。").replace("——", "，")
    if text[-1] not in _SPLITS:
        text += "。"
    pieces: list[str] = []
    start = 0
    for index, char in enumerate(text):
        if char in _SPLITS:
            pieces.append(text[start : index + 1])
            start = index + 1
    return pieces


def _drop_weak(items: list[str]) -> list[str]:
    return [item for item in items if not set(item) <= _WEAK_PUNCTUATION]


def _cut0(text: str) -> list[str]:
    return [text]


def _cut1(text: str) -> list[str]:
    sentences = _sentences(text.strip("\n"))
    bounds: list[int | None] = list(range(0, len(sentences), _CUT1_SENTENCES))
    bounds[-1] = None  # the remainder joins the last full group (upstream behaviour)
    if len(bounds) == 1:
        return _drop_weak([text.strip("\n")])
    groups = ["".join(sentences[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    return _drop_weak(groups)


def _cut2(text: str) -> list[str]:
    text = text.strip("\n")
    sentences = _sentences(text)
    if len(sentences) < 2:
        return [text]
    chunks: list[str] = []
    current = ""
    for sentence in sentences:
        current += sentence
        if len(current) > _CUT2_CHARS:
            chunks.append(current)
            current = ""
    if current:
        chunks.append(current)
    if len(chunks) > 1 and len(chunks[-1]) < _CUT2_CHARS:
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    return _drop_weak(chunks)


def _cut3(text: str) -> list[str]:
    return _drop_weak(text.strip("\n").strip("。").split("。"))


def _cut4(text: str) -> list[str]:
    return _drop_weak(re.split(r"(?<!\d)\.(?!\d)", text.strip("\n").strip(".")))


def _cut5(text: str) -> list[str]:
    text = text.strip("\n")
    pieces: list[str] = []
    start = 0
    for index, char in enumerate(text):
        if char not in _CUT5_MARKS:
            continue
        decimal_point = (
            char == "." and 0 < index < len(text) - 1 and (text[index - 1].isdigit() and text[index + 1].isdigit())
        )
        if not decimal_point:
            pieces.append(text[start : index + 1])
            start = index + 1
    if start < len(text):
        pieces.append(text[start:])
    return [piece for piece in pieces if not set(piece) <= _CUT5_MARKS]


_METHODS: dict[str, Callable[[str], list[str]]] = {
    "cut0": _cut0,
    "cut1": _cut1,
    "cut2": _cut2,
    "cut3": _cut3,
    "cut4": _cut4,
    "cut5": _cut5,
}


def _merge_short(texts: list[str], threshold: int = _MIN_SEGMENT_CHARS) -> list[str]:
    """Upstream `merge_short_text_in_array`: glue pieces until each reaches `threshold` characters."""
    if len(texts) < 2:
        return texts
    merged: list[str] = []
    buffer = ""
    for text in texts:
        buffer += text
        if len(buffer) >= threshold:
            merged.append(buffer)
            buffer = ""
    if buffer:
        if merged:
            merged[-1] += buffer
        else:
            merged.append(buffer)
    return merged


def _split_big(text: str, max_len: int = _MAX_SEGMENT_CHARS) -> list[str]:
    """Upstream `split_big_text`: force-split a segment over 510 characters at sentence marks."""
    pieces = re.split("([" + re.escape("".join(sorted(_SPLITS))) + "])", text)
    result: list[str] = []
    current = ""
    for piece in pieces:
        if len(current + piece) > max_len:
            result.append(current)
            current = piece
        else:
            current += piece
    if current:
        result.append(current)
    return [piece for piece in result if not _is_symbols_only(piece)]


def _final_mark(lang: str) -> str:
    return "." if lang == "en" else "。"


def _is_symbols_only(text: str) -> bool:
    return not re.sub(r"\W+", "", text)


def _split_v2(text: str, method: str, lang: str) -> list[str]:
    text = _CONSECUTIVE.sub(r"\1", text).strip("\n")
    if not text:
        return []
    first_clause = re.split("[" + re.escape("".join(sorted(_SPLITS))) + "]", text)[0].strip()
    if text[0] not in _SPLITS and len(first_clause) < 4:
        text = _final_mark(lang) + text  # upstream pads a very short opening clause
    try:
        cut = _METHODS[method]
    except KeyError:
        raise ValueError(f"unknown text_split_method {method!r}; expected one of {SPLIT_METHODS}") from None
    lines = "\n".join(cut(text))
    while "\n\n" in lines:
        lines = lines.replace("\n\n", "\n")
    pieces = _merge_short([line for line in lines.split("\n") if line not in (" ", "")])
    segments: list[str] = []
    for piece in pieces:
        if not piece.strip() or _is_symbols_only(piece):
            continue
        if piece[-1] not in _SPLITS:
            piece += _final_mark(lang)
        segments.extend(_split_big(piece) if len(piece) > _MAX_SEGMENT_CHARS else [piece])
    return segments


def _has_word_characters(text: str) -> bool:
    """api.py `only_punc` negated: does the text contain anything speakable?"""
    return any(char.isalnum() for char in text)


def _split_api_v1(text: str, cut_punc: str, lang: str) -> list[str]:
    marks = [mark for mark in cut_punc if mark in _CUT_PUNC_ALLOWED]
    if marks:
        items = re.split("([" + re.escape("".join(marks)) + "])", text.strip("\n"))
        joined = ["".join(pair) for pair in zip(items[::2], items[1::2], strict=False)]
        if len(items) % 2 == 1:
            joined.append(items[-1])
        text = "\n".join(joined)
    text = text.strip("\n")
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    pieces = _merge_short([line for line in text.split("\n") if line.strip()])
    segments: list[str] = []
    for piece in pieces:
        if not _has_word_characters(piece):
            continue
        piece = piece.strip()
        if piece[-1] not in _SPLITS:
            piece += _final_mark(lang)
        segments.append(piece)
    return segments


def split_text(text: str, method: str, cut_punc: str | None = None, *, lang: str = "zh") -> list[str]:
    """Cut `text` into the segments the engine synthesises one by one.

    `cut_punc` (api.py) takes precedence over `method` (api_v2 `cut0`..`cut5`) when it is not None.
    `lang` only chooses the mark added to an unterminated segment (`.` for `en`, `。` otherwise).
    Punctuation-only input yields an empty list.
    """
    if cut_punc is not None:
        return _split_api_v1(text, cut_punc, lang)
    return _split_v2(text, method, lang)


# --- script runs -------------------------------------------------------------------------------

#: Engine languages a run can be spoken in (`en` is Piper, the rest espeak-ng).
RUN_LANGUAGES: tuple[str, ...] = ("en", "zh", "ja", "ko", "yue")
_MIXED_CODES = {"zh": "zh", "ja": "ja", "ko": "ko", "yue": "yue"}
_SINGLE_CODES = {"en": "en", "all_zh": "zh", "all_ja": "ja", "all_ko": "ko", "all_yue": "yue"}


@dataclass(frozen=True)
class ScriptRun:
    """A stretch of text spoken by one voice; `lang` is one of RUN_LANGUAGES."""

    lang: str
    text: str


def _script(char: str) -> str | None:
    """Writing system of one character; None for digits, spaces and punctuation (they join a neighbour)."""
    code = ord(char)
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
        return "kana"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF or code in (0x3005, 0x3007):
        return "han"
    if char.isalpha() and code < 0x0250:  # Basic Latin to Latin Extended-B
        return "latin"
    return None


def _tokens(text: str) -> list[tuple[str | None, str]]:
    """Maximal stretches of one script (None = neutral characters)."""
    tokens: list[tuple[str | None, str]] = []
    for char in text:
        script = _script(char)
        if tokens and tokens[-1][0] == script:
            tokens[-1] = (script, tokens[-1][1] + char)
        else:
            tokens.append((script, char))
    return tokens


def _auto_languages(tokens: list[tuple[str | None, str]], han_lang: str) -> list[str | None]:
    """auto/auto_yue: Han touching Kana is Japanese, other Han is Chinese (or Cantonese)."""
    langs: list[str | None] = []
    index = 0
    while index < len(tokens):
        script = tokens[index][0]
        if script in ("han", "kana"):
            end = index
            while end < len(tokens) and tokens[end][0] in ("han", "kana"):
                end += 1
            has_kana = any(tokens[i][0] == "kana" for i in range(index, end))
            langs.extend(["ja" if has_kana else han_lang] * (end - index))
            index = end
            continue
        langs.append({"latin": "en", "hangul": "ko", None: None}[script])
        index += 1
    return langs


def language_runs(text: str, text_lang: str) -> list[ScriptRun]:
    """Split one segment into runs, each spoken by one voice, according to the engine language code.

    Single-language codes (`en`, `all_*`) give one run. Mixed codes (`zh`, `ja`, `ko`, `yue`) read Latin
    letters as English and everything else in the given language, because CJK characters cannot be
    told apart (engine-protocol.md §4). `auto` / `auto_yue` detect the script of every run. Digits,
    spaces and punctuation stay with the preceding run (or the following one at the start).
    """
    if text_lang in _SINGLE_CODES:
        return [ScriptRun(_SINGLE_CODES[text_lang], text)] if text else []
    tokens = _tokens(text)
    langs: list[str | None]
    if text_lang in _MIXED_CODES:
        other = _MIXED_CODES[text_lang]
        langs = [None if script is None else ("en" if script == "latin" else other) for script, _ in tokens]
    elif text_lang in ("auto", "auto_yue"):
        langs = _auto_languages(tokens, "yue" if text_lang == "auto_yue" else "zh")
    else:
        raise ValueError(f"unknown text_lang {text_lang!r}")
    known = [lang for lang in langs if lang is not None]
    if not known:  # nothing but digits and punctuation: read it in the code's main language
        fallback = "en" if text_lang.startswith("auto") else _MIXED_CODES[text_lang]
        return [ScriptRun(fallback, text)] if text else []
    runs: list[ScriptRun] = []
    current = known[0]
    for lang, (_, chunk) in zip(langs, tokens, strict=True):
        current = lang or current
        if runs and runs[-1].lang == current:
            runs[-1] = ScriptRun(current, runs[-1].text + chunk)
        else:
            runs.append(ScriptRun(current, chunk))
    return runs
