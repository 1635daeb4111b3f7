"""Backends, one subpackage per URL scheme, loaded by name by ``tidings._backends``."""
