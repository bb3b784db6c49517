"""Code every phase shares: data sources, loaders, the Trainer, benchmarks, plots.

``common`` imports no phase.  Arrows point one way: ``phaseN -> common``.
"""
