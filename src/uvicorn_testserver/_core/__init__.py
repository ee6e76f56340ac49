"""The lifecycle core: settings (the one source of defaults and checks), the engine, errors, log capture,
uvicorn's internals, TLS, WSGI and the listening socket. Imports nothing from the layers above."""
