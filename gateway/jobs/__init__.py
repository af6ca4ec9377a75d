"""Dubbing jobs: subtitles or segments in, one timed voice track out (issue 10)."""
