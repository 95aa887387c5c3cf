"""voicepipe.serve."""
