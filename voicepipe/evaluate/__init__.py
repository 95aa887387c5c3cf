"""voicepipe.evaluate."""
