"""Screens pushed over the dashboard: help, chat, memory search, prompts."""
