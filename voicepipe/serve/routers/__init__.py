"""HTTP routes of the speech server."""
