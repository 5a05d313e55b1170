"""Training code for RecBase: data corpus, pretraining and evaluation."""
