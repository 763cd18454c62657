"""Starlette app factory and routes."""
