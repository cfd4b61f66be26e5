"""Python-backend models of the portable flavour. `build-repo` copies each file into a model's
version directory as `model.py`; they import the equiprobe package from the server's Python."""
