"""Experiments that study the method; each folder has a README.md and runs as ``python -m experiments.<name>.run``."""
