"""The pytest plugin's parts; ``uvicorn_testserver.plugin`` is the registered entry module."""
