"""voicepipe.corpus."""
