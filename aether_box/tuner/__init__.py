"""The tuner: acts on what the observer notices, logs every decision, and can undo it."""
