"""One module per benchmark: a `@register`ed Task subclass (evals/kit.py), found by evals/registry.py without any
other edit. A multiple-choice benchmark is a `MultipleChoiceTask` with a `load` (see seedbench.py)."""
