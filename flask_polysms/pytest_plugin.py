"""pytest plugin (entry point ``pytest11``): ready fixtures for a host app's SMS tests."""
