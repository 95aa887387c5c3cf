"""voicepipe: podcast feed -> clean single-speaker corpus -> fine-tuned Qwen3-TTS voice -> evaluated -> served."""

__version__ = "0.1.0"
