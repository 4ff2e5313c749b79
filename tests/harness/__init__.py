"""Offline harnesses for driving livekit-agents' real job runner and worker in tests."""
