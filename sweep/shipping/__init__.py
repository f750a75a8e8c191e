"""Shipping the best trial: best --evaluate (retrain, test, model.pt) and predict on new data.
Imports any layer below (core, search, nn, training); no views."""
