"""Management commands: ``broadcast_tail`` and ``broadcast_publish``."""
