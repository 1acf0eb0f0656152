"""The image in a cgroup v2 VM under qemu (`make test-vm`)."""
