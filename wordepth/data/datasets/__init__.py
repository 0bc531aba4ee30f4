"""Datasets of your own: every module in this folder is imported the first time a dataset name is looked
up (:mod:`wordepth.data.registry`), so one file here that declares a dataset's facts and registers its
class makes ``--dataset NAME`` work for training, evaluation, ``--check_data`` and the text pipeline.
docs/data.md, "Your own dataset", has a complete example."""
