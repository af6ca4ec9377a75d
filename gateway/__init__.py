"""sovits-gateway: a production gateway in front of GPT-SoVITS engines."""

__version__ = "0.1.0"
