"""A one-page project: publish from a sync view, watch events arrive live."""
