"""Subpackage; see the module docstrings."""
