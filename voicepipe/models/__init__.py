"""voicepipe.models."""
