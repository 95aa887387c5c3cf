"""End-to-end pipeline and demo (composes the stages)."""
