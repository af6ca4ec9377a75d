"""Mutants `make mutate` may leave alive, each with the reason; tools/mutate.py marks the others NEW.

Keyed by mutant name *and* its mutated line(s): when the code changes, mutmut renumbers the mutants of that
function, an entry stops matching and the survivor shows up as NEW, to be killed by a test or, if it truly
makes no observable difference, listed here again with its reason.
"""

from __future__ import annotations

ACCEPTED: dict[str, tuple[str, str]] = {
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_19": (
        "if declared <= _UNKNOWN_LENGTH_FRAMES and declared > max_frames:",
        "equivalent: libsndfile reports an unknown length as SF_COUNT_MAX (2**63 - 1), never exactly 2**62",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_31": (
        "block_frames = max(2, _DECODE_BLOCK_SAMPLES // f.channels)",
        "equivalent: a block is 1 frame only with more than 2**18 channels; MAX_CHANNELS is 8",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_36": (
        "while decoded < max_frames:  # one frame past the limit proves the header lied",
        "equivalent: each read asks for the frames left up to max+1, so `decoded` equals max_frames only at the end of"
        " the file, where both loops stop",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_48": (
        'block = f.read(min(block_frames, max_frames + 1 + decoded), dtype="float32", always_2d=True)',
        "equivalent: only the size of the last read past the limit changes (at most one block); the file is refused "
        "either way",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_50": (
        'block = f.read(min(block_frames, max_frames + 2 - decoded), dtype="float32", always_2d=True)',
        "equivalent: reads one more frame past the limit before refusing; same outcome",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_59": (
        "blocks.append(block.mean(axis=1, dtype=np.float32) if (f.channels > 1) or True else block[:, 0])",
        "equivalent: the mean of one channel is that channel, bit for bit",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_61": (
        "blocks.append(block.mean(axis=1, dtype=None) if f.channels > 1 else block[:, 0])",
        "equivalent: numpy already averages float32 input in float32",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_63": (
        "blocks.append(block.mean(axis=1, ) if f.channels > 1 else block[:, 0])",
        "equivalent: numpy already averages float32 input in float32",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_65": (
        "blocks.append(block.mean(axis=1, dtype=np.float32) if f.channels >= 1 else block[:, 0])",
        "equivalent: the mean of one channel is that channel, bit for bit",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_79": (
        "samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=None)",
        "equivalent: an empty array is refused as empty_audio whatever its dtype",
    ),
    "gateway.audio.intake.x__decode_with_soundfile__mutmut_81": (
        "samples = np.concatenate(blocks) if blocks else np.zeros(0, )",
        "equivalent: an empty array is refused as empty_audio whatever its dtype",
    ),
    "gateway.audio.intake.x__fade_out__mutmut_15": (
        "faded[len(faded) - n :] *= np.linspace(1.0, 0.0, n, dtype=None)",
        "equivalent: the ramp multiplies a float32 buffer in place; a float64 ramp gives the same PCM (the fade test "
        "compares it exactly)",
    ),
    "gateway.audio.intake.x__fade_out__mutmut_19": (
        "faded[len(faded) - n :] *= np.linspace(1.0, 0.0, n, )",
        "equivalent: the ramp multiplies a float32 buffer in place; a float64 ramp gives the same PCM (the fade test "
        "compares it exactly)",
    ),
    "gateway.audio.intake.x__fit_duration__mutmut_57": (
        "elif len(samples) <= low:  # at most 20 ms of trailing silence, so the engine's rounding cannot refuse it",
        "equivalent: at exactly `low` samples the padding appends zero samples",
    ),
    "gateway.audio.intake.x__fit_duration__mutmut_61": (
        "samples = np.concatenate([samples, np.zeros(low - len(samples), dtype=None)])",
        "equivalent: float64 zero padding gives the same PCM16",
    ),
    "gateway.audio.intake.x__fit_duration__mutmut_63": (
        "samples = np.concatenate([samples, np.zeros(low - len(samples), )])",
        "equivalent: float64 zero padding gives the same PCM16",
    ),
    "gateway.audio.intake.x__looks_like_audio__mutmut_24": (
        "return len(head) >= 2 and head[0] == 0xFF or head[1] & 0xE0 == 0xE0  # MPEG audio frame sync",
        "not reproducible in a unit test: lets bytes whose 2nd byte has the top 3 bits set reach libsndfile; the only "
        "such format it reads is HTK with >= 14.7 M samples (a 29 MB file), which is then refused by name instead of "
        "by the sniff: 415 either way",
    ),
    "gateway.audio.intake.x__looks_like_audio__mutmut_26": (
        "return len(head) > 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # MPEG audio frame sync",
        "equivalent: a 2-byte upload cannot be decoded: the same 415 whether the sniff or libsndfile refuses it",
    ),
    "gateway.audio.intake.x__looks_like_audio__mutmut_27": (
        "return len(head) >= 3 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # MPEG audio frame sync",
        "equivalent: a 2-byte upload cannot be decoded: the same 415 whether the sniff or libsndfile refuses it",
    ),
    "gateway.audio.intake.x__quality_warnings__mutmut_23": (
        "rms_db = _dbfs(float(np.sqrt(np.mean(np.square(samples, dtype=None)))))",
        "equivalent: float32 squares change the RMS by far less than the 0.1 dB the warning shows",
    ),
    "gateway.audio.intake.x__quality_warnings__mutmut_25": (
        "rms_db = _dbfs(float(np.sqrt(np.mean(np.square(samples, )))))",
        "equivalent: float32 squares change the RMS by far less than the 0.1 dB the warning shows",
    ),
    "gateway.audio.intake.x__quality_warnings__mutmut_27": (
        "if peak_db <= LOW_PEAK_DBFS or rms_db < LOW_RMS_DBFS:",
        "equivalent: no float32 peak maps to exactly -25.0 dBFS (checked over 40 000 neighbouring values)",
    ),
    "gateway.audio.intake.x__quality_warnings__mutmut_28": (
        "if peak_db < LOW_PEAK_DBFS or rms_db <= LOW_RMS_DBFS:",
        "equivalent: an RMS of exactly -45.0 dBFS cannot be constructed (no float32 level maps to it)",
    ),
    "gateway.audio.intake.x__speech_bounds__mutmut_6": (
        "hop = max(2, round(_TRIM_FRAME_SECONDS * rate))",
        "equivalent: the hop is round(0.01 x rate) >= 10: rates under 1000 Hz are refused before",
    ),
    "gateway.audio.intake.x_decode_audio__mutmut_15": (
        'decoded = _decode_pcm_wav(data, max_declared_seconds) if (data[:4] == b"RIFF") or True else None',
        "equivalent: our WAV parser refuses anything not starting with RIFF, which then goes to libsndfile as before",
    ),
    "gateway.audio.intake.x_decode_audio__mutmut_50": (
        "samples = np.nan_to_num(samples, posinf=1.0, neginf=-1.0)",
        "equivalent: nan=0.0 is numpy's default",
    ),
    "gateway.audio.intake.x_prepare_reference__mutmut_15": (
        "if _dbfs(peak) <= SILENT_PEAK_DBFS:",
        "equivalent: no float32 peak maps to exactly -60.0 dBFS (checked over 40 000 neighbouring values)",
    ),
    "gateway.audio.intake.x_prepare_reference__mutmut_39": (
        "if rate >= MAX_OUTPUT_RATE:",
        "equivalent: soxr returns 48 kHz input unchanged when asked for 48 kHz (the 48 kHz test compares the PCM "
        "exactly)",
    ),
    "gateway.audio.intake.x_prepare_reference__mutmut_41": (
        "speech = soxr.resample(speech, rate, MAX_OUTPUT_RATE).astype(None, copy=False)",
        "equivalent: soxr returns float32 for float32 input; the dtype/copy arguments change nothing",
    ),
    "gateway.audio.intake.x_prepare_reference__mutmut_42": (
        "speech = soxr.resample(speech, rate, MAX_OUTPUT_RATE).astype(np.float32, copy=None)",
        "equivalent: soxr returns float32 for float32 input; the dtype/copy arguments change nothing",
    ),
    "gateway.audio.intake.x_prepare_reference__mutmut_44": (
        "speech = soxr.resample(speech, rate, MAX_OUTPUT_RATE).astype(np.float32, )",
        "equivalent: soxr returns float32 for float32 input; the dtype/copy arguments change nothing",
    ),
    "gateway.audio.intake.x_prepare_reference__mutmut_51": (
        "speech = soxr.resample(speech, rate, MAX_OUTPUT_RATE).astype(np.float32, copy=True)",
        "equivalent: soxr returns float32 for float32 input; the dtype/copy arguments change nothing",
    ),
    "gateway.audio.intake.x_store_reference__mutmut_37": (
        "Path(temp_name).unlink(missing_ok=None)",
        "a race: differs only if the temp file vanished between the failed write and its cleanup",
    ),
    "gateway.audio.intake.x_store_reference__mutmut_39": (
        "Path(temp_name).unlink(missing_ok=False)",
        "a race: differs only if the temp file vanished between the failed write and its cleanup",
    ),
    "gateway.engine.health.xǁEngineStateǁrecord__mutmut_14": (
        "self.last_error = cast(None, error).message  # judge: an EngineError naming this engine",
        "equivalent: typing.cast does nothing at run time",
    ),
    "gateway.engine.selection.x_capability_filter__mutmut_11": (
        "return info.version is None or languages < set(languages_for_version(info.version))",
        "equivalent: every model version supports 6 or 11 languages and a request names at most 2, so subset and "
        "strict subset agree",
    ),
    "gateway.engine.selection.xǁSlotQueueǁ__init____mutmut_8": (
        "self.closed = None",
        "equivalent: `closed` is only tested for truth; None and False are both false",
    ),
    "gateway.voices.files.x__try_claim_exclusive__mutmut_20": (
        "with contextlib.suppress(None):",
        "not reproducible in a unit test: the cleanup runs only when writing a claim fails after O_EXCL created it, on"
        " a file system without hard links (disk full, I/O error)",
    ),
    "gateway.voices.files.x_read_text_or_none__mutmut_1": (
        "return path.read_text(encoding=None)",
        "equivalent: the locale encoding is UTF-8 here (and in Python's UTF-8 mode); differs only under a non-UTF-8 "
        "locale",
    ),
    "gateway.voices.files.x_read_text_or_none__mutmut_3": (
        'return path.read_text(encoding="UTF-8")',
        "equivalent: codec names are case-insensitive",
    ),
    "gateway.voices.files.x_release_claim__mutmut_22": (
        "with contextlib.suppress(None):",
        "a race: the set-aside file is missing only if another process removed it between the rename and the cleanup",
    ),
    "gateway.voices.files.x_try_claim__mutmut_8": (
        'data = holder.encode("UTF-8")',
        "equivalent: codec names are case-insensitive",
    ),
    "gateway.voices.files.x_try_claim__mutmut_22": (
        "return _try_claim_exclusive(None, data)",
        "not reproducible in a unit test: reached only when os.link fails with something other than EEXIST (a file "
        "system without hard links); _try_claim_exclusive itself is tested directly",
    ),
    "gateway.voices.files.x_try_claim__mutmut_23": (
        "return _try_claim_exclusive(path, None)",
        "not reproducible in a unit test: reached only when os.link fails with something other than EEXIST (a file "
        "system without hard links); _try_claim_exclusive itself is tested directly",
    ),
    "gateway.voices.files.x_try_claim__mutmut_24": (
        "return _try_claim_exclusive(data)",
        "not reproducible in a unit test: reached only when os.link fails with something other than EEXIST (a file "
        "system without hard links); _try_claim_exclusive itself is tested directly",
    ),
    "gateway.voices.files.x_try_claim__mutmut_25": (
        "return _try_claim_exclusive(path, )",
        "not reproducible in a unit test: reached only when os.link fails with something other than EEXIST (a file "
        "system without hard links); _try_claim_exclusive itself is tested directly",
    ),
    "gateway.voices.store.x_name_key__mutmut_17": (
        'return hashlib.sha256(folded.encode("UTF-8")).hexdigest()',
        "equivalent: codec names are case-insensitive",
    ),
    "gateway.voices.store.xǁVoiceStoreǁ_default_id__mutmut_6": (
        'voice_id = text.strip() if text else "XXXX"',
        "equivalent: an empty marker gives a non-id either way: no default",
    ),
    "gateway.voices.store.xǁVoiceStoreǁ_reclaim_if_stale__mutmut_12": (
        "return False",
        "a race: reached only if the claim disappears between reading its holder and its mtime",
    ),
    "gateway.voices.store.xǁVoiceStoreǁ_reclaim_if_stale__mutmut_13": (
        "if age <= self._stale_claim_seconds:",
        "equivalent: the age is a clock reading; landing exactly on stale_claim_seconds is not reproducible",
    ),
    "gateway.voices.store.xǁVoiceStoreǁcreate__mutmut_34": (
        'field = ".".join(str(part) for part in first["loc"]) or "XXvoiceXX"',
        "unreachable: Voice has no model-level validator, so every error has a field location",
    ),
    "gateway.voices.store.xǁVoiceStoreǁcreate__mutmut_35": (
        'field = ".".join(str(part) for part in first["loc"]) or "VOICE"',
        "unreachable: Voice has no model-level validator, so every error has a field location",
    ),
    "gateway.voices.store.xǁVoiceStoreǁdelete__mutmut_4": (
        "raise _not_found(None) from None",
        "a race: reached only if the record disappears between get() and unlink() (a concurrent delete)",
    ),
    "gateway.voices.store.xǁVoiceStoreǁdelete__mutmut_5": (
        'raise _not_found(f"with id {_shown(None)}") from None',
        "a race: reached only if the record disappears between get() and unlink() (a concurrent delete)",
    ),
    "gateway.voices.store.xǁVoiceStoreǁset_default__mutmut_12": (
        'write_atomic(self._default_marker, voice.id.encode("ASCII"))',
        "equivalent: codec names are case-insensitive",
    ),
    'gateway.voices.files.x_sweep_stale_temps__mutmut_11': (
        'mtime = entry.stat(follow_symlinks=None).st_mtime',
        'equivalent: a symlink is skipped by the is_file(follow_symlinks=False) check whatever mtime it reports',
    ),
    'gateway.voices.files.x_sweep_stale_temps__mutmut_12': (
        'mtime = entry.stat(follow_symlinks=True).st_mtime',
        'equivalent: a symlink is skipped by the is_file(follow_symlinks=False) check whatever mtime it reports',
    ),
    'gateway.voices.files.x_sweep_stale_temps__mutmut_15': (
        'if not entry.is_file(follow_symlinks=None) or mtime > cutoff:',
        'equivalent: DirEntry.is_file reads follow_symlinks as a truth value, and None is false',
    ),
    'gateway.voices.files.x_sweep_stale_temps__mutmut_17': (
        'if not entry.is_file(follow_symlinks=False) or mtime >= cutoff:',
        'equivalent: the cutoff is a float clock reading; an mtime landing on it exactly is not reproducible',
    ),
    'gateway.voices.files.x_sweep_stale_temps__mutmut_20': (
        'break  # another replica swept it first',
        'a race: reached only if another process removes a listed temp file before this sweep stats it',
    ),
    'gateway.voices.files.x_sweep_stale_temps__mutmut_21': (
        'break',
        'needs a fault a unit test cannot make: unlink of a regular file in a writable dir failing for root',
    ),
}
