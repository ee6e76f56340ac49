"""The aiohttp-based async test client: the client, its responses, streams and WebSockets."""
