"""The image built and run in Docker (and compose, the playground in Chromium, nginx in front)."""
