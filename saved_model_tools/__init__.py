"""Offline SavedModel tools (the structured-signature rewriter lands here)."""
