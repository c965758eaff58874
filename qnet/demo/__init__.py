"""Demonstrations run by ``qnet demo``."""
