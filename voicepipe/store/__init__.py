"""voicepipe.store."""
