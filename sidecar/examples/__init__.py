"""Examples shipped with the package, so a config can name them by import string wherever it is installed."""
