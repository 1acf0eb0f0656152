"""RQ workers that run queued scripts through the same jail as the synchronous path."""
