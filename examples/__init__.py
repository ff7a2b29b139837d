"""
Runnable examples; run each with ``python -m examples.<name>``.
"""
