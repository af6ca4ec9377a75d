"""Talking to GPT-SoVITS engines: one client per engine, one adapter per protocol flavour, one pool."""
