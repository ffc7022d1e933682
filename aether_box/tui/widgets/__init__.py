"""Dashboard widgets, one per panel."""
