"""Speed and memory benchmarks of WorDepth: ``python -m benchmarks.benchmark`` (see README.md)."""
