"""A project served by real daphne processes in ``test_multiprocess.py``."""
