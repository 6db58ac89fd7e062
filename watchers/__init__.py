"""Watchers: tail MongoDB change streams and publish typed events to Redis Streams."""
