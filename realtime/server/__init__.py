"""The push server: Sanic, one stream reader per process, rooms fanned out in process."""
