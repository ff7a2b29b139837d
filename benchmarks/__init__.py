"""
Benchmarks for ``resilient``, run with pyperf: ``python -m benchmarks.overhead -o run.json``,
then ``python -m benchmarks.report overhead run*.json``. See benchmarks/README.md.
"""
