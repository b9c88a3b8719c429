"""Runtimes: the bundle made from a model package, and the offline and streaming recognizers built
on it."""
