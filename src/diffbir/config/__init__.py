"""Settings: the release table (presets), the user's options, and their resolution into one frozen run configuration."""
