"""The servers users touch: the accessors every face shares (`live`), the sync face, the async face and the
bridge that runs the lifecycle from async code under asyncio or trio."""
