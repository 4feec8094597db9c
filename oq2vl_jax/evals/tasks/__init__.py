"""One module per benchmark (evals/kit.py `Task`); evals/registry.py names them."""
