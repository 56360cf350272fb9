"""Run under torchrun by test_ddp.py: train, then every rank writes the weights it ended with."""
import os
import sys

from safetensors.torch import save_file

from polyfuse.config import Config
from polyfuse.recipes.train import train_run

if __name__ == "__main__":
    config, train, val, out = sys.argv[1:5]
    predictor, summary = train_run(Config.load(config), train, val, out, progress=False)
    state = {k: v.contiguous() for k, v in predictor.model.state_dict().items()}
    save_file(state, os.path.join(out, f"rank{os.environ['RANK']}.safetensors"))
