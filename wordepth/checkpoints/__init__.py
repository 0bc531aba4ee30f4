"""Checkpoints: one function to get a network from any file, one to get a run's state for a resume.

    model = load_checkpoint("nyu.pth", variant="nyu")   # original .pth, this project's .pth, .safetensors
    state = load_training_state("run/last.pth")         # network, optimizer, progress, RNG states, config

Files are read without running code (``torch.load(weights_only=True)``, safetensors without pickle)
and written through :mod:`wordepth.outputs` (atomic, the mode of every other output). One module per job:

- ``reading.py``: safe reading of ``.pth`` and ``.safetensors`` files;
- ``layouts.py``: conversion between the original release's keys, this project's and a
  ``.safetensors`` file's settings;
- ``identify.py``: which layout and which network a file holds, validated before anything is built;
- ``swin.py``: the ImageNet Swin weights a new run starts from (``--pretrain``);
- ``writing.py``: the three layouts written (``last.pth``, the original's, ``.safetensors``);
- ``loading.py``: the two loaders below.
"""
from wordepth.checkpoints.identify import inspect_checkpoint
from wordepth.checkpoints.layouts import FORMAT, FORMAT_VERSION, original_to_project, project_to_original, sidecar_path
from wordepth.checkpoints.loading import LoadedNetwork, load_checkpoint, load_training_state
from wordepth.checkpoints.reading import CheckpointError
from wordepth.checkpoints.swin import load_swin_pretrained
from wordepth.checkpoints.writing import save_checkpoint, save_original_checkpoint, save_safetensors

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "LoadedNetwork", "inspect_checkpoint", "load_checkpoint",
           "load_swin_pretrained", "load_training_state", "original_to_project", "project_to_original",
           "save_checkpoint", "save_original_checkpoint", "save_safetensors", "sidecar_path"]
