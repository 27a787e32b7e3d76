"""Interfaces only: every outside system sits behind one of these, with an embedded and a production adapter."""
