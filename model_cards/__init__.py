"""Model cards of trained RecBase folders (``python -m model_cards.generate``)."""
