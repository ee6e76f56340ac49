"""Where uvicorn runs, one module per mode: a thread, the caller's loop, a child process (with the child's own
main and coverage). Each implements `_core.run.Run`; they share `serving`."""
