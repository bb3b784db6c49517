"""The maintainer's tools: not part of the course a learner runs, and not installed with it."""
