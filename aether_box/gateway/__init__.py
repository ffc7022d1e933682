"""The HTTP gateway: the OpenAI and Ollama APIs on the box's bus services, with API keys.

Modules: settings (the `[http]` section), keys (API keys: the file, hashing, checking),
app (Starlette routes, authorisation, errors), openai and ollama (the two API dialects),
exchange (one bus call as an HTTP response, streamed, cancelled when the client goes),
stats (per route and per key counters), component (Hypercorn in the box's task group), cli
(`aether-box keys api ...`).
"""
