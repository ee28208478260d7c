"""Real FUSE mounts through the megafs command."""
