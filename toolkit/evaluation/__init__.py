"""Accuracy through lm-eval, with each variant scored in the runtime it will run on."""
