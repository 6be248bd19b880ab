"""stimopt\x27s built-in plugins; each module is one family and registers through the `stimopt` entry-point group."""
