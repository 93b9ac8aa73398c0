"""nonna: the sidecar in front of one pod (L2 queue, piggybacked load). See docs/nonna.md."""
