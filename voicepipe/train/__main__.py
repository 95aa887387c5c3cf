"""`python -m voicepipe.train ...` = `voicepipe train ...`: the entry point for `accelerate launch` / `torchrun`."""

import sys

from voicepipe.cli import app

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
    app()
