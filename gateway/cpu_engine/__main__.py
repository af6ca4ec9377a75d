"""`python -m gateway.cpu_engine ...` (same as `sovits-gateway cpu-engine ...`)."""

from gateway.cpu_engine.server import main

if __name__ == "__main__":
    main()
