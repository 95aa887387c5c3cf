"""voicepipe.train."""
