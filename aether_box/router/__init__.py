"""The semantic router: which model, with which system prompt, answers a message."""
