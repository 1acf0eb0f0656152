"""Helpers of the tests (and of bench/): real servers, images, the VM, hostile scripts."""
