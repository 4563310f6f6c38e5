"""Small real servers started by tests on 127.0.0.1."""
