"""What every app shares and nothing else: the error family. The lowest layer: imports no app."""
