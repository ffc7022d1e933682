"""Chat sessions: conversations the box remembers, so a client sends only its next message."""
