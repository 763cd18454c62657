"""The supervision runtime every subsystem shares: recover loops, item isolation, heartbeats, health, Ray calls."""
