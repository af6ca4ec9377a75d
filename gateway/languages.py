"""GPT-SoVITS language codes (engine-protocol.md §4), shared by the gateway and the CPU engine."""

from __future__ import annotations

V1_LANGUAGES: tuple[str, ...] = ("all_zh", "en", "all_ja", "zh", "ja", "auto")
V2_LANGUAGES: tuple[str, ...] = V1_LANGUAGES + ("all_yue", "all_ko", "yue", "ko", "auto_yue")

#: Output sample rate of each SoVITS model version (engine-protocol.md §3.8).
VERSION_SAMPLE_RATES: dict[str, int] = {
    "v1": 32000,
    "v2": 32000,
    "v2Pro": 32000,
    "v2ProPlus": 32000,
    "v3": 24000,
    "v4": 48000,
}

#: api.py also accepts these Chinese labels (engine-protocol.md §4).
V1_LABELS: dict[str, str] = {
    "中文": "all_zh",
    "粤语": "all_yue",
    "英文": "en",
    "日文": "all_ja",
    "韩文": "all_ko",
    "中英混合": "zh",
    "粤英混合": "yue",
    "日英混合": "ja",
    "韩英混合": "ko",
    "多语种混合": "auto",
    "多语种混合(粤语)": "auto_yue",
}

#: Common client spellings mapped onto engine codes, so `EN`, `en-US` or `zh-CN` just work.
ALIASES: dict[str, str] = {
    "en-us": "en",
    "en-gb": "en",
    "english": "en",
    "zh-cn": "zh",
    "zh-hans": "zh",
    "cmn": "zh",
    "chinese": "zh",
    "ja-jp": "ja",
    "japanese": "ja",
    "ko-kr": "ko",
    "korean": "ko",
    "zh-hk": "yue",
    "cantonese": "yue",
}


def languages_for_version(version: str) -> tuple[str, ...]:
    """The language codes a loaded model version accepts (v1 lacks Korean and Cantonese)."""
    return V1_LANGUAGES if version == "v1" else V2_LANGUAGES


def normalize_language(value: str) -> str:
    """Map a client spelling (`EN`, `en-US`, `中文`) to an engine code; unknown values pass through lowercased."""
    stripped = value.strip()
    if stripped in V1_LABELS:
        return V1_LABELS[stripped]
    lowered = stripped.lower()
    spelled = lowered.replace("_", "-")  # en_US, zh_CN: locale spellings
    if spelled in ALIASES:
        return ALIASES[spelled]
    return ALIASES.get(lowered, lowered)  # engine codes keep their underscore (all_zh, auto_yue)
