"""Pure, synchronous audio code: reference intake (intake), WAV framing (wav), output conversion (convert).

Nothing here touches the event loop; callers run it in a worker thread. Import the submodules directly
(`from gateway.audio.intake import prepare_reference`) so that importing the package stays cheap.
"""
