"""voicepipe.audio."""
