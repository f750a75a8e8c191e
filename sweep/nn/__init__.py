"""The network at work: device and precision, inference, metrics, test-time choices, model.pt, pictures.
Imports sweep.core, torch and model; nothing that trains, searches or shows."""
