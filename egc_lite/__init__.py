"""egc_lite."""
