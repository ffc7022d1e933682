"""Aether Box: a local AI appliance in one async process."""

__version__ = "0.1.0"
