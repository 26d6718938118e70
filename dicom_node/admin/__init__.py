"""Admin: the `ldct-node` command line, the demo and report reissue."""
