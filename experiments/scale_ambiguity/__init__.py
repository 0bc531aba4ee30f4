"""Language resolves scale ambiguity: the paper's claim in miniature (see README.md)."""
