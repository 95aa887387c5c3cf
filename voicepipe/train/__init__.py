"""voicepipe.train: fine-tune Qwen3-TTS-12Hz on a corpus (recipe in `recipe.py`, hyper-parameters in `configs/`)."""

from voicepipe.train.config import TrainConfig, load_config
from voicepipe.train.recipe import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
