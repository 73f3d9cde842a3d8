"""Mesh, partition rules and multi-process initialisation."""
