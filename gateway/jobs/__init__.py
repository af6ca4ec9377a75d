"""Dubbing jobs: subtitles or segments in, a timed voice track out (durable, resumable)."""
