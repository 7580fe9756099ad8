"""Broker backends. ``base`` holds the contract; one module per broker."""
