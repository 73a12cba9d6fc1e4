"""Falcon resources, one small class per route."""
