"""The jail against the real nsjail (root): one-off and warm, with this host's cgroups and without."""
