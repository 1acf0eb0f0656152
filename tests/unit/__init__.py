"""Tests that need no root, no jail and no running service: `make test-unit`, in seconds."""
