"""ML60's curriculum index and command line (``python -m ml60 help``).

This package sits above the phases: it knows every milestone by id and
runs them; ``common`` and the phases know nothing of it.
"""
