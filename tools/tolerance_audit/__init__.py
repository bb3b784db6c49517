"""How much room does every floating-point tolerance in the course leave?  Measured, not guessed.

A tolerance such as ``assert drift < 1e-3`` is a claim about the numbers the
correct code produces *on every machine*.  Threads change the order of float
additions inside a kernel (addition is not associative), so a value that sits
at 3e-7 with one thread can sit at 2e-3 with two.  This tool measures it:

1. :mod:`.splice` copies the tree and wraps every tolerance site (a comparison
   against a number like ``1e-5`` or a ``*_TOLERANCE`` name, and every
   ``allclose`` / ``isclose`` / ``assert_close`` / ``approx``) in a probe call
   that records the measured value and returns it unchanged.  Line numbers
   stay as they are.
2. :mod:`.probe` records, per test and per process (milestone runs started
   by a test record too), the largest value seen and the share of the
   tolerance it used.
3. :mod:`.__main__` runs the chosen tests once per configuration (torch and
   OpenMP at 1, 2 and 4 threads, and 2 threads with
   ``torch.use_deterministic_algorithms(True)``), and :mod:`.report` writes
   the table: the site, its tolerance, the worst value at each configuration
   and the margin (tolerance / worst value).  A margin under 10x is flagged.

    python -m tools.tolerance_audit --out tools/tolerance_audit/tolerances.md
"""
