"""The embedded CPU engine: a small real server that speaks the GPT-SoVITS HTTP protocols (see server.py)."""
